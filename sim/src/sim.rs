//! The harness: one seed, one virtual clock, one event queue, one node or a cluster of them
//! (the production `keel_core::node::Node`, each on its own simulated disk), and clients that
//! speak the Kafka protocol to them through Keel's codec over simulated connections.
//!
//! Everything that happens is an [`Event`] in a queue ordered by (time, sequence); handling
//! one may schedule others. Randomness comes from one PRNG seeded from the seed (the disks
//! have their own, seeded from it too), so a seed replays exactly: the trace hash mixes every
//! event and every byte the nodes send, and two runs of a seed must agree on it.
//!
//! A run has two phases. Until `duration`, faults are injected at the rates the seed's
//! [`Plan`] chose. Then the quiet phase: faults stop, the network heals, crashed nodes
//! restart, producers stop writing, and consumers must read back every acknowledged record
//! within [`LIVENESS_BOUND_NS`] of simulated time.
//!
//! The rooms: this file holds the harness (events, the run, the report); `nodes` the nodes'
//! side (starts, crashes, outputs, the checks on the nodes' state and disks); `workload` the
//! clients; `crate::network` what happens to peer frames; `crate::check` and
//! `crate::replicas` the checkers; `crate::plan` what a seed decides. A new fault touches the
//! plan and the room it strikes; a new workload touches `workload`.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::hash::{DefaultHasher, Hasher};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use keel_core::disk::{Disk, DiskError, FileId};
use keel_core::log::LogConfig;
use keel_core::metadata::METADATA_TOPIC;
use keel_core::node::{
    Broker, Config, ConnId, Durability, Input, Instant, Node, Output, PlantedBug, RecoveryEvent,
    SyncToken,
};
use keel_core::protocol::codec::{decode_response, encode_request};
use keel_core::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use keel_core::protocol::messages::metadata_request::MetadataRequestTopic;
use keel_core::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use keel_core::protocol::messages::{
    FetchRequest, InitProducerIdRequest, MetadataRequest, ProduceRequest,
};
use keel_core::protocol::wire::Uuid;
use keel_core::protocol::{codes, ApiKey, FrameDecoder, Request, RequestHeader, Response};
use keel_core::record::{self, BatchOptions, NewRecord, RecordBatch};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

mod group;
mod nodes;
mod txn;
mod workload;

use crate::admin::{AdminRequest, AdminState, AdminStep};
use crate::check::{Checker, Damage, Violation, ViolationKind, Write};
use crate::disk::{DiskFaults, PendingSync, SimDisk};
use crate::network::Network;
use crate::plan::Plan;
use crate::replicas;
use keel_core::partition::votes;
use keel_core::raft::wire::GroupId;
use keel_core::raft::{Message, Persisted};

/// After the faults stop, every acknowledged record must be read back within this much
/// simulated time.
pub const LIVENESS_BOUND_NS: u64 = 30_000_000_000;

/// How long a cluster runs without faults (and every node awake) before each partition must
/// have one leader: a node that slept through an election hears of it within an election
/// timeout (1 s) of waking; three leave room for a lost frame or two.
const SETTLE_NS: u64 = 3_000_000_000;
/// Runs do about a thousand events per simulated second; a hundred times that is a storm.
const EVENTS_PER_SIMULATED_SECOND_MAX: u64 = 100_000;
/// The simulated clock starts here (2023-11-14), so timestamps look like real ones.
const EPOCH_NS: u64 = 1_700_000_000_000_000_000;
const TOPIC: &str = "sim";
const MS: u64 = 1_000_000;
/// Fetch sizes the consumers ask for.
const FETCH_MAX_BYTES: i32 = 1 << 20;
const FETCH_PARTITION_MAX_BYTES: i32 = 64 << 10;
/// Largest frame a simulated client accepts.
const CLIENT_MAX_FRAME_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub seed: u64,
    /// Length of the faulty phase; the quiet phase follows.
    pub duration_ns: u64,
    pub bug: Option<PlantedBug>,
    /// Overrides the seed's choice of idempotent producers.
    pub idempotent: Option<bool>,
    /// Nodes in the cluster: 1, or 3 and more (every partition replicated on all of them).
    pub nodes: usize,
    /// The nodes' durability: `Replicated` acknowledges what a majority holds in memory.
    pub durability: Durability,
    /// Members of a consumer group consume, instead of plain consumers (`sim/group.rs`).
    pub groups: bool,
    /// Retention, segment rolls, DeleteRecords and config changes run on the workload's
    /// topic (`LifecyclePlan`).
    pub lifecycle: bool,
    /// The lifecycle's topic is compacted (`CompactionPlan`); implies `lifecycle`.
    pub compaction: bool,
    /// Transactional producers and read_committed consumers run too (`TxnPlan`).
    pub transactions: bool,
}

/// What a run did and found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    /// The seed's workload, in a line.
    pub workload: String,
    pub events: u64,
    pub sim_ns: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Client operations, by kind and outcome ("produce:ok", "fetch:unknown", ...).
    pub operations: BTreeMap<String, u64>,
    pub violations: Vec<Violation>,
    pub trace_hash: u64,
}

impl Report {
    pub fn has_safety_violation(&self) -> bool {
        self.violations.iter().any(|v| v.kind.is_safety())
    }

    pub fn has_violation(&self, kind: ViolationKind) -> bool {
        self.violations.iter().any(|v| v.kind == kind)
    }
}

/// The node's disk, shared with the harness, which syncs and crashes it.
#[derive(Clone)]
struct SharedDisk(Rc<RefCell<SimDisk>>);

