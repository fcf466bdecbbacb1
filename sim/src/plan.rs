//! What a seed decides before the run starts: the workload's shape and, for every kind of
//! fault, whether it happens at all in this run and how often. Each kind is switched on for
//! about half the seeds, so seeds differ in kind, not only in detail.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::disk::DiskFaults;
use crate::network::NetFaults;

/// Kafka versions the simulated clients speak, chosen per seed within what the node serves.
const PRODUCE_VERSIONS: (i16, i16) = (3, 11);
const FETCH_VERSIONS: (i16, i16) = (4, 12);
const METADATA_VERSIONS: (i16, i16) = (1, 12);
const INIT_PRODUCER_ID_VERSIONS: (i16, i16) = (0, 5);

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    // The workload.
    pub partitions: i32,
    pub segment_size_bytes: u64,
    pub producers: usize,
    pub consumers: usize,
    /// Mean time between two produce requests of one producer.
    pub produce_interval_ms: u64,
    pub records_per_batch_max: usize,
    pub value_padding_bytes_max: usize,
    pub max_in_flight: usize,
    /// Producers use idempotence (InitProducerId, sequence numbers, retries of the same
    /// batch after an unknown outcome).
    pub idempotent: bool,
    pub init_producer_id_version: i16,
    pub produce_version: i16,
    pub fetch_version: i16,
    pub metadata_version: i16,
    pub request_timeout_ms: u64,
    pub fetch_max_wait_ms: i32,
    // The network between clients and the node.
    pub latency_us: (u64, u64),
    pub slow_reader_probability: f64,
    pub conn_reset_probability: f64,
    pub cut_request_probability: f64,
    // The node's process and disk.
    pub crash_interval_ms: Option<u64>,
    pub restart_delay_ms_max: u64,
    pub disk: DiskFaults,
    pub sync_latency_us: (u64, u64),
    pub slow_sync_probability: f64,
    pub sync_error_probability: f64,
    /// Kafka's `producer.id.expiration.ms` for the node: short in some seeds, so that idle
    /// producers expire within a run.
    pub producer_id_expiration_ms: Option<i64>,
    /// The chance that a producer falls idle after a send, for longer than the expiry.
    pub producer_idle_probability: f64,
    /// Idempotent producers answered UNKNOWN_PRODUCER_ID start that partition over at
    /// sequence 0 in the same epoch, as clients before KIP-360 did (otherwise they bump the
    /// epoch).
    pub restart_sequence_on_unknown: bool,
    /// The chance that an idempotent producer that moved to a new epoch sends one more batch
    /// with its old one: a zombie, which the node must fence.
    pub zombie_probability: f64,
    /// An admin client cycles through side topics: create, describe, write, read by topic
    /// id, list offsets, add a partition, delete under a long poll (`admin.rs`).
    pub admin: bool,
    /// After a failed sync halts the node, the chance that only the process restarts (the
    /// machine, and its page cache, stay up): the pages the failed sync did not write stay
    /// in the cache, marked clean, as Linux leaves them.
    pub same_kernel_restart_probability: f64,
    pub disk_full_interval_ms: Option<u64>,
    /// Nodes in the cluster (given, not drawn: `--nodes`).
    pub nodes: usize,
    /// The network between nodes (drawn for every seed, used when there are several).
    pub net: NetFaults,
    /// The group workload (none unless asked for: `--groups`).
    pub group: GroupPlan,
    /// The log's lifecycle in the workload (none unless asked for: `--lifecycle`).
    pub lifecycle: LifecyclePlan,
    /// Transactional producers and read_committed consumers (none unless asked for:
    /// `--transactions`).
    pub txn: TxnPlan,
}

