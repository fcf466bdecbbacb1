//! Property and unit tests of the Raft engine, on the test cluster of [`super::testing`]
//! (the transcripts run from `sim/tests/raft.rs`, which may read files).

use proptest::prelude::*;

use super::testing::Cluster;
use super::*;

#[derive(Debug, Clone)]
enum Step {
    Tick(u64),
    Deliver,
    Drop,
    Propose(NodeId),
    Partition(NodeId),
    Heal,
    Crash(NodeId),
    Restart(NodeId),
    /// A copy of the message at this place in the queue is sent again, after the others.
    Duplicate(usize),
    /// The first message in flight is overtaken by all the others.
    Reorder,
    /// With syncs done by hand: the node's votes and log syncs complete.
    Sync(NodeId),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1u64..60).prop_map(Step::Tick),
        8 => Just(Step::Deliver),
        1 => Just(Step::Drop),
        4 => (1..=5).prop_map(Step::Propose),
        1 => (1..=5).prop_map(Step::Partition),
        1 => Just(Step::Heal),
        1 => (1..=5).prop_map(Step::Crash),
        2 => (1..=5).prop_map(Step::Restart),
        2 => any::<usize>().prop_map(Step::Duplicate),
        2 => Just(Step::Reorder),
        6 => (1..=5).prop_map(Step::Sync),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the schedule: one leader per epoch, committed prefixes agree, high
    /// watermarks never go back (checked inside the cluster after every command); and once
    /// everything heals and runs quietly, one leader emerges and every node holds its log.
    #[test]
    fn random_schedules_keep_raft_s_promises(
        nodes in prop_oneof![Just(3usize), Just(5usize)],
        steps in prop::collection::vec(step(), 1..200),
        seed in any::<u64>(),
        manual_sync in any::<bool>(),
        markers in any::<bool>(),
    ) {
        let mut cluster = Cluster::new(nodes, manual_sync, false, seed);
        cluster.markers = markers;
        let n = nodes as NodeId;
        for step in steps {
            match step {
                Step::Tick(ms) => cluster.tick(ms),
                Step::Deliver => cluster.deliver(),
                Step::Drop => cluster.queue.clear(),
                Step::Propose(id) => {
                    let mut out = Vec::new();
                    cluster.append((id - 1) % n + 1, 1, "x", &mut out);
                    cluster.apply((id - 1) % n + 1, out);
                }
                Step::Partition(id) => cluster.run(&format!("partition n{}", (id - 1) % n + 1)),
                Step::Heal => cluster.cut.clear(),
                Step::Crash(id) => cluster.crash((id - 1) % n + 1),
                Step::Restart(id) => {
                    let id = (id - 1) % n + 1;
                    if cluster.hosts[&id].raft.is_none() {
                        cluster.restart(id);
                    }
                }
                Step::Duplicate(at) => {
                    if !cluster.queue.is_empty() {
                        let copy = cluster.queue[at % cluster.queue.len()].clone();
                        cluster.queue.push_back(copy);
                    }
                }
                Step::Reorder => {
                    if let Some(first) = cluster.queue.pop_front() {
                        cluster.queue.push_back(first);
                    }
                }
                Step::Sync(id) => {
                    if manual_sync {
                        cluster.run(&format!("sync n{}", (id - 1) % n + 1));
                    }
                }
            }
            cluster.printed.clear();
        }
        // Heal, restart everyone, and let it run: a leader, and every log equal to its.
        cluster.cut.clear();
        for id in 1..=n {
            if cluster.hosts[&id].raft.is_none() {
                cluster.restart(id);
            }
        }
        for _ in 0..200 {
            cluster.tick(10);
            cluster.deliver();
            for id in 1..=n {
                if manual_sync {
                    cluster.run(&format!("sync n{id}"));
                }
            }
            cluster.printed.clear();
        }
        let leaders: Vec<NodeId> = (cluster.hosts.iter())
            .filter(|(_, h)| h.raft.as_ref().is_some_and(|r| r.role() == Role::Leader))
            .map(|(id, _)| *id)
            .collect();
        prop_assert_eq!(leaders.len(), 1, "one leader after healing");
        let leader_log = cluster.hosts[&leaders[0]].log.clone();
        for (id, host) in &cluster.hosts {
            prop_assert_eq!(&host.log, &leader_log, "n{} holds the leader's log", id);
        }
        // Every voter holds it all, so all of it is committed, marker or not.
        let end = leader_log.last().map_or(0, |e| e.last_offset + 1);
        prop_assert_eq!(cluster.hosts[&leaders[0]].high_watermark, end, "all committed");
    }
}