impl Disk for SharedDisk {
    fn list(&mut self) -> Result<Vec<String>, DiskError> {
        self.0.borrow_mut().list()
    }
    fn open(&mut self, name: &str) -> Result<FileId, DiskError> {
        self.0.borrow_mut().open(name)
    }
    fn create(&mut self, name: &str) -> Result<FileId, DiskError> {
        self.0.borrow_mut().create(name)
    }
    fn len(&mut self, file: FileId) -> Result<u64, DiskError> {
        self.0.borrow_mut().len(file)
    }
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.0.borrow_mut().read_at(file, offset, buf)
    }
    fn write_at(&mut self, file: FileId, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.0.borrow_mut().write_at(file, offset, data)
    }
    fn truncate(&mut self, file: FileId, len_bytes: u64) -> Result<(), DiskError> {
        self.0.borrow_mut().truncate(file, len_bytes)
    }
    fn remove(&mut self, name: &str) -> Result<(), DiskError> {
        self.0.borrow_mut().remove(name)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), DiskError> {
        self.0.borrow_mut().rename(from, to)
    }
    fn open_dir(&mut self, name: &str) -> Result<FileId, DiskError> {
        self.0.borrow_mut().open_dir(name)
    }
    fn remove_dir(&mut self, name: &str) -> Result<(), DiskError> {
        self.0.borrow_mut().remove_dir(name)
    }
}

#[derive(Debug)]
enum ToNode {
    Open,
    Bytes(Bytes),
    Close,
}

#[derive(Debug)]
enum ToClient {
    Bytes(Bytes),
    Close,
}

#[derive(Debug)]
enum Event {
    ToNode {
        conn: ConnId,
        what: ToNode,
    },
    ToClient {
        conn: ConnId,
        what: ToClient,
    },
    Synced {
        node: usize,
        incarnation: u64,
        token: SyncToken,
        /// What the sync makes durable, taken when it was issued.
        sync: Result<PendingSync, DiskError>,
    },
    NodeTimeout {
        node: usize,
        incarnation: u64,
    },
    ClientWake {
        client: usize,
    },
    Crash,
    Restart {
        node: usize,
    },
    DiskFull {
        node: usize,
        full: bool,
    },
    Quiet,
    /// A peer frame arrives.
    Peer {
        from: usize,
        to: usize,
        bytes: Bytes,
    },
    /// The nemesis cuts the network, or (`heal`) restores it.
    Partition {
        heal: bool,
    },
    /// The nemesis clogs a link for a while.
    Clog,
    /// A majority of the machines crash at once.
    CorrelatedCrash,
    /// The harness asks `node` again whether it knows the workload topic.
    Bootstrap {
        node: usize,
    },
    /// The nemesis freezes a node's process for a while.
    Pause,
    /// The freeze that ends at `until` ends (unless the process died meanwhile, and its
    /// next one froze until another time).
    Resume {
        node: usize,
        until_ns: u64,
    },
    /// A crash aimed at one node (a transaction's coordinator, mid-commit), perhaps with
    /// the transactional producer whose commit it was (client, transaction) beside it.
    CrashNode {
        node: usize,
        producer: Option<(usize, u64)>,
    },
}

impl Event {
    fn code(&self) -> u64 {
        match self {
            Event::ToNode { .. } => 1,
            Event::ToClient { .. } => 2,
            Event::Synced { .. } => 3,
            Event::NodeTimeout { .. } => 4,
            Event::ClientWake { .. } => 5,
            Event::Crash => 6,
            Event::Restart { .. } => 7,
            Event::DiskFull { .. } => 8,
            Event::Quiet => 9,
            Event::Peer { .. } => 10,
            Event::Partition { .. } => 11,
            Event::Clog => 12,
            Event::CorrelatedCrash => 13,
            Event::Bootstrap { .. } => 14,
            Event::Pause => 15,
            Event::Resume { .. } => 16,
            Event::CrashNode { .. } => 17,
        }
    }
}

struct Queued {
    at_ns: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ns, self.seq) == (other.at_ns, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ns, self.seq).cmp(&(other.at_ns, other.seq))
    }
}

/// Both directions of one connection. Each direction is FIFO, as TCP is.
struct Link {
    /// The client at one end ([`BOOTSTRAP`]: the harness itself), the node at the other.
    client: usize,
    node: usize,
    to_node_at_ns: u64,
    to_client_at_ns: u64,
    /// The node incarnation that has this connection open.
    at_node: Option<u64>,
    slow_reader: bool,
}

#[derive(Debug)]
enum PendingKind {
    Metadata,
    InitProducerId,
    Produce { op: usize },
    Fetch,
    Admin(AdminRequest),
    Group(group::GroupCall),
    Txn(txn::TxnCall),
}

#[derive(Debug)]
struct Pending {
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    deadline_ns: u64,
    kind: PendingKind,
}

struct ClientConn {
    id: ConnId,
    frames: FrameDecoder,
    pending: VecDeque<Pending>,
    /// Metadata answered: the topic exists with the expected partitions.
    ready: bool,
    metadata_at_ns: Option<u64>,
}

/// An idempotent producer's identity and sequence numbers.
struct Idempotence {
    /// -1 until InitProducerId answers.
    producer_id: i64,
    epoch: i16,
    /// InitProducerId is in flight.
    initializing: bool,
    /// Ask for an id (or the next epoch) at this time.
    init_at_ns: Option<u64>,
    next_sequence: BTreeMap<i32, i32>,
    /// Writes whose outcome is unknown, to send again (same batch, same sequence) in send order.
    retries: VecDeque<usize>,
    /// Counts the times a partition's sequence was started over in this epoch: answers to
    /// writes sent before that are stale and must not start it over again (a client that
    /// reused sequences the node still remembers would be broken, not the node).
    generation: u64,
    /// Writes waiting to be sent again wait until then (after leadership moved).
    retry_at_ns: u64,
}

