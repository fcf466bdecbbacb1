//! The broker node: a state machine that turns inputs (connection bytes, timeouts, sync
//! completions) into outputs (bytes to send, connections to close, files to sync).
//!
//! Rules it keeps:
//! - Requests on one connection are answered in the order they arrived (Kafka's rule): each
//!   request takes a slot in its connection's queue, and slots are sent from the front once
//!   ready. A slow request (a Fetch waiting for data, a Produce waiting for its sync) holds back
//!   only its own connection.
//! - A produce with acks=1 or acks=all is answered only once its bytes are synced (unless
//!   durability is `Replicated`). Syncs are grouped: one round at a time syncs every file
//!   written since the last round began, and completes every request that waited for it.
//! - Consumers read below the high watermark: the synced end of the log (or, without fsync
//!   durability, its end). Nothing a crash could take back is ever served.
//! - A failed sync is fatal: the node halts (`Output::Halt`) rather than pretend.

mod configs;
mod controller;
mod delete_records;
mod groups;
mod handlers;
mod links;
pub mod metrics;
mod producer_ids;
pub mod replication;
mod topics;
mod transactions;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::disk::{Disk, DiskError, FileId};
use crate::limits;
use crate::log::LogConfig;
use crate::partition::votes::VoteStore;
use crate::protocol::codec::{encode_response, parse_request, ParsedRequest};
use crate::protocol::frame::FrameDecoder;
use crate::protocol::messages::api_versions_response::ApiVersion;
use crate::protocol::{negotiate, ApiKey, Request, RequestHeader, Response};
use crate::raft::wire::GroupId;
use crate::raft::{Message, NodeId, Persisted};

pub use topics::RecoveryEvent;
use topics::Topics;

/// Nanoseconds since the Unix epoch, on the simulation's or the process's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    pub fn as_millis(self) -> i64 {
        (self.0 / 1_000_000) as i64
    }
    pub fn from_millis(ms: u64) -> Instant {
        Instant(ms.saturating_mul(1_000_000))
    }
    pub fn plus_millis(self, ms: u64) -> Instant {
        Instant(self.0.saturating_add(ms.saturating_mul(1_000_000)))
    }
}

pub type ConnId = u64;
pub type SyncToken = u64;

pub enum Input<'a> {
    ConnOpened {
        conn: ConnId,
    },
    /// Raw bytes read from the connection; the node frames them.
    ConnBytes {
        conn: ConnId,
        bytes: &'a [u8],
    },
    ConnClosed {
        conn: ConnId,
    },
    /// A frame from another node (Raft messages of any number of groups); the node decodes
    /// and verifies it.
    PeerMessage {
        from: NodeId,
        bytes: &'a [u8],
    },
    /// A deadline passed (a spurious one is a no-op).
    Timeout,
    Synced {
        token: SyncToken,
        result: Result<(), DiskError>,
    },
}

#[must_use]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    ConnSend {
        conn: ConnId,
        bytes: Bytes,
    },
    /// Close the connection; `reason` says why, for the operator's log.
    ConnClose {
        conn: ConnId,
        reason: String,
    },
    /// A frame for another node (every group's messages to it from one step).
    PeerSend {
        to: NodeId,
        bytes: Bytes,
    },
    /// A durability barrier for `file`; answer with `Input::Synced { token, .. }`.
    Sync {
        token: SyncToken,
        file: FileId,
    },
    /// The node cannot go on safely (a sync failed): stop the process.
    Halt {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A produce is acknowledged once its bytes are synced (the default).
    Fsync,
    /// Kafka's default: trust replication (or luck) over fsync; acknowledge at once.
    Replicated,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node_id: i32,
    /// The host and port clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: i32,
    /// This node's rack (Kafka's `broker.rack`), registered with the metadata quorum.
    pub rack: Option<String>,
    pub cluster_id: String,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub durability: Durability,
    pub max_frame_size_bytes: usize,
    /// Topic configs of topics that do not set their own (Kafka's broker-wide `log.*`
    /// settings): retention, segments, cleanup policy, `max.message.bytes`.
    pub topic_defaults: crate::metadata::configs::TopicConfig,
    /// How often retention looks for segments to delete (Kafka's
    /// `log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
    /// Bytes per second the cleaner (compaction) reads at most, across every log (Kafka's
    /// `log.cleaner.io.max.bytes.per.second`): it runs between requests, in steps of
    /// [`CLEANER_STEP_INTERVAL_MS`]. Passes begin at retention checks.
    pub log_cleaner_io_bytes_per_sec: u64,
    /// Partitions the node may hold: [`crate::limits::PARTITIONS_MAX`], or fewer when the
    /// process may open fewer files (the adapter sets it from its descriptor limit).
    pub partitions_max: usize,
    pub log: LogConfig,
    /// Seeds the node's PRNG (topic ids).
    pub seed: u64,
    /// The nodes of a static cluster, this one included: each is a replica of every partition
    /// (every partition a Raft group over them all). Empty: this node alone (a group of one).
    /// The metadata quorum will replace it with assignments per partition.
    pub cluster: Vec<Broker>,
    /// Partitions of `__consumer_offsets` (Kafka's `offsets.topic.num.partitions`), fixed
    /// when the topic is created (on the first FindCoordinator).
    pub offsets_topic_partitions: i32,
    /// Its replication factor (`offsets.topic.replication.factor`), or every node of a
    /// smaller cluster.
    pub offsets_topic_replication_factor: i16,
    /// Consumer groups' timeouts and retention.
    pub groups: crate::coordinator::GroupConfig,
    /// Partitions of `__transaction_state` (Kafka's `transaction.state.log.num.partitions`),
    /// fixed when the topic is created (on the first transactional FindCoordinator).
    pub transaction_state_partitions: i32,
    /// Its replication factor (`transaction.state.log.replication.factor`), or every node of
    /// a smaller cluster.
    pub transaction_state_replication_factor: i16,
    /// The longest transaction timeout a producer may ask for (`transaction.max.timeout.ms`).
    pub transaction_max_timeout_ms: i32,
    /// A bug planted on purpose, so the simulator can prove its checkers catch it. Only the
    /// simulator sets it: the `keel` binary builds its config from `..Config::default()` and
    /// has no flag or key that reaches it (`tests/tests/purity.rs` checks that `net/` never
    /// names it).
    pub planted_bug: Option<PlantedBug>,
}

/// A node of the cluster and where clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub node_id: i32,
    pub host: String,
    /// Where clients reach it; 0 for a configured node whose client address is known only
    /// once it registers (clients are not told of it before).
    pub port: i32,
    /// Its rack (Kafka's `broker.rack`): replicas of a partition are spread over racks.
    pub rack: Option<String>,
}

/// How long recovery points may lag the synced end before a round is started only to write
/// them. Every data round writes them first, so under load they lag one round and no extra
/// round runs; when writes stop, one more small round a second later brings them up to date.
/// (Kafka checkpoints recovery points every minute; a short lag keeps what recovery must
/// treat as possibly torn, and write again, small.)
pub const RECOVERY_POINT_DELAY_MS: u64 = 1_000;

