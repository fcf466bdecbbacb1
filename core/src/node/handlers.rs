//! The Kafka APIs a single node serves, with Kafka's semantics and error codes.

use bytes::Bytes;

use super::topics::valid_topic_name;
use super::topics::Topics;
use super::{AdminWait, Instant, Node, ParkedFetch, PendingChange, PlantedBug};
use crate::disk::Disk;
use crate::limits;
use crate::log::{LogError, PartitionLog};
use crate::metadata::{place_replicas, MetadataImage, MetadataRecord, METADATA_TOPIC};
use crate::producers::Verdict;
use crate::protocol::codes;
use crate::protocol::messages::*;
use crate::protocol::wire::Uuid;
use crate::record::{
    split_batches, BatchError, CompressionError, RecordBatch, DECOMPRESSED_BATCH_SIZE_MAX_BYTES,
};

/// Every topic operation Kafka's ACLs name (read, write, create, delete, alter, describe,
/// describe configs, alter configs), as a bit set: what a broker without an authorizer
/// reports when asked.
const TOPIC_OPERATIONS_ALL: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// Every cluster operation (create, alter, describe, cluster action, describe configs, alter
/// configs, idempotent write, create tokens, describe tokens), likewise.
pub(super) const CLUSTER_OPERATIONS_ALL: i32 = (1 << 5)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14);

/// The isolation level of a consumer that reads only committed transactions.
const READ_COMMITTED: i8 = 1;

/// ListOffsets special timestamps.
const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

fn batch_error_code(error: &BatchError) -> i16 {
    match error {
        BatchError::TooShort { .. }
        | BatchError::LengthMismatch { .. }
        | BatchError::CrcMismatch { .. } => codes::CORRUPT_MESSAGE,
        BatchError::UnsupportedMagic(_) => codes::UNSUPPORTED_FOR_MESSAGE_FORMAT,
        BatchError::Compression(CompressionError::UnknownCodec(_)) => {
            codes::UNSUPPORTED_COMPRESSION_TYPE
        }
        _ => codes::INVALID_RECORD,
    }
}

/// Validates a partition's records field: whole, valid batches, none from a client that only
/// the broker may write. Nothing is appended unless every batch passes.
/// Kafka's words for a keyless record in a compacted topic.
const KEYLESS_IN_COMPACTED: &str = "Compacted topic cannot accept message without key";

/// Why a partition's produce was refused: the error code and message, and for INVALID_RECORD
/// the batch indexes at fault with what is wrong with each (Kafka's `record_errors`).
struct Refusal {
    code: i16,
    message: String,
    record_errors: Vec<(i32, String)>,
}

impl From<(i16, String)> for Refusal {
    fn from((code, message): (i16, String)) -> Refusal {
        Refusal {
            code,
            message,
            record_errors: Vec::new(),
        }
    }
}

/// Validates a partition's records field: whole, valid batches, none from a client that only
/// the broker may write, and in a `compacted` topic every record with a key (compaction keeps
/// a key's last record; one without a key has none), which is refused as Kafka refuses it:
/// INVALID_RECORD with each keyless record's index. Nothing is appended unless every batch
/// passes.
fn validate_records(
    records: Option<&Bytes>,
    max_message_bytes: usize,
    compacted: bool,
) -> Result<Vec<RecordBatch>, Refusal> {
    let Some(records) = records else {
        return Err((codes::CORRUPT_MESSAGE, "null records".into()).into());
    };
    let mut batches = Vec::new();
    for batch in split_batches(records.clone()) {
        let batch = batch.map_err(|e| (batch_error_code(&e), e.to_string()))?;
        if batch.len() > max_message_bytes {
            return Err((
                codes::MESSAGE_TOO_LARGE,
                format!(
                    "batch of {} bytes exceeds max.message.bytes {max_message_bytes}",
                    batch.len()
                ),
            )
                .into());
        }
        let batch = RecordBatch::parse(batch).map_err(|e| (batch_error_code(&e), e.to_string()))?;
        batch
            .check_dense()
            .map_err(|e| (batch_error_code(&e), e.to_string()))?;
        if batch.header().is_control() {
            return Err((
                codes::INVALID_RECORD,
                "control batches are written by the broker only".into(),
            )
                .into());
        }
        let records = batch
            .records(DECOMPRESSED_BATCH_SIZE_MAX_BYTES)
            .map_err(|e| (batch_error_code(&e), e.to_string()))?;
        if compacted {
            let keyless: Vec<(i32, String)> = (records.iter().enumerate())
                .filter(|(_, r)| r.key.is_none())
                .take(limits::RECORD_ERRORS_MAX)
                .map(|(at, _)| (at as i32, KEYLESS_IN_COMPACTED.to_string()))
                .collect();
            if !keyless.is_empty() {
                return Err(Refusal {
                    code: codes::INVALID_RECORD,
                    message: KEYLESS_IN_COMPACTED.into(),
                    record_errors: keyless,
                });
            }
        }
        batches.push(batch);
    }
    if batches.is_empty() {
        return Err((codes::CORRUPT_MESSAGE, "no record batch".into()).into());
    }
    Ok(batches)
}

/// A partition's produce result: base offset, log start offset, and what an acks=all answer
/// waits for (the partition's log id, the offset its high watermark must reach, and the
/// leader epoch it must still be in).
type Appended = (i64, i64, Option<(u64, i64, i32)>);

/// A partition this node leads, with its high watermark and leader epoch, checked as Kafka
/// checks a request's `current_leader_epoch` (-1: the client does not say): an older epoch is
/// fenced, a newer one not known yet. For a request that `reads` committed offsets, a leader
/// whose high watermark has not yet reached its epoch's start answers OFFSET_NOT_AVAILABLE
/// (KIP-207; clients refresh metadata and retry): its high watermark may still lag what the
/// previous leader showed.
fn led_partition<'a>(
    topics: &'a mut Topics,
    image: &MetadataImage,
    topic: &str,
    partition: i32,
    current_leader_epoch: i32,
    reads: bool,
) -> Result<(&'a mut PartitionLog, i64, i32), i16> {
    let p = held_partition(topics, image, topic, partition)?;
    let log = p.log.as_mut().map_err(|_| codes::KAFKA_STORAGE_ERROR)?;
    let replica = p.replica.as_ref().ok_or(codes::KAFKA_STORAGE_ERROR)?;
    let epoch = replica.leader_epoch();
    if current_leader_epoch >= 0 && current_leader_epoch < epoch {
        return Err(codes::FENCED_LEADER_EPOCH);
    }
    if current_leader_epoch > epoch {
        return Err(codes::UNKNOWN_LEADER_EPOCH);
    }
    if !replica.is_leader() {
        return Err(codes::NOT_LEADER_OR_FOLLOWER);
    }
    if reads && !replica.serving() {
        return Err(codes::OFFSET_NOT_AVAILABLE);
    }
    Ok((log, replica.high_watermark(), epoch))
}