/// Transactional producers (`sim/src/sim/txn.rs`) and the read_committed consumers that
/// check them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TxnPlan {
    /// Transactional producers; 0: no transactional workload.
    pub producers: usize,
    /// Consumers that read with isolation_level=read_committed.
    pub committed_consumers: usize,
    pub abort_probability: f64,
    pub partitions_per_txn_max: usize,
    /// The chance a transaction commits offsets (consume-transform-produce).
    pub offsets_probability: f64,
    /// At each step of an open transaction, the chance its producer crashes.
    pub crash_probability: f64,
    /// The chance a crashed producer's old incarnation goes on as a zombie.
    pub zombie_probability: f64,
    /// EndTxn's version: 5 and later bump the epoch at every transaction's end (KIP-890).
    pub end_txn_version: i16,
    /// The chance a transactional batch's connection stalls past the request timeout: the
    /// producer gives the transaction up (aborts it) while the batch is still on its way.
    pub stall_probability: f64,
    /// Longest pause between adding a transaction's partitions and writing to them.
    pub think_ms_max: u64,
    /// The chance that the node an EndTxn(commit) goes to crashes within 10 ms of it (on a
    /// cluster): the coordinator fails over mid-commit, its markers perhaps half written.
    pub commit_crash_probability: f64,
}

impl TxnPlan {
    /// Drawn from a stream of its own, as [`GroupPlan::draw`].
    pub fn draw(seed: u64) -> TxnPlan {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x7478_6e5f_706c_616e);
        TxnPlan {
            producers: rng.random_range(1..=3),
            committed_consumers: rng.random_range(1..=2),
            abort_probability: rng.random_range(0.1..0.6),
            partitions_per_txn_max: rng.random_range(1..=4),
            offsets_probability: rng.random_range(0.0..1.0),
            crash_probability: maybe(&mut rng, 0.01, 0.1),
            zombie_probability: rng.random_range(0.0..1.0),
            end_txn_version: [1, 3, 5][rng.random_range(0..3)],
            stall_probability: maybe(&mut rng, 0.02, 0.1),
            think_ms_max: [0, 200, 2_000][rng.random_range(0..3)],
            // Drawn last, so that the fields above stay what they were for older seeds.
            commit_crash_probability: maybe(&mut rng, 0.05, 0.3),
        }
    }
}

/// The log's lifecycle in the workload topic: the admin client sets its retention.ms and
/// segment.ms (IncrementalAlterConfigs) and moves its partitions' starts (DeleteRecords);
/// the nodes apply retention every `retention_check_ms`; consumers that fall below a
/// partition's start jump to it, as `auto.offset.reset=earliest` does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LifecyclePlan {
    pub on: bool,
    /// The values the admin client sets retention.ms to, in turn.
    pub retention_ms: Vec<i64>,
    pub segment_ms: i64,
    /// The nodes' `log.retention.check.interval.ms`.
    pub retention_check_ms: u64,
    /// The chance that an admin cycle sends DeleteRecords.
    pub delete_records_probability: f64,
    /// The topic is compacted (`--compaction`).
    pub compaction: Option<CompactionPlan>,
}

/// A compacted workload topic: the admin client sets its cleanup.policy with the lifecycle's
/// other configs; producers key every record (`compaction_key`), over few keys (each written
/// often: the cleaner removes much) or many (a key's newest record lasts: a cleaner that drops
/// it is seen).
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionPlan {
    pub keys: u32,
    /// cleanup.policy is `compact,delete` (retention and DeleteRecords too), else `compact`.
    pub delete_too: bool,
    pub min_compaction_lag_ms: i64,
}

impl CompactionPlan {
    /// Drawn from a stream of its own, as [`LifecyclePlan::draw`].
    pub fn draw(seed: u64) -> CompactionPlan {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x636f_6d70_6163_7421);
        CompactionPlan {
            keys: match rng.random_bool(0.5) {
                true => rng.random_range(3..=30),
                false => rng.random_range(200..=2_000),
            },
            delete_too: rng.random_bool(0.3),
            min_compaction_lag_ms: match rng.random_bool(0.5) {
                true => 0,
                false => rng.random_range(100..=5_000),
            },
        }
    }

    /// cleanup.policy's value.
    pub fn policy(&self) -> &'static str {
        match self.delete_too {
            true => "compact,delete",
            false => "compact",
        }
    }
}

impl LifecyclePlan {
    /// Keys of a compacted topic's records, if it is one.
    pub fn compaction_keys(&self) -> Option<u32> {
        self.compaction.as_ref().map(|c| c.keys)
    }
}

/// The key of the record holding `value`, one of `keys` (the checker knows it from the value).
pub fn compaction_key(value: u64, keys: u32) -> u32 {
    // splitmix64's finaliser: values that differ in one bit land on unrelated keys.
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) % u64::from(keys)) as u32
}

