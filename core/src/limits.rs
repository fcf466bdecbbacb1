//! Every maximum a client (or, later, a peer) can push the node against, in one place, each
//! with the reason for its value. A request that would pass one gets a clear error or its
//! connection closed; it never grows the node's memory, files or work without bound.

/// Largest request frame accepted by default (Kafka's `socket.request.max.bytes`, 100 MiB).
/// A frame is buffered whole before it is parsed, so this bounds one request's memory.
pub const FRAME_SIZE_MAX_BYTES: usize = 100 * 1024 * 1024;

/// Largest a batch may grow to when decompressed: a small compressed batch must not expand
/// into gigabytes (a decompression bomb) while it is validated.
pub const DECOMPRESSED_BATCH_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Connections open at once. Each holds a frame buffer and an answer queue; past this a new
/// connection is closed at once (Kafka's `max.connections` is unbounded by default, but a
/// file descriptor and memory are spent on each).
pub const CONNECTIONS_MAX: usize = 10_000;

/// Requests read from one connection and not yet answered. Further frames stay unread in the
/// connection's buffer until answers go out (Kafka's `queued.max.requests` is 500 for the
/// whole broker; clients keep at most a few in flight per connection, librdkafka 5 for an
/// idempotent producer).
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 1_000;

/// Bytes a connection may have buffered and not yet parsed (frames held back by
/// [`REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX`], or a frame still arriving). Past this the
/// connection is closed: two full frames leave room for a client that pipelines honestly.
pub const BUFFERED_REQUEST_BYTES_PER_CONNECTION_MAX: usize = 2 * FRAME_SIZE_MAX_BYTES;

/// Largest Fetch response, whatever `max_bytes` asks for (Kafka's broker `fetch.max.bytes`,
/// 55 MiB): the response is built in memory before it is sent.
pub const FETCH_RESPONSE_MAX_BYTES: usize = 55 * 1024 * 1024;

/// Partitions one topic may have (CreateTopics, CreatePartitions, auto-creation). Each costs
/// a directory, its files and its indexes.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

/// Partitions the node may hold in all, at most: each costs its in-memory indexes, its
/// Raft group and its share of every start's recovery scan (its files are not held open:
/// the adapter's disk keeps at most [`OPEN_FILES_MAX`] open and closes idle ones). A
/// request that would pass it is refused with a clear error (`Config::partitions_max` may
/// lower it).
pub const PARTITIONS_MAX: usize = 15_000;

/// Files the adapter's disk keeps open at once, at most (fewer under a lower open-file
/// limit): past it the least recently used file whose writes are all synced is closed, and
/// opened again when next used. Three per partition of the largest node, so that a node
/// under the default maximum rarely reopens anything.
pub const OPEN_FILES_MAX: usize = 3 * PARTITIONS_MAX;

/// Descriptors kept back from the disk's budget under the process's open-file limit:
/// connections (up to [`CONNECTIONS_MAX`] would need more, but each connection also has a
/// cost the operator sizes the limit for), the listener, the runtime, logs.
pub const FILES_RESERVED: usize = 1_024;

/// Producer ids a partition remembers is bounded by expiry, which runs this often (Kafka's
/// `producer.id.expiration.check.interval.ms`, ten minutes).
pub const PRODUCER_EXPIRY_CHECK_INTERVAL_MS: u64 = 600_000;

/// A frame between nodes (Raft messages of every group, coalesced per node pair), at most:
/// what a peer can make this node buffer before its CRC is even checked. Replication answers
/// are sized by the fetch limit well below it (Kafka's `replica.fetch.response.max.bytes` is
/// 10 MiB); a larger prefix is a peer not to be trusted, and its connection is closed.
pub const PEER_FRAME_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Entries in one replication answer, at most (the bytes that remain bound it too): a 64 MiB
/// frame of the smallest Kafka batches (61-byte headers) holds about a million.
pub const PEER_ENTRIES_PER_MESSAGE_MAX: usize = 1_100_000;

/// Raft groups on one node, at most: one per partition replica, and the metadata quorum's.
/// Bounds the vote table recovery reads (a count past it is damage, not a table).
pub const RAFT_GROUPS_PER_NODE_MAX: usize = PARTITIONS_MAX + 1;

/// Bytes of entries one replica fetch answer carries, at most (at least one batch; Kafka's
/// `replica.fetch.max.bytes` is 1 MiB too): a follower far behind catches up in steps that
/// keep each frame, and the leader's reads, small.
pub const REPLICA_FETCH_MAX_BYTES: usize = 1024 * 1024;

/// Proposals (records a broker forwards to the controller) in one peer frame, at most: a
/// broker forwards at most one per auto-created topic per step, and each is checked by the
/// controller before it is written.
pub const PEER_PROPOSALS_PER_FRAME_MAX: usize = 10_000;

/// Calls (Kafka requests and responses between nodes: transaction markers, transaction
/// checks) in one peer frame, at most: a node sends at most one marker request per
/// transaction and partition leader per step, and each is answered once.
pub const PEER_CALLS_PER_FRAME_MAX: usize = 100_000;

/// Frames queued in the adapter for one peer's link before new ones are dropped: each is at
/// most a replication answer's size, so this bounds what a slow peer costs; a dropped frame
/// is a gap in the link's numbers, which the receiver recovers from (its groups fetch again).
pub const PEER_SEND_QUEUE_FRAMES_MAX: usize = 256;

