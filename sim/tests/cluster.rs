//! Three real nodes, each on its own simulated disk, wired peer to peer: every partition a
//! Raft group over all three (a static cluster, `keel_sim::cluster`): elections, a leader's
//! crash, a cut-off leader whose uncommitted tail is repaired, and random schedules.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use keel_core::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use keel_core::protocol::messages::metadata_request::MetadataRequestTopic;
use keel_core::protocol::messages::*;
use keel_core::protocol::{codes, Request, Response};
use keel_core::record::{self, BatchOptions, NewRecord, RecordBatch};
use keel_sim::cluster::Cluster;
use keel_sim::produce_request;

const NODES: [i32; 3] = [1, 2, 3];
const SEGMENT: &str = "t-0/00000000000000000000.log";

fn cluster() -> Cluster {
    Cluster::new(3, 42)
}

/// What the tests ask of the cluster, as a client would.
trait Client {
    fn create_topic_everywhere(&mut self);
    fn leader_seen_by(&mut self, id: i32) -> (i32, i32);
    fn settled_leader(&mut self) -> i32;
    fn produce(&mut self, id: i32, value: &str) -> (i16, i64);
    fn fetch(&mut self, id: i32) -> Result<(Vec<String>, i64), i16>;
    fn segments(&mut self) -> BTreeMap<i32, Vec<u8>>;
    fn high_watermarks(&self) -> BTreeMap<i32, Option<i64>>;
}