/// A voter alone campaigns at once, leads once its vote is durable, and commits the log it
/// recovered (entries of earlier epochs) without an entry of its own: it is every voter.
#[test]
fn a_voter_alone_leads_at_once_and_commits_what_it_recovered() {
    let config = RaftConfig {
        id: 1,
        voters: vec![1],
        election_timeout_ms: 1_000,
        fetch_retry_ms: 1_000,
        fetch_refresh_ms: 10_000,
        fetch_max_bytes: 1 << 20,
        commit_unsynced: false,
        in_sync_lag_ms: 10_000,
        seed: 7,
        planted: None,
    };
    let persisted = Persisted {
        epoch: 3,
        voted_for: Some(1),
    };
    let log = LogShape {
        epochs: vec![(1, 0), (3, 5)],
        end: 9,
        synced: 7,

        start: 0,
    };
    let mut raft = Raft::new(config, persisted, log, 100);
    assert_eq!(raft.next_deadline_ms(), 100, "nobody to wait for");
    let mut out = Vec::new();
    raft.handle_tick(100, &mut out);
    let vote = Persisted {
        epoch: 4,
        voted_for: Some(1),
    };
    assert!(out.contains(&Command::PersistVote {
        epoch: 4,
        voted_for: Some(1)
    }));
    assert_eq!(
        raft.role(),
        Role::Candidate,
        "not before its vote is durable"
    );
    out.clear();
    raft.handle_vote_synced(101, vote, &mut out);
    assert_eq!(raft.role(), Role::Leader);
    assert!(
        out.contains(&Command::Commit { high_watermark: 7 }),
        "what was synced"
    );
    assert_eq!(
        raft.next_deadline_ms(),
        u64::MAX,
        "an idle group of one costs nothing"
    );
    out.clear();
    // The rest of the recovered log is synced (the host's first round): all of it commits.
    raft.handle_log_synced(102, 9, 0, &mut out);
    assert_eq!(out, vec![Command::Commit { high_watermark: 9 }]);
    out.clear();
    raft.handle_appended(103, 9, 10, &mut out);
    raft.handle_log_synced(104, 11, 0, &mut out);
    assert!(out.contains(&Command::Commit { high_watermark: 11 }));
}

/// `epoch_end` answers as Kafka's `OffsetForLeaderEpoch` does: the largest epoch at or below
/// the one asked for, and where it ends.
#[test]
fn epoch_end_answers_as_offset_for_leader_epoch() {
    let shape = LogShape {
        epochs: vec![(1, 0), (3, 5), (4, 9)],
        end: 12,
        synced: 12,

        start: 0,
    };
    assert_eq!(shape.epoch_end(0), None);
    assert_eq!(shape.epoch_end(1), Some((1, 5)));
    assert_eq!(shape.epoch_end(2), Some((1, 5)));
    assert_eq!(shape.epoch_end(3), Some((3, 9)));
    assert_eq!(shape.epoch_end(4), Some((4, 12)));
    assert_eq!(shape.epoch_end(9), Some((4, 12)));
    let mut cut = shape.clone();
    cut.truncate(7);
    assert_eq!((cut.epochs.len(), cut.end, cut.synced), (2, 7, 7));
    assert_eq!(cut.synced_tip(), (3, 7));
}