/// Bugs the simulator can plant in a node to show that its checkers have teeth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// Complete every sync round at once without syncing anything.
    SkipFsync,
    /// Answer a produce with success before appending it (and whatever the append does).
    AckEarly,
    /// Append an idempotent producer's retried batch again instead of recognising it.
    NoDedup,
    /// Serve fetches up to the log end instead of the high watermark: consumers read what a
    /// crash can still take back.
    FetchPastHighWatermark,
    /// Answer a write when the sync round already in flight completes, although the round
    /// was issued before the write and does not cover it: acks=1 waits for that round, and
    /// every group is told its whole log is synced when it completes (acks=all, consumers).
    AckWrongRound,
    /// Recovery cuts a bad batch below the recovery point as if it were a torn tail: damage
    /// to synced data loses acknowledged records without a word.
    CutSynced,
    /// Answer acks=all when the leader's append is synced, as acks=1, not at commit: a
    /// leader that fails before its followers fetch takes acknowledged records along.
    AckBeforeCommit,
    /// Raft votes leave before they are durable ([`crate::raft::RaftBug::VoteWithoutSync`]).
    VoteWithoutSync,
    /// Leaders never report divergence ([`crate::raft::RaftBug::NoTruncate`]).
    NoTruncate,
    /// Leaders announce their epoch once only ([`crate::raft::RaftBug::NoReannounce`]).
    NoReannounce,
    /// Group coordinators accept offset commits from any generation of a member (a zombie's
    /// commit, made before a rebalance, lands after it).
    StaleCommit,
    /// Retention deletes every whole segment below the high watermark, however young:
    /// acknowledged records go before retention.ms allows.
    RetentionEarly,
    /// The cleaner drops a key's newest record (the first it meets in each pass): compaction
    /// loses the value a compacted topic exists to keep.
    CleanerDropsNewest,
    /// The transaction coordinator sends a transaction's markers as soon as EndTxn asks,
    /// before its prepared state is in the committed log: a coordinator that fails over
    /// finds the transaction open and may abort what some partitions already committed.
    MarkerBeforeAppend,
    /// EndTxn v5 does not bump the producer's epoch: the markers carry the transaction's own
    /// epoch, and a late write of the transaction lands in the next one.
    NoEpochBump,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 15] = [
        PlantedBug::SkipFsync,
        PlantedBug::AckEarly,
        PlantedBug::NoDedup,
        PlantedBug::FetchPastHighWatermark,
        PlantedBug::AckWrongRound,
        PlantedBug::CutSynced,
        PlantedBug::AckBeforeCommit,
        PlantedBug::VoteWithoutSync,
        PlantedBug::NoTruncate,
        PlantedBug::NoReannounce,
        PlantedBug::StaleCommit,
        PlantedBug::RetentionEarly,
        PlantedBug::CleanerDropsNewest,
        PlantedBug::MarkerBeforeAppend,
        PlantedBug::NoEpochBump,
    ];

    /// The bugs only a cluster can show (a node alone commits what it synced, votes for
    /// itself alone, and has nobody to diverge from).
    pub fn needs_cluster(self) -> bool {
        matches!(
            self,
            PlantedBug::AckBeforeCommit
                | PlantedBug::VoteWithoutSync
                | PlantedBug::NoTruncate
                | PlantedBug::NoReannounce
                | PlantedBug::MarkerBeforeAppend
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::SkipFsync => "skip-fsync",
            PlantedBug::AckEarly => "ack-early",
            PlantedBug::NoDedup => "no-dedup",
            PlantedBug::FetchPastHighWatermark => "fetch-past-hw",
            PlantedBug::AckWrongRound => "ack-wrong-round",
            PlantedBug::CutSynced => "cut-synced",
            PlantedBug::AckBeforeCommit => "ack-before-commit",
            PlantedBug::VoteWithoutSync => "vote-without-sync",
            PlantedBug::NoTruncate => "no-truncate",
            PlantedBug::NoReannounce => "no-reannounce",
            PlantedBug::StaleCommit => "stale-commit",
            PlantedBug::RetentionEarly => "retention-early",
            PlantedBug::CleanerDropsNewest => "cleaner-drops-newest",
            PlantedBug::MarkerBeforeAppend => "marker-before-append",
            PlantedBug::NoEpochBump => "no-epoch-bump",
        }
    }

    pub fn from_name(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// One partition's offsets, for the simulator's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub topic: String,
    pub partition: i32,
    /// `None` for a partition that is offline.
    pub log_start_offset: Option<i64>,
    pub log_end_offset: Option<i64>,
    pub high_watermark: Option<i64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            rack: None,
            cluster_id: "keel-cluster".into(),
            auto_create_topics: true,
            default_partitions: 1,
            durability: Durability::Fsync,
            max_frame_size_bytes: crate::protocol::DEFAULT_MAX_FRAME_SIZE_BYTES,
            topic_defaults: Default::default(),
            retention_check_interval_ms: 300_000,
            log_cleaner_io_bytes_per_sec: 100 * 1024 * 1024,
            partitions_max: crate::limits::PARTITIONS_MAX,
            log: LogConfig::default(),
            seed: 0,
            cluster: Vec::new(),
            offsets_topic_partitions: 50,
            offsets_topic_replication_factor: 3,
            groups: Default::default(),
            transaction_state_partitions: 50,
            transaction_state_replication_factor: 3,
            transaction_max_timeout_ms: 900_000,
            planted_bug: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot read the data directory: {0}")]
    Disk(#[from] DiskError),
}

/// The APIs this node serves (and advertises in ApiVersions).
pub const SERVED_APIS: [ApiKey; 34] = [
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::CreatePartitions,
    ApiKey::DescribeConfigs,
    ApiKey::DescribeCluster,
    ApiKey::OffsetForLeaderEpoch,
    ApiKey::InitProducerId,
    ApiKey::DescribeQuorum,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::DescribeGroups,
    ApiKey::ListGroups,
    ApiKey::DeleteGroups,
    ApiKey::ConsumerGroupHeartbeat,
    ApiKey::OffsetDelete,
    ApiKey::AlterConfigs,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::DeleteRecords,
    ApiKey::AddPartitionsToTxn,
    ApiKey::AddOffsetsToTxn,
    ApiKey::EndTxn,
    ApiKey::TxnOffsetCommit,
    ApiKey::DescribeTransactions,
    ApiKey::ListTransactions,
];

/// A request's place in its connection's answer queue.
#[derive(Debug)]
enum Slot {
    /// The response, framed; `None` for a request that gets none (acks=0).
    Ready(Option<Bytes>),
    /// Ready once sync round `round` completes.
    AwaitSync { round: u64, response: Option<Bytes> },
    /// An acks=all produce, answered once each partition it appended to has committed up
    /// to its offset, or lost the leadership it appended in (that partition's answer is then
    /// NOT_LEADER_OR_FOLLOWER: the write may be gone).
    AwaitCommit {
        waits: Vec<CommitWait>,
        correlation_id: i32,
        version: i16,
        response: CommitAnswer,
    },
    /// A Fetch waiting for data or its deadline.
    AwaitFetch,
    /// A Produce waiting for its transaction coordinator to verify its partitions
    /// (`transactions.rs`); the request itself waits there.
    AwaitVerify,
    /// A group request a coordinator holds (a JoinGroup until the join phase completes, a
    /// write until it commits), answered by `parts_left` coordinators (DeleteGroups may span
    /// several; their results are gathered).
    AwaitGroup {
        correlation_id: i32,
        version: i16,
        api: ApiKey,
        parts_left: usize,
        gathered: Option<Response>,
    },
    /// A change written to the metadata log, answered from the image once it is applied
    /// there (up to `offset`), or refused if this node stops leading the quorum in `epoch`
    /// before that (the change may still be committed: clients ask again and see).
    AwaitMetadata {
        wait: AdminWait,
        correlation_id: i32,
        version: i16,
        pending: PendingChange,
    },
    /// A Metadata request that created topics, answered again once sync round `round`
    /// completes (their leaders elected).
    MetadataAfterRound {
        round: u64,
        correlation_id: i32,
        version: i16,
        request: crate::protocol::messages::MetadataRequest,
    },
    /// The answer could not be built: once everything before it is sent, the connection is
    /// closed (a client waiting for an answer that never comes would wait forever).
    Close(String),
}

/// What an admin request's answer waits for.
#[derive(Debug)]
enum AdminWait {
    /// This node, the controller, wrote its change at `offset` in `epoch`: the image must
    /// reach that offset, unless the node stops leading the quorum in that epoch first.
    Written { offset: i64, epoch: i32 },
    /// The change was forwarded to the controller: the image must show these topic configs,
    /// or the deadline passes.
    Forwarded {
        deadline: Instant,
        expected: configs::Expected,
    },
}

/// An admin request's answer, waiting for its change to reach the image: each names the
/// entries of its response to complete, and the ids they wrote.
#[derive(Debug)]
enum PendingChange {
    CreateTopics {
        response: crate::protocol::messages::CreateTopicsResponse,
        created: Vec<(usize, crate::protocol::wire::Uuid)>,
    },
    DeleteTopics {
        response: crate::protocol::messages::DeleteTopicsResponse,
        deleted: Vec<(usize, crate::protocol::wire::Uuid)>,
    },
    CreatePartitions {
        response: crate::protocol::messages::CreatePartitionsResponse,
        grown: Vec<(usize, crate::protocol::wire::Uuid, i32)>,
    },
    Metadata {
        request: crate::protocol::messages::MetadataRequest,
    },
    /// AlterConfigs or IncrementalAlterConfigs (`incremental`): each resource's result, and
    /// the topics whose changes were written.
    AlterConfigs {
        incremental: bool,
        results: Vec<configs::AlterResult>,
        altered: Vec<(usize, crate::protocol::wire::Uuid)>,
    },
}

impl PendingChange {
    /// Fills in the entries that waited: from the image if the change was applied, or with
    /// the error that ended the wait: NOT_CONTROLLER if the controller lost its leadership
    /// first, REQUEST_TIMED_OUT if a forwarded change did not show in time.
    fn complete(&mut self, image: &crate::metadata::MetadataImage, outcome: Result<(), i16>) {
        use crate::protocol::codes;
        if let Err(code) = outcome {
            let message = match code {
                codes::NOT_CONTROLLER => {
                    "the controller lost its leadership before the change committed; it may still"
                }
                _ => "the change was forwarded to the controller and has not been applied yet; it may still be",
            };
            self.refuse(code, message);
            return;
        }
        match self {
            PendingChange::CreateTopics { response, created } => {
                for (index, id) in created.iter() {
                    let result = &mut response.topics[*index];
                    let outcome = match image.topic(&result.name) {
                        Some(topic) if topic.id == *id => Ok(topic),
                        Some(_) => Err((
                            codes::TOPIC_ALREADY_EXISTS,
                            format!("topic {} already exists", result.name),
                        )),
                        None => Err((
                            codes::UNKNOWN_TOPIC_OR_PARTITION,
                            format!("topic {} was deleted again", result.name),
                        )),
                    };
                    match outcome {
                        Ok(topic) => {
                            result.topic_id = topic.id;
                            result.num_partitions = topic.replicas.len() as i32;
                            result.replication_factor =
                                topic.replicas.first().map_or(0, |r| r.len() as i16);
                            if let Some(configs) = result.configs.as_mut() {
                                // (v5+) The configs the topic was created with.
                                configs.extend(topic.configs.iter().map(|(name, value)| {
                                    crate::protocol::messages::create_topics_response::CreatableTopicConfigs {
                                        name: name.clone(),
                                        value: Some(value.clone()),
                                        read_only: true,
                                        config_source: 1,
                                        ..Default::default()
                                    }
                                }));
                            }
                        }
                        Err((code, message)) => {
                            result.error_code = code;
                            result.error_message = Some(message);
                            result.num_partitions = -1;
                            result.replication_factor = -1;
                        }
                    }
                }
            }
            PendingChange::DeleteTopics { response, deleted } => {
                for (index, id) in deleted.iter() {
                    let result = &mut response.responses[*index];
                    if image.topic_by_id(id).is_some() {
                        result.error_code = codes::UNKNOWN_SERVER_ERROR;
                        result.error_message = Some("the topic is still there".into());
                    }
                }
            }
            PendingChange::CreatePartitions { response, grown } => {
                for (index, id, count) in grown.iter() {
                    let result = &mut response.results[*index];
                    if image
                        .topic_by_id(id)
                        .is_none_or(|t| (t.replicas.len() as i32) < *count)
                    {
                        result.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION;
                        result.error_message = Some("the topic was deleted meanwhile".into());
                    }
                }
            }
            PendingChange::AlterConfigs {
                results, altered, ..
            } => {
                for (index, id) in altered.drain(..) {
                    if image.topic_by_id(&id).is_none() {
                        results[index].error_code = codes::UNKNOWN_TOPIC_OR_PARTITION;
                        results[index].error_message =
                            Some("the topic was deleted meanwhile".into());
                    }
                }
            }
            PendingChange::Metadata { .. } => {}
        }
    }

    /// Every entry that waited gets `code` and `message` (its change was not written, or
    /// its outcome is unknown), and waits no more.
    fn refuse(&mut self, code: i16, message: &str) {
        match self {
            PendingChange::CreateTopics { response, created } => {
                for (index, _) in created.drain(..) {
                    let result = &mut response.topics[index];
                    result.error_code = code;
                    result.error_message = Some(message.to_string());
                    result.num_partitions = -1;
                    result.replication_factor = -1;
                }
            }
            PendingChange::DeleteTopics { response, deleted } => {
                for (index, _) in deleted.drain(..) {
                    response.responses[index].error_code = code;
                    response.responses[index].error_message = Some(message.to_string());
                }
            }
            PendingChange::CreatePartitions { response, grown } => {
                for (index, _, _) in grown.drain(..) {
                    response.results[index].error_code = code;
                    response.results[index].error_message = Some(message.to_string());
                }
            }
            PendingChange::AlterConfigs {
                results, altered, ..
            } => {
                for (index, _) in altered.drain(..) {
                    results[index].error_code = code;
                    results[index].error_message = Some(message.to_string());
                }
            }
            PendingChange::Metadata { .. } => {}
        }
    }

    fn frame(&self, correlation_id: i32, version: i16) -> Result<Bytes, String> {
        let (api, response) = match self {
            PendingChange::CreateTopics { response, .. } => (
                ApiKey::CreateTopics,
                Response::CreateTopics(response.clone()),
            ),
            PendingChange::DeleteTopics { response, .. } => (
                ApiKey::DeleteTopics,
                Response::DeleteTopics(response.clone()),
            ),
            PendingChange::CreatePartitions { response, .. } => (
                ApiKey::CreatePartitions,
                Response::CreatePartitions(response.clone()),
            ),
            PendingChange::AlterConfigs {
                incremental,
                results,
                ..
            } => {
                let api = match incremental {
                    true => ApiKey::IncrementalAlterConfigs,
                    false => ApiKey::AlterConfigs,
                };
                (api, configs::alter_response(*incremental, results))
            }
            PendingChange::Metadata { .. } => unreachable!("answered by MetadataAfterRound"),
        };
        frame_response(correlation_id, api, version, &response)
    }
}

#[derive(Debug)]
struct Conn {
    frames: FrameDecoder,
    slots: VecDeque<(u64, Slot)>,
    next_slot: u64,
    /// Each request's slot, API and the time it was read, in slot order: its duration is
    /// counted when its answer leaves (metrics).
    read_at: VecDeque<(u64, ApiKey, Instant)>,
}

/// An answer that waits for commits: an acks=all Produce, or DeleteRecords (its markers).
#[derive(Debug)]
enum CommitAnswer {
    Produce(crate::protocol::messages::ProduceResponse),
    DeleteRecords(crate::protocol::messages::DeleteRecordsResponse),
}

impl CommitAnswer {
    /// The partition at `at` failed: its write may be lost.
    fn fail(&mut self, at: (usize, usize), code: i16, message: &str) {
        let (t, p) = at;
        match self {
            CommitAnswer::Produce(response) => {
                let answer = &mut response.responses[t].partition_responses[p];
                answer.error_code = code;
                answer.error_message = Some(message.into());
                answer.base_offset = -1;
            }
            CommitAnswer::DeleteRecords(response) => {
                let answer = &mut response.topics[t].partitions[p];
                answer.error_code = code;
                answer.low_watermark = -1;
            }
        }
    }

    fn frame(&mut self, correlation_id: i32, version: i16) -> Result<Bytes, String> {
        let (api, response) = match self {
            CommitAnswer::Produce(r) => (ApiKey::Produce, Response::Produce(std::mem::take(r))),
            CommitAnswer::DeleteRecords(r) => (
                ApiKey::DeleteRecords,
                Response::DeleteRecords(std::mem::take(r)),
            ),
        };
        frame_response(correlation_id, api, version, &response)
    }
}

/// What an acks=all produce waits for in one partition.
#[derive(Debug)]
struct CommitWait {
    log_id: u64,
    /// The high watermark must reach this.
    offset: i64,
    /// In the leader epoch the batch was appended in.
    epoch: i32,
    /// Where the partition's answer is in the response: (topic, partition) indexes.
    at: (usize, usize),
}

/// A Fetch waiting for `min_bytes` or its deadline.
#[derive(Debug)]
struct ParkedFetch {
    conn: ConnId,
    slot: u64,
    deadline: Instant,
    header: RequestHeader,
    request: crate::protocol::messages::FetchRequest,
    /// The node's `data_version` when the fetch last looked: it looks again only once that
    /// moved (or its deadline passed), not on every step.
    seen_version: u64,
}

/// The sync round in flight: its id, the tokens still outstanding, and what each partition
/// log becomes durable up to once it completes.
#[derive(Debug)]
struct Round {
    id: u64,
    outstanding: BTreeSet<SyncToken>,
    ends: Vec<topics::SyncEnd>,
    /// The producer ids recorded when the round began: durable once it completes.
    producer_ids_end: i64,
    /// The votes (epochs and votes of Raft groups) the round makes durable.
    votes: Vec<(GroupId, Persisted)>,
    /// When its syncs were issued.
    started: Instant,
}

pub struct Node<D: Disk> {
    config: Config,
    /// The time the latest step was given (what answers built outside a step read).
    now: Instant,
    disk: D,
    topics: Topics,
    conns: BTreeMap<ConnId, Conn>,
    parked: Vec<ParkedFetch>,
    /// Files outside partition logs written since the last round (topic metadata, the data
    /// directory).
    extra_dirty_files: Vec<FileId>,
    /// The data directory: synced when a partition directory or the producer-id file was
    /// created or removed in it (and once at start, for what a crash left unsynced).
    root_dir: FileId,
    round: Option<Round>,
    /// The id the next round will take: writes made now complete with it.
    next_round: u64,
    next_token: SyncToken,
    halted: Option<String>,
    shutting_down: bool,
    /// False from a start with recovered logs until the first sync round completes: requests
    /// wait in their connections' frame buffers. Recovery keeps every batch that survived the
    /// crash, but only the recovery point (which lags a round) is known durable; serving
    /// before that round would show clients a high watermark below one they saw before.
    serving: bool,
    /// Requests arrived while not serving, or behind a full answer queue, and wait to be read.
    requests_held: bool,
    /// When idle producers are next expired.
    next_producer_expiry: Instant,
    /// When retention next runs (`None` before the first step: then one interval on).
    next_retention: Option<Instant>,
    /// When the cleaner's next step is due, while a pass is under way.
    next_clean: Option<Instant>,
    /// When a round that only writes recovery points is due (none is pending if `None`).
    recovery_point_due: Option<Instant>,
    /// Moves whenever what a parked fetch may wait for can have changed: a high watermark (a
    /// sync round completed, or an append without fsync durability) or the set of topics.
    data_version: u64,
    rng_state: u64,
    producer_ids: producer_ids::ProducerIds,
    /// Every Raft group's epoch and vote.
    votes: VoteStore,
    /// Each group's next deadline (ms, log id), and the deadline filed for each log id.
    raft_timers: BTreeSet<(u64, u64)>,
    raft_timer_of: BTreeMap<u64, u64>,
    /// Raft messages waiting for the end of the step, by peer.
    peer_outbox: BTreeMap<NodeId, Vec<(GroupId, Message)>>,
    /// `data_version` when requests waiting for commits were last checked.
    commit_checked_version: u64,
    /// Partitions were created that have no Raft group yet.
    replicas_missing: bool,
    /// The cluster's metadata, as the committed metadata log says.
    image: crate::metadata::MetadataImage,
    /// Topic names the controller wrote and its image has not applied yet, with the offset
    /// that applies them (a second creation of one is refused at once).
    proposed: BTreeMap<String, i64>,
    /// Records for the controller, sent in the next frame to it.
    forwards: Vec<Bytes>,
    /// Whether topics found on disk and unknown to the image were recorded (once a start).
    orphans_adopted: bool,
    /// Admin requests waiting for the image (at least: a closed connection's are counted
    /// until the next check).
    admin_waiting: usize,
    /// Partitions whose leadership this node is to report to the controller: log id, and
    /// when (ms) it may send the report again.
    leader_reports: BTreeMap<u64, u64>,
    /// This start's number (`node-starts`): the incarnation the node registers with.
    incarnation: u64,
    /// When (ms) the node may send its registration to the controller again.
    registration_due_ms: u64,
    /// Heartbeats and the link headers of peer frames: which peers are in touch.
    links: links::Links,
    /// Whether this start's registration and a controller are in the image (`joined`).
    joined: bool,
    /// While shutting down: until when leaderships may take to move to other nodes.
    handover_until: Option<Instant>,
    /// What the node counted for operators (`metrics`).
    counters: metrics::NodeCounters,
    /// The group coordinators of the `__consumer_offsets` partitions this node leads.
    coordinators: BTreeMap<i32, groups::Loaded>,
    /// The transaction coordinators of the `__transaction_state` partitions it leads.
    txn_coordinators: BTreeMap<i32, transactions::LoadedTxn>,
    /// Kafka requests between nodes (transaction markers).
    calls: transactions::Calls,
    /// While a verified Produce is served: what its coordinator said of each (log id,
    /// producer id, epoch) whose transaction opens here (`transactions.rs`).
    txn_verdicts: BTreeMap<(u64, i64, i16), i16>,
}

/// How long a node that is shutting down waits for its leaderships to move to other nodes.
pub const HANDOVER_TIMEOUT_MS: u64 = 5_000;

/// How often the cleaner steps while a compaction pass is under way: each step reads at most
/// this interval's share of `Config::log_cleaner_io_bytes_per_sec` (and
/// [`crate::limits::CLEANER_STEP_BYTES_MAX`]), so no step holds requests up for long.
pub const CLEANER_STEP_INTERVAL_MS: u64 = 10;

impl<D: Disk> Node<D> {
    /// Opens the node on `disk`, recovering every partition log found there. Recovery events
    /// (partitions recovered, torn tails cut, partitions taken offline) are returned for the
    /// operator's log.
    pub fn new(
        mut config: Config,
        mut disk: D,
    ) -> Result<(Node<D>, Vec<RecoveryEvent>), NodeError> {
        config.groups.planted_stale_commit = config.planted_bug == Some(PlantedBug::StaleCommit);
        // Topics' logs take their own segment size once the image names their configs; the
        // metadata log, and recovery, take the default.
        config.log.segment_size_bytes = config.topic_defaults.segment_bytes as u64;
        config.log.planted_retention_early = config.planted_bug == Some(PlantedBug::RetentionEarly);
        config.log.planted_cleaner_drops_newest =
            config.planted_bug == Some(PlantedBug::CleanerDropsNewest);
        let log_config = LogConfig {
            planted_cut_synced: config.planted_bug == Some(PlantedBug::CutSynced),
            ..config.log
        };
        let votes = VoteStore::recover(&mut disk)?;
        let (topics, events) = Topics::recover(&mut disk, log_config, &votes)?;
        let share = match (config.cluster.iter()).position(|b| b.node_id == config.node_id) {
            Some(index) => (config.cluster.len() as i64, index as i64),
            None => (1, 0),
        };
        let producer_ids =
            producer_ids::ProducerIds::recover(&mut disk, topics.max_producer_id(), share)?;
        let root_dir = disk.open_dir("")?;
        let (starts, starts_file) = count_start(&mut disk)?;
        // Each start draws from a stream of its own: a restart with the same seed (the
        // simulator's, or a container's) must not hand out a deleted topic's id again.
        // And each node of a cluster from its own (the controller draws topic ids, and a
        // later controller must not draw a deleted topic's id again).
        let rng_state = config.seed
            ^ 0x6b65_656c_6b65_656c
            ^ starts.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (config.node_id as u64).wrapping_mul(0xd6e8_feb8_6659_fd93);
        // The first round (which syncs the data directory, and every recovered log) must
        // complete before any request is read.
        let serving = false;
        let peers = (config.cluster.iter())
            .map(|b| b.node_id)
            .filter(|id| *id != config.node_id);
        let links = links::Links::new(peers);
        let mut node = Node {
            now: Instant(0),
            config,
            disk,
            topics,
            conns: BTreeMap::new(),
            parked: Vec::new(),
            extra_dirty_files: vec![root_dir, starts_file],
            root_dir,
            round: None,
            next_round: 1,
            next_token: 1,
            halted: None,
            shutting_down: false,
            serving,
            requests_held: false,
            next_producer_expiry: Instant(0),
            next_retention: None,
            next_clean: None,
            recovery_point_due: None,
            data_version: 0,
            rng_state,
            producer_ids,
            votes,
            raft_timers: BTreeSet::new(),
            raft_timer_of: BTreeMap::new(),
            peer_outbox: BTreeMap::new(),
            commit_checked_version: 0,
            replicas_missing: false,
            image: Default::default(),
            proposed: BTreeMap::new(),
            forwards: Vec::new(),
            orphans_adopted: false,
            admin_waiting: 0,
            leader_reports: BTreeMap::new(),
            incarnation: starts,
            registration_due_ms: 0,
            links,
            joined: false,
            handover_until: None,
            counters: Default::default(),
            coordinators: BTreeMap::new(),
            txn_coordinators: BTreeMap::new(),
            calls: Default::default(),
            txn_verdicts: BTreeMap::new(),
        };
        if let Err(e) = node.ensure_metadata_log() {
            return Err(NodeError::Disk(match e {
                crate::log::LogError::Disk(e) => e,
                other => DiskError::Io(other.to_string()),
            }));
        }
        let files = node.topics.rewrite_metadata(&mut node.disk)?;
        node.extra_dirty_files.extend(files);
        // Every group starts as a follower with its timer due at once: a voter alone
        // campaigns in the first step, and leads once its vote is synced in the first round.
        node.create_replicas(Instant(0));
        Ok((node, events))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cluster's nodes: the configured ones (or this node alone), each where and in
    /// which rack it registered itself with the metadata quorum once it has.
    pub(crate) fn brokers(&self) -> Vec<Broker> {
        let configured = if self.config.cluster.is_empty() {
            vec![Broker {
                node_id: self.config.node_id,
                host: self.config.advertised_host.clone(),
                port: self.config.advertised_port,
                rack: self.config.rack.clone(),
            }]
        } else {
            self.config.cluster.clone()
        };
        (configured.into_iter())
            .map(|b| match self.image.brokers().get(&b.node_id) {
                Some(registered) => Broker {
                    node_id: b.node_id,
                    host: registered.host.clone(),
                    port: registered.port,
                    rack: registered.rack.clone(),
                },
                None => b,
            })
            .collect()
    }

    /// The brokers clients are told of: those whose client address is known (configured,
    /// or registered with the quorum).
    pub(crate) fn listed_brokers(&self) -> Vec<Broker> {
        (self.brokers().into_iter())
            .filter(|b| b.port > 0)
            .collect()
    }

    /// The controller as clients are told of it: only once it is a listed broker (a client
    /// told of a controller it cannot reach waits on it; told of none, it asks again).
    pub(crate) fn listed_controller_id(&mut self) -> i32 {
        let listed = self.listed_brokers();
        (self.controller_id())
            .filter(|c| listed.iter().any(|b| b.node_id == *c))
            .unwrap_or(-1)
    }

    /// The disk, for the harness (the simulator crashes it; tests inspect it).
    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    /// The disk, for the adapter's own metrics (its fsync times).
    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub fn into_disk(self) -> D {
        self.disk
    }

    pub fn step(&mut self, now: Instant, input: Input<'_>, out: &mut Vec<Output>) {
        if self.halted.is_some() {
            return;
        }
        self.now = now;
        self.start_links(now);
        match input {
            Input::ConnOpened { conn } if self.conns.len() >= limits::CONNECTIONS_MAX => {
                out.push(Output::ConnClose {
                    conn,
                    reason: format!(
                        "{} connections are open, the most this node serves",
                        limits::CONNECTIONS_MAX
                    ),
                });
            }
            Input::ConnOpened { conn } => {
                self.conns.insert(
                    conn,
                    Conn {
                        frames: FrameDecoder::new(self.config.max_frame_size_bytes),
                        slots: VecDeque::new(),
                        next_slot: 0,
                        read_at: VecDeque::new(),
                    },
                );
            }
            Input::ConnBytes { conn, bytes } => {
                self.counters.client_bytes_received += bytes.len() as u64;
                self.handle_bytes(now, conn, bytes, out);
            }
            Input::ConnClosed { conn } => {
                self.conns.remove(&conn);
                self.parked.retain(|p| p.conn != conn);
            }
            Input::PeerMessage { from, bytes } => {
                self.counters.peer_bytes_received += bytes.len() as u64;
                self.handle_peer_bytes(now, from, bytes);
            }
            Input::Timeout => {}
            Input::Synced { token, result } => self.handle_synced(now, token, result, out),
        }
        if self.halted.is_some() {
            return;
        }
        self.settle_replicas(now);
        self.settle_metadata(now);
        self.settle_groups(now);
        self.settle_txns(now);
        self.expire_producers(now);
        self.apply_retention(now);
        self.clean_logs(now);
        self.complete_commit_waiters();
        self.complete_marker_waiters();
        self.complete_parked_fetches(now, false);
        self.maybe_start_round(now, out);
        self.flush(out);
        self.flush_peers(out);
        if self.serving && self.requests_held && self.joined() {
            // Frames held back (before the first sync round, or behind a full answer queue)
            // are read now that there may be room.
            self.requests_held = false;
            let conns: Vec<ConnId> = self.conns.keys().copied().collect();
            for conn in conns {
                self.handle_bytes(now, conn, &[], out);
            }
            self.settle_replicas(now);
            self.settle_metadata(now);
            self.settle_groups(now);
            self.settle_txns(now);
            self.complete_commit_waiters();
            self.complete_marker_waiters();
            self.complete_parked_fetches(now, false);
            self.maybe_start_round(now, out);
            self.flush(out);
            self.flush_peers(out);
        }
    }

    /// Partitions created in this step get their groups, and every group whose deadline
    /// passed is ticked (a new group alone campaigns at once).
    fn settle_replicas(&mut self, now: Instant) {
        if std::mem::take(&mut self.replicas_missing) {
            self.create_replicas(now);
        }
        self.check_links(now);
        self.tick_replicas(now);
    }

    /// The image takes what the quorum committed (and the node's partitions follow it), and
    /// admin requests waiting for it are answered.
    fn settle_metadata(&mut self, now: Instant) {
        if self.apply_metadata(now) {
            self.settle_replicas(now);
        }
        self.adopt_orphans(now);
        self.register(now);
        self.report_leaders(now);
        self.complete_admin_waiters();
    }

    /// Forgets idle idempotent producers, every [`limits::PRODUCER_EXPIRY_CHECK_INTERVAL_MS`],
    /// so their entries leave memory.
    fn expire_producers(&mut self, now: Instant) {
        if now < self.next_producer_expiry {
            return;
        }
        self.next_producer_expiry = now.plus_millis(limits::PRODUCER_EXPIRY_CHECK_INTERVAL_MS);
        self.topics
            .expire_producers(now.as_millis(), self.config.log.producer_id_expiration_ms);
    }

    /// Retention, every `retention_check_interval_ms`: whole segments past their topic's
    /// retention.ms or retention.bytes go, below each partition's high watermark (each
    /// replica on its own, as in Kafka; a follower whose leader's log starts past its own end
    /// starts over there, `FetchReply::StartAt`).
    fn apply_retention(&mut self, now: Instant) {
        let interval = self.config.retention_check_interval_ms;
        let due = *self.next_retention.get_or_insert(now.plus_millis(interval));
        if now < due {
            // A log that rolled a segment with retention.bytes set looks at once: its disk
            // use stays within a segment of the limit while it is written, not only at checks.
            if self.serving {
                let moved = self
                    .topics
                    .apply_retention(&mut self.disk, now.as_millis(), true);
                if !moved.is_empty() {
                    self.data_version += 1;
                }
            }
            return;
        }
        self.next_retention = Some(now.plus_millis(interval));
        if !self.serving {
            return;
        }
        let moved = self
            .topics
            .apply_retention(&mut self.disk, now.as_millis(), false);
        if !moved.is_empty() {
            // Fetches parked below a new start are answered OFFSET_OUT_OF_RANGE.
            self.data_version += 1;
        }
        // Compaction passes begin here too.
        self.next_clean.get_or_insert(now);
    }

    /// A step of compaction, every [`CLEANER_STEP_INTERVAL_MS`] while a pass is under way on
    /// some log, reading at most what `log_cleaner_io_bytes_per_sec` allows in one interval.
    fn clean_logs(&mut self, now: Instant) {
        if self.next_clean.is_none_or(|at| now < at) {
            return;
        }
        self.next_clean = None;
        if !self.serving {
            return;
        }
        let budget =
            (self.config.log_cleaner_io_bytes_per_sec * CLEANER_STEP_INTERVAL_MS / 1000).max(1);
        if self
            .topics
            .clean_step(&mut self.disk, now.as_millis(), budget)
        {
            self.next_clean = Some(now.plus_millis(CLEANER_STEP_INTERVAL_MS));
        }
    }

    /// When the node next needs a `Timeout` input.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.serving && self.round.is_none() && self.halted.is_none() {
            // The first sync round of a start is due at once, not at the first client's
            // first bytes: recovery's work is made durable while nobody is connected too.
            return Some(Instant(0));
        }
        if self.halted.is_some() {
            return None;
        }
        let parked = self.parked.iter().map(|p| p.deadline).min();
        let links = self.links.next_deadline();
        let forwarded = (self.admin_waiting > 0)
            .then(|| {
                (self.conns.values().flat_map(|c| c.slots.iter()))
                    .filter_map(|(_, slot)| match slot {
                        Slot::AwaitMetadata {
                            wait: AdminWait::Forwarded { deadline, .. },
                            ..
                        } => Some(*deadline),
                        _ => None,
                    })
                    .min()
            })
            .flatten();
        [
            parked,
            self.recovery_point_due,
            self.next_raft_deadline(),
            links,
            self.next_group_deadline(),
            self.next_txn_deadline(),
            forwarded,
            self.next_retention,
            self.next_clean,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Stop serving new requests; answer those in flight and sync everything. The adapter
    /// keeps stepping until [`Node::is_shut_down`].
    pub fn begin_shutdown(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.shutting_down = true;
        // Leaderships go to caught-up followers first, so that clients find a new leader at
        // once rather than after an election timeout (bounded: a follower that does not catch
        // up in time is left to elect itself after this node is gone).
        self.handover_until = Some(now.plus_millis(HANDOVER_TIMEOUT_MS));
        for log_id in self.topics.log_ids() {
            let target = (self.topics.by_log_id(log_id))
                .and_then(|p| p.replica.as_ref())
                .and_then(|r| r.raft().transfer_target());
            if let Some(to) = target {
                self.drive_replica(now, log_id, |raft, _, out| {
                    raft.transfer_leadership(to, out)
                });
            }
        }
        self.flush_peers(out);
        // Groups move with the leaderships; what their coordinators hold is answered now.
        self.drop_coordinators(crate::protocol::codes::NOT_COORDINATOR);
        self.drop_txn_coordinators(crate::protocol::codes::NOT_COORDINATOR);
        // Waiting fetches are answered now with what they have.
        self.complete_parked_fetches(now, true);
        self.maybe_start_round(now, out);
        self.flush(out);
    }

    /// Shut down: nothing left to answer, nothing left to sync, no leadership left to hand
    /// over (or no time left to).
    pub fn is_shut_down(&self) -> bool {
        let handed_over = self.handover_until.is_some_and(|until| self.now >= until)
            || !self.topics.by_name.values().any(|t| {
                (t.partitions.values()).any(|p| {
                    (p.replica.as_ref())
                        .is_some_and(|r| r.is_leader() && r.raft().voters().len() > 1)
                })
            });
        self.shutting_down
            && handed_over
            && self.round.is_none()
            && self.extra_dirty_files.is_empty()
            && !self.topics.needs_sync()
            && !self.votes.needs_sync()
            && self.conns.values().all(|c| c.slots.is_empty())
    }

    /// Every partition's log end and high watermark, in topic and partition order.
    pub fn partition_offsets(&self) -> Vec<PartitionOffsets> {
        self.topics.offsets()
    }

    /// The partitions of `topic` this node leads, each with its leader epoch.
    pub fn leaderships(&self, topic: &str) -> Vec<(i32, i32)> {
        let Some(t) = self.topics.by_name.get(topic) else {
            return Vec::new();
        };
        (t.partitions.iter())
            .filter_map(|(i, p)| {
                let replica = p.replica.as_ref().filter(|r| r.is_leader())?;
                Some((*i, replica.raft().epoch()))
            })
            .collect()
    }

    /// How many partitions this node leads.
    pub fn partitions_led(&self) -> usize {
        (self.topics.by_name.values())
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.replica.as_ref().is_some_and(|r| r.is_leader()))
            .count()
    }

    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    /// Checks the node's invariants; the simulator calls it after every step.
    pub fn check_invariants(&self) {
        for conn in self.conns.values() {
            let mut last = None;
            for (id, _) in &conn.slots {
                assert!(last.is_none_or(|l| l < *id), "slots keep arrival order");
                last = Some(*id);
            }
        }
        for parked in &self.parked {
            let conn = self
                .conns
                .get(&parked.conn)
                .expect("a parked fetch has its connection");
            assert!(
                conn.slots
                    .iter()
                    .any(|(id, s)| *id == parked.slot && matches!(s, Slot::AwaitFetch)),
                "a parked fetch holds its slot"
            );
        }
        if let Some(round) = &self.round {
            assert!(
                round.id < self.next_round,
                "the round in flight has an id already given"
            );
        }
        self.topics.check_invariants();
        self.check_coordinators();
        self.check_txn_coordinators();
        // Every group knows which peers are down, as the node's links say: a group that took
        // a peer in touch for down would campaign against a live leader, and one that took a
        // silent peer for in touch would count a fetch it parked long ago as a quorum.
        let down: BTreeSet<NodeId> = self.links.down().into_iter().collect();
        for topic in self.topics.by_name.values() {
            for partition in topic.partitions.values() {
                if let Some(replica) = &partition.replica {
                    assert_eq!(
                        replica.raft().unreachable(),
                        &down,
                        "a group's unreachable peers are the node's down links"
                    );
                }
            }
        }
    }

    fn halt(&mut self, reason: String, out: &mut Vec<Output>) {
        tracing::error!(%reason, "halting");
        for conn in std::mem::take(&mut self.conns).into_keys() {
            out.push(Output::ConnClose {
                conn,
                reason: reason.clone(),
            });
        }
        self.parked.clear();
        out.push(Output::Halt {
            reason: reason.clone(),
        });
        self.halted = Some(reason);
    }

    fn handle_bytes(&mut self, now: Instant, conn_id: ConnId, bytes: &[u8], out: &mut Vec<Output>) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if self.shutting_down {
            return;
        }
        conn.frames.push(bytes);
        if conn.frames.buffered_bytes() > limits::BUFFERED_REQUEST_BYTES_PER_CONNECTION_MAX {
            let reason = format!(
                "{} bytes of requests buffered, more than {}",
                conn.frames.buffered_bytes(),
                limits::BUFFERED_REQUEST_BYTES_PER_CONNECTION_MAX
            );
            self.close(conn_id, reason, out);
            return;
        }
        if !self.serving || !self.joined() {
            self.requests_held = true;
            return;
        }
        loop {
            let Some(conn) = self.conns.get_mut(&conn_id) else {
                return;
            };
            if conn.slots.len() >= limits::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX {
                // The rest waits, unread, until answers make room.
                self.requests_held = true;
                return;
            }
            if (conn.slots.iter()).any(|(_, s)| matches!(s, Slot::AwaitVerify)) {
                // A Produce waits for its transaction's coordinator: what follows it on the
                // connection waits, unread, so that its batches are appended in the order
                // they were sent (Kafka mutes the connection the same way).
                self.requests_held = true;
                return;
            }
            let frame = match conn.frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => {
                    self.close(conn_id, format!("bad frame: {e}"), out);
                    return;
                }
            };
            let slot = conn.next_slot;
            conn.next_slot += 1;
            // The request takes its place in line now (waiting); `handle_frame` fills it.
            conn.slots.push_back((slot, Slot::AwaitFetch));
            if let Err(reason) = self.handle_frame(now, conn_id, slot, frame) {
                self.close(conn_id, reason, out);
                return;
            }
        }
    }

    fn close(&mut self, conn: ConnId, reason: String, out: &mut Vec<Output>) {
        tracing::info!(conn, %reason, "closing connection");
        // What was answered before the bad request still goes out, in order.
        self.flush(out);
        self.conns.remove(&conn);
        self.parked.retain(|p| p.conn != conn);
        out.push(Output::ConnClose { conn, reason });
    }

    /// Handles one request frame, filling its slot. An error closes the connection.
    fn handle_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        slot: u64,
        frame: Bytes,
    ) -> Result<(), String> {
        let parsed = parse_request(frame).map_err(|e| format!("bad request: {e}"))?;
        let (header, api_key, request) = match parsed {
            ParsedRequest::ApiVersionsFallback { header } => {
                let response =
                    Response::ApiVersions(crate::protocol::messages::ApiVersionsResponse {
                        error_code: crate::protocol::codes::UNSUPPORTED_VERSION,
                        api_keys: served_api_versions(),
                        ..Default::default()
                    });
                let bytes =
                    frame_response(header.correlation_id, ApiKey::ApiVersions, 0, &response)?;
                self.request_read(now, conn, slot, ApiKey::ApiVersions);
                self.fill(conn, slot, Slot::Ready(Some(bytes)));
                return Ok(());
            }
            ParsedRequest::Request {
                header,
                api_key,
                request,
            } => (header, api_key, *request),
        };
        if !SERVED_APIS.contains(&api_key) {
            return Err(format!("{} is not served by this node", api_key.name()));
        }
        self.request_read(now, conn, slot, api_key);
        let version = header.api_version;
        let reply =
            |response: Response| frame_response(header.correlation_id, api_key, version, &response);
        let slot_state = match request {
            Request::ApiVersions(_) => Slot::Ready(Some(reply(Response::ApiVersions(
                crate::protocol::messages::ApiVersionsResponse {
                    api_keys: served_api_versions(),
                    ..Default::default()
                },
            ))?)),
            Request::Metadata(_) if self.brokers().len() > 1 && self.controller_id().is_none() => {
                // No controller in reach: this node may be cut off from the others, and what
                // it knows of leaders may be stale. Closing the connection sends the client to
                // another broker (an answer would keep it here: librdkafka asks the broker it
                // last heard from again and again).
                return Err("no metadata quorum in reach: ask another broker".into());
            }
            Request::Metadata(r) => {
                let (response, created) = self.metadata(now, &r, version);
                match created {
                    // It created topics: answered once the image has them and the round that
                    // makes their directories durable and elects their leaders completes, so
                    // that the answer names the leaders (Kafka answers LEADER_NOT_AVAILABLE at
                    // once, and clients ask again).
                    Some((offset, epoch)) => {
                        self.admin_waiting += 1;
                        Slot::AwaitMetadata {
                            wait: AdminWait::Written { offset, epoch },
                            correlation_id: header.correlation_id,
                            version,
                            pending: PendingChange::Metadata { request: r },
                        }
                    }
                    None => Slot::Ready(Some(reply(Response::Metadata(response))?)),
                }
            }
            Request::Produce(r) if self.config.planted_bug == Some(PlantedBug::AckEarly) => {
                // The planted bug: success is promised first, then the append happens (or
                // fails), and nobody waits for a sync.
                let response = self.promise_produce(&r);
                let _answer_never_waited_for = self.produce(now, &r, version);
                Slot::Ready((r.acks != 0).then_some(reply(Response::Produce(response))?))
            }
            Request::Produce(r) => {
                let needed = self.verification_needed(&r);
                if !needed.is_empty() {
                    // The first transactional batch of a transaction here: the coordinator
                    // says whether the partition is in the producer's open transaction first
                    // (KIP-890); the request waits in its place.
                    self.fill(conn, slot, Slot::AwaitVerify);
                    self.verify_produce(now, conn, slot, header.correlation_id, r, version, needed);
                    return Ok(());
                }
                self.produce_slot(now, header.correlation_id, r, version)?
            }
            Request::Fetch(r) => {
                let max_wait_ms = r.max_wait_ms.max(0) as u64;
                let parked = ParkedFetch {
                    conn,
                    slot,
                    deadline: now.plus_millis(max_wait_ms),
                    header,
                    request: r,
                    seen_version: self.data_version,
                };
                match self.try_fetch(&parked, false) {
                    Some(response) => Slot::Ready(Some(frame_response(
                        parked.header.correlation_id,
                        ApiKey::Fetch,
                        version,
                        &Response::Fetch(response),
                    )?)),
                    None => {
                        self.parked.push(parked);
                        Slot::AwaitFetch
                    }
                }
            }
            Request::ListOffsets(r) => Slot::Ready(Some(reply(Response::ListOffsets(
                self.list_offsets(&r, version),
            ))?)),
            Request::CreateTopics(r) => {
                let (pending, wait) = self.create_topics(now, &r, version);
                self.admin_slot(header.correlation_id, version, pending, wait)?
            }
            Request::DeleteTopics(r) => {
                let (pending, wait) = self.delete_topics(now, &r, version);
                self.admin_slot(header.correlation_id, version, pending, wait)?
            }
            Request::CreatePartitions(r) => {
                let (pending, wait) = self.create_partitions(now, &r);
                self.admin_slot(header.correlation_id, version, pending, wait)?
            }
            Request::DeleteRecords(r) => {
                let (response, waits) = self.delete_records(now, &r);
                if waits.is_empty() {
                    Slot::Ready(Some(reply(Response::DeleteRecords(response))?))
                } else {
                    Slot::AwaitCommit {
                        waits,
                        correlation_id: header.correlation_id,
                        version,
                        response: CommitAnswer::DeleteRecords(response),
                    }
                }
            }
            Request::AlterConfigs(r) => {
                let (pending, wait) = self.alter_configs(now, &r);
                self.admin_slot(header.correlation_id, version, pending, wait)?
            }
            Request::IncrementalAlterConfigs(r) => {
                let (pending, wait) = self.incremental_alter_configs(now, &r);
                self.admin_slot(header.correlation_id, version, pending, wait)?
            }
            Request::DescribeConfigs(r) => Slot::Ready(Some(reply(Response::DescribeConfigs(
                self.describe_configs(&r, version),
            ))?)),
            Request::DescribeCluster(r) => Slot::Ready(Some(reply(Response::DescribeCluster(
                self.describe_cluster(&r),
            ))?)),
            request @ (Request::AddPartitionsToTxn(_)
            | Request::AddOffsetsToTxn(_)
            | Request::EndTxn(_)) => match self.txn_request(now, conn, slot, version, &request) {
                Some(response) => Slot::Ready(Some(reply(response)?)),
                None => self.group_slot(header.correlation_id, version, api_key, 1, None),
            },
            Request::InitProducerId(r) if r.transactional_id.is_some() => {
                let request = Request::InitProducerId(r);
                match self.txn_request(now, conn, slot, version, &request) {
                    Some(response) => Slot::Ready(Some(reply(response)?)),
                    None => self.group_slot(header.correlation_id, version, api_key, 1, None),
                }
            }
            Request::DescribeTransactions(r) => Slot::Ready(Some(reply(
                Response::DescribeTransactions(self.describe_transactions(&r)),
            )?)),
            Request::ListTransactions(r) => Slot::Ready(Some(reply(Response::ListTransactions(
                self.list_transactions(&r, now),
            ))?)),
            Request::InitProducerId(r) => {
                let (response, wait) = self.init_producer_id(&r);
                let response = Some(reply(Response::InitProducerId(response))?);
                if wait {
                    // Whatever the durability setting: an id handed out twice would let one
                    // producer's batches pass for another's retries.
                    Slot::AwaitSync {
                        round: self.next_round,
                        response,
                    }
                } else {
                    Slot::Ready(response)
                }
            }
            Request::DescribeQuorum(r) => {
                let partitions: usize = r.topics.iter().map(|t| t.partitions.len()).sum();
                if partitions > limits::DESCRIBE_QUORUM_PARTITIONS_MAX {
                    return Err(format!(
                        "DescribeQuorum for {partitions} partitions, more than the {} answered",
                        limits::DESCRIBE_QUORUM_PARTITIONS_MAX
                    ));
                }
                let response = self.describe_quorum(now, &r, version);
                Slot::Ready(Some(reply(Response::DescribeQuorum(response))?))
            }
            Request::FindCoordinator(r) => Slot::Ready(Some(reply(Response::FindCoordinator(
                self.find_coordinator(now, &r, version),
            ))?)),
            Request::OffsetFetch(r) => Slot::Ready(Some(reply(Response::OffsetFetch(
                self.offset_fetch(&r, version),
            ))?)),
            Request::DescribeGroups(r) => Slot::Ready(Some(reply(Response::DescribeGroups(
                self.describe_groups(&r),
            ))?)),
            Request::ListGroups(r) => {
                Slot::Ready(Some(reply(Response::ListGroups(self.list_groups(&r)))?))
            }
            Request::DeleteGroups(r) => {
                let (response, waiting) = self.delete_groups(conn, slot, &r);
                if waiting == 0 {
                    Slot::Ready(Some(reply(Response::DeleteGroups(response))?))
                } else {
                    self.group_slot(
                        header.correlation_id,
                        version,
                        api_key,
                        waiting,
                        Some(Response::DeleteGroups(response)),
                    )
                }
            }
            // A transaction's offsets: its coordinator says first whether the group's offsets
            // partition is in the producer's open transaction (as a Produce's first batch in
            // a partition waits for it); the request waits in its place.
            Request::TxnOffsetCommit(r) if self.coordinates_group(&r.group_id).is_some() => {
                let partition = self.coordinates_group(&r.group_id).expect("checked");
                self.fill(conn, slot, Slot::AwaitVerify);
                let place = (conn, slot, header.correlation_id, version);
                let client_id = header.client_id.clone();
                self.verify_offsets(now, place, r, partition, client_id);
                return Ok(());
            }
            request @ (Request::JoinGroup(_)
            | Request::SyncGroup(_)
            | Request::Heartbeat(_)
            | Request::LeaveGroup(_)
            | Request::OffsetCommit(_)
            | Request::TxnOffsetCommit(_)
            | Request::OffsetDelete(_)
            | Request::ConsumerGroupHeartbeat(_)) => {
                let client_id = header.client_id.clone();
                match self.group_request(now, conn, slot, client_id.as_deref(), version, &request) {
                    Some(response) => Slot::Ready(Some(reply(response)?)),
                    None => self.group_slot(header.correlation_id, version, api_key, 1, None),
                }
            }
            Request::OffsetForLeaderEpoch(r) => Slot::Ready(Some(reply(
                Response::OffsetForLeaderEpoch(self.offset_for_leader_epoch(&r)),
            )?)),
            other => {
                return Err(format!(
                    "{} is not served by this node",
                    other.api_key().name()
                ))
            }
        };
        self.fill(conn, slot, slot_state);
        Ok(())
    }

    /// A Produce request's place in its connection's answers: answered now, once its writes
    /// are synced (acks=1), or once they commit (acks=all).
    fn produce_slot(
        &mut self,
        now: Instant,
        correlation_id: i32,
        r: crate::protocol::messages::ProduceRequest,
        version: i16,
    ) -> Result<Slot, String> {
        let reply = |response: Response| {
            frame_response(correlation_id, ApiKey::Produce, version, &response)
        };
        let mut acks = r.acks;
        if acks == -1 && self.config.planted_bug == Some(PlantedBug::AckBeforeCommit) {
            // The planted bug: acks=all answered as acks=1, at the leader's sync.
            acks = 1;
        }
        let (response, waits, commits) = self.produce(now, &r, version);

        if acks == 0 {
            // A producer with acks=0 reads no answer: Kafka closes its connection
            // instead, so that it notices something went wrong.
            let failed = response
                .responses
                .iter()
                .flat_map(|t| &t.partition_responses)
                .find(|p| p.error_code != crate::protocol::codes::NONE);
            if let Some(p) = failed {
                return Err(format!(
                    "acks=0 produce failed (error {}): {}",
                    p.error_code,
                    p.error_message.as_deref().unwrap_or("")
                ));
            }
        }
        let slot = if acks == -1 && !commits.is_empty() {
            // acks=all: answered once every partition committed what it appended.
            // (Checked at the end of this step: it may be committed already.)
            self.commit_checked_version = self.data_version.wrapping_sub(1);
            Slot::AwaitCommit {
                waits: commits,
                correlation_id,
                version,
                response: CommitAnswer::Produce(response),
            }
        } else {
            let bytes = if acks == 0 {
                None
            } else {
                Some(reply(Response::Produce(response))?)
            };
            if acks == -1 {
                Slot::Ready(bytes)
            } else {
                self.slot_after_writes(waits, bytes)
            }
        };
        Ok(slot)
    }

    /// The slot of an admin request: answered now, or once its change (written at `wait`:
    /// offset, epoch) reaches the image.
    fn admin_slot(
        &mut self,
        correlation_id: i32,
        version: i16,
        pending: PendingChange,
        wait: Option<AdminWait>,
    ) -> Result<Slot, String> {
        Ok(match wait {
            None => Slot::Ready(Some(pending.frame(correlation_id, version)?)),
            Some(wait) => {
                self.admin_waiting += 1;
                Slot::AwaitMetadata {
                    wait,
                    correlation_id,
                    version,
                    pending,
                }
            }
        })
    }

    /// The slot of a request that wrote (`wrote`): under fsync durability it waits for the
    /// sync round that will cover its writes; otherwise it is ready now.
    fn slot_after_writes(&self, wrote: bool, response: Option<Bytes>) -> Slot {
        if wrote && self.config.durability == Durability::Fsync {
            let round = match &self.round {
                // The planted bug: the round in flight was issued before this write.
                Some(r) if self.config.planted_bug == Some(PlantedBug::AckWrongRound) => r.id,
                _ => self.next_round,
            };
            Slot::AwaitSync { round, response }
        } else {
            Slot::Ready(response)
        }
    }

    /// Counts a request read now into `slot` (its duration is counted when its answer leaves).
    fn request_read(&mut self, now: Instant, conn: ConnId, slot: u64, api: ApiKey) {
        self.counters.request_read(api);
        if let Some(conn) = self.conns.get_mut(&conn) {
            conn.read_at.push_back((slot, api, now));
        }
    }

    fn fill(&mut self, conn: ConnId, slot: u64, state: Slot) {
        if let Some(conn) = self.conns.get_mut(&conn) {
            if let Some((_, s)) = conn.slots.iter_mut().find(|(id, _)| *id == slot) {
                *s = state;
            }
        }
    }

    /// Sends every ready response at the front of each connection's queue, and closes the
    /// connections whose next answer could not be built.
    fn flush(&mut self, out: &mut Vec<Output>) {
        let mut closing = Vec::new();
        let now = self.now;
        for (id, conn) in self.conns.iter_mut() {
            loop {
                match conn.slots.front() {
                    Some((_, Slot::Ready(_))) => {
                        let Some((slot, Slot::Ready(bytes))) = conn.slots.pop_front() else {
                            continue;
                        };
                        while let Some((read, api, at)) = conn.read_at.front().copied() {
                            if read > slot {
                                break;
                            }
                            conn.read_at.pop_front();
                            if read == slot {
                                self.counters.request_answered(api, at, now);
                            }
                        }
                        if let Some(bytes) = bytes {
                            self.counters.client_bytes_sent += bytes.len() as u64;
                            out.push(Output::ConnSend { conn: *id, bytes });
                        }
                    }
                    Some((_, Slot::Close(reason))) => {
                        closing.push((*id, reason.clone()));
                        break;
                    }
                    _ => break,
                }
            }
        }
        for (conn, reason) in closing {
            tracing::error!(conn, %reason, "closing connection");
            self.conns.remove(&conn);
            self.parked.retain(|p| p.conn != conn);
            out.push(Output::ConnClose { conn, reason });
        }
    }

    /// Answers parked fetches that now have enough data, or whose deadline passed (or all of
    /// them, when `force`).
    fn complete_parked_fetches(&mut self, now: Instant, force: bool) {
        let parked = std::mem::take(&mut self.parked);
        for mut p in parked {
            let expired = force || now >= p.deadline;
            if !expired && p.seen_version == self.data_version {
                // Nothing it waits for can have changed since it last looked.
                self.parked.push(p);
                continue;
            }
            p.seen_version = self.data_version;
            match self.try_fetch(&p, expired) {
                Some(response) => {
                    let version = p.header.api_version;
                    match frame_response(
                        p.header.correlation_id,
                        ApiKey::Fetch,
                        version,
                        &Response::Fetch(response),
                    ) {
                        Ok(bytes) => self.fill(p.conn, p.slot, Slot::Ready(Some(bytes))),
                        Err(reason) => self.fill(p.conn, p.slot, Slot::Close(reason)),
                    }
                }
                None => self.parked.push(p),
            }
        }
    }

    /// Starts a sync round if anything was written and none is in flight. A round that
    /// would only bring recovery points up to date waits [`RECOVERY_POINT_DELAY_MS`] (a data
    /// round brings them along first, if one comes), except at shutdown.
    fn maybe_start_round(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.round.is_some() {
            return;
        }
        self.topics.prune_touched();
        let data = !self.extra_dirty_files.is_empty()
            || self.topics.needs_data_sync()
            || self.votes.needs_sync();
        if !data {
            let due = match self.recovery_point_due {
                _ if !self.topics.needs_sync() => None,
                _ if self.shutting_down => Some(now),
                Some(due) => Some(due),
                None => Some(now.plus_millis(RECOVERY_POINT_DELAY_MS)),
            };
            self.recovery_point_due = due;
            if due.is_none_or(|due| now < due) {
                // Nothing to sync now: requests waiting for the next round need none.
                let next = self.next_round;
                self.complete_round_waiters(next);
                self.serving = true;
                return;
            }
        }
        self.recovery_point_due = None;
        let (mut files, ends) = match self.topics.begin_sync(&mut self.disk) {
            Ok(x) => x,
            Err(e) => {
                self.halt(format!("cannot start a sync: {e}"), out);
                return;
            }
        };
        let votes = match self.votes.begin_sync(&mut self.disk) {
            Ok(Some((mut vote_files, votes))) => {
                files.append(&mut vote_files);
                votes
            }
            Ok(None) => Vec::new(),
            Err(e) => {
                self.halt(format!("cannot write the vote table: {e}"), out);
                return;
            }
        };
        if self.config.planted_bug == Some(PlantedBug::SkipFsync) {
            // The planted bug: the round "completes" without a single sync.
            self.extra_dirty_files.clear();
            if let Err(e) = self.topics.complete_sync(&mut self.disk, &ends) {
                self.halt(format!("cannot complete a sync: {e}"), out);
                return;
            }
            self.data_version += 1;
            self.producer_ids.synced(self.producer_ids.recorded_end());
            self.votes_synced(out);
            let id = self.next_round;
            self.next_round += 1;
            self.replicas_synced(now, &votes, &ends);
            self.complete_round_waiters(id);
            self.complete_commit_waiters();
            self.serving = true;
            return;
        }
        files.append(&mut self.extra_dirty_files);
        files.sort_unstable();
        files.dedup();
        let id = self.next_round;
        self.next_round += 1;
        let mut outstanding = BTreeSet::new();
        for file in files {
            let token = self.next_token;
            self.next_token += 1;
            outstanding.insert(token);
            out.push(Output::Sync { token, file });
        }
        self.round = Some(Round {
            id,
            outstanding,
            ends,
            producer_ids_end: self.producer_ids.recorded_end(),
            votes,
            started: now,
        });
    }

    fn handle_synced(
        &mut self,
        now: Instant,
        token: SyncToken,
        result: Result<(), DiskError>,
        out: &mut Vec<Output>,
    ) {
        let Some(round) = self.round.as_mut() else {
            return;
        };
        if !round.outstanding.remove(&token) {
            return;
        }
        match result {
            Ok(()) => {}
            // The file was removed (its topic deleted) after the sync was asked for: there is
            // nothing left to make durable.
            Err(DiskError::UnknownFile(_)) => {}
            Err(e) => {
                // As PostgreSQL learned: after a failed fsync the page cache cannot be trusted.
                self.halt(format!("sync failed: {e}"), out);
                return;
            }
        }
        if !round.outstanding.is_empty() {
            return;
        }
        let round = self.round.take().expect("checked above");
        (self.counters.sync_round_duration).observe(now.0.saturating_sub(round.started.0));
        self.serving = true;
        self.data_version += 1;
        if let Err(e) = self.topics.complete_sync(&mut self.disk, &round.ends) {
            self.halt(format!("cannot complete a sync: {e}"), out);
            return;
        }
        self.producer_ids.synced(round.producer_ids_end);
        self.votes_synced(out);
        // Each group hears what is durable now (votes, its log): high watermarks move.
        self.replicas_synced(now, &round.votes, &round.ends);
        // Parked fetches and commit waiters see the new high watermarks when `step` checks
        // them next.
        self.complete_round_waiters(round.id);
    }

    /// The vote table written in the round that completed is durable: older files go.
    fn votes_synced(&mut self, out: &mut Vec<Output>) {
        match self.votes.synced(&mut self.disk) {
            Ok(false) => {}
            Ok(true) => self.extra_dirty_files.push(self.root_dir),
            Err(e) => self.halt(format!("cannot remove an old vote table: {e}"), out),
        }
    }

    /// Every request that waited for commits now made (or in partitions since gone) is
    /// answered.
    fn complete_commit_waiters(&mut self) {
        if self.commit_checked_version == self.data_version {
            return;
        }
        self.commit_checked_version = self.data_version;
        let mut conns = std::mem::take(&mut self.conns);
        for conn in conns.values_mut() {
            for (_, slot) in conn.slots.iter_mut() {
                let Slot::AwaitCommit {
                    waits,
                    correlation_id,
                    version,
                    response,
                } = slot
                else {
                    continue;
                };
                waits.retain(|wait| {
                    use crate::protocol::codes;
                    let Some(partition) = self.topics.by_log_id(wait.log_id) else {
                        // Its topic was deleted before the write committed: it is gone with
                        // the topic (never acknowledged as written).
                        response.fail(
                            wait.at,
                            codes::UNKNOWN_TOPIC_OR_PARTITION,
                            "the topic was deleted before the write committed",
                        );
                        return false;
                    };
                    let Some(replica) = partition.replica.as_ref() else {
                        // Offline before the write committed: it may be lost.
                        let offline = "the partition went offline";
                        response.fail(wait.at, codes::KAFKA_STORAGE_ERROR, offline);
                        return false;
                    };
                    if replica.high_watermark() >= wait.offset {
                        return false;
                    }
                    if replica.leader_epoch() != wait.epoch || !replica.is_leader() {
                        // Leadership moved before the write committed: a new leader may have
                        // cut it, and a later commit at the same offset would be another write.
                        response.fail(
                            wait.at,
                            codes::NOT_LEADER_OR_FOLLOWER,
                            "leadership moved before the write committed",
                        );
                        return false;
                    }
                    true
                });
                if waits.is_empty() {
                    let framed = response.frame(*correlation_id, *version);
                    *slot = match framed {
                        Ok(bytes) => Slot::Ready(Some(bytes)),
                        Err(reason) => Slot::Close(reason),
                    };
                }
            }
        }
        self.conns = conns;
    }

    /// Every admin request whose change reached the image is answered (after the round that
    /// makes the directories it created durable and elects their leaders); those whose
    /// controller lost its leadership first are refused with NOT_CONTROLLER.
    fn complete_admin_waiters(&mut self) {
        if self.admin_waiting == 0 {
            return;
        }
        let applied = self.image.applied_end();
        let leading = (self.topics.get(crate::metadata::METADATA_TOPIC, 0))
            .and_then(|p| p.replica.as_ref())
            .filter(|r| r.is_leader())
            .map(|r| r.leader_epoch());
        let mut done = Vec::new();
        let mut waiting = 0;
        for (conn_id, conn) in &self.conns {
            for (slot_id, slot) in &conn.slots {
                match slot {
                    Slot::AwaitMetadata {
                        wait: AdminWait::Written { offset, epoch },
                        ..
                    } => {
                        if applied >= *offset {
                            done.push((*conn_id, *slot_id, Ok(())));
                        } else if leading != Some(*epoch) {
                            done.push((
                                *conn_id,
                                *slot_id,
                                Err(crate::protocol::codes::NOT_CONTROLLER),
                            ));
                        } else {
                            waiting += 1;
                        }
                    }
                    Slot::AwaitMetadata {
                        wait: AdminWait::Forwarded { deadline, expected },
                        ..
                    } => {
                        if self.image_shows(expected) {
                            done.push((*conn_id, *slot_id, Ok(())));
                        } else if self.now >= *deadline {
                            done.push((
                                *conn_id,
                                *slot_id,
                                Err(crate::protocol::codes::REQUEST_TIMED_OUT),
                            ));
                        } else {
                            waiting += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
        self.admin_waiting = waiting;
        for (conn, slot_id, outcome) in done {
            let applied = outcome.is_ok();
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let Some((_, slot)) = c.slots.iter_mut().find(|(id, _)| *id == slot_id) else {
                continue;
            };
            let Slot::AwaitMetadata {
                correlation_id,
                version,
                mut pending,
                ..
            } = std::mem::replace(slot, Slot::AwaitFetch)
            else {
                continue;
            };
            let state = if let PendingChange::Metadata { request } = pending {
                Slot::MetadataAfterRound {
                    round: self.next_round,
                    correlation_id,
                    version,
                    request,
                }
            } else {
                pending.complete(&self.image, outcome);
                match pending.frame(correlation_id, version) {
                    Ok(bytes) if applied => Slot::AwaitSync {
                        round: self.next_round,
                        response: Some(bytes),
                    },
                    Ok(bytes) => Slot::Ready(Some(bytes)),
                    Err(reason) => Slot::Close(reason),
                }
            };
            self.fill(conn, slot_id, state);
        }
    }

    /// Every request that waited for round `id` (or an earlier one) is answered.
    fn complete_round_waiters(&mut self, id: u64) {
        let mut metadata = Vec::new();
        for (conn_id, conn) in self.conns.iter_mut() {
            for (slot_id, slot) in conn.slots.iter_mut() {
                match slot {
                    Slot::AwaitSync { round, response } if *round <= id => {
                        *slot = Slot::Ready(response.take());
                    }
                    Slot::MetadataAfterRound { round, .. } if *round <= id => {
                        metadata.push((*conn_id, *slot_id));
                    }
                    _ => {}
                }
            }
        }
        for (conn, slot_id) in metadata {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let Some((_, slot)) = c.slots.iter_mut().find(|(id, _)| *id == slot_id) else {
                continue;
            };
            let Slot::MetadataAfterRound {
                correlation_id,
                version,
                request,
                ..
            } = std::mem::replace(slot, Slot::AwaitFetch)
            else {
                continue;
            };
            let now = self.now;
            let response = Response::Metadata(self.metadata(now, &request, version).0);
            let state = match frame_response(correlation_id, ApiKey::Metadata, version, &response) {
                Ok(bytes) => Slot::Ready(Some(bytes)),
                Err(reason) => Slot::Close(reason),
            };
            self.fill(conn, slot_id, state);
        }
    }
}

/// The file that counts the node's starts.
const STARTS_FILE: &str = "node-starts";

/// Reads, increments and writes back the count of the node's starts (8 bytes and a CRC-32C;
/// unreadable or torn counts as 0). Durable with the first sync round, before any request is
/// read: a start that crashed before it served nothing, so repeating its count is harmless.
fn count_start(disk: &mut dyn Disk) -> Result<(u64, FileId), DiskError> {
    let file = disk.create(STARTS_FILE)?;
    let mut raw = [0u8; 12];
    let mut starts = 0;
    for _ in 0..8 {
        if disk.len(file)? < 12 || disk.read_at(file, 0, &mut raw).is_err() {
            continue;
        }
        let count = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        if crc32c::crc32c(&raw[..8]).to_be_bytes() == raw[8..] {
            starts = count;
            break;
        }
    }
    let starts = starts + 1;
    raw[..8].copy_from_slice(&starts.to_be_bytes());
    let crc = crc32c::crc32c(&raw[..8]);
    raw[8..].copy_from_slice(&crc.to_be_bytes());
    disk.write_at(file, 0, &raw)?;
    Ok((starts, file))
}

/// The node's PRNG (splitmix64), seeded from its config: the core draws no OS randomness.
pub(crate) fn node_rng(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A topic id no topic has (and not the all-zero id, which means "none" on the wire), from
/// the node's PRNG. A restart replays the same seed, so uniqueness is checked, not hoped for.
fn new_topic_id(
    state: &mut u64,
    topics: &Topics,
    image: &crate::metadata::MetadataImage,
) -> crate::protocol::wire::Uuid {
    loop {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&node_rng(state).to_be_bytes());
        id[8..].copy_from_slice(&node_rng(state).to_be_bytes());
        let id = crate::protocol::wire::Uuid(id);
        if id != crate::protocol::wire::Uuid::default()
            && id != crate::metadata::METADATA_TOPIC_ID
            && topics.name_of(&id).is_none()
            && image.topic_by_id(&id).is_none()
        {
            return id;
        }
    }
}

fn served_api_versions() -> Vec<ApiVersion> {
    negotiate::supported_api_versions()
        .into_iter()
        .filter(|v| SERVED_APIS.iter().any(|k| *k as i16 == v.api_key))
        .collect()
}

fn frame_response(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    response: &Response,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    encode_response(&mut buf, correlation_id, api_key, version, response)
        .map_err(|e| format!("cannot encode the response: {e}"))?;
    Ok(buf.freeze())
}