/// A key's bytes in a record.
pub fn key_bytes(key: u32) -> bytes::Bytes {
    bytes::Bytes::from(format!("key-{key}"))
}

impl LifecyclePlan {
    /// Drawn from a stream of its own, as [`GroupPlan::draw`].
    pub fn draw(seed: u64) -> LifecyclePlan {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6c69_6665_6379_636c);
        LifecyclePlan {
            on: true,
            retention_ms: (0..rng.random_range(1..=3))
                .map(|_| rng.random_range(1_000..=20_000))
                .collect(),
            segment_ms: rng.random_range(200..=5_000),
            retention_check_ms: rng.random_range(100..=2_000),
            delete_records_probability: rng.random_range(0.2..=1.0),
            compaction: None,
        }
    }
}

/// Members of one consumer group and their faults (`sim/src/sim/group.rs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupPlan {
    /// Members (each with a fetcher of its own); 0: no group workload.
    pub members: usize,
    pub commit_interval_ms: u64,
    /// At each of its steps in the stable phase, the chance that a member crashes, freezes
    /// past its session timeout, or leaves.
    pub crash_probability: f64,
    pub stall_probability: f64,
    pub leave_probability: f64,
    /// The chance that a member that gives up its partitions keeps their commit and sends it
    /// once it is in the next generation (a zombie's commit, which must be refused).
    pub stale_commit_probability: f64,
    /// Partitions of `__consumer_offsets`.
    pub offsets_partitions: i32,
    pub initial_rebalance_delay_ms: i32,
    /// Members speak KIP-848's protocol (ConsumerGroupHeartbeat, at this version) instead
    /// of the classic one, in about half the seeds.
    pub kip848: Option<i16>,
}

impl GroupPlan {
    /// Drawn from a stream of its own, so that turning groups on leaves the rest of a seed's
    /// plan as it was.
    pub fn draw(seed: u64) -> GroupPlan {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6772_6f75_705f_6b6c);
        GroupPlan {
            members: rng.random_range(2..=4),
            commit_interval_ms: rng.random_range(50..=1_000),
            crash_probability: maybe(&mut rng, 0.002, 0.02),
            stall_probability: maybe(&mut rng, 0.002, 0.01),
            leave_probability: maybe(&mut rng, 0.002, 0.02),
            stale_commit_probability: rng.random_range(0.2..0.8),
            offsets_partitions: rng.random_range(1..=4),
            initial_rebalance_delay_ms: [0, 300, 3_000][rng.random_range(0..3)],
            // Drawn last: the fields above stay what they were for seeds drawn before.
            kip848: rng.random_bool(0.5).then(|| rng.random_range(0..=1)),
        }
    }
}

fn maybe(rng: &mut Xoshiro256PlusPlus, low: f64, high: f64) -> f64 {
    if rng.random_bool(0.5) {
        rng.random_range(low..high)
    } else {
        0.0
    }
}

fn version(rng: &mut Xoshiro256PlusPlus, (low, high): (i16, i16)) -> i16 {
    rng.random_range(low..=high)
}

impl Plan {
    /// Draws the plan from `rng`. Knobs added after the first version draw from `later`, a
    /// stream of their own seeded from `seed`, so that adding one leaves every older knob (and
    /// everything drawn from `rng` after the plan) as it was: a seed keeps meaning the run it
    /// named when it failed.
    pub fn draw(seed: u64, rng: &mut Xoshiro256PlusPlus) -> Plan {
        Plan::draw_for(seed, rng, 1)
    }

    /// The plan of a cluster of `nodes`. With several nodes, clients before KIP-360 (below)
    /// and lasting disk damage are off: a replica that lasting damage took offline is not
    /// yet rebuilt from its peers.
    pub fn draw_for(seed: u64, rng: &mut Xoshiro256PlusPlus, nodes: usize) -> Plan {
        let mut plan = Plan::draw_plan(seed, rng);
        plan.nodes = nodes;
        if nodes > 1 {
            // Clients that start a partition over at sequence 0 in the same epoch (before
            // KIP-360) are safe only where one replica holds the producer's state: in a
            // cluster, a new leader that still remembers the old sequences takes a new batch
            // for an old one and answers with the old one's offset. Kafka's reason for KIP-360;
            // clients in a cluster bump the epoch instead.
            plan.restart_sequence_on_unknown = false;
            // Clients that know leader epochs (Metadata v7, Fetch v9: KIP-320), as clients
            // of a replicated Kafka are.
            plan.metadata_version = plan.metadata_version.max(7);
            plan.fetch_version = plan.fetch_version.max(9);
            plan.disk.rot_probability = 0.0;
            plan.disk.latent_error_probability = 0.0;
            plan.disk.lost_file_probability = 0.0;
            plan.disk.lost_write_probability = 0.0;
            plan.disk.misdirected_write_probability = 0.0;
        }
        plan
    }