/// The longest a peer's link may bring nothing before the adapter closes it (and the lower
/// id dials again): a node sends every peer a frame at least every 100 ms, so this is fifty
/// missed. A peer frozen, or its machine gone without closing the connection (a crash
/// during a partition leaves it half open for TCP's retransmission timeout, about fifteen
/// minutes), would otherwise hold the link, and the peer's new process would wait for a
/// dial that never comes. Frames sent meanwhile are lost with the link; the simulator
/// drops what it would have carried to a node frozen this long.
pub const PEER_LINK_SILENCE_MAX_MS: u64 = 5_000;

/// Bytes of a cluster id in a peer link's hello, at most (one length byte; Kafka's cluster
/// ids are 22 characters).
pub const PEER_CLUSTER_ID_MAX_BYTES: usize = 255;

/// Replicas of one partition, at most (a metadata record's count past it is damage): each is
/// a voter of the partition's Raft group, whose every commit waits on a majority of them.
pub const REPLICATION_FACTOR_MAX: usize = 16;

/// Topics the cluster may hold, at most (CreateTopics and auto-creation past it are refused):
/// every node keeps each one in its metadata image.
pub const TOPICS_MAX: usize = 100_000;

/// Partitions one DescribeQuorum request may name, at most (a request past it closes its
/// connection): each answer carries every voter's state, twenty times the bytes its name
/// took, so a request of repeated names could make the node build an answer far larger
/// than any frame it accepts. A node holds at most [`PARTITIONS_MAX`] partitions and the
/// metadata quorum's: naming more can only repeat them.
pub const DESCRIBE_QUORUM_PARTITIONS_MAX: usize = PARTITIONS_MAX + 1;

/// Connections to the adapter's `/metrics` endpoint open at once, at most (more are closed
/// at once): a scraper needs one, and each holds a task and a copy of the node's metrics
/// while it is answered.
pub const METRICS_CONNECTIONS_MAX: usize = 16;

/// Members of one consumer group (Kafka's `group.max.size`, unbounded there by default): each
/// holds its protocols' metadata and its assignment, and the leader's JoinGroup answer lists
/// every member's metadata. Past it JoinGroup answers GROUP_MAX_SIZE_REACHED.
pub const GROUP_MEMBERS_MAX: usize = 1_000;

/// Protocols (assignors) one member may offer in JoinGroup; clients offer one to three.
pub const GROUP_PROTOCOLS_MAX: usize = 32;

/// Groups one partition of `__consumer_offsets` holds (at most 50 partitions by default, so
/// 500,000 groups per cluster): each costs memory on its coordinator and records its load
/// replays. Past it a new group gets COORDINATOR_NOT_AVAILABLE.
pub const GROUPS_PER_OFFSETS_PARTITION_MAX: usize = 10_000;

/// Bytes of metadata one committed offset may carry (Kafka's `offset.metadata.max.bytes`):
/// kept in memory and replayed on every load. Past it: OFFSET_METADATA_TOO_LARGE.
pub const OFFSET_METADATA_MAX_BYTES: usize = 4_096;

/// Topics one member of a consumer-protocol group (KIP-848) may subscribe to: each name is
/// kept with the member and looked up at every assignment. Past it: INVALID_REQUEST.
pub const GROUP_SUBSCRIBED_TOPICS_MAX: usize = 1_000;

/// Bytes of records one OffsetCommit may write to `__consumer_offsets` (Kafka's default
/// `max.message.bytes`): its batch must cross a peer link (`PEER_FRAME_SIZE_MAX_BYTES`) and
/// be replayed whole at every load. Past it: INVALID_COMMIT_OFFSET_SIZE.
pub const GROUP_WRITE_MAX_BYTES: usize = 1_048_588;

/// Per-record errors one Produce answer lists (a keyless record in a compacted topic): the
/// first ones say what is wrong; a batch of a million bad records must not make a
/// million-entry answer.
pub const RECORD_ERRORS_MAX: usize = 100;

/// Bytes of keys (and their offsets) the cleaner holds while it maps a compacted log: a
/// pass cleans the segments whose keys fit, and the next pass goes on from there. Producers
/// choose the keys, so the map is bounded; Kafka's `log.cleaner.dedupe.buffer.size` is
/// 128 MiB across its cleaner threads.
pub const CLEANER_MAP_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Bytes the cleaner reads in one step (whole batches, at least one): a step runs on the
/// node's loop between requests, so this bounds the pause a request can meet.
pub const CLEANER_STEP_BYTES_MAX: usize = 1024 * 1024;

/// Aborted transactions one partition of a read_committed Fetch answer lists (16 bytes
/// each): producers choose how many transactions they abort, and a fetch over a stretch of
/// tiny aborted ones must not make an unbounded answer. Past it the read stops where the
/// first transaction left out begins; the client fetches again from there.
pub const FETCH_ABORTED_TXNS_MAX: usize = 10_000;

/// Transactional ids one `__transaction_state` partition holds: each is kept in memory by its
/// coordinator and replayed at every load. Past it a new id gets COORDINATOR_NOT_AVAILABLE.
pub const TRANSACTIONAL_IDS_PER_PARTITION_MAX: usize = 100_000;

/// Partitions one transaction may span: each is kept in its record (written at every step
/// of the transaction) and gets a marker at its end. Past it: INVALID_REQUEST.
pub const TXN_PARTITIONS_MAX: usize = 10_000;