/// A partition of a topic the image names, as this node holds it: UNKNOWN_TOPIC_OR_PARTITION
/// for a topic or partition the image does not name (the metadata log's own among them),
/// NOT_LEADER_OR_FOLLOWER for one held by other nodes only.
pub(super) fn held_partition<'a>(
    topics: &'a mut Topics,
    image: &MetadataImage,
    topic: &str,
    partition: i32,
) -> Result<&'a mut super::topics::Partition, i16> {
    let named = image
        .topic(topic)
        .filter(|t| partition >= 0 && (partition as usize) < t.replicas.len());
    let Some(named) = named else {
        return Err(codes::UNKNOWN_TOPIC_OR_PARTITION);
    };
    // The partition as this node holds it, of this very topic (not of an earlier one of the
    // name whose deletion the node has not applied yet).
    match topics.get(topic, partition) {
        Some(p) if p.topic_id == named.id => Ok(topics.get(topic, partition).expect("found")),
        _ => Err(codes::NOT_LEADER_OR_FOLLOWER),
    }
}

impl<D: Disk> Node<D> {
    pub(super) fn random_uuid(&mut self) -> Uuid {
        super::new_topic_id(&mut self.rng_state, &self.topics, &self.image)
    }

    /// The Metadata answer, and where it waits if it auto-created topics (the metadata
    /// offset and the controller's epoch).
    pub(super) fn metadata(
        &mut self,
        now: Instant,
        request: &MetadataRequest,
        version: i16,
    ) -> (MetadataResponse, Option<(i64, i32)>) {
        use crate::protocol::messages::metadata_response::*;
        let now_ms = now.as_millis() as u64;
        // v0: an empty list means all topics; v1+: null means all, empty means none.
        let requested: Option<Vec<String>> = match &request.topics {
            None => None,
            Some(topics) if topics.is_empty() && version == 0 => None,
            Some(topics) => Some(
                topics
                    .iter()
                    .map(|t| {
                        t.name
                            .clone()
                            .or_else(|| self.image.topic_by_id(&t.topic_id).map(|t| t.name.clone()))
                            .unwrap_or_default()
                    })
                    .collect(),
            ),
        };
        let names =
            requested.unwrap_or_else(|| self.image.topics().map(|t| t.name.clone()).collect());
        let node_id = self.config.node_id;
        let mut topics = Vec::new();
        let mut creating = Vec::new();
        for name in names {
            let Some(topic) = self.image.topic(&name) else {
                let auto_create = self.config.auto_create_topics
                    && request.allow_auto_topic_creation
                    && !self.shutting_down;
                let error_code = if !valid_topic_name(&name) || name == METADATA_TOPIC {
                    codes::INVALID_TOPIC_EXCEPTION
                } else if !auto_create {
                    codes::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    let partitions = self.config.default_partitions;
                    match self.new_topic(&name, partitions, -1, Vec::new()) {
                        Err((code, message)) if code != codes::TOPIC_ALREADY_EXISTS => {
                            tracing::warn!(topic = %name, %message, "auto-create refused");
                            code
                        }
                        // Being created already: its leaders are not known yet.
                        Err(_) => codes::LEADER_NOT_AVAILABLE,
                        Ok(record) => {
                            creating.push(record);
                            // Kafka's answer for a topic being auto-created.
                            codes::LEADER_NOT_AVAILABLE
                        }
                    }
                };
                topics.push(MetadataResponseTopic {
                    error_code,
                    name: Some(name),
                    ..Default::default()
                });
                continue;
            };
            let mut partitions = Vec::with_capacity(topic.replicas.len());
            for (index, replicas) in topic.replicas.iter().enumerate() {
                let index = index as i32;
                let local = self.topics.by_name.get(&name);
                let p = (local.and_then(|t| t.partitions.get(&index)))
                    .filter(|p| p.topic_id == topic.id);
                let replica = p.and_then(|p| p.replica.as_ref());
                // A replica knows its group's leader; for a partition this node does not
                // hold, the leader the image last recorded.
                let (leader, leader_epoch, isr) = match replica {
                    Some(r) => match r.leader() {
                        // The epoch of the leader it names: a candidate's epoch is not one
                        // yet (it may never be durable), and a client would trust it over a
                        // leader's.
                        Some(leader) => (leader, r.leader_epoch(), r.raft().in_sync(now_ms)),
                        None => (-1, -1, Vec::new()),
                    },
                    None => {
                        let (leader, epoch) = topic.leaders[index as usize];
                        (
                            leader,
                            epoch,
                            if leader >= 0 {
                                vec![leader]
                            } else {
                                Vec::new()
                            },
                        )
                    }
                };
                partitions.push(MetadataResponsePartition {
                    error_code: match p {
                        Some(p) if p.log.is_err() => codes::KAFKA_STORAGE_ERROR,
                        _ if leader >= 0 => codes::NONE,
                        _ => codes::LEADER_NOT_AVAILABLE,
                    },
                    partition_index: index,
                    leader_id: leader,
                    leader_epoch,
                    replica_nodes: replicas.clone(),
                    isr_nodes: isr,
                    offline_replicas: match p {
                        Some(p) if p.log.is_err() => vec![node_id],
                        _ => Vec::new(),
                    },
                    ..Default::default()
                });
            }
            topics.push(MetadataResponseTopic {
                error_code: codes::NONE,
                is_internal: Self::internal_topic(&name),
                name: Some(name),
                topic_id: topic.id,
                partitions,
                // No authorizer: every operation is allowed (Kafka answers the same).
                topic_authorized_operations: match request.include_topic_authorized_operations {
                    true => TOPIC_OPERATIONS_ALL,
                    false => i32::MIN,
                },
                ..Default::default()
            });
        }
        let mut wait = None;
        if !creating.is_empty() {
            if self.check_controller().is_ok() {
                match self.propose(now, &creating) {
                    Ok(at) => wait = Some(at),
                    Err((code, message)) => {
                        tracing::warn!(code, %message, "auto-create not written")
                    }
                }
            } else {
                // Another node is the controller (or none is yet): it is asked to create
                // them; the client asks again, as Kafka's clients do.
                for record in &creating {
                    self.forward(record);
                }
            }
        }
        let brokers = (self.listed_brokers().into_iter())
            .map(|b| MetadataResponseBroker {
                node_id: b.node_id,
                host: b.host,
                port: b.port,
                rack: b.rack,
                ..Default::default()
            })
            .collect();
        let response = MetadataResponse {
            brokers,
            cluster_id: Some(self.config.cluster_id.clone()),
            controller_id: self.listed_controller_id(),
            topics,
            cluster_authorized_operations: match request.include_cluster_authorized_operations {
                true => CLUSTER_OPERATIONS_ALL,
                false => i32::MIN,
            },
            ..Default::default()
        };
        (response, wait)
    }