impl Client for Cluster {
    fn create_topic_everywhere(&mut self) {
        // The controller (the metadata quorum's leader) creates it; every node then holds
        // a replica of its one partition.
        let create = Request::CreateTopics(CreateTopicsRequest {
            topics: vec![create_topics_request::CreatableTopic {
                name: "t".into(),
                num_partitions: 1,
                replication_factor: 3,
                ..Default::default()
            }],
            timeout_ms: 5_000,
            ..Default::default()
        });
        let mut created = false;
        for _ in 0..100 {
            self.run(100);
            for id in NODES {
                if let Some(Response::CreateTopics(r)) = self.call(id, 5, create.clone(), 1_000) {
                    let code = r.topics[0].error_code;
                    created |= code == codes::NONE || code == codes::TOPIC_ALREADY_EXISTS;
                }
            }
            if created {
                break;
            }
        }
        assert!(created, "a controller creates the topic");
        let request = Request::Metadata(MetadataRequest {
            topics: Some(vec![MetadataRequestTopic {
                name: Some("t".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        for id in NODES {
            let known = (0..100).any(|_| {
                self.run(100);
                matches!(self.call(id, 12, request.clone(), 1_000),
                    Some(Response::Metadata(m)) if m.topics[0].error_code == codes::NONE)
            });
            assert!(known, "n{id} knows the topic");
        }
    }

    /// The leader of t-0 as node `id` reports it, and its epoch.
    fn leader_seen_by(&mut self, id: i32) -> (i32, i32) {
        let request = Request::Metadata(MetadataRequest {
            topics: Some(vec![MetadataRequestTopic {
                name: Some("t".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let Some(Response::Metadata(m)) = self.call(id, 12, request, 1_000) else {
            // A node that has not joined the cluster since it started (no quorum to register
            // with) reads no request yet: a client asks another.
            return (-1, -1);
        };
        let Some(p) = m.topics[0].partitions.first() else {
            // The node has not learned of the topic yet (its image is behind after a
            // restart): a client asks again.
            return (-1, -1);
        };
        let mut replicas = p.replica_nodes.clone();
        replicas.sort_unstable();
        assert_eq!(replicas, NODES.to_vec());
        (p.leader_id, p.leader_epoch)
    }

    /// Runs until every live node names the same leader of t-0; returns it.
    fn settled_leader(&mut self) -> i32 {
        for _ in 0..100 {
            self.run(100);
            let ids: Vec<i32> = self.nodes.keys().copied().collect();
            let seen: BTreeSet<(i32, i32)> =
                ids.iter().map(|id| self.leader_seen_by(*id)).collect();
            if let [(leader, _)] = seen.iter().copied().collect::<Vec<_>>()[..] {
                if self.nodes.contains_key(&leader) && !self.cut.contains(&leader) {
                    return leader;
                }
            }
        }
        panic!("no leader settled")
    }

    fn produce(&mut self, id: i32, value: &str) -> (i16, i64) {
        let records = [NewRecord {
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            ..NewRecord::default()
        }];
        let batch = record::build(&records, &BatchOptions::default()).unwrap();
        match self.call(id, 9, produce_request("t", 0, batch, -1), 5_000) {
            Some(Response::Produce(mut r)) => {
                let p = r.responses.remove(0).partition_responses.remove(0);
                (p.error_code, p.base_offset)
            }
            Some(other) => panic!("{other:?}"),
            None => (-1, -1),
        }
    }

    /// Values of t-0 from node `id` (an error code if it refuses), and the high watermark.
    fn fetch(&mut self, id: i32) -> Result<(Vec<String>, i64), i16> {
        let request = Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                topic: "t".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    fetch_offset: 0,
                    partition_max_bytes: 1 << 20,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        let Some(Response::Fetch(mut f)) = self.call(id, 11, request, 1_000) else {
            panic!("n{id} answers Fetch")
        };
        let p = f.responses.remove(0).partitions.remove(0);
        if p.error_code != codes::NONE {
            return Err(p.error_code);
        }
        let mut values = Vec::new();
        for batch in record::split_batches(p.records.unwrap_or_default()) {
            let batch = RecordBatch::parse(batch.unwrap()).unwrap();
            for r in batch.records(1 << 20).unwrap() {
                values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
        Ok((values, p.high_watermark))
    }

    /// Every live node's t-0 segment, byte for byte.
    fn segments(&mut self) -> BTreeMap<i32, Vec<u8>> {
        (self.nodes.iter_mut())
            .map(|(id, n)| {
                (
                    *id,
                    n.disk_mut().contents(SEGMENT).unwrap_or_default().to_vec(),
                )
            })
            .collect()
    }

    fn high_watermarks(&self) -> BTreeMap<i32, Option<i64>> {
        (self.nodes.iter())
            .map(|(id, n)| {
                let offsets = n.partition_offsets();
                let t = offsets.iter().find(|p| p.topic == "t");
                (*id, t.and_then(|p| p.high_watermark))
            })
            .collect()
    }
}

/// One leader is elected; an acks=all write is answered once a majority has it; followers
/// refuse clients; every replica ends byte for byte equal, with the same high watermark.
#[test]
fn three_nodes_elect_a_leader_and_replicate_byte_for_byte() {
    let mut c = cluster();
    c.create_topic_everywhere();
    let leader = c.settled_leader();
    for (i, value) in ["a", "b", "c"].into_iter().enumerate() {
        assert_eq!(c.produce(leader, value), (codes::NONE, i as i64));
    }
    assert_eq!(c.fetch(leader).unwrap().0, vec!["a", "b", "c"]);
    let follower = NODES.into_iter().find(|n| *n != leader).unwrap();
    assert_eq!(c.fetch(follower), Err(codes::NOT_LEADER_OR_FOLLOWER));
    assert_eq!(c.produce(follower, "x").0, codes::NOT_LEADER_OR_FOLLOWER);
    c.run(2_000);
    let segments = c.segments();
    assert_eq!(segments.len(), 3);
    assert!(segments[&leader].len() > 3 * 61, "three batches");
    assert!(
        segments.values().all(|s| *s == segments[&leader]),
        "replicas agree"
    );
    assert!(
        c.high_watermarks().values().all(|hw| *hw == Some(3)),
        "{:?}",
        c.high_watermarks()
    );
}

/// The leader's machine goes down: the others elect a new leader (a later epoch) that holds
/// every acknowledged write and takes new ones; the old leader comes back as a follower and
/// catches up.
#[test]
fn acknowledged_writes_survive_the_leader_s_crash() {
    let mut c = cluster();
    c.create_topic_everywhere();
    let first = c.settled_leader();
    let (_, first_epoch) = c.leader_seen_by(first);
    for value in ["a", "b"] {
        assert_eq!(c.produce(first, value).0, codes::NONE);
    }
    c.crash(first);
    let second = c.settled_leader();
    assert_ne!(second, first);
    let (_, second_epoch) = c.leader_seen_by(second);
    assert!(second_epoch > first_epoch);
    assert_eq!(c.fetch(second).unwrap().0, vec!["a", "b"]);
    assert_eq!(c.produce(second, "c"), (codes::NONE, 2));
    c.restart(first);
    c.run(3_000);
    assert_eq!(
        c.settled_leader(),
        second,
        "a returning node does not disrupt the leader"
    );
    let segments = c.segments();
    assert!(
        segments.values().all(|s| *s == segments[&second]),
        "the old leader caught up"
    );
}

/// A leader cut off from the others appends a write it can never commit; the others elect a
/// new leader and go on. The cut-off write is answered NOT_LEADER_OR_FOLLOWER (never success,
/// though a different record commits at its offset), and once the cut heals the old leader's
/// divergent tail is truncated: every replica ends equal, with only committed writes.
#[test]
fn a_cut_off_leader_s_uncommitted_tail_is_refused_and_repaired() {
    let mut c = cluster();
    c.create_topic_everywhere();
    let old = c.settled_leader();
    assert_eq!(c.produce(old, "a"), (codes::NONE, 0));
    c.cut.insert(old);
    // The write waits for a majority it cannot reach.
    let lost = record::build(
        &[NewRecord {
            value: Some(Bytes::from_static(b"lost")),
            ..NewRecord::default()
        }],
        &BatchOptions::default(),
    )
    .unwrap();
    let request = produce_request("t", 0, lost, -1);
    let correlation_id = c.send(old, 9, &request);
    c.run(500);
    assert!(!c.has_answers(old), "not committed");
    // The others elect a new leader among themselves.
    let mut new = None;
    for _ in 0..50 {
        c.run(200);
        let others: Vec<i32> = NODES.into_iter().filter(|n| *n != old).collect();
        let seen: BTreeSet<i32> = others.iter().map(|id| c.leader_seen_by(*id).0).collect();
        if let [leader] = seen.into_iter().collect::<Vec<_>>()[..] {
            if leader != old && leader > 0 {
                new = Some(leader);
                break;
            }
        }
    }
    let new = new.expect("the majority elects a new leader");
    assert_eq!(c.produce(new, "b"), (codes::NONE, 1));
    c.cut.clear();
    c.run(5_000);
    // The cut-off write is refused: the offset it took now holds "b".
    let answer = c.take_answer(old, correlation_id, &request, 9);
    let Some(Response::Produce(mut r)) = answer else {
        panic!("answered")
    };
    let p = r.responses.remove(0).partition_responses.remove(0);
    assert_eq!(p.error_code, codes::NOT_LEADER_OR_FOLLOWER);
    assert_eq!(c.settled_leader(), new);
    assert_eq!(c.fetch(new).unwrap().0, vec!["a", "b"]);
    let segments = c.segments();
    assert!(
        segments.values().all(|s| *s == segments[&new]),
        "the old tail was cut"
    );
}

/// A stored batch: base offset, last offset, bytes.
type StoredBatch = (i64, i64, Vec<u8>);

/// The batches of a segment's bytes.
fn batches_of(segment: &[u8]) -> Vec<StoredBatch> {
    let mut batches = Vec::new();
    for batch in record::split_batches(Bytes::copy_from_slice(segment)) {
        let Ok(batch) = batch else { break };
        let Ok(parsed) = RecordBatch::parse(batch.clone()) else {
            break;
        };
        let h = parsed.header();
        batches.push((h.base_offset, h.last_offset(), batch.to_vec()));
    }
    batches
}

/// Random schedules of writes, crashes of machines, restarts, and nodes cut off and healed:
/// replicas agree byte for byte below their high watermarks, no epoch has two leaders, every
/// acknowledged write is where its answer said once everything heals, and every replica ends
/// equal to the leader's, all of it committed.
#[test]
fn random_schedules_keep_replication_s_promises() {
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    let (mut acked_total, mut epochs_total) = (0, 0);
    for seed in 0..100u64 {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut c = cluster();
        c.create_topic_everywhere();
        let mut acked: BTreeMap<i64, String> = BTreeMap::new();
        let mut leaders: BTreeMap<i32, i32> = BTreeMap::new();
        let mut written = 0;
        for _ in 0..100 {
            match rng.random_range(0..10) {
                0..=4 => {
                    // A client asks a live node who leads and writes there.
                    let ids: Vec<i32> = c.nodes.keys().copied().collect();
                    let asked = ids[rng.random_range(0..ids.len())];
                    let (leader, _) = c.leader_seen_by(asked);
                    if c.nodes.contains_key(&leader) {
                        written += 1;
                        let value = format!("v{written}");
                        let (code, offset) = c.produce(leader, &value);
                        if code == codes::NONE {
                            assert!(
                                acked.insert(offset, value).is_none(),
                                "seed {seed}: offset {offset} acknowledged twice"
                            );
                        }
                    }
                }
                5 if c.down.is_empty() => {
                    let id = NODES[rng.random_range(0..3)];
                    c.crash(id);
                }
                5 | 6 => {
                    if let Some(&id) = c.down.keys().next() {
                        c.restart(id);
                    }
                }
                7 if c.cut.is_empty() => {
                    c.cut.insert(NODES[rng.random_range(0..3)]);
                }
                7 | 8 => c.cut.clear(),
                _ => c.run(rng.random_range(10..3_000)),
            }
            // One leader per epoch, as every live node reports it.
            let ids: Vec<i32> = c.nodes.keys().copied().collect();
            for id in ids {
                let (leader, epoch) = c.leader_seen_by(id);
                if leader == id {
                    let other = leaders.insert(epoch, leader);
                    assert!(
                        other.is_none_or(|o| o == leader),
                        "seed {seed}: two leaders in epoch {epoch}"
                    );
                }
            }
            // Replicas agree below their high watermarks.
            let hws = c.high_watermarks();
            let segments = c.segments();
            let views: Vec<(i64, Vec<StoredBatch>)> = (segments.iter())
                .map(|(id, s)| {
                    let hw = hws[id].unwrap_or(0);
                    (hw, batches_of(s).into_iter().filter(|b| b.1 < hw).collect())
                })
                .collect();
            for (hw_a, a) in &views {
                for (hw_b, b) in &views {
                    let below = (*hw_a).min(*hw_b);
                    let a: Vec<_> = a.iter().filter(|x| x.1 < below).collect();
                    let b: Vec<_> = b.iter().filter(|x| x.1 < below).collect();
                    assert_eq!(a, b, "seed {seed}: replicas differ below {below}");
                }
            }
        }
        // Heal everything and let it settle.
        c.cut.clear();
        while let Some(&id) = c.down.keys().next() {
            c.restart(id);
        }
        c.settled_leader();
        c.run(3_000);
        let leader = c.settled_leader();
        let (values, hw) = c.fetch(leader).expect("the leader serves");
        for (offset, value) in &acked {
            assert_eq!(
                values.get(*offset as usize),
                Some(value),
                "seed {seed}: acknowledged write lost"
            );
        }
        let segments = c.segments();
        assert!(
            segments.values().all(|s| *s == segments[&leader]),
            "seed {seed}: replicas differ after healing"
        );
        assert_eq!(
            hw as usize,
            values.len(),
            "seed {seed}: all of it committed"
        );
        acked_total += acked.len();
        epochs_total += leaders.len();
    }
    println!("{acked_total} writes acknowledged, {epochs_total} epochs led");
    // The schedules must exercise something: writes, and leaders changing.
    assert!(
        acked_total > 100 * 10 && epochs_total > 100 * 2,
        "{acked_total} {epochs_total}"
    );
}

/// The ISR that Metadata reports is Kafka's: the leader and every follower that reached the
/// leader's log end within `replica.lag.time.max.ms`. A follower that stops fetching stays in
/// it that long, then leaves; back and caught up, it returns.
#[test]
fn a_follower_that_stops_fetching_leaves_the_isr_and_returns() {
    use keel_core::node::replication::REPLICA_LAG_TIME_MAX_MS;
    let mut c = cluster();
    c.create_topic_everywhere();
    let leader = c.settled_leader();
    let isr = |c: &mut Cluster| {
        let request = Request::Metadata(MetadataRequest {
            topics: Some(vec![MetadataRequestTopic {
                name: Some("t".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let Some(Response::Metadata(m)) = c.call(leader, 12, request, 1_000) else {
            panic!("the leader answers Metadata")
        };
        m.topics[0].partitions[0].isr_nodes.clone()
    };
    assert_eq!(c.produce(leader, "a").0, codes::NONE);
    c.run(1_000);
    assert_eq!(isr(&mut c), NODES.to_vec());
    let gone = NODES.into_iter().find(|n| *n != leader).unwrap();
    c.crash(gone);
    assert_eq!(c.produce(leader, "b").0, codes::NONE, "two of three commit");
    c.run(REPLICA_LAG_TIME_MAX_MS / 2);
    assert_eq!(isr(&mut c), NODES.to_vec(), "not yet lagging long enough");
    c.run(REPLICA_LAG_TIME_MAX_MS);
    let without: Vec<i32> = NODES.into_iter().filter(|n| *n != gone).collect();
    assert_eq!(isr(&mut c), without);
    c.restart(gone);
    c.run(3_000);
    assert_eq!(isr(&mut c), NODES.to_vec(), "caught up again");
}

/// On five nodes with two replicas per partition, every broker names every partition's
/// leader within a bounded time (leaders report themselves to the metadata quorum, whose
/// image every node reads), and the name is the node that leads; the replicas are spread
/// evenly.
#[test]
fn every_broker_names_the_leaders_of_partitions_it_does_not_hold() {
    let mut c = Cluster::new(5, 7);
    let create = Request::CreateTopics(CreateTopicsRequest {
        topics: vec![create_topics_request::CreatableTopic {
            name: "spread".into(),
            num_partitions: 10,
            replication_factor: 2,
            ..Default::default()
        }],
        timeout_ms: 5_000,
        ..Default::default()
    });
    let ids = c.ids().to_vec();
    let created = (0..100).any(|_| {
        c.run(100);
        ids.iter().any(|id| {
            matches!(c.call(*id, 5, create.clone(), 1_000),
                Some(Response::CreateTopics(r)) if r.topics[0].error_code == codes::NONE)
        })
    });
    assert!(created, "the controller creates the topic");
    let request = Request::Metadata(MetadataRequest {
        topics: Some(vec![MetadataRequestTopic {
            name: Some("spread".into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let mut settled = false;
    for _ in 0..100 {
        c.run(100);
        let mut all = true;
        for id in &ids {
            let Some(Response::Metadata(m)) = c.call(*id, 12, request.clone(), 1_000) else {
                panic!("n{id} answers Metadata")
            };
            let partitions = &m.topics[0].partitions;
            all &= partitions.len() == 10
                && partitions.iter().all(|p| {
                    p.replica_nodes.len() == 2
                        && p.replica_nodes.contains(&p.leader_id)
                        && c.nodes[&p.leader_id].leaderships("spread").iter().any(
                            |(index, epoch)| {
                                *index == p.partition_index && *epoch == p.leader_epoch
                            },
                        )
                });
        }
        if all {
            settled = true;
            break;
        }
    }
    assert!(settled, "every node names every partition's leader");
    // Every node registered itself: clients are told the hosts the nodes advertise.
    let Some(Response::Metadata(m)) = c.call(3, 12, request.clone(), 1_000) else {
        panic!()
    };
    let hosts: Vec<(i32, String)> = (m.brokers.iter())
        .map(|b| (b.node_id, b.host.clone()))
        .collect();
    let advertised: Vec<(i32, String)> = ids.iter().map(|id| (*id, format!("node{id}"))).collect();
    assert_eq!(hosts, advertised);
    let Some(Response::Metadata(m)) = c.call(1, 12, request, 1_000) else {
        panic!()
    };
    let mut held: BTreeMap<i32, usize> = BTreeMap::new();
    for p in &m.topics[0].partitions {
        for r in &p.replica_nodes {
            *held.entry(*r).or_default() += 1;
        }
    }
    assert!(
        held.values().all(|n| *n == 4),
        "two replicas each of ten partitions over five nodes: {held:?}"
    );
}

/// A manual replica assignment in CreateTopics and CreatePartitions is honoured (the first
/// broker of each list is the preferred leader), and one naming a broker outside the cluster,
/// or the same broker twice, is refused.
#[test]
fn manual_replica_assignments_are_honoured() {
    use keel_core::protocol::messages::create_partitions_request::{
        CreatePartitionsAssignment, CreatePartitionsTopic,
    };
    use keel_core::protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopic,
    };
    let mut c = Cluster::new(5, 11);
    let ids = c.ids().to_vec();
    let create = |name: &str, assignments: Vec<Vec<i32>>| {
        Request::CreateTopics(CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: name.into(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: (assignments.into_iter().enumerate())
                    .map(|(i, broker_ids)| CreatableReplicaAssignment {
                        partition_index: i as i32,
                        broker_ids,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            timeout_ms: 5_000,
            ..Default::default()
        })
    };
    // Asks every node until the controller answers; returns its error code.
    let ask = |c: &mut Cluster, request: Request, version: i16| -> i16 {
        for _ in 0..100 {
            c.run(100);
            for id in &ids {
                let code = match c.call(*id, version, request.clone(), 2_000) {
                    Some(Response::CreateTopics(r)) => r.topics[0].error_code,
                    Some(Response::CreatePartitions(r)) => r.results[0].error_code,
                    other => panic!("{other:?}"),
                };
                if code != codes::NOT_CONTROLLER {
                    return code;
                }
            }
        }
        panic!("no controller answered")
    };
    let placed = vec![vec![4, 5], vec![5, 1], vec![2, 3]];
    assert_eq!(
        ask(&mut c, create("manual", placed.clone()), 5),
        codes::NONE
    );
    assert_eq!(
        ask(&mut c, create("outside", vec![vec![1, 9]]), 5),
        codes::INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(
        ask(&mut c, create("twice", vec![vec![2, 2]]), 5),
        codes::INVALID_REPLICA_ASSIGNMENT
    );
    let grow = Request::CreatePartitions(CreatePartitionsRequest {
        topics: vec![CreatePartitionsTopic {
            name: "manual".into(),
            count: 4,
            assignments: Some(vec![CreatePartitionsAssignment {
                broker_ids: vec![3, 4],
                ..Default::default()
            }]),
            ..Default::default()
        }],
        timeout_ms: 5_000,
        ..Default::default()
    });
    assert_eq!(ask(&mut c, grow, 3), codes::NONE);
    let request = Request::Metadata(MetadataRequest {
        topics: Some(vec![MetadataRequestTopic {
            name: Some("manual".into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let mut expected = placed;
    expected.push(vec![3, 4]);
    for id in c.ids().to_vec() {
        let seen = (0..50).any(|_| {
            c.run(100);
            let Some(Response::Metadata(m)) = c.call(id, 12, request.clone(), 1_000) else {
                return false;
            };
            let replicas: Vec<Vec<i32>> = (m.topics[0].partitions.iter())
                .map(|p| p.replica_nodes.clone())
                .collect();
            replicas == expected
        });
        assert!(seen, "n{id} reports the assignment");
    }
    // Each node holds exactly the partitions assigned to it.
    for (id, node) in &c.nodes {
        let mut held: Vec<i32> = (node.partition_offsets().into_iter())
            .filter(|p| p.topic == "manual")
            .map(|p| p.partition)
            .collect();
        held.sort_unstable();
        let wanted: Vec<i32> = (expected.iter().enumerate())
            .filter(|(_, r)| r.contains(id))
            .map(|(i, _)| i as i32)
            .collect();
        assert_eq!(held, wanted, "n{id}");
    }
}

/// DescribeQuorum for t-0 asked of node `id`: its one partition's answer.
fn describe_quorum(c: &mut Cluster, id: i32) -> describe_quorum_response::PartitionData {
    let request = Request::DescribeQuorum(DescribeQuorumRequest {
        topics: vec![describe_quorum_request::TopicData {
            topic_name: "t".into(),
            partitions: vec![describe_quorum_request::PartitionData {
                partition_index: 0,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    });
    let Some(Response::DescribeQuorum(mut r)) = c.call(id, 2, request, 1_000) else {
        panic!("n{id} answers DescribeQuorum")
    };
    r.topics.remove(0).partitions.remove(0)
}

/// t-0 as node `id` reports it in its metrics.
fn t0_metrics(c: &Cluster, id: i32) -> keel_core::node::metrics::PartitionMetrics {
    let metrics = c.nodes[&id].metrics(c.now);
    (metrics.partitions.into_iter())
        .find(|p| p.topic == "t")
        .expect("t-0 is held")
}

/// A leader describes its quorum (DescribeQuorum) and counts its followers' lag (metrics):
/// none while they fetch, as many records as were written since for one that crashed; a
/// follower answers NOT_LEADER_OR_FOLLOWER and names the leader.
#[test]
fn a_leader_describes_its_followers_and_their_lag() {
    let mut c = cluster();
    c.create_topic_everywhere();
    let leader = c.settled_leader();
    for value in ["a", "b", "c"] {
        assert_eq!(c.produce(leader, value).0, codes::NONE);
    }
    c.run(500);
    let end = t0_metrics(&c, leader).log_end_offset.expect("online");
    let q = describe_quorum(&mut c, leader);
    assert_eq!((q.error_code, q.leader_id), (codes::NONE, leader));
    assert_eq!(q.high_watermark, end, "every voter holds the log");
    let mut voters: Vec<i32> = q.current_voters.iter().map(|v| v.replica_id).collect();
    voters.sort_unstable();
    assert_eq!(voters, NODES);
    for v in &q.current_voters {
        assert_eq!(v.log_end_offset, end, "{v:?}");
        assert!(
            v.last_fetch_timestamp > 0 && v.last_caught_up_timestamp > 0,
            "{v:?}"
        );
    }
    let metrics = t0_metrics(&c, leader);
    assert!(metrics.is_leader);
    assert_eq!(metrics.in_sync_replicas, Some(3));
    assert_eq!(metrics.followers.len(), 2);
    assert!(metrics.followers.iter().all(|f| f.lag_records == Some(0)));
    assert!(metrics.counters.produce_bytes > 0);

    let follower = NODES.into_iter().find(|id| *id != leader).unwrap();
    let q = describe_quorum(&mut c, follower);
    assert_eq!(
        (q.error_code, q.leader_id),
        (codes::NOT_LEADER_OR_FOLLOWER, leader)
    );
    let metrics = t0_metrics(&c, follower);
    assert!(!metrics.is_leader && metrics.followers.is_empty());
    assert_eq!(
        metrics.in_sync_replicas, None,
        "only a leader counts its ISR"
    );

    c.crash(follower);
    for value in ["d", "e"] {
        assert_eq!(c.produce(leader, value).0, codes::NONE);
    }
    c.run(500);
    let metrics = t0_metrics(&c, leader);
    let lag = |id: i32| {
        (metrics.followers.iter())
            .find(|f| f.node_id == id)
            .and_then(|f| f.lag_records)
    };
    assert_eq!(
        lag(follower),
        Some(2),
        "two records written since it crashed"
    );
    let other = NODES
        .into_iter()
        .find(|id| *id != leader && *id != follower);
    assert_eq!(lag(other.unwrap()), Some(0));
}

/// Sends `request` to node `id` until it is answered with something `done` accepts (a
/// retriable refusal is asked again after 50 ms); returns the answer and the simulated
/// milliseconds the accepted call took.
fn call_until(
    c: &mut Cluster,
    id: i32,
    version: i16,
    request: &Request,
    done: impl Fn(&Response) -> bool,
) -> (Response, u64) {
    for _ in 0..200 {
        let started = c.now;
        if let Some(response) = c.call(id, version, request.clone(), 30_000) {
            if done(&response) {
                return (response, (c.now.0 - started.0) / 1_000_000);
            }
        }
        c.run(50);
    }
    panic!("n{id} never accepted {request:?}")
}

/// A consume-transform-produce transaction on a quiet three-node cluster takes a few round
/// trips, never a timer's wait: each step (offsets added and committed in the transaction,
/// its partition added, its batch written and verified, the commit) is answered within
/// 500 ms of simulated time. A write that waited for the next event in a quiet cluster (the
/// follower's 10 s fetch refresh) made one commit in six take 10 s on real sockets.
#[test]
fn transactions_on_a_quiet_cluster_take_round_trips_not_timeouts() {
    use keel_core::protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use keel_core::protocol::messages::txn_offset_commit_request::*;
    let mut c = cluster();
    c.run(3_000);
    let create = Request::CreateTopics(CreateTopicsRequest {
        topics: vec![create_topics_request::CreatableTopic {
            name: "t".into(),
            num_partitions: 3,
            replication_factor: 3,
            ..Default::default()
        }],
        timeout_ms: 5_000,
        ..Default::default()
    });
    call_until(&mut c, 1, 5, &create, |r| {
        matches!(r, Response::CreateTopics(r) if r.topics[0].error_code == codes::NONE
            || r.topics[0].error_code == codes::TOPIC_ALREADY_EXISTS)
    });
    let find = |key: &str, key_type: i8| {
        Request::FindCoordinator(FindCoordinatorRequest {
            key: key.into(),
            key_type,
            coordinator_keys: vec![key.into()],
            ..Default::default()
        })
    };
    let found = |r: &Response| matches!(r, Response::FindCoordinator(r) if r.coordinators[0].error_code == codes::NONE);
    let node_of = |r: Response| match r {
        Response::FindCoordinator(r) => r.coordinators[0].node_id,
        _ => unreachable!(),
    };
    let (r, _) = call_until(&mut c, 1, 4, &find("tid", 1), found);
    let txn_node = node_of(r);
    let (r, _) = call_until(&mut c, 1, 4, &find("g", 0), found);
    let group_node = node_of(r);
    let init = Request::InitProducerId(InitProducerIdRequest {
        transactional_id: Some("tid".into()),
        transaction_timeout_ms: 60_000,
        producer_id: -1,
        producer_epoch: -1,
        ..Default::default()
    });
    let (r, _) = call_until(
        &mut c,
        txn_node,
        4,
        &init,
        |r| matches!(r, Response::InitProducerId(r) if r.error_code == codes::NONE),
    );
    let Response::InitProducerId(r) = r else {
        unreachable!()
    };
    let (producer_id, producer_epoch) = (r.producer_id, r.producer_epoch);
    let metadata = Request::Metadata(MetadataRequest {
        topics: Some(vec![MetadataRequestTopic {
            name: Some("t".into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let (r, _) = call_until(&mut c, 1, 12, &metadata, |r| {
        matches!(r, Response::Metadata(m) if m.topics[0].partitions.len() == 3
            && m.topics[0].partitions.iter().all(|p| p.leader_id > 0))
    });
    let Response::Metadata(m) = r else {
        unreachable!()
    };
    let leaders: BTreeMap<i32, i32> = (m.topics[0].partitions.iter())
        .map(|p| (p.partition_index, p.leader_id))
        .collect();
    let mut sequences = [0i32; 3];
    let mut slowest: Vec<(u64, usize, &str)> = Vec::new();
    for n in 0..30usize {
        let partition = (n % 3) as i32;
        let add_offsets = Request::AddOffsetsToTxn(AddOffsetsToTxnRequest {
            transactional_id: "tid".into(),
            producer_id,
            producer_epoch,
            group_id: "g".into(),
            ..Default::default()
        });
        let (_, ms) = call_until(
            &mut c,
            txn_node,
            3,
            &add_offsets,
            |r| matches!(r, Response::AddOffsetsToTxn(r) if r.error_code == codes::NONE),
        );
        slowest.push((ms, n, "AddOffsetsToTxn"));
        let commit_offsets = Request::TxnOffsetCommit(TxnOffsetCommitRequest {
            transactional_id: "tid".into(),
            group_id: "g".into(),
            producer_id,
            producer_epoch,
            generation_id: -1,
            topics: vec![TxnOffsetCommitRequestTopic {
                name: "t".into(),
                partitions: vec![TxnOffsetCommitRequestPartition {
                    partition_index: partition,
                    committed_offset: n as i64 + 1,
                    committed_leader_epoch: -1,
                    committed_metadata: Some(String::new()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        let (_, ms) = call_until(
            &mut c,
            group_node,
            3,
            &commit_offsets,
            |r| matches!(r, Response::TxnOffsetCommit(r) if r.topics[0].partitions[0].error_code == codes::NONE),
        );
        slowest.push((ms, n, "TxnOffsetCommit"));
        let add_partitions = Request::AddPartitionsToTxn(AddPartitionsToTxnRequest {
            v3_and_below_transactional_id: "tid".into(),
            v3_and_below_producer_id: producer_id,
            v3_and_below_producer_epoch: producer_epoch,
            v3_and_below_topics: vec![AddPartitionsToTxnTopic {
                name: "t".into(),
                partitions: vec![partition],
                ..Default::default()
            }],
            ..Default::default()
        });
        let (_, ms) = call_until(&mut c, txn_node, 3, &add_partitions, |r| {
            matches!(r, Response::AddPartitionsToTxn(r)
                if r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code == codes::NONE)
        });
        slowest.push((ms, n, "AddPartitionsToTxn"));
        let records = [NewRecord {
            value: Some(Bytes::from(format!("v{n}"))),
            ..NewRecord::default()
        }];
        let options = BatchOptions {
            producer_id,
            producer_epoch,
            base_sequence: sequences[partition as usize],
            transactional: true,
            ..BatchOptions::default()
        };
        sequences[partition as usize] += 1;
        let batch = record::build(&records, &options).unwrap();
        let mut produce = produce_request("t", partition, batch, -1);
        if let Request::Produce(p) = &mut produce {
            p.transactional_id = Some("tid".into());
        }
        let (_, ms) = call_until(
            &mut c,
            leaders[&partition],
            9,
            &produce,
            |r| matches!(r, Response::Produce(r) if r.responses[0].partition_responses[0].error_code == codes::NONE),
        );
        slowest.push((ms, n, "Produce"));
        let end = Request::EndTxn(EndTxnRequest {
            transactional_id: "tid".into(),
            producer_id,
            producer_epoch,
            committed: true,
            ..Default::default()
        });
        let (_, ms) = call_until(
            &mut c,
            txn_node,
            3,
            &end,
            |r| matches!(r, Response::EndTxn(r) if r.error_code == codes::NONE),
        );
        slowest.push((ms, n, "EndTxn"));
    }
    slowest.sort_unstable();
    let (ms, n, what) = *slowest.last().expect("calls made");
    println!(
        "slowest calls: {:?}",
        &slowest[slowest.len().saturating_sub(5)..]
    );
    assert!(
        ms < 500,
        "{what} of transaction {n} took {ms} ms of simulated time; slowest: {:?}",
        &slowest[slowest.len().saturating_sub(5)..]
    );
}