enum Role {
    Producer {
        idempotence: Option<Idempotence>,
        acks: i16,
        next_value: u64,
        next_send_seq: u64,
        next_send_at_ns: u64,
    },
    Consumer {
        positions: BTreeMap<i32, i64>,
        next_poll_at_ns: u64,
        fetching: bool,
        /// When its fetch in flight was sent.
        fetch_sent_ns: u64,
        /// It reads with isolation_level=read_committed, dropping aborted transactions'
        /// records as clients do.
        read_committed: bool,
    },
    Admin(Box<AdminState>),
    /// A member of the workload's consumer group (`group.rs`).
    Member(Box<group::Member>),
    /// A transactional producer (`txn.rs`).
    Txn(Box<txn::TxnClient>),
}

impl Client {
    /// No write of `partition` waits to be sent again.
    fn role_retries_none(&self, ops: &[Op], partition: i32) -> bool {
        match &self.role {
            Role::Producer {
                idempotence: Some(idem),
                ..
            } => idem
                .retries
                .iter()
                .all(|o| ops[*o].write.partition != partition),
            _ => true,
        }
    }
}

struct Client {
    role: Role,
    /// The node it talks to (index into the machines).
    node: usize,
    /// Each partition's leader (a machine index), as Metadata last said.
    leaders: BTreeMap<i32, usize>,
    /// Each partition's leader epoch, the latest Metadata named (older ones are not believed).
    leader_epochs: BTreeMap<i32, i32>,
    /// A consumer of a cluster moves on to another leader once its fetch is answered.
    rotate: bool,
    /// A cluster's client moves to another node no sooner than this (moving costs a
    /// connection and a Metadata request; a client that keeps moving gets nothing done).
    move_after_ns: u64,
    conn: Option<ClientConn>,
    reconnect_at_ns: u64,
    wake_at_ns: Option<u64>,
    next_correlation_id: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Ok,
    Fail,
    Unknown,
}

struct Op {
    write: Write,
    /// The encoded batch, kept to be sent again by an idempotent producer.
    batch: Bytes,
    outcome: Outcome,
    /// Sent with this producer id and epoch (idempotent producers).
    producer_id: i64,
    epoch: i16,
    /// An earlier attempt's outcome was unknown (it may be in the log), so a refusal of a
    /// later attempt does not make the write a definite failure.
    attempted_unknown: bool,
    /// The producer's sequence generation when it was built (idempotent producers).
    generation: u64,
    /// When it was first sent: a write is not sent again after the delivery timeout.
    first_sent_ns: u64,
}

/// One node's machine: its disk, and its process when it runs.
struct Machine {
    disk: SharedDisk,
    node: Option<Node<SharedDisk>>,
    config: Config,
    /// Counts the node's starts: events of an earlier process are dropped.
    incarnation: u64,
    deadline_scheduled_ns: Option<u64>,
    /// Each partition's high watermark as this incarnation last reported it.
    high_watermarks: BTreeMap<i32, i64>,
    /// The harness created the workload's topic on it (clusters only).
    bootstrapped: bool,
    /// The applied end of the metadata image last checked against the others.
    image_checked: Option<i64>,
    /// The process is frozen until then: what arrives for it waits, in order.
    paused_until_ns: Option<u64>,
    /// Since when it is frozen.
    paused_from_ns: u64,
    /// When its process last started or woke.
    awake_since_ns: u64,
}

/// The client id of the harness's own connections (a cluster's bootstrap).
const BOOTSTRAP: usize = usize::MAX;

pub struct Sim {
    options: Options,
    plan: Plan,
    rng: Xoshiro256PlusPlus,
    now_ns: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    next_seq: u64,
    machines: Vec<Machine>,
    network: Network,
    /// Clients run and faults are injected (a cluster first creates its topic everywhere).
    started: bool,
    /// (partition, leader epoch) -> the node that led it, from every node's state.
    leader_of_epoch: BTreeMap<(i32, i32), usize>,
    /// The first metadata image seen at each applied offset: (node, fingerprint).
    image_at: BTreeMap<i64, (usize, u32)>,
    /// Replicas of each partition of the workload topic, as the images named them.
    replica_counts: BTreeMap<i32, usize>,
    /// Answers to the admin client (connection, correlation id) that left a node whose image
    /// did not name the admin's current topic.
    stale_answers: BTreeSet<(ConnId, i32)>,
    links: BTreeMap<ConnId, Link>,
    next_conn: ConnId,
    clients: Vec<Client>,
    ops: Vec<Op>,
    checker: Checker,
    faults: BTreeMap<&'static str, u64>,
    operations: BTreeMap<String, u64>,
    quiet: bool,
    events: u64,
    hasher: DefaultHasher,
}

/// Runs one seed to the end and reports.
pub fn run(options: Options) -> Report {
    let mut sim = Sim::new(options);
    sim.run();
    sim.report()
}

/// The producer's idempotence state, if it is an idempotent producer.
fn idempotence(role: &mut Role) -> Option<&mut Idempotence> {
    match role {
        Role::Producer {
            idempotence: Some(idem),
            ..
        } => Some(idem),
        _ => None,
    }
}

fn has_retries(role: &Role) -> bool {
    matches!(role, Role::Producer { idempotence: Some(idem), .. } if !idem.retries.is_empty())
}