    /// Validates and appends; returns the response and what it must wait for: a sync round
    /// (acks=1, or a retried batch not yet durable), and commits (acks=all: partition log id,
    /// offset the high watermark must reach).
    pub(super) fn produce(
        &mut self,
        now: Instant,
        request: &ProduceRequest,
        version: i16,
    ) -> (ProduceResponse, bool, Vec<super::CommitWait>) {
        use crate::protocol::messages::produce_response::*;
        let mut appended = false;
        let mut commits = Vec::new();
        let mut responses = Vec::new();
        for topic in &request.topic_data {
            let mut partition_responses = Vec::new();
            for data in &topic.partition_data {
                let mut response = PartitionProduceResponse {
                    index: data.index,
                    base_offset: -1,
                    ..Default::default()
                };
                let result = if version < 3 {
                    // Removed in Kafka 4, as here: advertised so old clients enable compression.
                    Err(Refusal::from((
                        codes::UNSUPPORTED_VERSION,
                        "Produce v0-v2 are not supported; use v3 or later".into(),
                    )))
                } else if !matches!(request.acks, -1..=1) {
                    Err(Refusal::from((
                        codes::INVALID_REQUIRED_ACKS,
                        format!("acks must be -1, 0 or 1, not {}", request.acks),
                    )))
                } else if self.shutting_down {
                    Err(Refusal::from((
                        codes::NOT_LEADER_OR_FOLLOWER,
                        "the node is shutting down".into(),
                    )))
                } else {
                    self.append_partition(now, &topic.name, data.index, data.records.as_ref())
                };
                match result {
                    Ok((base_offset, log_start_offset, wait)) => {
                        if request.acks == -1 {
                            commits.extend(wait.map(|(log_id, offset, epoch)| super::CommitWait {
                                log_id,
                                offset,
                                epoch,
                                at: (responses.len(), partition_responses.len()),
                            }));
                        } else {
                            appended |= wait.is_some();
                        }
                        response.base_offset = base_offset;
                        response.log_start_offset = log_start_offset;
                        if self.topic_config(&topic.name).log_append_time {
                            response.log_append_time_ms = now.as_millis();
                        }
                    }
                    Err(Refusal {
                        code,
                        message,
                        record_errors,
                    }) => {
                        tracing::debug!(topic = %topic.name, partition = data.index, code, %message, "produce refused");
                        response.error_code = code;
                        response.error_message = Some(message);
                        response.record_errors = record_errors
                            .into_iter()
                            .map(|(batch_index, message)| BatchIndexAndErrorMessage {
                                batch_index,
                                batch_index_error_message: Some(message),
                                ..Default::default()
                            })
                            .collect();
                    }
                }
                partition_responses.push(response);
            }
            responses.push(TopicProduceResponse {
                name: topic.name.clone(),
                partition_responses,
                ..Default::default()
            });
        }
        (
            ProduceResponse {
                responses,
                ..Default::default()
            },
            appended,
            commits,
        )
    }

    /// The planted `AckEarly` bug's answer: success for every partition, at the offset the
    /// batch would take, before anything is appended.
    pub(super) fn promise_produce(&mut self, request: &ProduceRequest) -> ProduceResponse {
        use crate::protocol::messages::produce_response::*;
        let mut responses = Vec::new();
        for topic in &request.topic_data {
            let mut partition_responses = Vec::new();
            for data in &topic.partition_data {
                let base_offset = match self.topics.get_log(&topic.name, data.index) {
                    Some(Ok(log)) => log.log_end_offset(),
                    _ => 0,
                };
                partition_responses.push(PartitionProduceResponse {
                    index: data.index,
                    base_offset,
                    ..Default::default()
                });
            }
            responses.push(TopicProduceResponse {
                name: topic.name.clone(),
                partition_responses,
                ..Default::default()
            });
        }
        ProduceResponse {
            responses,
            ..Default::default()
        }
    }