    fn draw_plan(seed: u64, rng: &mut Xoshiro256PlusPlus) -> Plan {
        let mut later = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6c61_7465_725f_6b6e);
        let mut net = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b21);
        Plan {
            nodes: 1,
            group: GroupPlan::default(),
            lifecycle: LifecyclePlan::default(),
            txn: TxnPlan::default(),
            net: NetFaults::draw(&mut net),
            partitions: rng.random_range(1..=4),
            segment_size_bytes: [16 << 10, 256 << 10, 1 << 30][rng.random_range(0..3)],
            producers: rng.random_range(1..=3),
            consumers: rng.random_range(1..=2),
            produce_interval_ms: rng.random_range(20..=100),
            records_per_batch_max: rng.random_range(1..=8),
            value_padding_bytes_max: rng.random_range(0..=200),
            max_in_flight: rng.random_range(1..=5),
            idempotent: later.random_bool(0.5),
            init_producer_id_version: version(&mut later, INIT_PRODUCER_ID_VERSIONS),
            same_kernel_restart_probability: if later.random_bool(0.5) {
                later.random_range(0.5..1.0)
            } else {
                0.0
            },
            producer_id_expiration_ms: later
                .random_bool(0.4)
                .then(|| later.random_range(2_000..=10_000)),
            producer_idle_probability: maybe(&mut later, 0.005, 0.05),
            restart_sequence_on_unknown: later.random_bool(0.5),
            zombie_probability: maybe(&mut later, 0.2, 1.0),
            admin: later.random_bool(0.5),
            produce_version: version(rng, PRODUCE_VERSIONS),
            fetch_version: version(rng, FETCH_VERSIONS),
            metadata_version: version(rng, METADATA_VERSIONS),
            request_timeout_ms: rng.random_range(1_000..=10_000),
            fetch_max_wait_ms: rng.random_range(0..=500),
            latency_us: {
                let low = rng.random_range(50..=500);
                (low, low + rng.random_range(0..=5_000))
            },
            slow_reader_probability: maybe(rng, 0.05, 0.5),
            conn_reset_probability: maybe(rng, 0.001, 0.02),
            cut_request_probability: maybe(rng, 0.05, 0.5),
            crash_interval_ms: rng
                .random_bool(0.7)
                .then(|| rng.random_range(2_000..=20_000)),
            restart_delay_ms_max: rng.random_range(10..=2_000),
            disk: {
                let read_flip_probability = maybe(rng, 0.0001, 0.005);
                let read_error_probability = maybe(rng, 0.0001, 0.005);
                let torn_write_probability = maybe(rng, 0.1, 0.9);
                // Lasting damage in about a third of the seeds, each kind in half of those.
                let lasting = later.random_bool(0.35);
                let mut damage = |low, high| {
                    if lasting {
                        maybe(&mut later, low, high)
                    } else {
                        0.0
                    }
                };
                DiskFaults {
                    read_flip_probability,
                    read_error_probability,
                    torn_write_probability,
                    rot_probability: damage(0.05, 0.3),
                    latent_error_probability: damage(0.05, 0.3),
                    lost_file_probability: damage(0.02, 0.15),
                    lost_write_probability: damage(0.0005, 0.005),
                    misdirected_write_probability: damage(0.0005, 0.005),
                }
            },
            sync_latency_us: {
                let low = rng.random_range(20..=2_000);
                (low, low + rng.random_range(0..=10_000))
            },
            slow_sync_probability: maybe(rng, 0.001, 0.05),
            sync_error_probability: maybe(rng, 0.0001, 0.002),
            disk_full_interval_ms: rng
                .random_bool(0.3)
                .then(|| rng.random_range(2_000..=30_000)),
        }
    }
}