/// A Produce of one batch to one partition.
pub fn produce_request(topic: &str, partition: i32, batch: Bytes, acks: i16) -> Request {
    Request::Produce(ProduceRequest {
        acks,
        timeout_ms: 30_000,
        topic_data: vec![TopicProduceData {
            name: topic.into(),
            partition_data: vec![PartitionProduceData {
                index: partition,
                records: Some(batch),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// One record per value, a millisecond apart; keyed (`crate::plan::compaction_key`) when
/// the topic is compacted.
fn batch_records(values: &[u64], padding_bytes: usize, keys: Option<u32>) -> Vec<NewRecord> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| NewRecord {
            timestamp_delta: i as i64,
            key: keys.map(|keys| crate::plan::key_bytes(crate::plan::compaction_key(*v, keys))),
            value: Some(value_bytes(*v, padding_bytes)),
            ..Default::default()
        })
        .collect()
}

fn value_bytes(value: u64, padding_bytes: usize) -> Bytes {
    let mut bytes = Vec::with_capacity(8 + padding_bytes);
    bytes.extend_from_slice(&value.to_be_bytes());
    bytes.resize(8 + padding_bytes, b'.');
    Bytes::from(bytes)
}

impl Sim {
    pub fn new(options: Options) -> Sim {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(options.seed);
        let nodes = options.nodes.max(1);
        let mut plan = Plan::draw_for(options.seed, &mut rng, nodes);
        if let Some(idempotent) = options.idempotent {
            plan.idempotent = idempotent;
        }
        if options.groups {
            plan.group = crate::plan::GroupPlan::draw(options.seed);
            // The group's members are the only consumers: what they miss, nobody reads.
            plan.consumers = 0;
            if options.bug == Some(PlantedBug::StaleCommit) {
                // The planted bug lives in the classic protocol's commit check.
                plan.group.kip848 = None;
            }
        }
        if options.transactions {
            plan.txn = crate::plan::TxnPlan::draw(options.seed);
            // Consumers ask for isolation levels (Fetch v4+) and transactional ids (Produce
            // v3+).
            plan.fetch_version = plan.fetch_version.max(4);
        }
        if options.lifecycle || options.compaction {
            plan.lifecycle = crate::plan::LifecyclePlan::draw(options.seed);
            if options.compaction {
                plan.lifecycle.compaction = Some(crate::plan::CompactionPlan::draw(options.seed));
            }
            // The admin client makes the changes.
            plan.admin = true;
            // Consumers learn a partition's start from Fetch (v5+), where older ones would ask
            // ListOffsets.
            plan.fetch_version = plan.fetch_version.max(5);
        }
        let first_disk_seed = rng.random();
        let cluster = (1..=nodes as i32)
            .map(|n| Broker {
                node_id: n,
                host: format!("node{n}"),
                port: 9092,
                // Three racks (fewer on fewer nodes): placement spreads replicas over them.
                rack: Some(format!("rack-{}", (n - 1) % 3)),
            })
            .collect::<Vec<_>>();
        let node_config = Config {
            node_id: 1,
            cluster: if nodes > 1 { cluster } else { Vec::new() },
            advertised_host: "sim".into(),
            advertised_port: 9092,
            default_partitions: plan.partitions,
            log: LogConfig {
                producer_id_expiration_ms: plan
                    .producer_id_expiration_ms
                    .unwrap_or(LogConfig::default().producer_id_expiration_ms),
                ..LogConfig::default()
            },
            retention_check_interval_ms: if plan.lifecycle.on {
                plan.lifecycle.retention_check_ms
            } else {
                Config::default().retention_check_interval_ms
            },
            topic_defaults: keel_core::metadata::configs::TopicConfig {
                segment_bytes: plan.segment_size_bytes as i64,
                ..Default::default()
            },
            seed: rng.random(),
            planted_bug: options.bug,
            durability: options.durability,
            offsets_topic_partitions: plan.group.offsets_partitions.max(1),
            groups: keel_core::coordinator::GroupConfig {
                initial_rebalance_delay_ms: plan.group.initial_rebalance_delay_ms,
                // As the classic members' timeouts (`group.rs`): a run sees members dropped.
                consumer_session_timeout_ms: 6_000,
                consumer_heartbeat_interval_ms: 1_000,
                ..Default::default()
            },
            ..Config::default()
        };
        let mut clients = Vec::new();
        for _ in 0..plan.producers {
            clients.push(Role::Producer {
                idempotence: plan.idempotent.then(|| Idempotence {
                    producer_id: -1,
                    epoch: -1,
                    initializing: false,
                    init_at_ns: Some(0),
                    next_sequence: BTreeMap::new(),
                    retries: VecDeque::new(),
                    generation: 0,
                    retry_at_ns: 0,
                }),
                acks: if rng.random_bool(0.5) { 1 } else { -1 },
                next_value: 0,
                next_send_seq: 0,
                next_send_at_ns: 0,
            });
        }
        for i in 0..plan.consumers + plan.txn.committed_consumers {
            clients.push(Role::Consumer {
                positions: (0..plan.partitions).map(|p| (p, 0)).collect(),
                next_poll_at_ns: 0,
                fetching: false,
                fetch_sent_ns: 0,
                read_committed: i >= plan.consumers,
            });
        }
        for _ in 0..plan.txn.producers {
            let client = clients.len();
            let version = plan.txn.end_txn_version;
            clients.push(Role::Txn(Box::new(txn::TxnClient::new(client, version))));
        }
        if plan.admin {
            clients.push(Role::Admin(Box::new(AdminState::new())));
        }
        for _ in 0..plan.group.members {
            // A fetcher with nothing to fetch until its member is assigned partitions.
            clients.push(Role::Consumer {
                positions: BTreeMap::new(),
                next_poll_at_ns: 0,
                fetching: false,
                fetch_sent_ns: 0,
                read_committed: false,
            });
            let fetcher = clients.len() - 1;
            let interval = plan.group.commit_interval_ms * MS;
            let kip848 = plan.group.kip848;
            clients.push(Role::Member(Box::new(group::Member::new(
                fetcher, interval, kip848,
            ))));
        }
        let clients = clients
            .into_iter()
            .enumerate()
            .map(|(i, role)| Client {
                role,
                node: i % nodes,
                leaders: BTreeMap::new(),
                leader_epochs: BTreeMap::new(),
                rotate: false,
                move_after_ns: 0,
                conn: None,
                reconnect_at_ns: 0,
                wake_at_ns: None,
                next_correlation_id: 0,
            })
            .collect();
        // A cluster's disks start without faults: the harness waits until every node knows
        // the workload topic (`bootstrap`), then turns them on.
        let machines = (0..nodes)
            .map(|i| {
                let seed = if i == 0 {
                    first_disk_seed
                } else {
                    rng.random()
                };
                let faults = if nodes > 1 {
                    DiskFaults::default()
                } else {
                    plan.disk
                };
                let mut sim_disk = SimDisk::with_faults(seed, faults);
                // Lasting damage strikes the workload topic's data (segments and recovery
                // points). Not yet `partition.metadata` or the node's own files: each is the
                // only copy of what it holds, and the node cannot yet tell its loss from a
                // creation or deletion cut short (see ARCHITECTURE.md).
                sim_disk.set_damageable(|name| {
                    name.strip_prefix(TOPIC)
                        .and_then(|rest| rest.strip_prefix('-'))
                        .and_then(|rest| rest.split_once('/'))
                        .is_some_and(|(partition, file)| {
                            partition.bytes().all(|b| b.is_ascii_digit())
                                && (file.ends_with(".log") || file == "recovery-point")
                        })
                });
                Machine {
                    disk: SharedDisk(Rc::new(RefCell::new(sim_disk))),
                    node: None,
                    config: Config {
                        node_id: i as i32 + 1,
                        advertised_host: match nodes {
                            1 => node_config.advertised_host.clone(),
                            _ => format!("node{}", i + 1),
                        },
                        rack: (nodes > 1).then(|| format!("rack-{}", i % 3)),
                        ..node_config.clone()
                    },
                    incarnation: 0,
                    deadline_scheduled_ns: None,
                    paused_until_ns: None,
                    paused_from_ns: 0,
                    awake_since_ns: 0,
                    high_watermarks: BTreeMap::new(),
                    bootstrapped: false,
                    image_checked: None,
                }
            })
            .collect();
        let network = Network::new(nodes, plan.net);
        let mut checker = Checker::default();
        if let Some(keys) = plan.lifecycle.compaction_keys() {
            checker.set_compaction_keys(keys);
        }
        Sim {
            options,
            plan,
            rng,
            now_ns: 0,
            queue: BinaryHeap::new(),
            next_seq: 0,
            machines,
            network,
            started: false,
            leader_of_epoch: BTreeMap::new(),
            image_at: BTreeMap::new(),
            replica_counts: BTreeMap::new(),
            stale_answers: BTreeSet::new(),
            links: BTreeMap::new(),
            next_conn: 1,
            clients,
            ops: Vec::new(),
            checker,
            faults: BTreeMap::new(),
            operations: BTreeMap::new(),
            quiet: false,
            events: 0,
            hasher: DefaultHasher::new(),
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    fn run(&mut self) {
        tracing::debug!(plan = ?self.plan, "plan");
        for node in 0..self.machines.len() {
            self.restart_node(node);
        }
        if self.machines.len() == 1 {
            self.start();
        } else {
            for node in 0..self.machines.len() {
                self.bootstrap(node);
            }
        }
        self.schedule(self.options.duration_ns, Event::Quiet);
        let end_ns = self.options.duration_ns + LIVENESS_BOUND_NS;
        let events_max = end_ns / 1_000_000_000 * EVENTS_PER_SIMULATED_SECOND_MAX;
        while let Some(Reverse(queued)) = self.queue.pop() {
            if queued.at_ns > end_ns {
                break;
            }
            if self.events >= events_max {
                // Messages that beget messages faster than time passes (a storm): the run
                // would never end.
                self.checker.violate(
                    ViolationKind::Liveness,
                    self.now_ns,
                    format!(
                        "{} events by {}: a storm",
                        self.events,
                        format_ns(self.now_ns)
                    ),
                );
                return;
            }
            self.now_ns = queued.at_ns;
            self.events += 1;
            self.hasher.write_u64(queued.at_ns);
            self.hasher.write_u64(queued.event.code());
            if tracing::enabled!(tracing::Level::DEBUG) {
                let _span = tracing::debug_span!("sim", t = %format_ns(self.now_ns)).entered();
                tracing::debug!(event = ?queued.event);
            }
            self.handle(queued.event);
            if self.quiet && self.caught_up() && self.settled() {
                break;
            }
        }
        self.check_replicas();
        self.check_one_leader_each();
        let positions = self.consumer_positions();
        if tracing::enabled!(tracing::Level::DEBUG) {
            for (i, m) in self.machines.iter().enumerate() {
                let Some(node) = m.node.as_ref() else {
                    tracing::debug!(node = i + 1, "down at the end");
                    continue;
                };
                let led = node.leaderships(TOPIC);
                for p in node.partition_offsets().iter().filter(|p| p.topic == TOPIC) {
                    let leads = led.iter().find(|(q, _)| *q == p.partition).map(|(_, e)| *e);
                    tracing::debug!(node = i + 1, partition = p.partition, end = ?p.log_end_offset, hw = ?p.high_watermark, leads_in_epoch = ?leads, "at the end");
                }
            }
            tracing::debug!(?positions, acked_ends = ?self.checker.acked_ends(), "at the end");
        }
        self.checker.finish(self.now_ns, &positions);
        if self.plan.group.members > 0 {
            self.checker.finish_group(self.now_ns);
        }
        if self.plan.txn.producers > 0 {
            let caught_up = self.committed_caught_up();
            self.checker.finish_txns(self.now_ns, caught_up);
        }
    }

    /// A cluster has had time to settle since its last fault: nothing frozen, and every
    /// node awake for a few election timeouts (a node that slept through an election learns
    /// of it within one; clients, which follow leader epochs, may be done before that).
    fn settled(&self) -> bool {
        self.machines.len() == 1
            || (self.machines.iter())
                .all(|m| m.paused_until_ns.is_none() && self.now_ns >= m.awake_since_ns + SETTLE_NS)
                && self.now_ns >= self.options.duration_ns + SETTLE_NS
    }

    /// Once settled, each partition (the metadata quorum's included) has one leader: a node
    /// that still believes it leads an earlier epoch is stuck there (it waits for fetches
    /// that go to the new leader, and tells clients without a leader epoch that it leads).
    fn check_one_leader_each(&mut self) {
        if self.machines.len() == 1 || !self.settled() {
            return;
        }
        let mut leaders: BTreeMap<(&str, i32), Vec<(usize, i32)>> = BTreeMap::new();
        for (i, m) in self.machines.iter().enumerate() {
            let Some(node) = m.node.as_ref() else {
                continue;
            };
            for topic in [TOPIC, keel_core::metadata::METADATA_TOPIC] {
                for (partition, epoch) in node.leaderships(topic) {
                    leaders
                        .entry((topic, partition))
                        .or_default()
                        .push((i + 1, epoch));
                }
            }
        }
        let stale: Vec<String> = (leaders.iter())
            .filter(|(_, led)| led.len() > 1)
            .map(|((topic, partition), led)| {
                format!("{topic}-{partition} led by (node, epoch) {led:?}")
            })
            .collect();
        if !stale.is_empty() {
            self.checker.violate(
                ViolationKind::Liveness,
                self.now_ns,
                format!("after the cluster settled: {}", stale.join("; ")),
            );
        }
    }

    fn report(mut self) -> Report {
        let mut counts = crate::disk::DiskFaultCounts::default();
        for m in &self.machines {
            counts.add(&m.disk.0.borrow().fault_counts());
        }
        for (kind, count) in [
            ("read-flip", counts.read_flips),
            ("read-error", counts.read_errors),
            ("disk-full-write", counts.full_writes),
            ("torn-file", counts.torn_files),
            ("lost-entry-change", counts.lost_entry_changes),
            ("pages-left-clean", counts.pages_left_clean),
            ("rotten-sector", counts.rotten_sectors),
            ("latent-sector-error", counts.latent_sector_errors),
            ("lost-file", counts.lost_files),
            ("lost-write", counts.lost_writes),
            ("misdirected-write", counts.misdirected_writes),
        ] {
            if count > 0 {
                self.faults.insert(kind, count);
            }
        }
        let retired = self.checker.retired().len() as u64;
        if retired > 0 {
            self.faults.insert("partition-retired", retired);
        }
        for op in &self.ops {
            let outcome = match op.outcome {
                Outcome::Pending | Outcome::Unknown => "unknown",
                Outcome::Ok => "ok",
                Outcome::Fail => "fail",
            };
            *self
                .operations
                .entry(format!("produce:{outcome}"))
                .or_default() += 1;
        }
        self.hasher.write_u64(self.events);
        let plan = &self.plan;
        let workload = format!(
            "{} producers (a request every ~{} ms each, up to {} in flight), {} consumers, {} partitions, {} B segments",
            plan.producers,
            plan.produce_interval_ms,
            plan.max_in_flight,
            plan.consumers,
            plan.partitions,
            plan.segment_size_bytes
        );
        let workload = match (plan.group.members, plan.group.kip848) {
            (0, _) => workload,
            (n, None) => format!("{workload}, a group of {n} members"),
            (n, Some(v)) => format!("{workload}, a group of {n} members (KIP-848 v{v})"),
        };
        let workload = match &plan.lifecycle {
            l if l.on => format!(
                "{workload}, a lifecycle (retention.ms {:?}, segment.ms {}, DeleteRecords in {:.0}% of admin cycles)",
                l.retention_ms,
                l.segment_ms,
                l.delete_records_probability * 100.0
            ),
            _ => workload,
        };
        let workload = match &plan.lifecycle.compaction {
            Some(c) => format!(
                "{workload}, compacted ({}, {} keys, min.compaction.lag.ms {})",
                c.policy(),
                c.keys,
                c.min_compaction_lag_ms
            ),
            None => workload,
        };
        let workload = match &plan.txn {
            t if t.producers > 0 => format!(
                "{workload}, {} transactional producers (EndTxn v{}, {:.0}% aborted) and {} read_committed consumers",
                t.producers,
                t.end_txn_version,
                t.abort_probability * 100.0,
                t.committed_consumers
            ),
            _ => workload,
        };
        Report {
            seed: self.options.seed,
            workload,
            events: self.events,
            sim_ns: self.now_ns,
            faults: self.faults,
            operations: self.operations,
            violations: self.checker.violations().to_vec(),
            trace_hash: self.hasher.finish(),
        }
    }

    fn schedule(&mut self, at_ns: u64, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(Queued { at_ns, seq, event }));
    }

    fn exponential_ns(&mut self, mean_ms: u64) -> u64 {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        self.now_ns + (-(mean_ms as f64) * u.ln() * MS as f64) as u64
    }

    fn fault(&mut self, kind: &'static str) {
        tracing::debug!(fault = kind, "inject");
        *self.faults.entry(kind).or_default() += 1;
    }

    fn count(&mut self, operation: &str) {
        match self.operations.get_mut(operation) {
            Some(n) => *n += 1,
            None => {
                self.operations.insert(operation.to_string(), 1);
            }
        }
    }

    fn latency_ns(&mut self) -> u64 {
        let (low, high) = self.plan.latency_us;
        self.rng.random_range(low..=high) * 1_000
    }

    fn consumer_positions(&self) -> BTreeMap<i32, i64> {
        let mut furthest = BTreeMap::new();
        for client in &self.clients {
            // read_committed consumers step over aborted records without reading them: how
            // far they got says nothing of what the log holds there.
            if let Role::Consumer {
                positions,
                read_committed: false,
                ..
            } = &client.role
            {
                for (p, pos) in positions {
                    let f = furthest.entry(*p).or_insert(0);
                    *f = (*f).max(*pos);
                }
            }
        }
        furthest
    }

    /// The quiet phase can end: no write in flight, and consumers have read every partition
    /// up to its last acknowledged record.
    fn caught_up(&self) -> bool {
        if self
            .ops
            .iter()
            .rev()
            .take(64)
            .any(|op| op.outcome == Outcome::Pending)
        {
            return false;
        }
        let positions = self.consumer_positions();
        let read = self
            .checker
            .acked_ends()
            .iter()
            .all(|(p, end)| positions.get(p).is_some_and(|pos| pos >= end));
        read && (self.plan.group.members == 0 || self.checker.group_committed_to_ends())
            && (self.plan.txn.producers == 0 || self.committed_caught_up())
    }

    /// Every read_committed consumer has read every partition up to its last acknowledged
    /// record, and no transactional producer holds a transaction open.
    fn committed_caught_up(&self) -> bool {
        let txns_idle = (self.clients.iter()).all(|c| match &c.role {
            Role::Txn(t) => t.idle(),
            _ => true,
        });
        let ends = self.checker.acked_ends();
        txns_idle
            && (self.clients.iter()).all(|c| match &c.role {
                Role::Consumer {
                    positions,
                    read_committed: true,
                    ..
                } => ends
                    .iter()
                    .all(|(p, end)| positions.get(p).is_some_and(|pos| pos >= end)),
                _ => true,
            })
    }

    /// The node an event steps, if it steps one.
    fn stepped_node(&self, event: &Event) -> Option<usize> {
        match event {
            Event::ToNode { conn, .. } => self.links.get(conn).map(|l| l.node),
            Event::Synced { node, .. } | Event::NodeTimeout { node, .. } => Some(*node),
            Event::Peer { to, .. } => Some(*to),
            _ => None,
        }
    }

    fn handle(&mut self, event: Event) {
        // A frozen process reads nothing: what arrives for it waits until it wakes, then
        // comes in the order it arrived, and only then its timers (the adapter reads what is
        // ready before it looks at the clock): the order that lets a woken node take what it
        // hears for news of now, before it notices how long it heard nothing.
        if let Some(node) = self.stepped_node(&event) {
            if let Some(until) = self.machines[node].paused_until_ns {
                let frozen_ns = self.now_ns - self.machines[node].paused_from_ns;
                match event {
                    // `Resume` schedules the timers again, after what was held.
                    Event::NodeTimeout { .. } => self.machines[node].deadline_scheduled_ns = None,
                    // Its peers closed their links to it, silent too long: what they send
                    // from then on is lost (what arrived before waits in its socket), and the
                    // frames' numbers show the gap.
                    Event::Peer { .. }
                        if frozen_ns >= keel_core::limits::PEER_LINK_SILENCE_MAX_MS * MS =>
                    {
                        self.fault("peer-frame-link-closed");
                    }
                    _ => self.schedule(until, event),
                }
                return;
            }
        }
        match event {
            Event::ToNode { conn, what } => self.deliver_to_node(conn, what),
            Event::ToClient { conn, what } => self.deliver_to_client(conn, what),
            Event::Synced {
                node,
                incarnation,
                token,
                sync,
            } => {
                let m = &self.machines[node];
                if incarnation != m.incarnation || m.node.is_none() {
                    return;
                }
                if self.faulty() && self.rng.random_bool(self.plan.sync_error_probability) {
                    self.fault("sync-error");
                    if let Ok(pending) = sync {
                        self.machines[node].disk.0.borrow_mut().fail_sync(pending);
                    }
                    let result = Err(DiskError::Io("injected fsync failure".into()));
                    self.step_node(node, Input::Synced { token, result });
                    if self.machines[node].node.is_some() {
                        self.checker.violate(
                            ViolationKind::SyncFailureIgnored,
                            self.now_ns,
                            "the node went on after a failed sync".into(),
                        );
                    }
                    return;
                }
                let result = sync.and_then(|pending| {
                    self.machines[node].disk.0.borrow_mut().finish_sync(pending)
                });
                self.step_node(node, Input::Synced { token, result });
                self.check_high_watermarks(node);
            }
            Event::NodeTimeout { node, incarnation } => {
                let m = &mut self.machines[node];
                if incarnation == m.incarnation && m.node.is_some() {
                    m.deadline_scheduled_ns = None;
                    self.step_node(node, Input::Timeout);
                }
            }
            Event::ClientWake { client } => {
                if self.clients[client]
                    .wake_at_ns
                    .is_some_and(|at| at <= self.now_ns)
                {
                    self.clients[client].wake_at_ns = None;
                }
                self.client_act(client);
            }
            Event::Crash => {
                if self.quiet {
                    return;
                }
                let node = self.random_node();
                if self.machines[node].node.is_some() {
                    self.fault("crash");
                    self.crash_node(node);
                }
                let interval = self.plan.crash_interval_ms.expect("crashes planned");
                let at = self.exponential_ns(interval);
                self.schedule(at, Event::Crash);
            }
            Event::CrashNode { node, producer } => {
                if !self.quiet && self.machines[node].node.is_some() {
                    self.fault("crash-coordinator");
                    self.crash_node(node);
                    if let Some((client, key)) = producer {
                        self.txn_crash_in_commit(client, key);
                    }
                }
            }
            Event::Restart { node } => {
                if self.machines[node].node.is_none() {
                    self.restart_node(node);
                }
            }
            Event::DiskFull { node, full } => {
                if full && !self.quiet {
                    self.fault("disk-full");
                    self.machines[node].disk.0.borrow_mut().set_full(true);
                    let at = self.now_ns + self.rng.random_range(100 * MS..5_000 * MS);
                    self.schedule(at, Event::DiskFull { node, full: false });
                } else if !full {
                    self.machines[node].disk.0.borrow_mut().set_full(false);
                    if !self.quiet {
                        let interval = self.plan.disk_full_interval_ms.expect("planned");
                        let at = self.exponential_ns(interval);
                        let node = self.random_node();
                        self.schedule(at, Event::DiskFull { node, full: true });
                    }
                }
            }
            Event::Quiet => {
                tracing::debug!("faults stop");
                self.quiet = true;
                self.network.quiet();
                for m in &self.machines {
                    let mut disk = m.disk.0.borrow_mut();
                    disk.set_faults(DiskFaults::default());
                    disk.set_full(false);
                }
            }
            Event::Peer { from, to, bytes } => {
                if !self.network.delivers(from, to) {
                    self.fault("peer-frame-cut");
                    return;
                }
                let from_id = self.machines[from].config.node_id;
                self.step_node(
                    to,
                    Input::PeerMessage {
                        from: from_id,
                        bytes: &bytes,
                    },
                );
            }
            Event::Partition { heal } => {
                if self.quiet {
                    return;
                }
                if heal {
                    tracing::debug!("network heals");
                    self.network.heal();
                    self.check_replicas();
                    let interval = self.plan.net.partition_interval_ms.expect("planned");
                    let at = self.exponential_ns(interval);
                    self.schedule(at, Event::Partition { heal: false });
                } else {
                    let partition = self.network.partition(&mut self.rng);
                    tracing::debug!(kind = partition.kind, cuts = ?partition.cuts, "network cut");
                    self.fault(partition.kind);
                    let at = self.now_ns + self.rng.random_range(200 * MS..=8_000 * MS);
                    self.schedule(at, Event::Partition { heal: true });
                }
            }
            Event::CorrelatedCrash => {
                if self.quiet {
                    return;
                }
                let n = self.machines.len();
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, self.rng.random_range(0..=i));
                }
                self.fault("correlated-crash");
                for node in order.into_iter().take(n / 2 + 1) {
                    if self.machines[node].node.is_some() {
                        self.crash_node(node);
                    }
                }
                let interval = self.plan.net.correlated_crash_interval_ms.expect("planned");
                let at = self.exponential_ns(interval);
                self.schedule(at, Event::CorrelatedCrash);
            }
            Event::Bootstrap { node } => {
                if !self.machines[node].bootstrapped {
                    self.bootstrap(node);
                }
            }
            Event::Pause => {
                if self.quiet {
                    return;
                }
                let node = self.random_node();
                let m = &mut self.machines[node];
                if m.node.is_some() && m.paused_until_ns.is_none() {
                    // Past the links' silence limit in some: the peers then close them.
                    let until = self.now_ns + self.rng.random_range(200 * MS..=8_000 * MS);
                    self.machines[node].paused_until_ns = Some(until);
                    self.machines[node].paused_from_ns = self.now_ns;
                    tracing::debug!(node, until = %format_ns(until), "process frozen");
                    self.fault("pause");
                    self.schedule(
                        until,
                        Event::Resume {
                            node,
                            until_ns: until,
                        },
                    );
                }
                let interval = self.plan.net.pause_interval_ms.expect("planned");
                let at = self.exponential_ns(interval);
                self.schedule(at, Event::Pause);
            }
            Event::Resume { node, until_ns } => {
                if self.machines[node].paused_until_ns != Some(until_ns) {
                    return;
                }
                self.machines[node].paused_until_ns = None;
                self.machines[node].awake_since_ns = self.now_ns;
                if self.machines[node].node.is_some() {
                    self.schedule_deadline(node);
                }
            }
            Event::Clog => {
                if self.quiet {
                    return;
                }
                let until = self.now_ns + self.rng.random_range(50 * MS..=3_000 * MS);
                let link = self.network.clog(&mut self.rng, until);
                tracing::debug!(?link, until = %format_ns(until), "link clogged");
                self.fault("clog");
                let interval = self.plan.net.clog_interval_ms.expect("planned");
                let at = self.exponential_ns(interval);
                self.schedule(at, Event::Clog);
            }
        }
    }

    /// Faults are injected: the run started and the quiet phase has not.
    fn faulty(&self) -> bool {
        self.started && !self.quiet
    }

    /// A node drawn at random (no draw with one node, so single-node seeds keep their
    /// meaning).
    fn random_node(&mut self) -> usize {
        match self.machines.len() {
            1 => 0,
            n => self.rng.random_range(0..n),
        }
    }
}

/// Simulated time as seconds with microseconds, for traces.
pub fn format_ns(ns: u64) -> String {
    format!(
        "{}.{:06}s",
        ns / 1_000_000_000,
        (ns % 1_000_000_000) / 1_000
    )
}