    /// Appends a partition's batches as its leader. Returns the base offset, the log start
    /// offset, and what the answer may wait for: the partition's log id and the offset its
    /// high watermark must reach (something was appended, or a retried batch was recognised
    /// that is not committed yet).
    fn append_partition(
        &mut self,
        now: Instant,
        topic: &str,
        partition: i32,
        records: Option<&Bytes>,
    ) -> Result<Appended, Refusal> {
        let config = self.topic_config(topic);
        let max_message_bytes = config.max_message_bytes as usize;
        if Self::internal_topic(topic) {
            return Err(Refusal::from((
                codes::INVALID_TOPIC_EXCEPTION,
                format!("{topic} is internal: only its group coordinators write it"),
            )));
        }
        let expiry_ms = self.config.log.producer_id_expiration_ms;
        let no_dedup = self.config.planted_bug == Some(PlantedBug::NoDedup);
        let p = match held_partition(&mut self.topics, &self.image, topic, partition) {
            Ok(p) => p,
            Err(code) if code == codes::NOT_LEADER_OR_FOLLOWER => {
                return Err(Refusal::from((
                    code,
                    format!("this node holds no replica of {topic}-{partition}"),
                )))
            }
            Err(code) => {
                return Err(Refusal::from((
                    code,
                    format!("no partition {topic}-{partition}"),
                )))
            }
        };
        let log_id = p.log_id;
        let log = p.log.as_mut().map_err(|reason| {
            (
                codes::KAFKA_STORAGE_ERROR,
                format!("partition offline: {reason}"),
            )
        })?;
        let Some(replica) = p.replica.as_ref().filter(|r| r.is_leader()) else {
            return Err(Refusal::from((
                codes::NOT_LEADER_OR_FOLLOWER,
                format!("this node does not lead {topic}-{partition}"),
            )));
        };
        let (leader_epoch, high_watermark) = (replica.leader_epoch(), replica.high_watermark());
        let mut batches = validate_records(records, max_message_bytes, config.compact)?;
        if config.log_append_time {
            // The leader's clock stamps the batch (message.timestamp.type=LogAppendTime).
            for batch in &mut batches {
                let mut bytes = bytes::BytesMut::from(&batch.as_bytes()[..]);
                crate::record::set_log_append_time(&mut bytes, now.as_millis());
                *batch = RecordBatch::parse(bytes.freeze()).expect("a stamped batch parses");
            }
        }
        if batches.len() > 1 && batches.iter().any(|b| b.header().has_producer_id()) {
            // One batch per request keeps an idempotent append all or nothing.
            return Err(Refusal::from((
                codes::INVALID_RECORD,
                "an idempotent produce carries one batch per partition".into(),
            )));
        }
        for batch in &batches {
            let header = batch.header();
            if header.is_transactional() && !log.producers().txn_open(header.producer_id) {
                // A transaction's first batch here: only once its coordinator said the
                // partition is in the producer's open transaction (KIP-890).
                let key = (log_id, header.producer_id, header.producer_epoch);
                match self.txn_verdicts.get(&key) {
                    Some(&codes::NONE) => {}
                    Some(&code) => {
                        return Err(Refusal::from((
                            code,
                            format!("producer {} epoch {}: the transaction coordinator does not know {topic}-{partition} in its open transaction", header.producer_id, header.producer_epoch),
                        )))
                    }
                    None => {
                        return Err(Refusal::from((
                            codes::INVALID_TXN_STATE,
                            "a transactional batch needs a transactional id (Produce v3+)".into(),
                        )))
                    }
                }
            }
        }
        let mut base = None;
        let mut wait = None;
        let mut appended = Vec::new();
        let mut appended_bytes = 0;
        for batch in &batches {
            match log
                .producers()
                .check(batch.header(), now.as_millis(), expiry_ms)?
            {
                Verdict::Duplicate { base_offset } if !no_dedup => {
                    tracing::debug!(
                        topic,
                        partition,
                        base_offset,
                        "a retried batch, already in the log"
                    );
                    base.get_or_insert(base_offset);
                    if base_offset >= high_watermark {
                        wait = Some((log_id, base_offset + 1, leader_epoch));
                    }
                    continue;
                }
                Verdict::Duplicate { .. } | Verdict::Append => {}
            }
            match log.append(&mut self.disk, batch, leader_epoch) {
                Ok((base_offset, last_offset)) => {
                    let mut header = *batch.header();
                    header.base_offset = base_offset;
                    let seen_ms = now.as_millis().max(header.max_timestamp);
                    log.producers_mut().record(&header, seen_ms, expiry_ms);
                    base.get_or_insert(base_offset);
                    wait = Some((log_id, last_offset + 1, leader_epoch));
                    appended.push((base_offset, last_offset));
                    appended_bytes += batch.as_bytes().len() as u64;
                }
                Err(e) => {
                    p.counters.produce_bytes += appended_bytes;
                    // Batches appended before this one are the leader's to replicate still.
                    self.replica_appended(now, log_id, &appended);
                    return Err(Refusal::from((codes::KAFKA_STORAGE_ERROR, e.to_string())));
                }
            }
        }
        let log_start_offset = log.log_start_offset();
        p.counters.produce_bytes += appended_bytes;
        self.replica_appended(now, log_id, &appended);
        Ok((base.expect("at least one batch"), log_start_offset, wait))
    }

    /// The leader of `log_id` appended these batches: its group replicates and commits them.
    pub(super) fn replica_appended(&mut self, now: Instant, log_id: u64, batches: &[(i64, i64)]) {
        // Written (or perhaps partly, if an append failed): the next round looks at it.
        self.topics.touch(log_id);
        for (base, last) in batches.iter().copied() {
            self.drive_replica(now, log_id, |raft, ms, out| {
                raft.handle_appended(ms, base, last, out)
            });
        }
    }

    /// InitProducerId for idempotent producers: a new id at epoch 0, or, for a client that
    /// presents the id and epoch it has (KIP-360), the same id at the next epoch. Returns the
    /// response and whether it must wait for the sync of a new block of ids.
    pub(super) fn init_producer_id(
        &mut self,
        request: &InitProducerIdRequest,
    ) -> (InitProducerIdResponse, bool) {
        let refuse = |error_code: i16| InitProducerIdResponse {
            error_code,
            producer_id: -1,
            producer_epoch: -1,
            ..Default::default()
        };
        if request.transactional_id.is_some() {
            return (refuse(codes::INVALID_REQUEST), false);
        }
        if self.shutting_down {
            return (refuse(codes::COORDINATOR_NOT_AVAILABLE), false);
        }
        let bump = request.producer_id >= 0
            && request.producer_epoch >= 0
            && request.producer_epoch < i16::MAX - 1
            && self.producer_ids.issued(request.producer_id);
        if bump {
            let response = InitProducerIdResponse {
                producer_id: request.producer_id,
                producer_epoch: request.producer_epoch + 1,
                ..Default::default()
            };
            return (response, false);
        }
        match self.producer_ids.allocate(&mut self.disk) {
            Ok((producer_id, wrote, wait)) => {
                if wrote.is_some() {
                    // The block's file may be new: its entry is in the data directory.
                    self.extra_dirty_files.push(self.root_dir);
                }
                self.extra_dirty_files.extend(wrote);
                let response = InitProducerIdResponse {
                    producer_id,
                    producer_epoch: 0,
                    ..Default::default()
                };
                (response, wait)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record a block of producer ids");
                (refuse(codes::COORDINATOR_NOT_AVAILABLE), false)
            }
        }
    }

