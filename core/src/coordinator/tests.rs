//! The coordinator driven request by request, its writes "committed" by hand.

use bytes::Bytes;

use super::*;
use crate::protocol::messages::join_group_request::JoinGroupRequestProtocol;
use crate::protocol::messages::offset_commit_request::*;
use crate::protocol::messages::sync_group_request::SyncGroupRequestAssignment;

const SESSION_MS: i32 = 10_000;

struct Harness {
    c: Coordinator,
    now: u64,
    next_slot: u64,
    /// The log: every record appended, in order.
    log: Vec<(Bytes, Option<Bytes>)>,
}

impl Harness {
    fn new() -> Harness {
        let config = GroupConfig {
            initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        };
        Harness {
            c: Coordinator::new(0, config),
            now: 1_000,
            next_slot: 0,
            log: Vec::new(),
        }
    }

    fn to(&mut self) -> ReplyTo {
        self.next_slot += 1;
        ReplyTo {
            conn: 1,
            slot: self.next_slot,
        }
    }

    /// Appends and commits every write: the answers they held come out.
    fn commit_all(&mut self) -> Vec<(ReplyTo, Response)> {
        for (id, records, _) in self.c.take_writes() {
            self.log.extend(records.iter().cloned());
            let end = self.log.len() as i64;
            self.c.appended(id, end, records);
        }
        self.c.committed(self.now, self.log.len() as i64);
        self.c.take_answers()
    }

