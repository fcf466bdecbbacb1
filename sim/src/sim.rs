//! The harness: one seed, one virtual clock, one event queue, one node (the production
//! `keel_core::node::Node`) on a simulated disk, and clients that speak the Kafka protocol to
//! it through Keel's codec over simulated connections.
//!
//! Everything that happens is an [`Event`] in a queue ordered by (time, sequence); handling
//! one may schedule others. Randomness comes from one PRNG seeded from the seed (the disk has
//! its own, seeded from it too), so a seed replays exactly: the trace hash mixes every event
//! and every byte the node sends, and two runs of a seed must agree on it.
//!
//! A run has two phases. Until `duration`, faults are injected at the rates the seed's
//! [`Plan`] chose. Then the quiet phase: faults stop, a crashed node restarts, producers stop
//! writing, and consumers must read back every acknowledged record within
//! [`LIVENESS_BOUND_NS`] of simulated time.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::hash::{DefaultHasher, Hasher};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use keel_core::disk::{Disk, DiskError, FileId};
use keel_core::log::LogConfig;
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
    },
    Admin(Box<AdminState>),
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
    /// A consumer of a cluster moves on to another leader once its fetch is answered.
    rotate: bool,
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

/// One record per value, a millisecond apart.
fn batch_records(values: &[u64], padding_bytes: usize) -> Vec<NewRecord> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| NewRecord {
            timestamp_delta: i as i64,
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
        let first_disk_seed = rng.random();
        let cluster = (1..=nodes as i32)
            .map(|n| Broker {
                node_id: n,
                host: format!("node{n}"),
                port: 9092,
            })
            .collect::<Vec<_>>();
        let node_config = Config {
            node_id: 1,
            cluster: if nodes > 1 { cluster } else { Vec::new() },
            advertised_host: "sim".into(),
            advertised_port: 9092,
            default_partitions: plan.partitions,
            log: LogConfig {
                segment_size_bytes: plan.segment_size_bytes,
                producer_id_expiration_ms: plan
                    .producer_id_expiration_ms
                    .unwrap_or(LogConfig::default().producer_id_expiration_ms),
                ..LogConfig::default()
            },
            seed: rng.random(),
            planted_bug: options.bug,
            durability: options.durability,
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
                }),
                acks: if rng.random_bool(0.5) { 1 } else { -1 },
                next_value: 0,
                next_send_seq: 0,
                next_send_at_ns: 0,
            });
        }
        for _ in 0..plan.consumers {
            clients.push(Role::Consumer {
                positions: (0..plan.partitions).map(|p| (p, 0)).collect(),
                next_poll_at_ns: 0,
                fetching: false,
            });
        }
        if plan.admin {
            clients.push(Role::Admin(Box::new(AdminState::new())));
        }
        let clients = clients
            .into_iter()
            .enumerate()
            .map(|(i, role)| Client {
                role,
                node: i % nodes,
                leaders: BTreeMap::new(),
                rotate: false,
                conn: None,
                reconnect_at_ns: 0,
                wake_at_ns: None,
                next_correlation_id: 0,
            })
            .collect();
        // A cluster's disks start without faults: the harness creates the topic on every
        // node first (`bootstrap`), then turns them on.
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
                        ..node_config.clone()
                    },
                    incarnation: 0,
                    deadline_scheduled_ns: None,
                    high_watermarks: BTreeMap::new(),
                    bootstrapped: false,
                }
            })
            .collect();
        let network = Network::new(nodes, plan.net);
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
            links: BTreeMap::new(),
            next_conn: 1,
            clients,
            ops: Vec::new(),
            checker: Checker::default(),
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
            if self.quiet && self.caught_up() {
                break;
            }
        }
        self.check_replicas();
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
            if let Role::Consumer { positions, .. } = &client.role {
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
        self.checker
            .acked_ends()
            .iter()
            .all(|(p, end)| positions.get(p).is_some_and(|pos| pos >= end))
    }

    fn handle(&mut self, event: Event) {
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

    // ---- the nodes' side ----

    /// A cluster's nodes each create the workload topic from the same request before
    /// anything else happens, so that they draw the same topic id (until the metadata quorum
    /// names topics once for all); clients and faults start once every node answered.
    fn bootstrap(&mut self, node: usize) {
        let id = self.next_conn;
        self.next_conn += 1;
        self.links.insert(
            id,
            Link {
                client: BOOTSTRAP,
                node,
                to_node_at_ns: self.now_ns,
                to_client_at_ns: self.now_ns,
                at_node: None,
                slow_reader: false,
            },
        );
        let header = RequestHeader {
            api_key: ApiKey::Metadata as i16,
            api_version: 12,
            correlation_id: 1,
            client_id: Some("sim-bootstrap".into()),
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        encode_request(&mut buf, &header, &self.metadata_request())
            .expect("the simulator's requests encode");
        self.send_to_node(id, ToNode::Open);
        self.send_to_node(id, ToNode::Bytes(buf.freeze()));
    }

    fn on_bootstrap_answer(&mut self, conn: ConnId, what: ToClient) {
        let node = self.links[&conn].node;
        self.send_to_node(conn, ToNode::Close);
        match what {
            ToClient::Bytes(_) => {
                self.machines[node].bootstrapped = true;
                if !self.started && self.machines.iter().all(|m| m.bootstrapped) {
                    self.start();
                }
            }
            // Refused (the node was not up yet): again.
            ToClient::Close => {
                if !self.machines[node].bootstrapped {
                    self.bootstrap(node)
                }
            }
        }
    }

    /// Clients start and faults begin.
    fn start(&mut self) {
        self.started = true;
        if self.machines.len() > 1 {
            for m in &self.machines {
                m.disk.0.borrow_mut().set_faults(self.plan.disk);
            }
        }
        for client in 0..self.clients.len() {
            let at = self.now_ns + self.rng.random_range(0..100 * MS);
            self.schedule_wake(client, at);
        }
        if let Some(interval) = self.plan.crash_interval_ms {
            let at = self.exponential_ns(interval);
            self.schedule(at, Event::Crash);
        }
        if let Some(interval) = self.plan.disk_full_interval_ms {
            let at = self.exponential_ns(interval);
            let node = self.random_node();
            self.schedule(at, Event::DiskFull { node, full: true });
        }
        if self.machines.len() > 1 {
            if let Some(interval) = self.plan.net.partition_interval_ms {
                let at = self.exponential_ns(interval);
                self.schedule(at, Event::Partition { heal: false });
            }
            if let Some(interval) = self.plan.net.clog_interval_ms {
                let at = self.exponential_ns(interval);
                self.schedule(at, Event::Clog);
            }
            if let Some(interval) = self.plan.net.correlated_crash_interval_ms {
                let at = self.exponential_ns(interval);
                self.schedule(at, Event::CorrelatedCrash);
            }
        }
    }

    fn restart_node(&mut self, node: usize) {
        let m = &self.machines[node];
        match Node::new(m.config.clone(), m.disk.clone()) {
            Ok((started, events)) => {
                let mut cut = BTreeSet::new();
                for event in events {
                    tracing::debug!(?event, "recovery");
                    if let RecoveryEvent::Recovered {
                        topic,
                        partition,
                        truncated_bytes,
                        ..
                    } = event
                    {
                        if topic == TOPIC && truncated_bytes > 0 {
                            cut.insert(partition);
                        }
                    }
                }
                if self.machines[node].incarnation > 0 {
                    *self.faults.entry("restart").or_default() += 1;
                }
                self.machines[node].high_watermarks.clear();
                let single = self.machines.len() == 1;
                for p in started
                    .partition_offsets()
                    .into_iter()
                    .filter(|p| p.topic == TOPIC)
                {
                    // A cluster's replica may be short of what was acknowledged (it was not
                    // in the majority); what the cluster holds is checked by reading it.
                    if single {
                        let damage = self.damage(node, p.partition, cut.contains(&p.partition));
                        self.checker
                            .on_restart(self.now_ns, p.partition, p.log_end_offset, damage);
                    }
                    if let Some(hw) = p.high_watermark {
                        self.machines[node].high_watermarks.insert(p.partition, hw);
                    }
                }
                self.machines[node].node = Some(started);
                self.schedule_deadline(node);
            }
            Err(e) => {
                tracing::debug!(node, error = %e, "the node failed to start");
                self.fault("restart-failed");
                self.machines[node].disk.0.borrow_mut().crash();
                let at = self.now_ns + self.rng.random_range(10 * MS..=500 * MS);
                self.schedule(at, Event::Restart { node });
            }
        }
    }

    /// Whether lasting damage struck `partition`'s files, and if so the recovery point the
    /// node found on the disk (read by the simulator itself: 8 bytes of offset, a CRC-32C).
    fn damage(&self, node: usize, partition: i32, cut: bool) -> Option<Damage> {
        let dir = format!("{TOPIC}-{partition}/");
        let disk = self.machines[node].disk.0.borrow();
        if !disk.damaged().any(|name| name.starts_with(&dir)) {
            return None;
        }
        let recovery_point = disk
            .contents(&format!("{dir}recovery-point"))
            .and_then(|raw| raw.first_chunk::<12>())
            .and_then(|raw| {
                let offset = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
                let crc = u32::from_be_bytes(raw[8..].try_into().expect("4 bytes"));
                (crc32c::crc32c(&raw[..8]) == crc).then_some(offset)
            });
        Some(Damage {
            recovery_point,
            cut,
        })
    }

    /// The process dies: its connections reset, its pending syncs never complete, its disk
    /// keeps only what was synced (or a torn part of the rest).
    fn crash_node(&mut self, node: usize) {
        self.stop_node(node, true);
    }

    /// The process dies; with `machine`, the machine too (the page cache is lost).
    fn stop_node(&mut self, node: usize, machine: bool) {
        let m = &mut self.machines[node];
        let Some(process) = m.node.take() else {
            return;
        };
        drop(process);
        let incarnation = m.incarnation;
        let open: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| l.node == node && l.at_node == Some(incarnation))
            .map(|(id, _)| *id)
            .collect();
        for conn in open {
            self.links.get_mut(&conn).expect("listed").at_node = None;
            self.send_to_client(conn, ToClient::Close);
        }
        let m = &mut self.machines[node];
        m.incarnation += 1;
        m.deadline_scheduled_ns = None;
        if machine {
            m.disk.0.borrow_mut().crash();
        } else {
            m.disk.0.borrow_mut().close_all();
        }
        let at = self.now_ns + self.rng.random_range(1..=self.plan.restart_delay_ms_max) * MS;
        self.schedule(at, Event::Restart { node });
    }

    fn step_node(&mut self, node: usize, input: Input<'_>) {
        let m = &mut self.machines[node];
        let Some(process) = m.node.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        {
            let _span =
                tracing::debug_span!("node", id = m.config.node_id, t = %format_ns(self.now_ns))
                    .entered();
            process.step(Instant(EPOCH_NS + self.now_ns), input, &mut out);
            process.check_invariants();
        }
        let mut halted = false;
        for output in out {
            match output {
                Output::ConnSend { conn, bytes } => {
                    self.hasher.write_u64(conn);
                    // CRC-32C is fast and enough: the hash must see every byte, not resist attacks.
                    self.hasher.write_u32(crc32c::crc32c(&bytes));
                    self.send_to_client(conn, ToClient::Bytes(bytes));
                }
                Output::ConnClose { conn, reason } => {
                    tracing::debug!(conn, %reason, "node closes");
                    if let Some(link) = self.links.get_mut(&conn) {
                        link.at_node = None;
                    }
                    self.send_to_client(conn, ToClient::Close);
                }
                Output::Sync { token, file } => {
                    let (low, high) = self.plan.sync_latency_us;
                    let mut delay_ns = self.rng.random_range(low..=high) * 1_000;
                    if self.faulty() && self.rng.random_bool(self.plan.slow_sync_probability) {
                        self.fault("slow-sync");
                        delay_ns += self.rng.random_range(100 * MS..=2_000 * MS);
                    }
                    let m = &self.machines[node];
                    let incarnation = m.incarnation;
                    let sync = m.disk.0.borrow_mut().begin_sync(file);
                    self.schedule(
                        self.now_ns + delay_ns,
                        Event::Synced {
                            node,
                            incarnation,
                            token,
                            sync,
                        },
                    );
                }
                Output::Halt { reason } => {
                    tracing::debug!(%reason, "node halts");
                    halted = true;
                }
                Output::PeerSend { to, bytes } => {
                    let Some(to) = (self.machines.iter())
                        .position(|m| m.config.node_id == to)
                        .filter(|to| *to != node)
                    else {
                        self.checker.violate(
                            ViolationKind::Protocol,
                            self.now_ns,
                            format!("node {} sent a frame to node {to}", node + 1),
                        );
                        continue;
                    };
                    self.hasher.write_u64(to as u64);
                    self.hasher.write_u32(crc32c::crc32c(&bytes));
                    self.check_votes_durable(node, to, &bytes);
                    let deliveries =
                        (self.network).send(&mut self.rng, self.now_ns, node, to, &mut self.faults);
                    for at in deliveries {
                        let bytes = bytes.clone();
                        self.schedule(
                            at,
                            Event::Peer {
                                from: node,
                                to,
                                bytes,
                            },
                        );
                    }
                }
            }
        }
        if halted {
            // The process exits; whatever supervises it starts it again. The machine may stay
            // up, and its page cache with it.
            let same_kernel = self.plan.same_kernel_restart_probability > 0.0
                && self
                    .rng
                    .random_bool(self.plan.same_kernel_restart_probability);
            if same_kernel {
                self.fault("process-restart");
            }
            self.stop_node(node, !same_kernel);
        } else {
            self.schedule_deadline(node);
            if self.machines.len() > 1 {
                self.check_leaders(node);
            }
        }
    }

    fn schedule_deadline(&mut self, node: usize) {
        let m = &mut self.machines[node];
        let Some(deadline) = m.node.as_ref().and_then(|n| n.next_deadline()) else {
            return;
        };
        let at = deadline.0.saturating_sub(EPOCH_NS).max(self.now_ns);
        if m.deadline_scheduled_ns.is_some_and(|s| s <= at) {
            return;
        }
        m.deadline_scheduled_ns = Some(at);
        let incarnation = m.incarnation;
        self.schedule(at, Event::NodeTimeout { node, incarnation });
    }

    /// The high watermark never goes back within one incarnation of a node.
    fn check_high_watermarks(&mut self, node: usize) {
        let m = &mut self.machines[node];
        let Some(process) = m.node.as_ref() else {
            return;
        };
        let mut back = Vec::new();
        for p in process
            .partition_offsets()
            .into_iter()
            .filter(|p| p.topic == TOPIC)
        {
            let Some(hw) = p.high_watermark else { continue };
            let before = m.high_watermarks.insert(p.partition, hw);
            if let Some(before) = before.filter(|b| *b > hw) {
                back.push(format!(
                    "node {} partition {} high watermark went back from {before} to {hw}",
                    node + 1,
                    p.partition,
                ));
            }
        }
        for detail in back {
            self.checker
                .violate(ViolationKind::LostWrite, self.now_ns, detail);
        }
    }

    /// A granted vote, or a leader's announcement of its epoch, leaves only once the vote is
    /// durable: the sender's durable vote table (the newest whole copy a crash would keep)
    /// holds that vote, or a later epoch.
    fn check_votes_durable(&mut self, node: usize, to: usize, bytes: &Bytes) {
        let Ok(frame) = keel_core::raft::wire::decode(bytes.clone()) else {
            self.checker.violate(
                ViolationKind::Protocol,
                self.now_ns,
                format!("node {} sent an undecodable peer frame", node + 1),
            );
            return;
        };
        let (me, them) = (node as i32 + 1, to as i32 + 1);
        let needs: Vec<_> = (frame.messages.iter())
            .filter_map(|(group, message)| match message {
                Message::VoteResponse {
                    epoch,
                    granted: true,
                } => Some((*group, *epoch, them, "granted a vote")),
                Message::BeginEpoch { epoch } => Some((*group, *epoch, me, "announced it leads")),
                _ => None,
            })
            .collect();
        if needs.is_empty() {
            return;
        }
        let durable = durable_votes(&self.machines[node].disk.0.borrow());
        for (group, epoch, voted_for, what) in needs {
            let held = durable.get(&group).copied().unwrap_or_default();
            if held.epoch > epoch || (held.epoch == epoch && held.voted_for == Some(voted_for)) {
                continue;
            }
            self.checker.violate(
                ViolationKind::UndurableVote,
                self.now_ns,
                format!(
                    "node {me} {what} in epoch {epoch} of partition {} (vote for node {voted_for}) with {held:?} durable",
                    group.partition
                ),
            );
        }
    }

    /// An acks=all acknowledgement in a cluster: a majority of the nodes hold the batch where
    /// the answer put it, durably (a crash of every machine now would keep it).
    fn check_replicated(&mut self, op: usize, base_offset: i64) {
        // Replicated durability promises memory, not disks: its losses show as lost writes.
        if self.machines.len() == 1 || self.options.durability == Durability::Replicated {
            return;
        }
        let Some(crc) = replicas::batch_crc(&self.ops[op].batch) else {
            return;
        };
        let partition = self.ops[op].write.partition;
        let dir = format!("{TOPIC}-{partition}/");
        let holders: Vec<usize> = (self.machines.iter().enumerate())
            .filter(|(_, m)| {
                replicas::durable_batch_at(&m.disk.0.borrow(), &dir, base_offset)
                    .is_some_and(|b| b.crc == crc)
            })
            .map(|(i, _)| i + 1)
            .collect();
        let majority = self.machines.len() / 2 + 1;
        if holders.len() < majority {
            self.checker.violate(
                ViolationKind::UnreplicatedAck,
                self.now_ns,
                format!(
                    "partition {partition} offset {base_offset} acknowledged (acks=all) while durable on nodes {holders:?} only"
                ),
            );
        }
    }

    /// Replicas agree below their high watermarks: every pair of running nodes holds the same
    /// batches (offsets, leader epochs, CRCs) below the lower of their two high watermarks.
    fn check_replicas(&mut self) {
        if self.machines.len() == 1 {
            return;
        }
        for partition in 0..self.plan.partitions {
            let dir = format!("{TOPIC}-{partition}/");
            let views: Vec<(usize, i64, Vec<replicas::StoredBatch>)> = (self.machines.iter())
                .enumerate()
                .filter_map(|(i, m)| {
                    let node = m.node.as_ref()?;
                    let hw = (node.partition_offsets().into_iter())
                        .find(|p| p.topic == TOPIC && p.partition == partition)?
                        .high_watermark?;
                    Some((i, hw, replicas::cached_batches(&m.disk.0.borrow(), &dir)))
                })
                .collect();
            for (a, (node_a, hw_a, batches_a)) in views.iter().enumerate() {
                for (node_b, hw_b, batches_b) in &views[a + 1..] {
                    let bound = (*hw_a).min(*hw_b);
                    let below = |batches: &[replicas::StoredBatch]| {
                        batches
                            .iter()
                            .filter(|b| b.last_offset < bound)
                            .copied()
                            .collect::<Vec<_>>()
                    };
                    let (left, right) = (below(batches_a), below(batches_b));
                    if left != right {
                        let first = left.iter().zip(&right).find(|(l, r)| l != r);
                        self.checker.violate(
                            ViolationKind::ReplicasDiverge,
                            self.now_ns,
                            format!(
                                "partition {partition} below offset {bound}: node {} and node {} differ ({} and {} batches; first difference {first:?})",
                                node_a + 1,
                                node_b + 1,
                                left.len(),
                                right.len()
                            ),
                        );
                    }
                }
            }
        }
    }

    /// At most one leader per partition per epoch: every node that says it leads a partition
    /// in an epoch must be the only one that ever did.
    fn check_leaders(&mut self, node: usize) {
        let Some(process) = self.machines[node].node.as_ref() else {
            return;
        };
        for (partition, epoch) in process.leaderships(TOPIC) {
            let first = *self
                .leader_of_epoch
                .entry((partition, epoch))
                .or_insert(node);
            if first != node {
                self.checker.violate(
                    ViolationKind::TwoLeaders,
                    self.now_ns,
                    format!(
                        "nodes {} and {} both led partition {partition} in epoch {epoch}",
                        first + 1,
                        node + 1
                    ),
                );
            }
        }
    }

    fn deliver_to_node(&mut self, conn: ConnId, what: ToNode) {
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        let node = link.node;
        let incarnation = self.machines[node].incarnation;
        let node_up = self.machines[node].node.is_some();
        let link = self.links.get_mut(&conn).expect("checked");
        let open_here = node_up && link.at_node == Some(incarnation);
        match what {
            ToNode::Open if node_up => {
                link.at_node = Some(incarnation);
                self.step_node(node, Input::ConnOpened { conn });
            }
            // Connection refused.
            ToNode::Open => self.send_to_client(conn, ToClient::Close),
            ToNode::Bytes(bytes) if open_here => self.step_node(
                node,
                Input::ConnBytes {
                    conn,
                    bytes: &bytes,
                },
            ),
            ToNode::Close if open_here => {
                link.at_node = None;
                self.step_node(node, Input::ConnClosed { conn });
            }
            ToNode::Bytes(_) | ToNode::Close => {}
        }
    }

    fn send_to_client(&mut self, conn: ConnId, what: ToClient) {
        let mut delay_ns = self.latency_ns();
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        if link.slow_reader && !self.quiet {
            delay_ns += self.rng.random_range(10 * MS..=300 * MS);
        }
        let link = self.links.get_mut(&conn).expect("checked");
        let at = (self.now_ns + delay_ns).max(link.to_client_at_ns);
        link.to_client_at_ns = at;
        self.schedule(at, Event::ToClient { conn, what });
    }

    fn send_to_node(&mut self, conn: ConnId, what: ToNode) {
        let delay_ns = self.latency_ns();
        let link = self.links.get_mut(&conn).expect("a client's connection");
        let at = (self.now_ns + delay_ns).max(link.to_node_at_ns);
        link.to_node_at_ns = at;
        self.schedule(at, Event::ToNode { conn, what });
    }

    // ---- the clients' side ----

    fn schedule_wake(&mut self, client: usize, at_ns: u64) {
        let at_ns = at_ns.max(self.now_ns);
        let c = &mut self.clients[client];
        if c.wake_at_ns.is_some_and(|w| w <= at_ns) {
            return;
        }
        c.wake_at_ns = Some(at_ns);
        self.schedule(at_ns, Event::ClientWake { client });
    }

    /// Whatever the client can do now: reconnect, time out, send; then sleep until the next
    /// thing it waits for.
    fn client_act(&mut self, client: usize) {
        enum Action {
            Connect,
            TimeOut,
            Metadata,
            InitProducerId,
            Retry,
            Produce,
            Fetch,
            Admin,
            Move(usize),
            Sleep(Option<u64>),
        }
        loop {
            let now = self.now_ns;
            let c = &self.clients[client];
            let action = match &c.conn {
                None if self.quiet
                    && !has_retries(&c.role)
                    && matches!(c.role, Role::Producer { .. }) =>
                {
                    return
                }
                None if now >= c.reconnect_at_ns => Action::Connect,
                None => Action::Sleep(Some(c.reconnect_at_ns)),
                Some(conn) => {
                    let deadline = conn.pending.front().map(|p| p.deadline_ns);
                    let mut next = deadline;
                    let mut soonest = |at: u64| next = Some(next.map_or(at, |n: u64| n.min(at)));
                    if deadline.is_some_and(|d| d <= now) {
                        Action::TimeOut
                    } else if conn.metadata_at_ns.is_some_and(|at| at <= now) {
                        Action::Metadata
                    } else if let Some(target) = self.move_target(client) {
                        Action::Move(target)
                    } else {
                        if let Some(at) = conn.metadata_at_ns {
                            soonest(at);
                        }
                        match &c.role {
                            Role::Producer {
                                idempotence: Some(idem),
                                ..
                            } if conn.ready
                                && (idem.producer_id < 0 || idem.init_at_ns.is_some()) =>
                            {
                                match idem.init_at_ns {
                                    _ if idem.initializing => Action::Sleep(next),
                                    Some(at) if at > now => {
                                        soonest(at);
                                        Action::Sleep(next)
                                    }
                                    _ => Action::InitProducerId,
                                }
                            }
                            Role::Producer {
                                idempotence: Some(idem),
                                ..
                            } if conn.ready
                                && !idem.retries.is_empty()
                                && conn.pending.len() < self.plan.max_in_flight =>
                            {
                                Action::Retry
                            }
                            Role::Producer {
                                next_send_at_ns, ..
                            } if conn.ready
                                && !self.quiet
                                && conn.pending.len() < self.plan.max_in_flight =>
                            {
                                if *next_send_at_ns <= now {
                                    Action::Produce
                                } else {
                                    soonest(*next_send_at_ns);
                                    Action::Sleep(next)
                                }
                            }
                            Role::Admin(admin)
                                if conn.ready && !self.quiet && admin.in_flight == 0 =>
                            {
                                if admin.next_at_ns <= now {
                                    Action::Admin
                                } else {
                                    soonest(admin.next_at_ns);
                                    Action::Sleep(next)
                                }
                            }
                            Role::Consumer {
                                next_poll_at_ns,
                                fetching: false,
                                ..
                            } if conn.ready => {
                                if *next_poll_at_ns <= now {
                                    Action::Fetch
                                } else {
                                    soonest(*next_poll_at_ns);
                                    Action::Sleep(next)
                                }
                            }
                            _ => Action::Sleep(next),
                        }
                    }
                }
            };
            match action {
                Action::Connect => self.connect(client),
                Action::TimeOut => {
                    self.count("request-timeout");
                    self.client_close(client);
                }
                Action::Metadata => {
                    if let Some(conn) = self.clients[client].conn.as_mut() {
                        conn.metadata_at_ns = None;
                    }
                    self.send_metadata(client);
                }
                Action::InitProducerId => self.init_producer_id(client),
                Action::Retry => self.retry(client),
                Action::Produce => {
                    self.produce(client);
                    let mut at = self.exponential_ns(self.plan.produce_interval_ms);
                    if self.plan.producer_idle_probability > 0.0
                        && self.rng.random_bool(self.plan.producer_idle_probability)
                    {
                        // Idle for longer than the node remembers producers.
                        self.count("producer:idle");
                        let expiry_ms = self.plan.producer_id_expiration_ms.unwrap_or(10_000);
                        at += (expiry_ms as u64 + self.rng.random_range(0..=expiry_ms as u64)) * MS;
                    }
                    if let Role::Producer {
                        next_send_at_ns, ..
                    } = &mut self.clients[client].role
                    {
                        *next_send_at_ns = at;
                    }
                }
                Action::Fetch => {
                    if let Role::Consumer { fetching, .. } = &mut self.clients[client].role {
                        *fetching = true;
                    }
                    self.fetch(client);
                }
                Action::Admin => self.admin_act(client),
                Action::Move(target) => {
                    tracing::debug!(client, to = target + 1, "client moves");
                    self.count("client:move");
                    self.client_close(client);
                    let c = &mut self.clients[client];
                    c.node = target;
                    c.rotate = false;
                    c.reconnect_at_ns = self.now_ns;
                }
                Action::Sleep(at) => {
                    if let Some(at) = at {
                        self.schedule_wake(client, at);
                    }
                    return;
                }
            }
        }
    }

    /// The node a cluster's client should talk to instead of its own, with nothing in flight:
    /// the leader of the partition its next retry is for, a leader of something if its node
    /// leads nothing, or (a consumer that read) the next leader in turn.
    fn move_target(&self, client: usize) -> Option<usize> {
        if self.machines.len() == 1 {
            return None;
        }
        let c = &self.clients[client];
        let conn = c.conn.as_ref()?;
        if !conn.ready || !conn.pending.is_empty() {
            return None;
        }
        let here = c.node;
        let elsewhere: BTreeSet<usize> =
            c.leaders.values().copied().filter(|n| *n != here).collect();
        let leads_here = c.leaders.values().any(|n| *n == here);
        let unknown = c.leaders.len() < self.plan.partitions as usize;
        let next = (here + 1) % self.machines.len();
        let pick = || {
            let i = (self.now_ns / 1_000) as usize % elsewhere.len().max(1);
            elsewhere.iter().nth(i).copied()
        };
        match &c.role {
            Role::Producer { idempotence, .. } => {
                if let Some(idem) = idempotence {
                    if idem.producer_id < 0 || idem.init_at_ns.is_some() || idem.initializing {
                        // Any node hands out ids.
                        return None;
                    }
                    if let Some(op) = idem.retries.front() {
                        let p = self.ops[*op].write.partition;
                        return c.leaders.get(&p).copied().filter(|n| *n != here);
                    }
                }
                if leads_here {
                    None
                } else {
                    pick().or(unknown.then_some(next))
                }
            }
            // A node that does not know every partition's leader (its replica is offline, or
            // cut off): ask the next one, as clients ask another broker for metadata.
            Role::Consumer { .. } if unknown => Some(next),
            Role::Consumer { .. } if c.rotate || !leads_here => pick(),
            Role::Consumer { .. } | Role::Admin(_) => None,
        }
    }

    /// A cluster's client asks for Metadata again soon: leadership moved.
    fn refresh_metadata(&mut self, client: usize) {
        let at = self.now_ns + 50 * MS;
        if let Some(conn) = self.clients[client].conn.as_mut() {
            conn.metadata_at_ns.get_or_insert(at);
        }
    }

    fn connect(&mut self, client: usize) {
        let id = self.next_conn;
        self.next_conn += 1;
        let slow_reader = !self.quiet && self.rng.random_bool(self.plan.slow_reader_probability);
        if slow_reader {
            self.fault("slow-reader");
        }
        self.links.insert(
            id,
            Link {
                client,
                node: self.clients[client].node,
                to_node_at_ns: self.now_ns,
                to_client_at_ns: self.now_ns,
                at_node: None,
                slow_reader,
            },
        );
        self.clients[client].conn = Some(ClientConn {
            id,
            frames: FrameDecoder::new(CLIENT_MAX_FRAME_BYTES),
            pending: VecDeque::new(),
            ready: false,
            metadata_at_ns: None,
        });
        self.send_to_node(id, ToNode::Open);
        self.send_metadata(client);
    }

    /// The client drops its connection (a timeout, or a reset it injected itself).
    fn client_close(&mut self, client: usize) {
        let Some(conn) = self.clients[client].conn.as_ref() else {
            return;
        };
        let id = conn.id;
        self.send_to_node(id, ToNode::Close);
        self.conn_lost(client);
    }

    /// The connection is gone: whatever was in flight has an unknown outcome.
    fn conn_lost(&mut self, client: usize) {
        let Some(conn) = self.clients[client].conn.take() else {
            return;
        };
        for pending in conn.pending {
            match pending.kind {
                PendingKind::Produce { op } => {
                    self.ops[op].outcome = Outcome::Unknown;
                    self.ops[op].attempted_unknown = true;
                    if let Some(idem) = idempotence(&mut self.clients[client].role) {
                        if (self.ops[op].producer_id, self.ops[op].epoch)
                            == (idem.producer_id, idem.epoch)
                        {
                            idem.retries.push_back(op);
                        }
                    }
                }
                PendingKind::InitProducerId => {
                    if let Some(idem) = idempotence(&mut self.clients[client].role) {
                        idem.initializing = false;
                    }
                }
                PendingKind::Fetch => {
                    self.count("fetch:unknown");
                    if let Role::Consumer { fetching, .. } = &mut self.clients[client].role {
                        *fetching = false;
                    }
                }
                PendingKind::Metadata => {}
                PendingKind::Admin(request) => {
                    let Role::Admin(admin) = &mut self.clients[client].role else {
                        continue;
                    };
                    admin.in_flight = 0;
                    if matches!(request, AdminRequest::Delete) {
                        // Whether the topic is gone is unknown: on to the other name.
                        admin.next_cycle();
                    }
                }
            }
        }
        if let Some(idem) = idempotence(&mut self.clients[client].role) {
            // Sent again in the order they were first sent.
            let ops = &self.ops;
            idem.retries
                .make_contiguous()
                .sort_by_key(|op| ops[*op].write.send_seq);
        }
        let backoff = self.rng.random_range(10 * MS..=500 * MS);
        self.clients[client].reconnect_at_ns = self.now_ns + backoff;
        let at = self.clients[client].reconnect_at_ns;
        self.schedule_wake(client, at);
    }

    fn send_request(&mut self, client: usize, version: i16, request: Request, kind: PendingKind) {
        let c = &mut self.clients[client];
        let Some(conn) = c.conn.as_mut() else {
            return;
        };
        c.next_correlation_id += 1;
        let correlation_id = c.next_correlation_id;
        let api_key = request.api_key();
        let header = RequestHeader {
            api_key: api_key as i16,
            api_version: version,
            correlation_id,
            client_id: Some(format!("sim-{client}")),
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        encode_request(&mut buf, &header, &request).expect("the simulator's requests encode");
        let bytes = buf.freeze();
        conn.pending.push_back(Pending {
            correlation_id,
            api_key,
            version,
            deadline_ns: self.now_ns + self.plan.request_timeout_ms * MS,
            kind,
        });
        let id = conn.id;
        if !self.quiet && self.rng.random_bool(self.plan.conn_reset_probability) {
            // The connection breaks partway through the request.
            self.fault("conn-reset");
            let cut = self.rng.random_range(0..bytes.len());
            if cut > 0 {
                self.send_to_node(id, ToNode::Bytes(bytes.slice(..cut)));
            }
            self.client_close(client);
            return;
        }
        if !self.quiet && self.rng.random_bool(self.plan.cut_request_probability) {
            // The request arrives in pieces cut at random bytes.
            self.fault("cut-request");
            let mut start = 0;
            while start < bytes.len() {
                let end = self.rng.random_range(start + 1..=bytes.len());
                self.send_to_node(id, ToNode::Bytes(bytes.slice(start..end)));
                start = end;
            }
        } else {
            self.send_to_node(id, ToNode::Bytes(bytes));
        }
    }

    fn metadata_request(&self) -> Request {
        Request::Metadata(MetadataRequest {
            topics: Some(vec![MetadataRequestTopic {
                name: Some(TOPIC.into()),
                ..Default::default()
            }]),
            allow_auto_topic_creation: true,
            ..Default::default()
        })
    }

    fn send_metadata(&mut self, client: usize) {
        let request = self.metadata_request();
        let version = self.plan.metadata_version;
        self.send_request(client, version, request, PendingKind::Metadata);
    }

    fn produce(&mut self, client: usize) {
        let partition = if self.machines.len() == 1 {
            self.rng.random_range(0..self.plan.partitions)
        } else {
            let c = &self.clients[client];
            let led: Vec<i32> = (c.leaders.iter())
                .filter(|(_, n)| **n == c.node)
                .map(|(p, _)| *p)
                .collect();
            if led.is_empty() {
                self.count("produce:no-leader");
                self.refresh_metadata(client);
                return;
            }
            led[self.rng.random_range(0..led.len())]
        };
        let count = self.rng.random_range(1..=self.plan.records_per_batch_max);
        let padding = self.rng.random_range(0..=self.plan.value_padding_bytes_max);
        let Role::Producer {
            idempotence,
            acks,
            next_value,
            next_send_seq,
            ..
        } = &mut self.clients[client].role
        else {
            unreachable!("only producers produce");
        };
        let acks = *acks;
        let mut options = BatchOptions {
            base_timestamp: ((EPOCH_NS + self.now_ns) / MS) as i64,
            ..Default::default()
        };
        if let Some(idem) = idempotence {
            let sequence = idem.next_sequence.entry(partition).or_insert(0);
            options.producer_id = idem.producer_id;
            options.producer_epoch = idem.epoch;
            options.base_sequence = *sequence;
            *sequence = keel_core::producers::last_sequence(*sequence, count as i32 - 1)
                .wrapping_add(1)
                .max(0);
        }
        let generation = idempotence.as_ref().map_or(0, |idem| idem.generation);
        let values: Vec<u64> = (0..count)
            .map(|_| {
                *next_value += 1;
                ((client as u64) << 40) | *next_value
            })
            .collect();
        let send_seq = *next_send_seq;
        *next_send_seq += 1;
        let write = Write {
            producer: client,
            partition,
            send_seq,
            values,
        };
        let op = self.new_op(write, padding, &options, generation);
        self.send_produce(client, op, acks);
    }

    /// Records a write (its batch built from its values, each padded by `padding` bytes) and
    /// returns its index.
    fn new_op(
        &mut self,
        write: Write,
        padding: usize,
        options: &BatchOptions,
        generation: u64,
    ) -> usize {
        let batch = record::build(&batch_records(&write.values, padding), options)
            .expect("the simulator's batches build");
        self.ops.push(Op {
            write,
            batch,
            outcome: Outcome::Pending,
            producer_id: options.producer_id,
            epoch: options.producer_epoch,
            attempted_unknown: false,
            generation,
            first_sent_ns: self.now_ns,
        });
        self.ops.len() - 1
    }

    /// One more batch from a producer's previous epoch, sent after it moved to a new one (a
    /// zombie instance still running): the node must refuse it, so it must never be read.
    fn send_zombie(&mut self, client: usize, epoch: i16, sequences: BTreeMap<i32, i32>) {
        let Some((partition, sequence)) = sequences.into_iter().next() else {
            return;
        };
        self.count("producer:zombie");
        let Role::Producer {
            idempotence: Some(idem),
            acks,
            next_value,
            next_send_seq,
            ..
        } = &mut self.clients[client].role
        else {
            return;
        };
        let acks = *acks;
        *next_value += 1;
        let value = ((client as u64) << 40) | *next_value;
        let send_seq = *next_send_seq;
        *next_send_seq += 1;
        let options = BatchOptions {
            base_timestamp: ((EPOCH_NS + self.now_ns) / MS) as i64,
            producer_id: idem.producer_id,
            producer_epoch: epoch,
            base_sequence: sequence,
            ..Default::default()
        };
        let write = Write {
            producer: client,
            partition,
            send_seq,
            values: vec![value],
        };
        let op = self.new_op(write, 0, &options, u64::MAX);
        self.send_produce(client, op, acks);
    }

    /// Sends the oldest write whose outcome is unknown again, unchanged.
    fn retry(&mut self, client: usize) {
        let Role::Producer {
            idempotence: Some(idem),
            acks,
            ..
        } = &mut self.clients[client].role
        else {
            return;
        };
        let acks = *acks;
        let Some(op) = idem.retries.pop_front() else {
            return;
        };
        // Kafka's delivery.timeout.ms: a client gives up on a write well before the node may
        // forget its producer (producer.id.expiration.ms), or a retry could land twice.
        let delivery_timeout_ns = self
            .plan
            .producer_id_expiration_ms
            .map_or(u64::MAX, |ms| ms as u64 / 2 * MS);
        if self.now_ns - self.ops[op].first_sent_ns > delivery_timeout_ns {
            self.count("produce:delivery-timeout");
            return;
        }
        self.count("produce:retry");
        self.ops[op].outcome = Outcome::Pending;
        self.send_produce(client, op, acks);
    }

    fn send_produce(&mut self, client: usize, op: usize, acks: i16) {
        let partition = self.ops[op].write.partition;
        let batch = self.ops[op].batch.clone();
        let request = produce_request(TOPIC, partition, batch, acks);
        let version = self.plan.produce_version;
        self.send_request(client, version, request, PendingKind::Produce { op });
    }

    fn init_producer_id(&mut self, client: usize) {
        let Some(idem) = idempotence(&mut self.clients[client].role) else {
            return;
        };
        idem.initializing = true;
        idem.init_at_ns = None;
        // With an id already, ask for the next epoch (KIP-360; v3 and later).
        let request = Request::InitProducerId(InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: 60_000,
            producer_id: idem.producer_id,
            producer_epoch: idem.epoch,
            ..Default::default()
        });
        let version = self.plan.init_producer_id_version;
        self.send_request(client, version, request, PendingKind::InitProducerId);
    }

    /// A sequence or epoch error: whatever waits to be sent again stays unknown forever (its
    /// outcome already says so), and the producer starts a new epoch with sequences from 0.
    fn reset_producer(&mut self, client: usize) {
        let Some(idem) = idempotence(&mut self.clients[client].role) else {
            return;
        };
        if idem.init_at_ns.is_some() || idem.initializing {
            return;
        }
        idem.retries.clear();
        idem.init_at_ns = Some(self.now_ns);
        self.count("producer:reset");
    }

    fn fetch(&mut self, client: usize) {
        let c = &self.clients[client];
        let Role::Consumer { positions, .. } = &c.role else {
            unreachable!("only consumers fetch");
        };
        let cluster = self.machines.len() > 1;
        let partitions: Vec<FetchPartition> = positions
            .iter()
            .filter(|(p, _)| !cluster || c.leaders.get(p) == Some(&c.node))
            .map(|(p, pos)| FetchPartition {
                partition: *p,
                fetch_offset: *pos,
                partition_max_bytes: FETCH_PARTITION_MAX_BYTES,
                current_leader_epoch: -1,
                log_start_offset: -1,
                ..Default::default()
            })
            .collect();
        if partitions.is_empty() {
            // This node leads none of them (as far as the client knows): elsewhere.
            let at = self.now_ns + 20 * MS;
            let c = &mut self.clients[client];
            c.rotate = true;
            if let Role::Consumer {
                fetching,
                next_poll_at_ns,
                ..
            } = &mut c.role
            {
                *fetching = false;
                *next_poll_at_ns = at;
            }
            self.refresh_metadata(client);
            return;
        }
        let request = Request::Fetch(FetchRequest {
            replica_id: -1,
            max_wait_ms: self.plan.fetch_max_wait_ms,
            min_bytes: 1,
            max_bytes: FETCH_MAX_BYTES,
            session_epoch: -1,
            topics: vec![FetchTopic {
                topic: TOPIC.into(),
                partitions,
                ..Default::default()
            }],
            ..Default::default()
        });
        let version = self.plan.fetch_version;
        self.send_request(client, version, request, PendingKind::Fetch);
    }

    fn deliver_to_client(&mut self, conn_id: ConnId, what: ToClient) {
        let Some(link) = self.links.get(&conn_id) else {
            return;
        };
        let client = link.client;
        if client == BOOTSTRAP {
            self.on_bootstrap_answer(conn_id, what);
            return;
        }
        if self.clients[client].conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return;
        }
        let bytes = match what {
            ToClient::Close => {
                self.conn_lost(client);
                return;
            }
            ToClient::Bytes(bytes) => bytes,
        };
        let conn = self.clients[client].conn.as_mut().expect("checked");
        conn.frames.push(&bytes);
        loop {
            let Some(conn) = self.clients[client].conn.as_mut() else {
                return;
            };
            let frame = match conn.frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.protocol_violation(client, format!("bad response frame: {e}"));
                    return;
                }
            };
            let Some(pending) = conn.pending.pop_front() else {
                self.protocol_violation(client, "a response to no request".into());
                return;
            };
            match decode_response(frame, pending.api_key, pending.version) {
                Ok((header, response)) if header.correlation_id == pending.correlation_id => {
                    self.on_response(client, pending, response)
                }
                Ok((header, _)) => {
                    self.protocol_violation(
                        client,
                        format!(
                            "response {} to request {} ({})",
                            header.correlation_id,
                            pending.correlation_id,
                            pending.api_key.name()
                        ),
                    );
                    return;
                }
                Err(e) => {
                    self.protocol_violation(client, format!("undecodable response: {e}"));
                    return;
                }
            }
        }
        self.client_act(client);
    }

    fn protocol_violation(&mut self, client: usize, detail: String) {
        self.checker
            .violate(ViolationKind::Protocol, self.now_ns, detail);
        self.client_close(client);
    }

    fn on_response(&mut self, client: usize, pending: Pending, response: Response) {
        match (pending.kind, response) {
            (PendingKind::Metadata, Response::Metadata(m)) => {
                let ok = m.topics.iter().any(|t| {
                    t.name.as_deref() == Some(TOPIC)
                        && t.error_code == codes::NONE
                        && t.partitions.len() == self.plan.partitions as usize
                });
                let retry_at = self.now_ns + 100 * MS;
                let mut leaderless = false;
                if self.machines.len() > 1 {
                    let c = &mut self.clients[client];
                    c.leaders.clear();
                    for t in m.topics.iter().filter(|t| t.name.as_deref() == Some(TOPIC)) {
                        for p in &t.partitions {
                            if p.leader_id >= 1 && p.leader_id as usize <= self.machines.len() {
                                c.leaders
                                    .insert(p.partition_index, p.leader_id as usize - 1);
                            } else {
                                leaderless = true;
                            }
                        }
                    }
                }
                if let Some(conn) = self.clients[client].conn.as_mut() {
                    if ok {
                        conn.ready = true;
                    }
                    if !ok || leaderless {
                        conn.metadata_at_ns = Some(retry_at);
                    }
                }
            }
            (PendingKind::Produce { op }, Response::Produce(p)) => {
                let partition = self.ops[op].write.partition;
                let answer = p
                    .responses
                    .iter()
                    .filter(|t| t.name == TOPIC)
                    .flat_map(|t| &t.partition_responses)
                    .find(|r| r.index == partition);
                let Some(answer) = answer else {
                    self.protocol_violation(
                        client,
                        "a produce response without the partition".into(),
                    );
                    return;
                };
                let sequence_error = matches!(
                    answer.error_code,
                    codes::OUT_OF_ORDER_SEQUENCE_NUMBER
                        | codes::UNKNOWN_PRODUCER_ID
                        | codes::INVALID_PRODUCER_EPOCH
                );
                let (producer_id, epoch, generation) = (
                    self.ops[op].producer_id,
                    self.ops[op].epoch,
                    self.ops[op].generation,
                );
                let current_epoch =
                    idempotence(&mut self.clients[client].role).is_some_and(|idem| {
                        (idem.producer_id, idem.epoch, idem.generation)
                            == (producer_id, epoch, generation)
                    });
                if sequence_error && current_epoch {
                    self.count("produce:sequence-error");
                    // Starting over at 0 in the same epoch is safe only with nothing else of
                    // this partition's old sequence still on its way or waiting to be sent.
                    let ops = &self.ops;
                    let quiet_partition = self.clients[client].conn.as_ref().is_none_or(|c| {
                        c.pending.iter().all(|p| {
                            !matches!(p.kind, PendingKind::Produce { op } if ops[op].write.partition == partition)
                        })
                    }) && self.clients[client].role_retries_none(ops, partition);
                    if answer.error_code == codes::UNKNOWN_PRODUCER_ID
                        && self.plan.restart_sequence_on_unknown
                        && quiet_partition
                    {
                        // As clients before KIP-360: the partition forgot us, start it over.
                        self.count("producer:restart-sequence");
                        if let Some(idem) = idempotence(&mut self.clients[client].role) {
                            idem.next_sequence.insert(partition, 0);
                            idem.generation += 1;
                        }
                    } else {
                        self.reset_producer(client);
                    }
                } else if sequence_error {
                    self.count("produce:fenced");
                }
                tracing::debug!(
                    client,
                    partition,
                    op,
                    error_code = answer.error_code,
                    base_offset = answer.base_offset,
                    first_value = format_args!("{:#x}", self.ops[op].write.values[0]),
                    "produce answered"
                );
                let leadership_moved = self.machines.len() > 1
                    && matches!(
                        answer.error_code,
                        codes::NOT_LEADER_OR_FOLLOWER
                            | codes::LEADER_NOT_AVAILABLE
                            | codes::FENCED_LEADER_EPOCH
                            | codes::UNKNOWN_LEADER_EPOCH
                            | codes::KAFKA_STORAGE_ERROR
                    );
                if leadership_moved {
                    // The batch may sit in a log that a new leader keeps, or in none: unknown.
                    // An idempotent producer sends it again, to the new leader.
                    self.count("produce:not-leader");
                    self.ops[op].outcome = Outcome::Unknown;
                    self.ops[op].attempted_unknown = true;
                    let generation = self.ops[op].generation;
                    if let Some(idem) = idempotence(&mut self.clients[client].role) {
                        if (idem.producer_id, idem.epoch, idem.generation)
                            == (producer_id, epoch, generation)
                        {
                            idem.retries.push_back(op);
                            let ops = &self.ops;
                            idem.retries
                                .make_contiguous()
                                .sort_by_key(|op| ops[*op].write.send_seq);
                        }
                    }
                    self.refresh_metadata(client);
                } else if answer.error_code == codes::NONE
                    && self.machines.len() > 1
                    && matches!(self.clients[client].role, Role::Producer { acks: 1, .. })
                {
                    // acks=1 in a cluster: the leader has it, and a leader that fails before
                    // its followers fetch it takes it along (Kafka's promise, no more). The
                    // write may survive or not, as an unknown one.
                    self.count("produce:ok-leader-only");
                    self.ops[op].outcome = Outcome::Unknown;
                } else if answer.error_code == codes::NONE {
                    self.ops[op].outcome = Outcome::Ok;
                    let base_offset = answer.base_offset;
                    self.check_replicated(op, base_offset);
                    let write = self.ops[op].write.clone();
                    self.checker.on_ack(self.now_ns, &write, base_offset);
                } else if self.ops[op].attempted_unknown {
                    // An earlier attempt of this same batch may have landed: refusing the
                    // retry says nothing about it, so the write stays unknown.
                    tracing::debug!(error_code = answer.error_code, "produce retry failed");
                    self.ops[op].outcome = Outcome::Unknown;
                } else {
                    tracing::debug!(error_code = answer.error_code, "produce failed");
                    self.ops[op].outcome = Outcome::Fail;
                    let write = self.ops[op].write.clone();
                    self.checker.on_fail(self.now_ns, &write);
                }
            }
            (PendingKind::Fetch, Response::Fetch(f)) => self.on_fetch(client, f),
            (PendingKind::Admin(request), response) => {
                self.on_admin_response(client, request, response)
            }
            (PendingKind::InitProducerId, Response::InitProducerId(r)) => {
                tracing::debug!(
                    client,
                    error_code = r.error_code,
                    producer_id = r.producer_id,
                    epoch = r.producer_epoch,
                    "producer id"
                );
                let now = self.now_ns;
                let Some(idem) = idempotence(&mut self.clients[client].role) else {
                    return;
                };
                idem.initializing = false;
                if r.error_code != codes::NONE || r.producer_id < 0 {
                    idem.init_at_ns = Some(now + 100 * MS);
                    return;
                }
                let zombie = (idem.producer_id == r.producer_id && idem.epoch >= 0)
                    .then(|| (idem.epoch, idem.next_sequence.clone()));
                idem.producer_id = r.producer_id;
                idem.epoch = r.producer_epoch;
                idem.next_sequence.clear();
                // Writes still waiting to be sent again belong to the old epoch: they stay
                // unknown.
                idem.retries.clear();
                if let Some((old_epoch, old_sequences)) = zombie {
                    if self.plan.zombie_probability > 0.0
                        && self.rng.random_bool(self.plan.zombie_probability)
                    {
                        self.send_zombie(client, old_epoch, old_sequences);
                    }
                }
            }
            (kind, response) => self.protocol_violation(
                client,
                format!("{kind:?} answered by {}", response.api_key().name()),
            ),
        }
    }

    fn on_fetch(&mut self, client: usize, response: keel_core::protocol::messages::FetchResponse) {
        let mut read_any = false;
        let mut stale = false;
        let mut reads = Vec::new();
        let mut outcome = "fetch:ok";
        for topic in response.responses.iter().filter(|t| t.topic == TOPIC) {
            for data in topic
                .partitions
                .iter()
                .filter(|d| d.error_code == codes::NONE)
            {
                self.checker.on_high_watermark(
                    self.now_ns,
                    client,
                    data.partition_index,
                    data.high_watermark,
                );
            }
        }
        {
            let Role::Consumer { positions, .. } = &mut self.clients[client].role else {
                unreachable!("only consumers fetch");
            };
            for topic in response.responses.iter().filter(|t| t.topic == TOPIC) {
                for data in &topic.partitions {
                    let Some(position) = positions.get_mut(&data.partition_index) else {
                        continue;
                    };
                    if data.error_code != codes::NONE {
                        outcome = "fetch:partition-error";
                        stale = true;
                        continue;
                    }
                    let Some(records) = &data.records else {
                        continue;
                    };
                    for batch in record::split_batches(records.clone()) {
                        // A batch cut by the size limit ends the response.
                        let Ok(batch) = batch else { break };
                        // A corrupt batch (a bit flipped on the node's read) is refetched, as
                        // clients that check CRCs do.
                        let Ok(batch) = RecordBatch::parse(batch) else {
                            outcome = "fetch:corrupt";
                            break;
                        };
                        if batch.header().is_control() {
                            // A leader's marker: clients skip it, and read on after it.
                            let next = batch.header().last_offset() + 1;
                            if next > *position {
                                *position = next;
                                read_any = true;
                            }
                            continue;
                        }
                        let Ok(records) = batch.records(CLIENT_MAX_FRAME_BYTES) else {
                            outcome = "fetch:corrupt";
                            break;
                        };
                        let base = batch.header().base_offset;
                        for r in records {
                            let offset = base + i64::from(r.offset_delta);
                            if offset < *position {
                                continue;
                            }
                            let value =
                                r.value.as_ref().filter(|v| v.len() >= 8).map(|v| {
                                    u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))
                                });
                            reads.push((data.partition_index, *position, offset, value));
                            *position = offset + 1;
                            read_any = true;
                        }
                    }
                }
            }
        }
        self.count(outcome);
        for (partition, position, offset, value) in reads {
            if offset != position {
                self.checker.violate(
                    ViolationKind::PollSkip,
                    self.now_ns,
                    format!("consumer {client} at {position} of partition {partition} got offset {offset}"),
                );
            }
            match value {
                Some(value) => self.checker.on_read(self.now_ns, partition, offset, value),
                None => self.checker.violate(
                    ViolationKind::Protocol,
                    self.now_ns,
                    format!("partition {partition} offset {offset} holds a record nobody wrote"),
                ),
            }
        }
        if self.machines.len() > 1 {
            if stale {
                self.refresh_metadata(client);
            }
            // On to the next leader (each leader serves only its own partitions).
            self.clients[client].rotate = stale || self.rng.random_bool(0.5);
        }
        let backoff = if read_any {
            0
        } else {
            self.rng.random_range(5 * MS..=50 * MS)
        };
        let at = self.now_ns + backoff;
        if let Role::Consumer {
            next_poll_at_ns,
            fetching,
            ..
        } = &mut self.clients[client].role
        {
            *fetching = false;
            *next_poll_at_ns = at;
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

// ---- the admin workload (admin.rs) ----

impl Sim {
    fn admin(&mut self, client: usize) -> &mut AdminState {
        match &mut self.clients[client].role {
            Role::Admin(admin) => admin,
            _ => unreachable!("only the admin client administers"),
        }
    }

    /// Sends what the admin client's step asks for.
    fn admin_act(&mut self, client: usize) {
        use keel_core::protocol::messages::*;
        let step = self.admin(client).step;
        let name = self.admin(client).name.clone();
        let id = self.admin(client).id.unwrap_or_default();
        let partitions = self.admin(client).partitions;
        self.count("admin:request");
        match step {
            AdminStep::Create => {
                let num_partitions = self.rng.random_range(1..=3);
                let request = Request::CreateTopics(CreateTopicsRequest {
                    topics: vec![create_topics_request::CreatableTopic {
                        name,
                        num_partitions,
                        replication_factor: 1,
                        ..Default::default()
                    }],
                    timeout_ms: 5_000,
                    ..Default::default()
                });
                self.admin_send(client, 5, request, AdminRequest::Create);
            }
            AdminStep::Describe => {
                let request = Request::Metadata(MetadataRequest {
                    topics: Some(vec![MetadataRequestTopic {
                        name: Some(name),
                        ..Default::default()
                    }]),
                    allow_auto_topic_creation: false,
                    ..Default::default()
                });
                self.admin_send(client, 12, request, AdminRequest::Describe);
            }
            AdminStep::Produce(_) => {
                let partition = self.rng.random_range(0..partitions);
                let count = self.rng.random_range(1..=3);
                let timestamp_ms = ((EPOCH_NS + self.now_ns) / MS) as i64;
                let admin = self.admin(client);
                let values: Vec<u64> = (0..count)
                    .map(|_| {
                        admin.next_value += 1;
                        ((client as u64) << 40) | admin.next_value
                    })
                    .collect();
                for value in &values {
                    admin.written_to.insert(*value, Some(id));
                }
                // One timestamp for the whole batch: the by-time check looks it up.
                let records: Vec<NewRecord> = values
                    .iter()
                    .map(|v| NewRecord {
                        value: Some(value_bytes(*v, 0)),
                        ..Default::default()
                    })
                    .collect();
                let options = BatchOptions {
                    base_timestamp: timestamp_ms,
                    ..Default::default()
                };
                let batch =
                    record::build(&records, &options).expect("the simulator's batches build");
                let request = produce_request(&name, partition, batch, -1);
                let what = AdminRequest::Produce {
                    partition,
                    values,
                    timestamp_ms,
                };
                self.admin_send(client, 9, request, what);
            }
            AdminStep::FetchById => {
                let partition = self.rng.random_range(0..partitions);
                let request = self.admin_fetch(id, partition, 0, 0);
                let what = AdminRequest::FetchById {
                    partition,
                    long_poll: false,
                };
                self.admin_send(client, 13, request, what);
            }
            AdminStep::ListOffsets(which) => {
                let admin = self.admin(client);
                let (partition, timestamp) = match (which, admin.first_acked) {
                    (0, first) => (first.map_or(0, |f| f.1), -2),
                    (1, first) => (first.map_or(0, |f| f.1), -1),
                    (_, Some((timestamp, partition, _))) => (partition, timestamp),
                    (_, None) => (0, -1),
                };
                use keel_core::protocol::messages::list_offsets_request::*;
                let request = Request::ListOffsets(ListOffsetsRequest {
                    replica_id: -1,
                    topics: vec![ListOffsetsTopic {
                        name,
                        partitions: vec![ListOffsetsPartition {
                            partition_index: partition,
                            timestamp,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                self.admin_send(client, 7, request, AdminRequest::ListOffsets { which });
            }
            AdminStep::CreatePartitions => {
                let request = Request::CreatePartitions(CreatePartitionsRequest {
                    topics: vec![create_partitions_request::CreatePartitionsTopic {
                        name,
                        count: partitions + 1,
                        assignments: None,
                        ..Default::default()
                    }],
                    timeout_ms: 5_000,
                    ..Default::default()
                });
                self.admin_send(client, 3, request, AdminRequest::CreatePartitions);
            }
            AdminStep::LongPollAndDelete => {
                let admin = self.admin(client);
                let from = admin
                    .acked
                    .keys()
                    .filter(|(p, _)| *p == 0)
                    .map(|(_, o)| o + 1)
                    .max()
                    .unwrap_or(0);
                let max_wait_ms = self.rng.random_range(500..=3_000);
                let request = self.admin_fetch(id, 0, from, max_wait_ms);
                let what = AdminRequest::FetchById {
                    partition: 0,
                    long_poll: true,
                };
                self.admin_send(client, 13, request, what);
                let request = Request::DeleteTopics(DeleteTopicsRequest {
                    topic_names: vec![self.admin(client).name.clone()],
                    timeout_ms: 5_000,
                    ..Default::default()
                });
                self.admin_send(client, 5, request, AdminRequest::Delete);
            }
        }
    }

    fn admin_fetch(&self, id: Uuid, partition: i32, offset: i64, max_wait_ms: i32) -> Request {
        Request::Fetch(FetchRequest {
            max_wait_ms,
            min_bytes: 1,
            max_bytes: FETCH_MAX_BYTES,
            topics: vec![FetchTopic {
                topic_id: id,
                partitions: vec![FetchPartition {
                    partition,
                    fetch_offset: offset,
                    partition_max_bytes: FETCH_PARTITION_MAX_BYTES,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn admin_send(&mut self, client: usize, version: i16, request: Request, what: AdminRequest) {
        self.admin(client).in_flight += 1;
        self.send_request(client, version, request, PendingKind::Admin(what));
    }

    fn on_admin_response(&mut self, client: usize, request: AdminRequest, response: Response) {
        let now = self.now_ns;
        let pause_ns = self.rng.random_range(10 * MS..=200 * MS);
        let admin = self.admin(client);
        admin.in_flight = admin.in_flight.saturating_sub(1);
        admin.next_at_ns = now + pause_ns;
        let mut violations: Vec<(ViolationKind, String)> = Vec::new();
        let admin = self.admin(client);
        match (request, response) {
            (AdminRequest::Create, Response::CreateTopics(r)) => {
                let code = r
                    .topics
                    .first()
                    .map_or(codes::UNKNOWN_SERVER_ERROR, |t| t.error_code);
                if matches!(code, codes::NONE | codes::TOPIC_ALREADY_EXISTS) {
                    admin.step = AdminStep::Describe;
                }
            }
            (AdminRequest::Describe, Response::Metadata(m)) => match m.topics.first() {
                Some(t) if t.error_code == codes::NONE && !t.partitions.is_empty() => {
                    let id = t.topic_id;
                    let this = (admin.name.clone(), admin.cycle);
                    match admin.ids.get(&id) {
                        // The same topic again (after a cycle whose delete was unknown).
                        Some((name, _)) if *name == this.0 && admin.id.is_none_or(|i| i == id) => {}
                        Some((name, cycle)) if (name, *cycle) != (&this.0, this.1) => {
                            violations.push((
                                ViolationKind::WrongTopic,
                                format!("topic {} (cycle {}) has id {id:?}, which topic {name} (cycle {cycle}) had", this.0, this.1),
                            ));
                        }
                        _ => {}
                    }
                    if id == Uuid::default() {
                        violations.push((
                            ViolationKind::WrongTopic,
                            format!("topic {} has no id", this.0),
                        ));
                    }
                    admin.ids.entry(id).or_insert(this);
                    admin.id = Some(id);
                    admin.partitions = t.partitions.len() as i32;
                    admin.step = if admin.step == AdminStep::Describe && admin.acked.is_empty() {
                        AdminStep::Produce(3)
                    } else {
                        AdminStep::LongPollAndDelete
                    };
                }
                _ => admin.step = AdminStep::Create,
            },
            (
                AdminRequest::Produce {
                    partition,
                    values,
                    timestamp_ms,
                },
                Response::Produce(p),
            ) => {
                if let Some(answer) = p
                    .responses
                    .first()
                    .and_then(|t| t.partition_responses.first())
                {
                    if answer.error_code == codes::NONE {
                        for (i, value) in values.iter().enumerate() {
                            let offset = answer.base_offset + i as i64;
                            admin.acked.insert((partition, offset), *value);
                        }
                        admin.first_acked.get_or_insert((
                            timestamp_ms,
                            partition,
                            answer.base_offset,
                        ));
                    } else {
                        // Refused: never to be read anywhere.
                        for value in &values {
                            admin.written_to.insert(*value, None);
                        }
                    }
                }
                admin.step = match admin.step {
                    AdminStep::Produce(n) if n > 1 => AdminStep::Produce(n - 1),
                    _ => AdminStep::FetchById,
                };
            }
            (
                AdminRequest::FetchById {
                    partition,
                    long_poll,
                },
                Response::Fetch(f),
            ) => {
                let id = admin.id.unwrap_or_default();
                for data in f.responses.iter().flat_map(|t| &t.partitions) {
                    if data.error_code != codes::NONE {
                        continue;
                    }
                    let Some(records) = &data.records else {
                        continue;
                    };
                    for batch in record::split_batches(records.clone()) {
                        let Ok(batch) = batch
                            .map_err(|_| ())
                            .and_then(|b| RecordBatch::parse(b).map_err(|_| ()))
                        else {
                            break;
                        };
                        let base = batch.header().base_offset;
                        if batch.header().is_control() {
                            continue;
                        }
                        let Ok(records) = batch.records(CLIENT_MAX_FRAME_BYTES) else {
                            break;
                        };
                        for r in records {
                            let offset = base + i64::from(r.offset_delta);
                            let value =
                                r.value.as_ref().filter(|v| v.len() >= 8).map(|v| {
                                    u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))
                                });
                            let Some(value) = value else { continue };
                            match admin.written_to.get(&value) {
                                Some(Some(to)) if *to == id => {}
                                Some(Some(to)) => violations.push((
                                    ViolationKind::WrongTopic,
                                    format!("value {value:#x} written to topic id {to:?} read from {id:?} partition {partition} offset {offset}"),
                                )),
                                Some(None) => violations.push((
                                    ViolationKind::PhantomWrite,
                                    format!("value {value:#x} was refused but read from topic id {id:?} partition {partition} offset {offset}"),
                                )),
                                None => violations.push((
                                    ViolationKind::WrongTopic,
                                    format!("topic id {id:?} partition {partition} offset {offset} holds {value:#x}, never written to a side topic"),
                                )),
                            }
                            if let Some(acked) = admin.acked.get(&(partition, offset)) {
                                if *acked != value {
                                    violations.push((
                                        ViolationKind::InconsistentOffset,
                                        format!("side topic {id:?} partition {partition} offset {offset} holds {value:#x}, {acked:#x} was acknowledged there"),
                                    ));
                                }
                            }
                        }
                    }
                }
                if !long_poll {
                    admin.step = AdminStep::ListOffsets(0);
                }
            }
            (AdminRequest::ListOffsets { which }, Response::ListOffsets(r)) => {
                if let Some(p) = r.topics.first().and_then(|t| t.partitions.first()) {
                    if p.error_code == codes::NONE {
                        let partition = p.partition_index;
                        let acked_end = admin
                            .acked
                            .keys()
                            .filter(|(q, _)| *q == partition)
                            .map(|(_, o)| o + 1)
                            .max()
                            .unwrap_or(0);
                        match which {
                            0 if p.offset != 0 => violations.push((
                                ViolationKind::InconsistentOffset,
                                format!("side topic partition {partition}: earliest offset {}", p.offset),
                            )),
                            1 if p.offset < acked_end => violations.push((
                                ViolationKind::LostWrite,
                                format!("side topic partition {partition}: latest offset {}, offset {} acknowledged", p.offset, acked_end - 1),
                            )),
                            2 => {
                                if let Some((_, _, first)) = admin.first_acked {
                                    if p.offset < 0 || p.offset > first {
                                        violations.push((
                                            ViolationKind::LostWrite,
                                            format!("side topic partition {partition}: by time, offset {}; offset {first} was acknowledged at that time", p.offset),
                                        ));
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                admin.step = match which {
                    0 => AdminStep::ListOffsets(1),
                    1 if admin.first_acked.is_some() => AdminStep::ListOffsets(2),
                    _ if admin.partitions < 4 => AdminStep::CreatePartitions,
                    _ => AdminStep::LongPollAndDelete,
                };
            }
            (AdminRequest::CreatePartitions, Response::CreatePartitions(r)) => {
                if r.results
                    .first()
                    .is_some_and(|t| t.error_code == codes::NONE)
                {
                    admin.partitions += 1;
                }
                admin.step = AdminStep::LongPollAndDelete;
            }
            (AdminRequest::Delete, Response::DeleteTopics(_)) => {
                admin.next_cycle();
            }
            (request, response) => {
                let detail = format!("{request:?} answered by {}", response.api_key().name());
                self.protocol_violation(client, detail);
                return;
            }
        }
        for (kind, detail) in violations {
            self.checker.violate(kind, now, detail);
        }
        self.count("admin:answered");
    }
}

/// The vote table a crash of the machine now would leave: the newest durable copy that is
/// whole.
fn durable_votes(disk: &SimDisk) -> BTreeMap<GroupId, Persisted> {
    let mut newest: Option<(u64, BTreeMap<GroupId, Persisted>)> = None;
    for name in disk.files_under(votes::FILE_PREFIX) {
        let Some(table) = disk.durable_contents(name).and_then(votes::decode_table) else {
            continue;
        };
        if newest
            .as_ref()
            .is_none_or(|(generation, _)| table.0 > *generation)
        {
            newest = Some(table);
        }
    }
    newest.map(|(_, table)| table).unwrap_or_default()
}