    /// Builds the Fetch response if it can be answered now (enough bytes, an error, or
    /// `expired`); `None` to keep waiting.
    pub(super) fn try_fetch(
        &mut self,
        parked: &ParkedFetch,
        expired: bool,
    ) -> Option<FetchResponse> {
        use crate::protocol::messages::fetch_response::*;
        let request = &parked.request;
        let version = parked.header.api_version;
        let mut bytes_left =
            (request.max_bytes.max(0) as usize).min(limits::FETCH_RESPONSE_MAX_BYTES);
        let mut total_bytes = 0usize;
        let mut any_error = false;
        let mut responses = Vec::new();
        // Each answered topic's name (by id from v13), to count what the answer serves.
        let mut names = Vec::with_capacity(request.topics.len());
        for topic in &request.topics {
            let name = if version >= 13 {
                (self.image.topic_by_id(&topic.topic_id)).map(|t| t.name.clone())
            } else {
                Some(topic.topic.clone())
            };
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                let mut data = PartitionData {
                    partition_index: p.partition,
                    high_watermark: -1,
                    last_stable_offset: -1,
                    log_start_offset: -1,
                    aborted_transactions: None,
                    records: Some(Bytes::new()),
                    ..Default::default()
                };
                let led = match name.as_deref() {
                    Some(n) => led_partition(
                        &mut self.topics,
                        &self.image,
                        n,
                        p.partition,
                        p.current_leader_epoch,
                        true,
                    ),
                    None => Err(codes::UNKNOWN_TOPIC_OR_PARTITION),
                };
                let mut damaged = None;
                match led {
                    Err(codes::UNKNOWN_TOPIC_OR_PARTITION) => {
                        data.error_code = if version >= 13 {
                            codes::UNKNOWN_TOPIC_ID
                        } else {
                            codes::UNKNOWN_TOPIC_OR_PARTITION
                        };
                    }
                    Err(code) => data.error_code = code,
                    Ok((log, high_watermark, _)) => {
                        let last_stable_offset = log.last_stable_offset(high_watermark);
                        data.high_watermark = high_watermark;
                        data.last_stable_offset = last_stable_offset;
                        data.log_start_offset = log.log_start_offset();
                        let read_committed = request.isolation_level == READ_COMMITTED;
                        {
                            let max_bytes = (p.partition_max_bytes.max(0) as usize).min(bytes_left);
                            // KIP-74: the first partition with data returns at least one batch.
                            let at_least_one = total_bytes == 0;
                            let upper_offset = if self.config.planted_bug
                                == Some(PlantedBug::FetchPastHighWatermark)
                            {
                                log.log_end_offset()
                            } else if read_committed {
                                last_stable_offset
                            } else {
                                high_watermark
                            };
                            let mut upper_offset = upper_offset;
                            if read_committed && version >= 4 {
                                // The aborted transactions among what is served: the client
                                // drops their records. Past the most one answer lists, the
                                // read stops where the first one left out begins.
                                let (aborted, cut) = log.aborted_txns(
                                    p.fetch_offset,
                                    upper_offset,
                                    limits::FETCH_ABORTED_TXNS_MAX,
                                );
                                upper_offset = cut.unwrap_or(upper_offset);
                                data.aborted_transactions = Some(
                                    (aborted.into_iter())
                                        .map(|a| AbortedTransaction {
                                            producer_id: a.producer_id,
                                            first_offset: a.first_offset,
                                            ..Default::default()
                                        })
                                        .collect(),
                                );
                            }
                            match log.read(
                                &mut self.disk,
                                p.fetch_offset,
                                upper_offset,
                                max_bytes,
                                at_least_one,
                            ) {
                                Ok(records) => {
                                    total_bytes += records.len();
                                    bytes_left = bytes_left.saturating_sub(records.len());
                                    data.records = Some(records);
                                }
                                Err(LogError::OffsetOutOfRange { .. }) => {
                                    data.error_code = codes::OFFSET_OUT_OF_RANGE
                                }
                                Err(e @ LogError::Corrupt { .. }) => {
                                    tracing::error!(error = %e, "fetch read found damage; partition offline");
                                    data.error_code = codes::KAFKA_STORAGE_ERROR;
                                    damaged = Some(e.to_string());
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "fetch read failed");
                                    data.error_code = codes::KAFKA_STORAGE_ERROR;
                                }
                            }
                        }
                    }
                }
                if let (Some(reason), Some(name)) = (damaged, name.as_deref()) {
                    // Damage on the disk, found by a read (recovery reads only what segment
                    // summaries do not vouch for): the partition goes offline, as a Kafka log
                    // directory that failed does, until a restart reads it again.
                    if let Some(partition) = self.topics.get(name, p.partition) {
                        partition.log = Err(reason);
                        partition.replica = None;
                    }
                    self.data_version += 1;
                }
                any_error |= data.error_code != codes::NONE;
                partitions.push(data);
            }
            responses.push(FetchableTopicResponse {
                topic: topic.topic.clone(),
                topic_id: topic.topic_id,
                partitions,
                ..Default::default()
            });
            names.push(name);
        }
        let enough = total_bytes >= request.min_bytes.max(0) as usize;
        if !(expired || any_error || enough || request.max_wait_ms <= 0) {
            return None;
        }
        // Bytes served are counted only once the answer goes out (a parked fetch reads again).
        for (name, response) in names.iter().zip(&responses) {
            let Some(name) = name else { continue };
            for data in &response.partitions {
                let bytes = data.records.as_ref().map_or(0, Bytes::len);
                if bytes > 0 {
                    if let Some(p) = self.topics.get(name, data.partition_index) {
                        p.counters.fetch_bytes += bytes as u64;
                    }
                }
            }
        }
        Some(FetchResponse {
            responses,
            ..Default::default()
        })
    }

    pub(super) fn list_offsets(
        &mut self,
        request: &ListOffsetsRequest,
        version: i16,
    ) -> ListOffsetsResponse {
        use crate::protocol::messages::list_offsets_response::*;
        let mut topics = Vec::new();
        for topic in &request.topics {
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                let mut response = ListOffsetsPartitionResponse {
                    partition_index: p.partition_index,
                    ..Default::default()
                };
                let current = p.current_leader_epoch;
                match led_partition(
                    &mut self.topics,
                    &self.image,
                    &topic.name,
                    p.partition_index,
                    current,
                    true,
                ) {
                    Err(code) => response.error_code = code,
                    Ok((log, high_watermark, leader_epoch)) => {
                        response.leader_epoch = leader_epoch;
                        let storage_error = |e: LogError| {
                            tracing::error!(error = %e, "list offsets read failed");
                            codes::KAFKA_STORAGE_ERROR
                        };
                        let found: Result<Option<(i64, i64)>, i16> = match p.timestamp {
                            // read_committed reads up to the last stable offset.
                            LATEST_TIMESTAMP if request.isolation_level == READ_COMMITTED => {
                                Ok(Some((log.last_stable_offset(high_watermark), -1)))
                            }
                            LATEST_TIMESTAMP => Ok(Some((high_watermark, -1))),
                            EARLIEST_TIMESTAMP => Ok(Some((log.log_start_offset(), -1))),
                            MAX_TIMESTAMP if version >= 7 => match log.max_timestamp() {
                                Some(max) => log
                                    .offset_for_timestamp(&mut self.disk, max, high_watermark)
                                    .map_err(storage_error),
                                None => Ok(None),
                            },
                            t if t < 0 => Err(codes::UNSUPPORTED_VERSION),
                            t => log
                                .offset_for_timestamp(&mut self.disk, t, high_watermark)
                                .map_err(storage_error),
                        };
                        match found {
                            Ok(Some((offset, timestamp))) => {
                                response.offset = offset;
                                response.timestamp = timestamp;
                            }
                            Ok(None) => {}
                            Err(code) => response.error_code = code,
                        }
                    }
                }
                partitions.push(response);
            }
            topics.push(ListOffsetsTopicResponse {
                name: topic.name.clone(),
                partitions,
                ..Default::default()
            });
        }
        ListOffsetsResponse {
            topics,
            ..Default::default()
        }
    }

    pub(super) fn create_topics(
        &mut self,
        now: Instant,
        request: &CreateTopicsRequest,
        version: i16,
    ) -> (PendingChange, Option<AdminWait>) {
        use crate::protocol::messages::create_topics_response::*;
        let controller = self.check_controller();
        let mut records = Vec::new();
        let mut created = Vec::new();
        let mut topics = Vec::new();
        for topic in &request.topics {
            let partitions = if topic.num_partitions == -1 {
                self.config.default_partitions
            } else {
                topic.num_partitions
            };
            let manual = !topic.assignments.is_empty();
            let check = if let Err(refusal) = &controller {
                Err(refusal.clone())
            } else if manual && (topic.num_partitions != -1 || topic.replication_factor != -1) {
                Err((
                    codes::INVALID_REQUEST,
                    "a manual assignment comes without a partition count or replication factor"
                        .to_string(),
                ))
            } else if request
                .topics
                .iter()
                .filter(|t| t.name == topic.name)
                .count()
                > 1
            {
                Err((
                    codes::INVALID_REQUEST,
                    format!("topic {} is named twice in the request", topic.name),
                ))
            } else {
                let mut assignments: Vec<_> = topic.assignments.iter().collect();
                assignments.sort_by_key(|a| a.partition_index);
                let indexes_ok =
                    (assignments.iter().enumerate()).all(|(i, a)| a.partition_index == i as i32);
                if !indexes_ok {
                    Err((
                        codes::INVALID_REPLICA_ASSIGNMENT,
                        "assignments must name partitions 0 to n-1, each once".to_string(),
                    ))
                } else {
                    let assignments = assignments.iter().map(|a| a.broker_ids.clone()).collect();
                    self.new_topic(
                        &topic.name,
                        partitions,
                        topic.replication_factor,
                        assignments,
                    )
                }
            };
            let mut result = CreatableTopicResult {
                name: topic.name.clone(),
                error_message: None,
                num_partitions: -1,
                replication_factor: -1,
                configs: (version >= 5).then(Vec::new),
                ..Default::default()
            };
            match check {
                Err((code, message)) => {
                    result.error_code = code;
                    result.error_message = Some(message);
                }
                Ok(MetadataRecord::Topic { replicas, .. }) if request.validate_only => {
                    let factor = replicas.first().map_or(1, Vec::len);
                    let bad = (topic.configs.iter())
                        .filter_map(|c| Some((c.name.as_str(), c.value.as_deref()?)))
                        .find_map(|(key, value)| {
                            crate::metadata::configs::check(key, value, factor).err()
                        });
                    match bad {
                        Some(message) => {
                            result.error_code = codes::INVALID_CONFIG;
                            result.error_message = Some(message);
                        }
                        None => {
                            result.num_partitions = replicas.len() as i32;
                            result.replication_factor = factor as i16;
                        }
                    }
                }
                Ok(record) => {
                    let MetadataRecord::Topic { id, name, replicas } = &record else {
                        unreachable!("new_topic makes topics")
                    };
                    let factor = replicas.first().map_or(1, Vec::len);
                    let configs: Result<Vec<MetadataRecord>, String> = (topic.configs.iter())
                        .filter_map(|c| Some((c.name.clone(), c.value.clone()?)))
                        .map(|(key, value)| {
                            crate::metadata::configs::check(&key, &value, factor)?;
                            Ok(MetadataRecord::Config {
                                id: *id,
                                key,
                                value: Some(value),
                            })
                        })
                        .collect();
                    match configs {
                        Err(message) => {
                            result.error_code = codes::INVALID_CONFIG;
                            result.error_message = Some(message);
                        }
                        Ok(configs) => {
                            created.push((topics.len(), *id));
                            // Later topics of the request must not take its name or id.
                            self.proposed.insert(name.clone(), i64::MAX);
                            records.push(record);
                            records.extend(configs);
                        }
                    }
                }
            }
            topics.push(result);
        }
        for record in &records {
            if let MetadataRecord::Topic { name, .. } = record {
                self.proposed.remove(name);
            }
        }
        let pending = PendingChange::CreateTopics {
            response: CreateTopicsResponse {
                topics,
                ..Default::default()
            },
            created,
        };
        self.write_change(now, &records, pending)
    }

    /// Writes an admin request's records, if it has any: its answer waits for them to reach
    /// the image; if they cannot be written, every entry that waited says why.
    pub(super) fn write_change(
        &mut self,
        now: Instant,
        records: &[MetadataRecord],
        mut pending: PendingChange,
    ) -> (PendingChange, Option<AdminWait>) {
        if records.is_empty() {
            return (pending, None);
        }
        match self.propose(now, records) {
            Ok((offset, epoch)) => (pending, Some(AdminWait::Written { offset, epoch })),
            Err((code, message)) => {
                pending.refuse(code, &message);
                (pending, None)
            }
        }
    }

    pub(super) fn delete_topics(
        &mut self,
        now: Instant,
        request: &DeleteTopicsRequest,
        version: i16,
    ) -> (PendingChange, Option<AdminWait>) {
        use crate::protocol::messages::delete_topics_response::*;
        let controller = self.check_controller();
        let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
            request
                .topics
                .iter()
                .map(|t| match &t.name {
                    Some(name) => (Some(name.clone()), t.topic_id),
                    None => (
                        self.image.topic_by_id(&t.topic_id).map(|t| t.name.clone()),
                        t.topic_id,
                    ),
                })
                .collect()
        } else {
            request
                .topic_names
                .iter()
                .map(|n| (Some(n.clone()), Uuid::default()))
                .collect()
        };
        let mut records = Vec::new();
        let mut deleted = Vec::new();
        let mut responses = Vec::new();
        for (name, topic_id) in targets {
            let mut result = DeletableTopicResult {
                name: name.clone(),
                topic_id,
                ..Default::default()
            };
            let found = name
                .as_deref()
                .and_then(|n| self.image.topic(n))
                .map(|t| t.id);
            match (&controller, found) {
                (Err((code, message)), _) => {
                    result.error_code = *code;
                    result.error_message = Some(message.clone());
                }
                (Ok(()), Some(_)) if name.as_deref().is_some_and(Self::internal_topic) => {
                    result.error_code = codes::INVALID_TOPIC_EXCEPTION;
                    result.error_message =
                        Some("an internal topic: deleting it would lose every group".into());
                }
                (Ok(()), Some(id)) => {
                    result.topic_id = id;
                    if !deleted.iter().any(|(_, d)| *d == id) {
                        deleted.push((responses.len(), id));
                        records.push(MetadataRecord::RemoveTopic { id });
                    }
                }
                (Ok(()), None) => {
                    result.error_code = if version >= 6 && result.name.is_none() {
                        codes::UNKNOWN_TOPIC_ID
                    } else {
                        codes::UNKNOWN_TOPIC_OR_PARTITION
                    };
                }
            }
            if version < 6 && result.name.is_none() {
                result.name = Some(String::new());
            }
            responses.push(result);
        }
        let pending = PendingChange::DeleteTopics {
            response: DeleteTopicsResponse {
                responses,
                ..Default::default()
            },
            deleted,
        };
        self.write_change(now, &records, pending)
    }

    pub(super) fn create_partitions(
        &mut self,
        now: Instant,
        request: &CreatePartitionsRequest,
    ) -> (PendingChange, Option<AdminWait>) {
        use crate::protocol::messages::create_partitions_response::*;
        let controller = self.check_controller();
        let brokers: Vec<i32> = self.brokers().iter().map(|b| b.node_id).collect();
        let mut records = Vec::new();
        let mut grown = Vec::new();
        let mut results = Vec::new();
        for topic in &request.topics {
            let found = self.image.topic(&topic.name).cloned();
            let check = match (&controller, found) {
                (Err(refusal), _) => Err(refusal.clone()),
                (Ok(()), None) => Err((
                    codes::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("no topic {}", topic.name),
                )),
                // Its partition count places every group: more would move them all.
                (Ok(()), Some(_)) if Self::internal_topic(&topic.name) => Err((
                    codes::INVALID_PARTITIONS,
                    format!("{} is internal: its partitions are fixed", topic.name),
                )),
                (Ok(()), Some(t)) if topic.count <= t.replicas.len() as i32 => Err((
                    codes::INVALID_PARTITIONS,
                    format!(
                        "topic {} has {} partitions; the new count must be larger",
                        topic.name,
                        t.replicas.len()
                    ),
                )),
                (Ok(()), Some(t)) => {
                    let current = t.replicas.len() as i32;
                    let adding = topic.count - current;
                    let replicas = match &topic.assignments {
                        Some(manual) if !manual.is_empty() => {
                            if manual.len() as i32 != adding {
                                Err((
                                    codes::INVALID_REPLICA_ASSIGNMENT,
                                    format!(
                                        "{} assignments for {adding} new partitions",
                                        manual.len()
                                    ),
                                ))
                            } else {
                                Ok(manual.iter().map(|a| a.broker_ids.clone()).collect())
                            }
                        }
                        _ => {
                            let factor = t.replicas.first().map_or(1, Vec::len);
                            let start = (super::node_rng(&mut self.rng_state)
                                % brokers.len() as u64)
                                as usize;
                            let order = self.placement_order();
                            Ok(place_replicas(&order, current, adding, factor, start))
                        }
                    };
                    replicas.and_then(|replicas| {
                        let record = MetadataRecord::Partitions { id: t.id, replicas };
                        self.check_record(&record)?;
                        if let MetadataRecord::Partitions { replicas, .. } = &record {
                            if replicas.iter().any(|r| r.len() != t.replicas[0].len()) {
                                return Err((
                                    codes::INVALID_REPLICA_ASSIGNMENT,
                                    "new partitions keep the topic's replication factor".into(),
                                ));
                            }
                        }
                        Ok(record)
                    })
                }
            };
            let mut result = CreatePartitionsTopicResult {
                name: topic.name.clone(),
                ..Default::default()
            };
            match check {
                Err((code, message)) => {
                    result.error_code = code;
                    result.error_message = Some(message);
                }
                Ok(_) if request.validate_only => {}
                Ok(record) => {
                    if let MetadataRecord::Partitions { id, .. } = &record {
                        if grown.iter().any(|(_, g, _)| g == id) {
                            result.error_code = codes::INVALID_REQUEST;
                            result.error_message =
                                Some(format!("topic {} is named twice", topic.name));
                        } else {
                            grown.push((results.len(), *id, topic.count));
                            records.push(record);
                        }
                    }
                }
            }
            results.push(result);
        }
        let pending = PendingChange::CreatePartitions {
            response: CreatePartitionsResponse {
                results,
                ..Default::default()
            },
            grown,
        };
        self.write_change(now, &records, pending)
    }

    pub(super) fn describe_cluster(
        &mut self,
        request: &DescribeClusterRequest,
    ) -> DescribeClusterResponse {
        use crate::protocol::messages::describe_cluster_response::*;
        DescribeClusterResponse {
            // No authorizer: every operation is allowed (Kafka answers the same).
            cluster_authorized_operations: match request.include_cluster_authorized_operations {
                true => CLUSTER_OPERATIONS_ALL,
                false => i32::MIN,
            },
            cluster_id: self.config.cluster_id.clone(),
            controller_id: self.listed_controller_id(),
            brokers: (self.listed_brokers().into_iter())
                .map(|b| DescribeClusterBroker {
                    broker_id: b.node_id,
                    host: b.host,
                    port: b.port,
                    rack: b.rack,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// DescribeQuorum (KIP-595) for any partition this node holds: every partition is a Raft
    /// group, and `__cluster_metadata` partition 0 is the metadata quorum (Kafka answers only
    /// for that one). A leader answers its epoch, its high watermark and, for each voter, its
    /// log end and when it last fetched and caught up (itself: now); any other node answers
    /// NOT_LEADER_OR_FOLLOWER with the leader it knows of, as Kafka's controllers do.
    pub(super) fn describe_quorum(
        &mut self,
        now: Instant,
        request: &DescribeQuorumRequest,
        version: i16,
    ) -> DescribeQuorumResponse {
        use crate::protocol::messages::describe_quorum_response::*;
        let now_ms = now.as_millis();
        let node_id = self.config.node_id;
        let mut named = std::collections::BTreeSet::new();
        let mut topics = Vec::new();
        for topic in &request.topics {
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                let mut result = PartitionData {
                    partition_index: p.partition_index,
                    error_message: None,
                    leader_id: -1,
                    leader_epoch: -1,
                    high_watermark: -1,
                    ..Default::default()
                };
                let held = if topic.topic_name == METADATA_TOPIC && p.partition_index == 0 {
                    self.topics
                        .get(METADATA_TOPIC, 0)
                        .ok_or(codes::UNKNOWN_TOPIC_OR_PARTITION)
                } else {
                    held_partition(
                        &mut self.topics,
                        &self.image,
                        &topic.topic_name,
                        p.partition_index,
                    )
                };
                let outcome = match held {
                    Err(code) => {
                        // Held by other nodes only: the leader the image last recorded.
                        let known = (self.image.topic(&topic.topic_name))
                            .and_then(|t| t.leaders.get(p.partition_index.max(0) as usize));
                        if let (codes::NOT_LEADER_OR_FOLLOWER, Some((leader, epoch))) =
                            (code, known)
                        {
                            (result.leader_id, result.leader_epoch) = (*leader, *epoch);
                        }
                        Err((code, "this node holds no replica of the partition"))
                    }
                    Ok(held) => match (held.log.as_ref(), held.replica.as_ref()) {
                        (Err(_), _) | (_, None) => {
                            Err((codes::KAFKA_STORAGE_ERROR, "the partition is offline"))
                        }
                        (Ok(_), Some(replica)) if !replica.is_leader() => {
                            if let Some(leader) = replica.leader() {
                                result.leader_id = leader;
                                result.leader_epoch = replica.leader_epoch();
                            }
                            Err((codes::NOT_LEADER_OR_FOLLOWER, "this node does not lead it"))
                        }
                        (Ok(log), Some(replica)) => {
                            let raft = replica.raft();
                            let followers = raft.followers(now_ms.max(0) as u64);
                            let timestamp = |ms: Option<u64>| ms.map_or(-1, |ms| ms as i64);
                            result.leader_id = node_id;
                            result.leader_epoch = replica.leader_epoch();
                            result.high_watermark = replica.high_watermark();
                            result.current_voters = (raft.voters().iter())
                                .map(|&id| match followers.iter().find(|f| f.id == id) {
                                    _ if id == node_id => ReplicaState {
                                        replica_id: id,
                                        log_end_offset: log.log_end_offset(),
                                        last_fetch_timestamp: now_ms,
                                        last_caught_up_timestamp: now_ms,
                                        ..Default::default()
                                    },
                                    Some(f) => ReplicaState {
                                        replica_id: id,
                                        log_end_offset: f.log_end.unwrap_or(-1),
                                        last_fetch_timestamp: timestamp(f.last_fetch_ms),
                                        last_caught_up_timestamp: timestamp(f.caught_up_ms),
                                        ..Default::default()
                                    },
                                    None => ReplicaState {
                                        replica_id: id,
                                        log_end_offset: -1,
                                        last_fetch_timestamp: -1,
                                        last_caught_up_timestamp: -1,
                                        ..Default::default()
                                    },
                                })
                                .collect();
                            named.extend(raft.voters().iter().copied());
                            Ok(())
                        }
                    },
                };
                if let Err((code, message)) = outcome {
                    result.error_code = code;
                    if version >= 2 {
                        result.error_message = Some(message.to_string());
                    }
                }
                named.extend(Some(result.leader_id).filter(|id| *id >= 0));
                partitions.push(result);
            }
            topics.push(TopicData {
                topic_name: topic.topic_name.clone(),
                partitions,
                ..Default::default()
            });
        }
        // (v2) Where the nodes named above are reached: the client listener each registered.
        let nodes = match version >= 2 {
            false => Vec::new(),
            true => (self.listed_brokers().into_iter())
                .filter(|b| named.contains(&b.node_id))
                .map(|b| Node {
                    node_id: b.node_id,
                    listeners: vec![Listener {
                        name: "PLAINTEXT".into(),
                        host: b.host,
                        port: u16::try_from(b.port).unwrap_or(0),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        };
        DescribeQuorumResponse {
            error_message: None,
            topics,
            nodes,
            ..Default::default()
        }
    }

    pub(super) fn offset_for_leader_epoch(
        &mut self,
        request: &OffsetForLeaderEpochRequest,
    ) -> OffsetForLeaderEpochResponse {
        use crate::protocol::messages::offset_for_leader_epoch_response::*;
        let mut topics = Vec::new();
        for topic in &request.topics {
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                let mut result = EpochEndOffset {
                    partition: p.partition,
                    ..Default::default()
                };
                let current = p.current_leader_epoch;
                match led_partition(
                    &mut self.topics,
                    &self.image,
                    &topic.topic,
                    p.partition,
                    current,
                    false,
                ) {
                    Err(code) => result.error_code = code,
                    Ok((log, _, leader_epoch)) => {
                        // From the log's epoch cache, as Kafka answers: the current epoch
                        // ends at the log end (whether or not the log holds a batch of it);
                        // an epoch older than any the log has, or later than the current
                        // one, gets -1 and -1.
                        let found = match log.epoch_end(p.leader_epoch) {
                            _ if p.leader_epoch == leader_epoch => {
                                Some((leader_epoch, log.log_end_offset()))
                            }
                            _ if p.leader_epoch > leader_epoch => None,
                            found => found,
                        };
                        (result.leader_epoch, result.end_offset) = found.unwrap_or((-1, -1));
                    }
                }
                partitions.push(result);
            }
            topics.push(OffsetForLeaderTopicResult {
                topic: topic.topic.clone(),
                partitions,
                ..Default::default()
            });
        }
        OffsetForLeaderEpochResponse {
            topics,
            ..Default::default()
        }
    }
}