    fn join(
        &mut self,
        member_id: &str,
        protocols: &[&str],
    ) -> (ReplyTo, Option<JoinGroupResponse>) {
        let to = self.to();
        let request = JoinGroupRequest {
            group_id: "g".into(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: 30_000,
            member_id: member_id.into(),
            protocol_type: "consumer".into(),
            protocols: (protocols.iter())
                .map(|p| JoinGroupRequestProtocol {
                    name: p.to_string(),
                    metadata: Bytes::from(format!("{member_id}-{p}")),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let fresh = format!("m{}", self.next_slot);
        let client = Client::default();
        (to, self.c.join(self.now, to, 5, &client, &request, fresh))
    }

    fn sync(
        &mut self,
        member: &str,
        generation: i32,
        assign: &[(&str, &str)],
    ) -> (ReplyTo, Option<SyncGroupResponse>) {
        let to = self.to();
        let request = SyncGroupRequest {
            group_id: "g".into(),
            generation_id: generation,
            member_id: member.into(),
            assignments: (assign.iter())
                .map(|(m, a)| SyncGroupRequestAssignment {
                    member_id: m.to_string(),
                    assignment: Bytes::from(a.to_string()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        (to, self.c.sync(self.now, to, &request))
    }

    fn heartbeat(&mut self, member: &str, generation: i32) -> i16 {
        let request = HeartbeatRequest {
            group_id: "g".into(),
            generation_id: generation,
            member_id: member.into(),
            ..Default::default()
        };
        self.c.heartbeat(self.now, &request).error_code
    }

    fn commit(
        &mut self,
        member: &str,
        generation: i32,
        offset: i64,
    ) -> Option<OffsetCommitResponse> {
        let to = self.to();
        let request = OffsetCommitRequest {
            group_id: "g".into(),
            generation_id_or_member_epoch: generation,
            member_id: member.into(),
            topics: vec![OffsetCommitRequestTopic {
                name: "t".into(),
                partitions: vec![OffsetCommitRequestPartition {
                    partition_index: 0,
                    committed_offset: offset,
                    committed_metadata: Some(String::new()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        self.c.commit(self.now, to, &request, |_, _| true)
    }

    fn committed_offset(&self) -> Option<i64> {
        let asked = [("t".to_string(), vec![0])];
        let found = self.c.fetch_offsets("g", Some(&asked));
        found[0].1[0].1.map(|v| v.offset)
    }

    /// Two members, a first generation assigned and stable. Returns their ids.
    fn stable_pair(&mut self) -> (String, String) {
        let (_, a) = self.join("", &["range"]);
        let a = a.expect("member id required").member_id;
        let (_, b) = self.join("", &["range"]);
        let b = b.expect("member id required").member_id;
        let (_, none) = self.join(&a, &["range"]);
        assert!(none.is_none(), "waits for b");
        let (_, none) = self.join(&b, &["range", "roundrobin"]);
        assert!(none.is_none(), "the generation is written first");
        let answers = self.commit_all();
        assert_eq!(answers.len(), 2);
        for (_, answer) in &answers {
            let Response::JoinGroup(r) = answer else {
                panic!()
            };
            assert_eq!((r.error_code, r.generation_id), (0, 1));
            assert_eq!(r.protocol_name.as_deref(), Some("range"));
            assert_eq!(r.leader, a);
            assert_eq!(r.members.len(), if r.member_id == a { 2 } else { 0 });
        }
        let (_, held) = self.sync(&b, 1, &[]);
        assert!(held.is_none());
        let (_, held) = self.sync(&a, 1, &[(&a, "A"), (&b, "B")]);
        assert!(held.is_none(), "assignments are written first");
        let answers = self.commit_all();
        let mut got: Vec<Bytes> = (answers.into_iter())
            .map(|(_, r)| match r {
                Response::SyncGroup(r) => r.assignment,
                _ => panic!(),
            })
            .collect();
        got.sort();
        assert_eq!(got, vec![Bytes::from("A"), Bytes::from("B")]);
        assert_eq!(self.c.group("g").unwrap().state(), GroupState::Stable);
        (a, b)
    }
}

#[test]
fn two_members_join_sync_and_commit() {
    let mut h = Harness::new();
    let (a, _b) = h.stable_pair();
    assert!(h.commit(&a, 1, 10).is_none(), "answered once written");
    assert_eq!(h.committed_offset(), None, "not applied before it commits");
    let answers = h.commit_all();
    assert_eq!(answers.len(), 1);
    assert_eq!(h.committed_offset(), Some(10));
}

#[test]
fn a_new_member_starts_a_rebalance_and_stale_generations_are_refused() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    let (_, c) = h.join("", &["range"]);
    let c = c.unwrap().member_id;
    let (_, held) = h.join(&c, &["range"]);
    assert!(held.is_none());
    assert_eq!(h.heartbeat(&a, 1), codes::REBALANCE_IN_PROGRESS);
    // Commits of the current generation still go in while members rejoin (eager revocation).
    assert!(h.commit(&b, 1, 5).is_none());
    h.commit_all();
    h.join(&a, &["range"]);
    h.join(&b, &["range"]);
    let answers = h.commit_all();
    assert_eq!(answers.len(), 3, "every member hears of generation 2");
    assert_eq!(h.heartbeat(&a, 1), codes::ILLEGAL_GENERATION);
    let refused = h.commit(&b, 1, 7).expect("refused at once");
    assert_eq!(
        refused.topics[0].partitions[0].error_code,
        codes::REBALANCE_IN_PROGRESS
    );
    h.sync(&a, 2, &[(&a, "A"), (&b, "B"), (&c, "C")]);
    h.commit_all();
    let refused = h.commit(&b, 1, 7).expect("refused at once");
    assert_eq!(
        refused.topics[0].partitions[0].error_code,
        codes::ILLEGAL_GENERATION
    );
    assert_eq!(h.committed_offset(), Some(5));
}

#[test]
fn the_planted_bug_takes_a_stale_commit() {
    let mut h = Harness::new();
    h.c.config.planted_stale_commit = true;
    let (a, b) = h.stable_pair();
    h.join(&a, &["range"]);
    h.join(&b, &["range"]);
    h.commit_all();
    h.sync(&a, 2, &[(&a, "A"), (&b, "B")]);
    h.commit_all();
    assert!(h.commit(&b, 1, 7).is_none(), "accepted from generation 1");
}

#[test]
fn a_silent_member_is_dropped_after_its_session() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    h.now += SESSION_MS as u64 / 2;
    assert_eq!(h.heartbeat(&a, 1), codes::NONE);
    h.now += SESSION_MS as u64 / 2 + 1;
    assert!(h.c.next_deadline_ms().unwrap() <= h.now);
    h.c.tick(h.now);
    assert_eq!(
        h.c.group("g").unwrap().state(),
        GroupState::PreparingRebalance
    );
    assert_eq!(h.heartbeat(&b, 1), codes::UNKNOWN_MEMBER_ID);
    let (_, held) = h.join(&a, &["range"]);
    assert!(held.is_none());
    let answers = h.commit_all();
    let Response::JoinGroup(r) = &answers[0].1 else {
        panic!()
    };
    assert_eq!((r.generation_id, r.members.len()), (2, 1));
}

#[test]
fn the_last_member_leaving_empties_the_group() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    for m in [&a, &b] {
        let request = LeaveGroupRequest {
            group_id: "g".into(),
            member_id: m.to_string(),
            ..Default::default()
        };
        assert_eq!(h.c.leave(h.now, &request).error_code, codes::NONE);
    }
    h.commit_all();
    let group = h.c.group("g").unwrap();
    assert_eq!((group.state(), group.generation()), (GroupState::Empty, 2));
}

#[test]
fn a_new_coordinator_rebuilds_groups_and_offsets_from_the_log() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    h.commit(&a, 1, 42);
    h.commit_all();
    let mut next = Coordinator::new(0, h.c.config);
    for (key, value) in h.log.clone() {
        next.replay(h.now, Some(key), value, false);
    }
    next.loaded(h.now);
    let group = next.group("g").unwrap();
    assert_eq!((group.state(), group.generation()), (GroupState::Stable, 1));
    h.c = next;
    assert_eq!(h.committed_offset(), Some(42));
    assert_eq!(h.heartbeat(&b, 1), codes::NONE);
    let (_, answer) = h.sync(&b, 1, &[]);
    assert_eq!(answer.unwrap().assignment, Bytes::from("B"));
}

#[test]
fn a_generation_never_assigned_is_completed_again_after_a_failover() {
    let mut h = Harness::new();
    let (_, a) = h.join("", &["range"]);
    let a = a.unwrap().member_id;
    h.join(&a, &["range"]);
    h.commit_all();
    // The leader's assignment never made it: the next coordinator holds a completing group.
    let mut next = Coordinator::new(0, h.c.config);
    for (key, value) in h.log.clone() {
        next.replay(h.now, Some(key), value, false);
    }
    next.loaded(h.now);
    assert_eq!(
        next.group("g").unwrap().state(),
        GroupState::CompletingRebalance
    );
    h.c = next;
    h.sync(&a, 1, &[(&a, "A")]);
    let answers = h.commit_all();
    assert_eq!(answers.len(), 1);
}

#[test]
fn abandoning_answers_everything_held() {
    let mut h = Harness::new();
    let (_, a) = h.join("", &["range"]);
    let a = a.unwrap().member_id;
    h.join(&a, &["range"]);
    let answers = h.c.abandon(codes::NOT_COORDINATOR);
    assert_eq!(answers.len(), 1);
    let Response::JoinGroup(r) = &answers[0].1 else {
        panic!()
    };
    assert_eq!(r.error_code, codes::NOT_COORDINATOR);
}

#[test]
fn a_static_member_takes_its_place_back_without_a_rebalance() {
    let mut h = Harness::new();
    let to = h.to();
    let mut request = JoinGroupRequest {
        group_id: "g".into(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: 30_000,
        group_instance_id: Some("i1".into()),
        protocol_type: "consumer".into(),
        protocols: vec![JoinGroupRequestProtocol {
            name: "range".into(),
            metadata: Bytes::from_static(b"m"),
            ..Default::default()
        }],
        ..Default::default()
    };
    let client = Client::default();
    assert!(h
        .c
        .join(h.now, to, 5, &client, &request, "s1".into())
        .is_none());
    h.commit_all();
    h.sync("s1", 1, &[("s1", "A")]);
    h.commit_all();
    // The same instance, restarted: a new member id, the same place and generation.
    let to = h.to();
    assert!(h
        .c
        .join(h.now, to, 5, &client, &request, "s2".into())
        .is_none());
    let answers = h.commit_all();
    let Response::JoinGroup(r) = &answers[0].1 else {
        panic!()
    };
    assert_eq!((r.generation_id, r.member_id.as_str()), (1, "s2"));
    assert_eq!(h.heartbeat("s1", 1), codes::UNKNOWN_MEMBER_ID);
    request.member_id = "s1".into();
    let to = h.to();
    let fenced =
        h.c.join(h.now, to, 5, &client, &request, "x".into())
            .unwrap();
    assert_eq!(fenced.error_code, codes::FENCED_INSTANCE_ID);
}

mod consumer_protocol {
    use super::*;
    use crate::protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    use crate::protocol::wire::Uuid;

    const TOPIC_ID: Uuid = Uuid([7; 16]);

    fn topics(name: &str) -> Option<(Uuid, i32)> {
        (name == "t").then_some((TOPIC_ID, 4))
    }

    fn heartbeat(
        h: &mut Harness,
        member: &str,
        epoch: i32,
        owned: Option<&[i32]>,
    ) -> ConsumerGroupHeartbeatResponse {
        let to = h.to();
        let request = ConsumerGroupHeartbeatRequest {
            group_id: "cg".into(),
            member_id: member.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: 30_000,
            subscribed_topic_names: (epoch == 0).then(|| vec!["t".to_string()]),
            topic_partitions: owned.map(|ps| {
                vec![TopicPartitions {
                    topic_id: TOPIC_ID,
                    partitions: ps.to_vec(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        };
        let now = h.now;
        match h
            .c
            .consumer_heartbeat(now, to, &request, &topics, String::new())
        {
            Some(r) => r,
            None => {
                let answers = h.commit_all();
                let Some((_, Response::ConsumerGroupHeartbeat(r))) = answers.into_iter().last()
                else {
                    panic!("a held heartbeat is answered once its epoch is written")
                };
                r
            }
        }
    }

    fn partitions(r: &ConsumerGroupHeartbeatResponse) -> Option<Vec<i32>> {
        r.assignment.as_ref().map(|a| {
            (a.topic_partitions.iter())
                .flat_map(|t| t.partitions.clone())
                .collect()
        })
    }

    #[test]
    fn members_are_assigned_and_partitions_move_only_once_released() {
        let mut h = Harness::new();
        let a = heartbeat(&mut h, "a", 0, None);
        assert_eq!((a.error_code, a.member_epoch), (codes::NONE, 1));
        assert_eq!(partitions(&a), Some(vec![0, 1, 2, 3]));
        // b joins: the group moves to epoch 2; b gets nothing a still holds.
        let b = heartbeat(&mut h, "b", 0, None);
        assert_eq!(b.member_epoch, 2);
        assert_eq!(partitions(&b), Some(vec![]));
        // a is asked to give up two partitions, at its epoch.
        let a = heartbeat(&mut h, "a", 1, Some(&[0, 1, 2, 3]));
        assert_eq!(a.member_epoch, 1);
        let kept = partitions(&a).unwrap();
        assert_eq!(kept.len(), 2);
        // Until a says it let go, b still gets nothing.
        let b = heartbeat(&mut h, "b", 2, Some(&[]));
        assert_eq!(partitions(&b), None);
        let a = heartbeat(&mut h, "a", 1, Some(&kept));
        assert_eq!(a.member_epoch, 2);
        let b = heartbeat(&mut h, "b", 2, Some(&[]));
        let got = partitions(&b).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|p| !kept.contains(p)));
        // Commits: the member's epoch, no other.
        let commit = |h: &mut Harness, epoch: i32| {
            let to = h.to();
            let request = OffsetCommitRequest {
                group_id: "cg".into(),
                generation_id_or_member_epoch: epoch,
                member_id: "b".into(),
                topics: vec![OffsetCommitRequestTopic {
                    name: "t".into(),
                    partitions: vec![OffsetCommitRequestPartition {
                        partition_index: got[0],
                        committed_offset: 5,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            h.c.commit(h.now, to, &request, |_, _| true)
        };
        let stale = commit(&mut h, 1).expect("refused at once");
        assert_eq!(
            stale.topics[0].partitions[0].error_code,
            codes::STALE_MEMBER_EPOCH
        );
        assert!(commit(&mut h, 2).is_none(), "taken, answered once written");
        // a leaves: b is given everything.
        let left = heartbeat(&mut h, "a", -1, None);
        assert_eq!(left.member_epoch, -1);
        let b = heartbeat(&mut h, "b", 2, Some(&got));
        assert_eq!(partitions(&b).map(|p| p.len()), Some(4));
        assert_eq!(b.member_epoch, 3);
        // A member the coordinator does not know joins again.
        let lost = heartbeat(&mut h, "zombie", 3, Some(&[]));
        assert_eq!(lost.error_code, codes::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn a_new_coordinator_carries_on_from_the_written_epoch() {
        let mut h = Harness::new();
        heartbeat(&mut h, "a", 0, None);
        heartbeat(&mut h, "b", 0, None);
        let mut next = Coordinator::new(0, h.c.config);
        for (key, value) in h.log.clone() {
            next.replay(h.now, Some(key), value, false);
        }
        next.loaded(h.now);
        h.c = next;
        let a = heartbeat(&mut h, "a", 1, Some(&[0, 1, 2, 3]));
        assert_eq!(a.error_code, codes::UNKNOWN_MEMBER_ID, "members join again");
        let a = heartbeat(&mut h, "a", 0, None);
        assert_eq!(a.member_epoch, 3, "epochs go on past the written one");
    }
}

#[test]
fn offsets_of_topics_nobody_subscribes_to_can_be_deleted() {
    use crate::protocol::messages::offset_delete_request::*;
    let mut h = Harness::new();
    // A simple group (assign() and commit): generation -1, no members.
    let to = h.to();
    let request = OffsetCommitRequest {
        group_id: "g".into(),
        generation_id_or_member_epoch: -1,
        topics: vec![OffsetCommitRequestTopic {
            name: "t".into(),
            partitions: vec![OffsetCommitRequestPartition {
                partition_index: 0,
                committed_offset: 9,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(h.c.commit(h.now, to, &request, |_, _| true).is_none());
    h.commit_all();
    assert_eq!(h.committed_offset(), Some(9));
    let to = h.to();
    let delete = OffsetDeleteRequest {
        group_id: "g".into(),
        topics: vec![OffsetDeleteRequestTopic {
            name: "t".into(),
            partitions: vec![OffsetDeleteRequestPartition { partition_index: 0 }],
        }],
    };
    assert!(
        h.c.delete_offsets(to, &delete).is_none(),
        "answered once written"
    );
    let answers = h.commit_all();
    let Response::OffsetDelete(r) = &answers[0].1 else {
        panic!()
    };
    assert_eq!(r.topics[0].partitions[0].error_code, codes::NONE);
    assert_eq!(h.committed_offset(), None);
    let unknown = OffsetDeleteRequest {
        group_id: "nobody".into(),
        ..Default::default()
    };
    let to = h.to();
    let r = h.c.delete_offsets(to, &unknown).unwrap();
    assert_eq!(r.error_code, codes::GROUP_ID_NOT_FOUND);
}

#[test]
fn a_member_joining_again_hears_of_its_generation_only_once_it_is_written() {
    let mut h = Harness::new();
    let (_, a) = h.join("", &["range"]);
    let a = a.unwrap().member_id;
    let (_, b) = h.join("", &["range"]);
    let b = b.unwrap().member_id;
    h.join(&a, &["range"]);
    h.join(&b, &["range"]);
    // Generation 1 is written, not committed; b's answer was lost and b asks again.
    let (_, again) = h.join(&b, &["range"]);
    assert!(
        again.is_none(),
        "no generation named before its record commits"
    );
    let answers = h.commit_all();
    assert_eq!(answers.len(), 3);
}