fn follower(id: NodeId, epochs: Vec<(Epoch, Offset)>, end: Offset) -> Raft {
    let config = RaftConfig {
        id,
        voters: vec![1, 2, 3],
        election_timeout_ms: 100,
        fetch_retry_ms: 80,
        fetch_refresh_ms: 1_000,
        fetch_max_bytes: 64,
        commit_unsynced: false,
        in_sync_lag_ms: 10_000,
        seed: 1,
        planted: None,
    };
    let persisted = Persisted {
        epoch: 2,
        voted_for: None,
    };
    let shape = LogShape {
        epochs,
        end,
        synced: end,

        start: 0,
    };
    Raft::new(config, persisted, shape, 0)
}

fn answer(
    fetch_offset: Offset,
    last_fetched_epoch: Epoch,
    hw: Offset,
    reply: FetchReply,
) -> Message {
    Message::FetchResponse {
        epoch: 2,
        high_watermark: hw,
        fetch_offset,
        last_fetched_epoch,
        reply,
    }
}

fn entry(epoch: Epoch, base_offset: Offset, last_offset: Offset) -> Entry {
    Entry {
        epoch,
        base_offset,
        last_offset,
        payload: Bytes::from_static(b"x"),
    }
}

/// A late (or duplicated) answer to a fetch from before a log repair must not act on the
/// repaired log: here it would cut entries the follower has since seen committed.
#[test]
fn a_stale_diverging_answer_cuts_nothing() {
    let mut raft = follower(2, vec![(1, 0)], 4);
    let mut out = Vec::new();
    raft.handle_message(1, 1, Message::BeginEpoch { epoch: 2 }, &mut out);
    let diverging = answer(
        4,
        1,
        0,
        FetchReply::Diverging {
            epoch: 1,
            end_offset: 2,
        },
    );
    raft.handle_message(2, 1, diverging.clone(), &mut out);
    let generation = out
        .iter()
        .find_map(|c| match c {
            Command::SyncLog { generation } => Some(*generation),
            _ => None,
        })
        .expect("a truncation is synced");
    raft.handle_log_synced(3, 2, generation, &mut out);
    raft.handle_message(
        4,
        1,
        answer(2, 1, 0, FetchReply::Entries(vec![entry(2, 2, 3)])),
        &mut out,
    );
    raft.handle_log_synced(5, 4, generation, &mut out);
    raft.handle_message(6, 1, answer(4, 2, 4, FetchReply::Entries(vec![])), &mut out);
    assert_eq!((raft.log().end, raft.high_watermark()), (4, 4));
    out.clear();
    // The first fetch's answer, sent again.
    raft.handle_message(7, 1, diverging, &mut out);
    assert!(
        !out.iter().any(|c| matches!(c, Command::Truncate { .. })),
        "{out:?}"
    );
    assert_eq!((raft.log().end, raft.high_watermark()), (4, 4));
}

/// A sync issued before a truncation completes after the truncated offsets were written
/// again: it made none of the new entries durable, so it credits nothing.
#[test]
fn a_sync_from_before_a_truncation_credits_nothing() {
    let mut raft = follower(2, vec![(1, 0)], 8);
    let mut out = Vec::new();
    raft.handle_message(1, 1, Message::BeginEpoch { epoch: 2 }, &mut out);
    // Entries of epoch 1 arrive (say, from the previous leader) and their sync is slow.
    raft.handle_message(
        2,
        1,
        answer(8, 1, 0, FetchReply::Entries(vec![entry(1, 8, 11)])),
        &mut out,
    );
    let old_generation = 0;
    // Node 3 leads epoch 3 before that sync completes; its log diverges at 8: cut, sync the
    // cut, fetch, append its epoch 3 entries.
    let from_3 = |fetch_offset, last_fetched_epoch, reply| Message::FetchResponse {
        epoch: 3,
        high_watermark: 0,
        fetch_offset,
        last_fetched_epoch,
        reply,
    };
    raft.handle_message(3, 3, Message::BeginEpoch { epoch: 3 }, &mut out);
    let diverging = FetchReply::Diverging {
        epoch: 1,
        end_offset: 8,
    };
    raft.handle_message(4, 3, from_3(12, 1, diverging), &mut out);
    assert_eq!(raft.log().end, 8, "cut at the divergence");
    raft.handle_log_synced(5, 8, old_generation + 1, &mut out);
    let entries = FetchReply::Entries(vec![entry(3, 8, 11)]);
    raft.handle_message(6, 3, from_3(8, 1, entries), &mut out);
    assert_eq!(raft.log().end, 12);
    // The slow sync of the first entries completes now.
    raft.handle_log_synced(7, 12, old_generation, &mut out);
    assert_eq!(
        raft.log().synced,
        8,
        "the epoch 3 entries are not durable yet"
    );
}

