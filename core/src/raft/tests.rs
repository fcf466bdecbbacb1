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
    ) {
        let mut cluster = Cluster::new(nodes, false, false, seed);
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
    }
}

/// `epoch_end` answers as Kafka's `OffsetForLeaderEpoch` does: the largest epoch at or below
/// the one asked for, and where it ends.
#[test]
fn epoch_end_answers_as_offset_for_leader_epoch() {
    let shape = LogShape {
        epochs: vec![(1, 0), (3, 5), (4, 9)],
        end: 12,
        synced: 12,
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