fn any_message() -> impl Strategy<Value = (NodeId, Message)> {
    let epoch = prop_oneof![0..6i32, Just(-1), Just(i32::MAX), Just(EPOCH_MAX)];
    let offset = prop_oneof![0..12i64, Just(-1), Just(i64::MAX)];
    let entries =
        prop::collection::vec((epoch.clone(), offset.clone(), 0..3i64), 0..4).prop_map(|entries| {
            (entries.into_iter())
                .map(|(epoch, base_offset, len)| Entry {
                    epoch,
                    base_offset,
                    last_offset: base_offset.saturating_add(len),
                    payload: Bytes::new(),
                })
                .collect::<Vec<_>>()
        });
    let reply = prop_oneof![
        Just(FetchReply::NotLeader),
        (epoch.clone(), offset.clone())
            .prop_map(|(epoch, end_offset)| FetchReply::Diverging { epoch, end_offset }),
        entries.prop_map(FetchReply::Entries),
    ];
    let message = prop_oneof![
        (epoch.clone(), epoch.clone(), offset.clone()).prop_map(
            |(epoch, last_epoch, end_offset)| {
                Message::PreVote {
                    epoch,
                    last_epoch,
                    end_offset,
                }
            }
        ),
        (
            epoch.clone(),
            any::<bool>(),
            epoch.clone(),
            prop::option::of(0..5i32)
        )
            .prop_map(
                |(epoch, granted, current_epoch, leader)| Message::PreVoteResponse {
                    epoch,
                    granted,
                    current_epoch,
                    leader,
                }
            ),
        (epoch.clone(), epoch.clone(), offset.clone()).prop_map(
            |(epoch, last_epoch, end_offset)| {
                Message::Vote {
                    epoch,
                    last_epoch,
                    end_offset,
                }
            }
        ),
        (epoch.clone(), any::<bool>())
            .prop_map(|(epoch, granted)| Message::VoteResponse { epoch, granted }),
        epoch
            .clone()
            .prop_map(|epoch| Message::BeginEpoch { epoch }),
        (
            epoch.clone(),
            offset.clone(),
            epoch.clone(),
            offset.clone(),
            offset.clone()
        )
            .prop_map(
                |(epoch, fetch_offset, last_fetched_epoch, synced_offset, high_watermark)| {
                    Message::Fetch {
                        epoch,
                        fetch_offset,
                        last_fetched_epoch,
                        synced_offset,
                        high_watermark,
                    }
                }
            ),
        (epoch.clone(), offset.clone(), offset, epoch.clone(), reply).prop_map(
            |(epoch, high_watermark, fetch_offset, last_fetched_epoch, reply)| {
                Message::FetchResponse {
                    epoch,
                    high_watermark,
                    fetch_offset,
                    last_fetched_epoch,
                    reply,
                }
            }
        ),
        epoch.prop_map(|epoch| Message::TimeoutNow { epoch }),
    ];
    (0..5i32, message)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever a peer sends (its frame passed the CRC, its sense need not), the engine never
    /// panics and keeps its own promises: its epoch never goes back, nor its high watermark.
    #[test]
    fn arbitrary_messages_never_panic_the_engine(
        steps in prop::collection::vec(prop_oneof![
            8 => any_message().prop_map(|(from, m)| (Some((from, m)), 0)),
            1 => Just((None, 0)),
            // What the host says of peers: down, up, messages lost.
            1 => (1..4i32, 1..4u8).prop_map(|(peer, event)| (None, peer * 4 + i32::from(event))),
        ], 1..60),
    ) {
        let config = RaftConfig {
            id: 1,
            voters: vec![1, 2, 3],
            election_timeout_ms: 100,
            fetch_retry_ms: 100,
            fetch_refresh_ms: 1_000,
            fetch_max_bytes: 1 << 20,
            commit_unsynced: false,
            in_sync_lag_ms: 10_000,
            seed: 3,
            planted: None,
        };
        let mut raft = Raft::new(config, Persisted::default(), LogShape::default(), 0);
        let mut now = 0;
        let (mut epoch, mut high_watermark) = (0, 0);
        for step in steps {
            let mut out = Vec::new();
            match step {
                (Some((from, message)), _) => raft.handle_message(now, from, message, &mut out),
                (None, 0) => {
                    now += 150;
                    raft.handle_tick(now, &mut out);
                }
                (None, code) => match (code / 4, code % 4) {
                    (peer, 1) => raft.handle_peer_down(now, peer, &mut out),
                    (peer, 2) => raft.handle_peer_up(now, peer, &mut out),
                    (peer, _) => raft.handle_peer_reset(now, peer, &mut out),
                },
            }
            // The host does what it is told: votes and logs become durable at once.
            for command in out {
                match command {
                    Command::PersistVote { epoch, voted_for } => {
                        let mut more = Vec::new();
                        raft.handle_vote_synced(now, Persisted { epoch, voted_for }, &mut more);
                    }
                    Command::SyncLog { generation } => {
                        let end = raft.log().end;
                        let mut more = Vec::new();
                        raft.handle_log_synced(now, end, generation, &mut more);
                    }
                    _ => {}
                }
            }
            prop_assert!(raft.epoch() >= epoch && raft.high_watermark() >= high_watermark);
            prop_assert!(raft.high_watermark() <= raft.log().end);
            (epoch, high_watermark) = (raft.epoch(), raft.high_watermark());
        }
    }
}

/// An answer delivered again while no fetch is out is dropped (acting on it would send a
/// second fetch: two chains of fetches where there was one); an answer the follower cannot act
/// on is asked again after the fetch timeout, not at once (the simulator found the two
/// answering each other as fast as the network went, the chains multiplying with every
/// duplicated frame, under a planted bug). A leader holds one fetch per follower, so chains
/// that a duplicate forks anyway meet again there.
#[test]
fn a_duplicated_answer_sends_no_second_fetch() {
    let mut raft = follower(2, vec![(1, 0)], 8);
    let mut out = Vec::new();
    raft.handle_message(1, 1, Message::BeginEpoch { epoch: 2 }, &mut out);
    let fetches = |out: &[Command]| {
        out.iter()
            .filter(|c| {
                matches!(
                    c,
                    Command::Send {
                        message: Message::Fetch { .. },
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(fetches(&out), 1, "{out:?}");
    // Entries: appended, and the next fetch waits for their sync.
    let entries = answer(8, 1, 0, FetchReply::Entries(vec![entry(2, 8, 9)]));
    out.clear();
    raft.handle_message(2, 1, entries.clone(), &mut out);
    assert_eq!(raft.log().end, 10, "the answer is acted on: {out:?}");
    assert_eq!(fetches(&out), 0, "{out:?}");
    // The same answer again, while no fetch is out: nothing happens.
    out.clear();
    raft.handle_message(3, 1, entries, &mut out);
    assert!(out.is_empty(), "its copy is not: {out:?}");
    raft.handle_log_synced(4, 10, 0, &mut out);
    assert_eq!(fetches(&out), 1, "{out:?}");
    // A leader that claims divergence below what this node saw committed is asked again
    // only after the fetch timeout.
    let mut raft = follower(2, vec![(1, 0)], 8);
    raft.handle_message(1, 1, Message::BeginEpoch { epoch: 2 }, &mut out);
    raft.handle_message(2, 1, answer(8, 1, 6, FetchReply::Entries(vec![])), &mut out);
    out.clear();
    let below = FetchReply::Diverging {
        epoch: 1,
        end_offset: 4,
    };
    raft.handle_message(3, 1, answer(8, 1, 6, below), &mut out);
    assert_eq!(fetches(&out), 0, "{out:?}");
    raft.handle_tick(3 + 2 * 40, &mut out);
    assert_eq!(fetches(&out), 1, "{out:?}");
}
