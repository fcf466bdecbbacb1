//! The node's side of transactions: `__transaction_state`, its coordinators, the transaction
//! APIs routed to them, and transaction markers between nodes.
//!
//! - The topic is created through the controller on the first FindCoordinator (key type 1)
//!   or transactional InitProducerId, with `Config::transaction_state_partitions`
//!   partitions, compacted (the last record of each transactional id is what counts).
//! - A coordinator ([`TxnCoordinator`]) is made for a partition once this node leads it and
//!   everything in its log is committed, by replaying the log; it is dropped, and what it
//!   held answered NOT_COORDINATOR, once the node no longer leads that partition in that
//!   epoch. Its writes are appended as batches by the partition's leader and commit with the
//!   high watermark, as the group coordinators' do (`groups.rs`).
//! - Markers: a coordinator's marker sends go, per partition leader, as a WriteTxnMarkers
//!   request in the peer frames to that node ([`crate::raft::wire::PeerCall`]), or straight
//!   to this node's own handler when it leads the partition. The leader appends each marker
//!   as a control batch, checks it against what the partition knows of the producer (an
//!   older producer epoch, or a marker from an older coordinator, is refused), and answers
//!   once the marker has committed (or failed, or the leadership moved): a transaction is
//!   complete only when every marker is in its partition's committed log. A coordinator that
//!   hears nothing sends again ([`crate::coordinator::txn`]); a marker written twice finds no
//!   open transaction the second time and changes nothing.

use std::collections::BTreeMap;

use bytes::BytesMut;

use super::{Instant, Node};
use crate::coordinator::records::partition_for;
use crate::coordinator::txn::{self, MarkerSend, TxnConfig, TxnCoordinator, TXN_TOPIC};
use crate::coordinator::ReplyTo;
use crate::disk::Disk;
use crate::protocol::codes;
use crate::protocol::messages::*;
use crate::protocol::ApiKey;
use crate::raft::wire::PeerCall;
use crate::raft::NodeId;
use crate::record::{
    self, BatchOptions, NewRecord, RecordBatch, DECOMPRESSED_BATCH_SIZE_MAX_BYTES,
};

/// Bytes read at a time while a coordinator loads its partition.
const LOAD_READ_BYTES: usize = 1024 * 1024;

/// How long a marker request's call id is remembered (its answer may come late; past this
/// the coordinator has sent again anyway).
const CALL_MEMORY_MS: u64 = 10_000;

/// How long a Produce waits for its coordinator to verify its partitions before it is
/// answered NOT_ENOUGH_REPLICAS (retriable: the client sends it again).
const VERIFY_TIMEOUT_MS: u64 = 2_000;

/// A partition of a Produce whose transaction opens there: what its coordinator must say.
#[derive(Debug, Clone)]
pub(super) struct ToVerify {
    topic: String,
    partition: i32,
    log_id: u64,
    producer_id: i64,
    producer_epoch: i16,
}

/// A request waiting for its transaction's coordinator to verify it.
#[derive(Debug)]
struct Verifying {
    /// The node asked (this one's own id when it coordinates).
    to: NodeId,
    conn: u64,
    slot: u64,
    correlation_id: i32,
    version: i16,
    what: Verified,
    sent_ms: u64,
}

/// What waits for a verification.
#[derive(Debug)]
enum Verified {
    /// A Produce whose transaction opens in these partitions.
    Produce {
        request: ProduceRequest,
        partitions: Vec<ToVerify>,
    },
    /// A TxnOffsetCommit to this node's coordinator of the group's `__consumer_offsets`
    /// partition: that partition must be in the producer's open transaction
    /// (AddOffsetsToTxn), or nothing would end what it opens there.
    Offsets {
        request: TxnOffsetCommitRequest,
        partition: i32,
        client_id: Option<String>,
    },
}

/// A coordinator and the leadership it was loaded under.
#[derive(Debug)]
pub(super) struct LoadedTxn {
    log_id: u64,
    epoch: i32,
    coordinator: TxnCoordinator,
}

/// Where a marker request came from: a peer, or this node's own coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallFrom {
    Peer(NodeId),
    Local,
}

/// A marker request this node's coordinator sent, by call id.
#[derive(Debug)]
struct SentMarkers {
    /// The node asked (this one's own id for its own partitions).
    to: NodeId,
    partition: i32,
    epoch: i32,
    sent_ms: u64,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
}

/// One marker's commit: its log id, the offset the high watermark must reach, the leader
/// epoch it was appended in, and its place in the answer (marker, topic, partition).
type MarkerWait = (u64, i64, i32, (usize, usize, usize));

/// Marker writes this node holds until they commit: what the high watermark of each must
/// reach, in which leader epoch, and where its answer is in the response.
#[derive(Debug)]
struct HeldMarkers {
    from: CallFrom,
    id: u64,
    response: WriteTxnMarkersResponse,
    waits: Vec<MarkerWait>,
}

/// Calls between nodes: what goes out in the next frames, what this node waits to hear.
#[derive(Debug, Default)]
pub(super) struct Calls {
    next_id: u64,
    outbox: BTreeMap<NodeId, Vec<PeerCall>>,
    sent: BTreeMap<u64, SentMarkers>,
    held: Vec<HeldMarkers>,
    /// Answers to this node's own marker requests, delivered at the next settle.
    local_replies: Vec<(u64, WriteTxnMarkersResponse)>,
    /// Produce requests waiting for their coordinator's verification, by call id.
    verifying: BTreeMap<u64, Verifying>,
}

impl Calls {
    /// The calls for `to`, for its next frame.
    pub(super) fn take_for(&mut self, to: NodeId) -> Vec<PeerCall> {
        self.outbox.remove(&to).unwrap_or_default()
    }

    /// Peers with calls waiting.
    pub(super) fn peers(&self) -> Vec<NodeId> {
        self.outbox.keys().copied().collect()
    }
}

enum Route {
    Here(i32),
    Refused(i16),
}

/// The transaction settings of a node's config.
pub(super) fn txn_config(config: &super::Config) -> TxnConfig {
    TxnConfig {
        max_timeout_ms: config.transaction_max_timeout_ms,
        planted_no_epoch_bump: config.planted_bug == Some(super::PlantedBug::NoEpochBump),
        planted_marker_before_append: config.planted_bug
            == Some(super::PlantedBug::MarkerBeforeAppend),
    }
}

impl<D: Disk> Node<D> {
    fn txn_partitions(&self) -> Option<i32> {
        (self.image.topic(TXN_TOPIC)).map(|t| t.replicas.len() as i32)
    }

    fn txn_route(&mut self, now: Instant, id: &str) -> Route {
        let Some(count) = self.txn_partitions() else {
            self.create_txn_topic(now);
            return Route::Refused(codes::COORDINATOR_NOT_AVAILABLE);
        };
        let partition = partition_for(id, count);
        if self.txn_coordinators.contains_key(&partition) {
            return Route::Here(partition);
        }
        let leads = (self.topics.peek(TXN_TOPIC, partition))
            .and_then(|p| p.replica.as_ref())
            .is_some_and(|r| r.is_leader());
        if leads && !self.shutting_down {
            Route::Refused(codes::COORDINATOR_LOAD_IN_PROGRESS)
        } else {
            Route::Refused(codes::NOT_COORDINATOR)
        }
    }

    /// Asks the controller for `__transaction_state` (clients ask again meanwhile).
    fn create_txn_topic(&mut self, now: Instant) {
        let (partitions, factor) = (
            self.config.transaction_state_partitions,
            self.config.transaction_state_replication_factor,
        );
        self.create_internal_topic(now, TXN_TOPIC, partitions, factor);
    }

    /// The broker coordinating transactional id `id`, if one is known and clients can reach
    /// it (FindCoordinator, key type 1).
    pub(super) fn txn_coordinator_node(&mut self, now: Instant, id: &str) -> Option<super::Broker> {
        let Some(count) = self.txn_partitions() else {
            self.create_txn_topic(now);
            return None;
        };
        let leader = self.partition_leader(TXN_TOPIC, partition_for(id, count))?;
        self.listed_brokers()
            .into_iter()
            .find(|b| b.node_id == leader)
    }

    /// The node leading a partition, as this node knows it: its own replica's view if it
    /// holds one, else what the image last heard.
    pub(super) fn partition_leader(&self, topic: &str, partition: i32) -> Option<NodeId> {
        let named = self.image.topic(topic)?;
        let local = (self.topics.peek(topic, partition))
            .filter(|p| p.topic_id == named.id)
            .and_then(|p| p.replica.as_ref());
        match local {
            Some(replica) => replica.leader(),
            None => match named.leaders.get(partition as usize) {
                Some((leader, _)) if *leader >= 0 => Some(*leader),
                _ => None,
            },
        }
    }

    /// A fresh producer id for a coordinator, if one of a durable block is at hand (else the
    /// block is written for the next round to sync, and the client asks again).
    fn fresh_producer_id(&mut self) -> Option<i64> {
        match self.producer_ids.allocate(&mut self.disk) {
            Ok((id, wrote, wait)) => {
                if wrote.is_some() {
                    self.extra_dirty_files.push(self.root_dir);
                }
                self.extra_dirty_files.extend(wrote);
                (!wait).then_some(id)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record a block of producer ids");
                None
            }
        }
    }

    /// A transaction request (InitProducerId with a transactional id, AddPartitionsToTxn,
    /// AddOffsetsToTxn, EndTxn). `None`: the answer is held.
    pub(super) fn txn_request(
        &mut self,
        now: Instant,
        conn: u64,
        slot: u64,
        version: i16,
        request: &Request,
    ) -> Option<Response> {
        let now_ms = now.as_millis() as u64;
        let to = ReplyTo { conn, slot };
        let id = match request {
            Request::InitProducerId(r) => r.transactional_id.clone().unwrap_or_default(),
            Request::AddPartitionsToTxn(r) if version <= 3 => {
                r.v3_and_below_transactional_id.clone()
            }
            Request::AddPartitionsToTxn(r) => {
                return Some(Response::AddPartitionsToTxn(self.verify_txns(r)))
            }
            Request::AddOffsetsToTxn(r) => r.transactional_id.clone(),
            Request::EndTxn(r) => r.transactional_id.clone(),
            _ => return None,
        };
        let partition = match self.txn_route(now, &id) {
            Route::Here(p) => p,
            Route::Refused(code) => {
                let mut response = blank_answer(request);
                txn::refuse(&mut response, code);
                return Some(response);
            }
        };
        let fenced = |v: i16| {
            if v >= 2 {
                codes::PRODUCER_FENCED
            } else {
                codes::INVALID_PRODUCER_EPOCH
            }
        };
        match request {
            Request::InitProducerId(r) => {
                // The coordinator asks for ids through the node, which may have to write a
                // block first: taken out for the call, put back after.
                let mut loaded = self.txn_coordinators.remove(&partition)?;
                let mut alloc = || self.fresh_producer_id();
                let answer = loaded
                    .coordinator
                    .init_producer_id(now_ms, to, r, &mut alloc);
                self.txn_coordinators.insert(partition, loaded);
                answer.map(Response::InitProducerId)
            }
            Request::AddPartitionsToTxn(r) => {
                use crate::protocol::messages::add_partitions_to_txn_response::*;
                let partitions: Vec<(String, i32)> = (r.v3_and_below_topics.iter())
                    .flat_map(|t| t.partitions.iter().map(|p| (t.name.clone(), *p)))
                    .collect();
                let answer_with = |code: i16| AddPartitionsToTxnResponse {
                    results_by_topic_v3_and_below: (r.v3_and_below_topics.iter())
                        .map(|t| AddPartitionsToTxnTopicResult {
                            name: t.name.clone(),
                            results_by_partition: (t.partitions.iter())
                                .map(|p| AddPartitionsToTxnPartitionResult {
                                    partition_index: *p,
                                    partition_error_code: code,
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                };
                let image = &self.image;
                let known = |topic: &str, p: i32| {
                    image
                        .topic(topic)
                        .is_some_and(|t| p >= 0 && (p as usize) < t.replicas.len())
                        && topic != TXN_TOPIC
                };
                let coordinator = &mut self.txn_coordinators.get_mut(&partition)?.coordinator;
                let result = coordinator.add_partitions(
                    now_ms,
                    to,
                    &id,
                    r.v3_and_below_producer_id,
                    r.v3_and_below_producer_epoch,
                    &partitions,
                    &known,
                    fenced(version),
                    Response::AddPartitionsToTxn(answer_with(codes::NONE)),
                );
                match result {
                    Ok(answer) => answer,
                    Err(codes::UNKNOWN_TOPIC_OR_PARTITION) => {
                        let mut response = answer_with(codes::OPERATION_NOT_ATTEMPTED);
                        for t in &mut response.results_by_topic_v3_and_below {
                            for p in &mut t.results_by_partition {
                                if !known(&t.name, p.partition_index) {
                                    p.partition_error_code = codes::UNKNOWN_TOPIC_OR_PARTITION;
                                }
                            }
                        }
                        Some(Response::AddPartitionsToTxn(response))
                    }
                    Err(code) => Some(Response::AddPartitionsToTxn(answer_with(code))),
                }
            }
            Request::AddOffsetsToTxn(r) => {
                let answer = |error_code: i16| {
                    Some(Response::AddOffsetsToTxn(AddOffsetsToTxnResponse {
                        error_code,
                        ..Default::default()
                    }))
                };
                let Some(count) =
                    (self.image.topic(super::groups::OFFSETS_TOPIC)).map(|t| t.replicas.len())
                else {
                    return answer(codes::COORDINATOR_NOT_AVAILABLE);
                };
                if r.group_id.is_empty() {
                    return answer(codes::INVALID_GROUP_ID);
                }
                let offsets = (
                    super::groups::OFFSETS_TOPIC.to_string(),
                    partition_for(&r.group_id, count as i32),
                );
                let coordinator = &mut self.txn_coordinators.get_mut(&partition)?.coordinator;
                match coordinator.add_partitions(
                    now_ms,
                    to,
                    &id,
                    r.producer_id,
                    r.producer_epoch,
                    &[offsets],
                    &|_, _| true,
                    fenced(version),
                    Response::AddOffsetsToTxn(Default::default()),
                ) {
                    Ok(answer) => answer,
                    Err(code) => answer(code),
                }
            }
            Request::EndTxn(r) => {
                let coordinator = &mut self.txn_coordinators.get_mut(&partition)?.coordinator;
                (coordinator.end_txn(now_ms, to, r, version)).map(Response::EndTxn)
            }
            _ => None,
        }
    }

    /// AddPartitionsToTxn v4+: for each transaction, whether its partitions are in it
    /// (`verify_only`; adding through this form is refused, as Keel's producers add their
    /// partitions themselves).
    fn verify_txns(&mut self, request: &AddPartitionsToTxnRequest) -> AddPartitionsToTxnResponse {
        use crate::protocol::messages::add_partitions_to_txn_response::*;
        let now = self.now;
        let mut results = Vec::new();
        for t in &request.transactions {
            let partition = match self.txn_route(now, &t.transactional_id) {
                Route::Here(p) => Ok(p),
                Route::Refused(code) => Err(code),
            };
            let topic_results = (t.topics.iter())
                .map(|topic| AddPartitionsToTxnTopicResult {
                    name: topic.name.clone(),
                    results_by_partition: (topic.partitions.iter())
                        .map(|p| {
                            let code = match (&partition, t.verify_only) {
                                (Err(code), _) => *code,
                                (Ok(_), false) => codes::INVALID_REQUEST,
                                (Ok(at), true) => self.txn_coordinators[at].coordinator.verify(
                                    &t.transactional_id,
                                    t.producer_id,
                                    t.producer_epoch,
                                    &(topic.name.clone(), *p),
                                ),
                            };
                            AddPartitionsToTxnPartitionResult {
                                partition_index: *p,
                                partition_error_code: code,
                                ..Default::default()
                            }
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect();
            results.push(AddPartitionsToTxnResult {
                transactional_id: t.transactional_id.clone(),
                topic_results,
                ..Default::default()
            });
        }
        AddPartitionsToTxnResponse {
            results_by_transaction: results,
            ..Default::default()
        }
    }

    /// DescribeTransactions: each id from its coordinator here.
    pub(super) fn describe_transactions(
        &mut self,
        request: &DescribeTransactionsRequest,
    ) -> DescribeTransactionsResponse {
        use crate::protocol::messages::describe_transactions_response::*;
        let now = self.now;
        let mut states = Vec::new();
        for id in &request.transactional_ids {
            let mut state = TransactionState {
                transactional_id: id.clone(),
                producer_id: -1,
                producer_epoch: -1,
                transaction_start_time_ms: -1,
                ..Default::default()
            };
            match self.txn_route(now, id) {
                Route::Refused(code) => state.error_code = code,
                Route::Here(p) => match self.txn_coordinators[&p].coordinator.txn(id) {
                    None => state.error_code = codes::TRANSACTIONAL_ID_NOT_FOUND,
                    Some(meta) => {
                        state.transaction_state = meta.state.name().into();
                        state.transaction_timeout_ms = meta.timeout_ms;
                        state.transaction_start_time_ms = meta.start_ms;
                        state.producer_id = meta.producer_id;
                        state.producer_epoch = meta.producer_epoch;
                        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                        for (topic, partition) in &meta.partitions {
                            topics.entry(topic).or_default().push(*partition);
                        }
                        state.topics = (topics.into_iter())
                            .map(|(topic, partitions)| TopicData {
                                topic: topic.into(),
                                partitions,
                                ..Default::default()
                            })
                            .collect();
                    }
                },
            }
            states.push(state);
        }
        DescribeTransactionsResponse {
            transaction_states: states,
            ..Default::default()
        }
    }

    /// ListTransactions: the ids this node coordinates (clients ask every broker).
    pub(super) fn list_transactions(
        &self,
        request: &ListTransactionsRequest,
        now: Instant,
    ) -> ListTransactionsResponse {
        use crate::protocol::messages::list_transactions_response::*;
        const STATES: [&str; 6] = [
            "Empty",
            "Ongoing",
            "PrepareCommit",
            "PrepareAbort",
            "CompleteCommit",
            "CompleteAbort",
        ];
        let unknown: Vec<String> = (request.state_filters.iter())
            .filter(|s| !STATES.contains(&s.as_str()))
            .cloned()
            .collect();
        let now_ms = now.as_millis();
        let states = (self.txn_coordinators.values())
            .flat_map(|l| l.coordinator.txns())
            .filter(|(_, m)| {
                request.state_filters.is_empty()
                    || request.state_filters.iter().any(|s| s == m.state.name())
            })
            .filter(|(_, m)| {
                request.producer_id_filters.is_empty()
                    || request.producer_id_filters.contains(&m.producer_id)
            })
            .filter(|(_, m)| {
                request.duration_filter < 0
                    || (m.start_ms >= 0 && now_ms - m.start_ms > request.duration_filter)
            })
            .map(|(id, m)| TransactionState {
                transactional_id: id.clone(),
                producer_id: m.producer_id,
                transaction_state: m.state.name().into(),
                ..Default::default()
            })
            .collect();
        ListTransactionsResponse {
            unknown_state_filters: unknown,
            transaction_states: states,
            ..Default::default()
        }
    }

    /// Coordinators follow leadership of `__transaction_state`; their timers run, their
    /// writes are appended, their answers go, and their markers are sent.
    pub(super) fn settle_txns(&mut self, now: Instant) {
        let now_ms = now.as_millis() as u64;
        // Marker writes that committed since (a sync round completed) are answered first:
        // this node's own go straight to its coordinators.
        self.complete_marker_waiters();
        for (id, response) in std::mem::take(&mut self.calls.local_replies) {
            self.marker_replies(now_ms, id, response);
        }
        self.forget_old_calls(now_ms);
        let Some(count) = self.txn_partitions() else {
            if !self.txn_coordinators.is_empty() {
                self.drop_txn_coordinators(codes::NOT_COORDINATOR);
            }
            return;
        };
        let stale: Vec<i32> = (self.txn_coordinators.iter())
            .filter(|(partition, loaded)| {
                let current = (self.topics.get(TXN_TOPIC, **partition))
                    .filter(|p| p.log_id == loaded.log_id)
                    .and_then(|p| p.replica.as_ref())
                    .filter(|r| r.is_leader() && r.leader_epoch() == loaded.epoch);
                current.is_none() || self.shutting_down
            })
            .map(|(p, _)| *p)
            .collect();
        for partition in stale {
            self.drop_txn_coordinator(partition, codes::NOT_COORDINATOR);
        }
        if !self.shutting_down && self.serving {
            for partition in 0..count {
                if !self.txn_coordinators.contains_key(&partition) {
                    self.maybe_load_txns(now, partition);
                }
            }
        }
        let partitions: Vec<i32> = self.txn_coordinators.keys().copied().collect();
        for partition in partitions {
            let Some(loaded) = self.txn_coordinators.get_mut(&partition) else {
                continue;
            };
            loaded.coordinator.tick(now_ms);
            if !self.append_txn_writes(now, partition) {
                continue;
            }
            let high_watermark = (self.topics.get(TXN_TOPIC, partition))
                .and_then(|p| p.replica.as_ref())
                .map(|r| r.high_watermark());
            let Some(loaded) = self.txn_coordinators.get_mut(&partition) else {
                continue;
            };
            if let Some(hw) = high_watermark {
                loaded.coordinator.committed(now_ms, hw);
            }
            let answers = loaded.coordinator.take_answers();
            let sends = loaded.coordinator.take_marker_sends(now_ms);
            let epoch = loaded.coordinator.epoch();
            self.deliver_group_answers(answers);
            for send in sends {
                self.send_markers(now, partition, epoch, send);
            }
            // Completions written by marker answers that came in this step.
            self.append_txn_writes(now, partition);
        }
    }

    /// Sends a transaction's markers to the leaders of its partitions: one request per
    /// leader; a partition without a known leader is tried again shortly.
    fn send_markers(&mut self, now: Instant, partition: i32, epoch: i32, send: MarkerSend) {
        let now_ms = now.as_millis() as u64;
        tracing::debug!(id = %send.transactional_id, producer_id = send.producer_id, epoch = send.producer_epoch, commit = send.commit, partitions = ?send.partitions, "markers sent");
        let mut by_leader: BTreeMap<NodeId, Vec<(String, i32)>> = BTreeMap::new();
        let mut leaderless = Vec::new();
        for (topic, p) in send.partitions {
            match self.partition_leader(&topic, p) {
                Some(leader) => by_leader.entry(leader).or_default().push((topic, p)),
                None if self.image.topic(&topic).is_none() => {
                    // The topic is gone, and its transaction's records with it.
                    leaderless.push(((topic, p), codes::UNKNOWN_TOPIC_OR_PARTITION))
                }
                None => leaderless.push(((topic, p), codes::LEADER_NOT_AVAILABLE)),
            }
        }
        if let Some(loaded) = self.txn_coordinators.get_mut(&partition) {
            for (p, code) in leaderless {
                loaded.coordinator.marker_written(
                    now_ms,
                    &send.transactional_id,
                    send.producer_id,
                    send.producer_epoch,
                    p,
                    code,
                );
            }
        }
        for (leader, partitions) in by_leader {
            use crate::protocol::messages::write_txn_markers_request::*;
            let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (topic, p) in partitions {
                topics.entry(topic).or_default().push(p);
            }
            let request = WriteTxnMarkersRequest {
                markers: vec![WritableTxnMarker {
                    producer_id: send.producer_id,
                    producer_epoch: send.producer_epoch,
                    transaction_result: send.commit,
                    topics: (topics.into_iter())
                        .map(|(name, partition_indexes)| WritableTxnMarkerTopic {
                            name,
                            partition_indexes,
                            ..Default::default()
                        })
                        .collect(),
                    coordinator_epoch: epoch,
                    ..Default::default()
                }],
                ..Default::default()
            };
            let id = self.next_call_id();
            self.calls.sent.insert(
                id,
                SentMarkers {
                    to: leader,
                    partition,
                    epoch,
                    sent_ms: now_ms,
                    transactional_id: send.transactional_id.clone(),
                    producer_id: send.producer_id,
                    producer_epoch: send.producer_epoch,
                },
            );
            if leader == self.config.node_id {
                self.write_markers(now, CallFrom::Local, id, &request);
                continue;
            }
            let mut body = BytesMut::new();
            let version = 1;
            if Request::WriteTxnMarkers(request)
                .encode(&mut body, version)
                .is_err()
            {
                tracing::error!("a marker request that does not encode");
                continue;
            }
            (self.calls.outbox.entry(leader).or_default()).push(PeerCall {
                id,
                reply: false,
                api_key: ApiKey::WriteTxnMarkers as i16,
                version,
                body: body.freeze(),
            });
        }
    }

    /// A call id no other call of this process or an earlier one has: ids start from this
    /// start's link session, so a late answer to a call of an earlier process matches none.
    fn next_call_id(&mut self) -> u64 {
        if self.calls.next_id == 0 {
            self.calls.next_id = self.links_session() | 1;
        }
        self.calls.next_id = self.calls.next_id.wrapping_add(1);
        self.calls.next_id
    }

    /// The partitions of a Produce whose transactions open there (a transactional batch from
    /// a producer with no transaction open in the partition): they wait for the coordinator.
    pub(super) fn verification_needed(&mut self, request: &ProduceRequest) -> Vec<ToVerify> {
        if request.transactional_id.is_none() {
            return Vec::new();
        }
        let mut needed = Vec::new();
        for topic in &request.topic_data {
            for data in &topic.partition_data {
                let Some(records) = data.records.as_ref() else {
                    continue;
                };
                let Some(Ok(batch)) = record::split_batches(records.clone())
                    .next()
                    .map(|b| b.and_then(RecordBatch::parse))
                else {
                    continue;
                };
                let header = *batch.header();
                if !header.is_transactional() || !header.has_producer_id() {
                    continue;
                }
                let Ok(p) = super::handlers::held_partition(
                    &mut self.topics,
                    &self.image,
                    &topic.name,
                    data.index,
                ) else {
                    continue;
                };
                let leads = p.replica.as_ref().is_some_and(|r| r.is_leader());
                let open =
                    (p.log.as_ref()).is_ok_and(|log| log.producers().txn_open(header.producer_id));
                if leads && !open {
                    needed.push(ToVerify {
                        topic: topic.name.clone(),
                        partition: data.index,
                        log_id: p.log_id,
                        producer_id: header.producer_id,
                        producer_epoch: header.producer_epoch,
                    });
                }
            }
        }
        needed
    }

    /// Asks the coordinator of the Produce's transactional id whether `partitions` are in the
    /// producer's open transaction (AddPartitionsToTxn v4, verify_only), and serves the
    /// request once it answers.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn verify_produce(
        &mut self,
        now: Instant,
        conn: u64,
        slot: u64,
        correlation_id: i32,
        request: ProduceRequest,
        version: i16,
        partitions: Vec<ToVerify>,
    ) {
        let id = request.transactional_id.clone().unwrap_or_default();
        let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for p in &partitions {
            topics.entry(p.topic.clone()).or_default().push(p.partition);
        }
        let (producer_id, producer_epoch) =
            (partitions[0].producer_id, partitions[0].producer_epoch);
        let what = Verified::Produce {
            request,
            partitions,
        };
        let place = (conn, slot, correlation_id, version);
        self.verify(now, id, (producer_id, producer_epoch), topics, place, what);
    }

    /// Asks the coordinator of a TxnOffsetCommit's transaction whether the group's offsets
    /// partition is in the producer's open transaction; the request is served once it
    /// answers.
    pub(super) fn verify_offsets(
        &mut self,
        now: Instant,
        (conn, slot, correlation_id, version): (u64, u64, i32, i16),
        request: TxnOffsetCommitRequest,
        partition: i32,
        client_id: Option<String>,
    ) {
        let id = request.transactional_id.clone();
        let producer = (request.producer_id, request.producer_epoch);
        let topics = BTreeMap::from([(super::groups::OFFSETS_TOPIC.to_string(), vec![partition])]);
        let what = Verified::Offsets {
            request,
            partition,
            client_id,
        };
        let place = (conn, slot, correlation_id, version);
        self.verify(now, id, producer, topics, place, what);
    }

    /// Sends AddPartitionsToTxn v4 (verify_only) for `topics` to `id`'s coordinator (or asks
    /// this node's own), `what` served with its answer in its place on its connection.
    fn verify(
        &mut self,
        now: Instant,
        id: String,
        (producer_id, producer_epoch): (i64, i16),
        topics: BTreeMap<String, Vec<i32>>,
        (conn, slot, correlation_id, version): (u64, u64, i32, i16),
        what: Verified,
    ) {
        use crate::protocol::messages::add_partitions_to_txn_request::*;
        let coordinator = (self.txn_partitions())
            .and_then(|count| self.partition_leader(TXN_TOPIC, partition_for(&id, count)));
        let verify = AddPartitionsToTxnRequest {
            transactions: vec![AddPartitionsToTxnTransaction {
                transactional_id: id,
                producer_id,
                producer_epoch,
                verify_only: true,
                topics: (topics.into_iter())
                    .map(|(name, partitions)| AddPartitionsToTxnTopic {
                        name,
                        partitions,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let call_id = self.next_call_id();
        let waiting = Verifying {
            to: coordinator.unwrap_or(self.config.node_id),
            conn,
            slot,
            correlation_id,
            version,
            what,
            sent_ms: now.as_millis() as u64,
        };
        self.calls.verifying.insert(call_id, waiting);
        match coordinator {
            Some(node) if node == self.config.node_id => {
                let response = self.verify_txns(&verify);
                self.verified(now, call_id, Some(response));
            }
            Some(node) => {
                let mut body = BytesMut::new();
                if Request::AddPartitionsToTxn(verify)
                    .encode(&mut body, 4)
                    .is_err()
                {
                    self.verified(now, call_id, None);
                    return;
                }
                (self.calls.outbox.entry(node).or_default()).push(PeerCall {
                    id: call_id,
                    reply: false,
                    api_key: ApiKey::AddPartitionsToTxn as i16,
                    version: 4,
                    body: body.freeze(),
                });
            }
            None => self.verified(now, call_id, None),
        }
    }

    /// The coordinator answered a verification (`None`: it could not be asked, or did not
    /// answer in time): the Produce is served with its verdicts.
    fn verified(
        &mut self,
        now: Instant,
        call_id: u64,
        response: Option<AddPartitionsToTxnResponse>,
    ) {
        let Some(v) = self.calls.verifying.remove(&call_id) else {
            return;
        };
        let verdict = |topic: &str, partition: i32| {
            let found = (response.as_ref())
                .and_then(|r| r.results_by_transaction.first())
                .and_then(|t| t.topic_results.iter().find(|t| t.name == topic))
                .and_then(|t| {
                    (t.results_by_partition.iter()).find(|r| r.partition_index == partition)
                })
                .map(|r| r.partition_error_code);
            match found {
                Some(codes::NONE) => codes::NONE,
                Some(codes::PRODUCER_FENCED) | Some(codes::INVALID_PRODUCER_EPOCH) => {
                    codes::INVALID_PRODUCER_EPOCH
                }
                Some(codes::INVALID_PRODUCER_ID_MAPPING) | Some(codes::INVALID_TXN_STATE) => {
                    codes::INVALID_TXN_STATE
                }
                // The coordinator moved, loads, or was not reached: the client asks again.
                _ => codes::NOT_ENOUGH_REPLICAS,
            }
        };
        let (request, partitions) = match v.what {
            Verified::Produce {
                request,
                partitions,
            } => (request, partitions),
            Verified::Offsets {
                request,
                partition,
                client_id,
            } => {
                let code = match verdict(super::groups::OFFSETS_TOPIC, partition) {
                    // Retriable for TxnOffsetCommit clients (NOT_ENOUGH_REPLICAS is not).
                    codes::NOT_ENOUGH_REPLICAS => codes::COORDINATOR_LOAD_IN_PROGRESS,
                    code => code,
                };
                let place = (v.conn, v.slot, v.correlation_id, v.version);
                let state = self.offsets_verified(now, place, request, code, client_id);
                self.fill(v.conn, v.slot, state);
                return;
            }
        };
        let first = (partitions.first()).map(|p| (p.producer_id, p.producer_epoch));
        for p in &partitions {
            if Some((p.producer_id, p.producer_epoch)) != first {
                // One transactional request speaks for one producer (as Kafka requires): a
                // batch of another is not what the coordinator was asked about.
                self.txn_verdicts.insert(
                    (p.log_id, p.producer_id, p.producer_epoch),
                    codes::INVALID_TXN_STATE,
                );
                continue;
            }
            let code = verdict(&p.topic, p.partition);
            self.txn_verdicts
                .insert((p.log_id, p.producer_id, p.producer_epoch), code);
        }
        let state = match self.produce_slot(now, v.correlation_id, request, v.version) {
            Ok(state) => state,
            Err(reason) => super::Slot::Close(reason),
        };
        self.txn_verdicts.clear();
        self.fill(v.conn, v.slot, state);
    }

    /// Calls that came in a peer's frame: marker requests are served, answers to this node's
    /// own requests go to its coordinators.
    pub(super) fn handle_calls(&mut self, now: Instant, from: NodeId, calls: Vec<PeerCall>) {
        let now_ms = now.as_millis() as u64;
        for call in calls {
            if call.api_key == ApiKey::AddPartitionsToTxn as i16 && call.version == 4 {
                let mut body = call.body;
                if call.reply {
                    if (self.calls.verifying.get(&call.id)).is_some_and(|v| v.to != from) {
                        tracing::warn!(
                            from,
                            id = call.id,
                            "a verification answer from a node not asked"
                        );
                        continue;
                    }
                    match Response::decode(ApiKey::AddPartitionsToTxn, 4, &mut body) {
                        Ok(Response::AddPartitionsToTxn(r)) => self.verified(now, call.id, Some(r)),
                        _ => tracing::warn!(from, "an undecodable verification answer"),
                    }
                    continue;
                }
                let Ok(Request::AddPartitionsToTxn(request)) =
                    Request::decode(ApiKey::AddPartitionsToTxn, 4, &mut body)
                else {
                    tracing::warn!(from, "an undecodable verification request");
                    continue;
                };
                let response = self.verify_txns(&request);
                let mut body = BytesMut::new();
                if Response::AddPartitionsToTxn(response)
                    .encode(&mut body, 4)
                    .is_ok()
                {
                    (self.calls.outbox.entry(from).or_default()).push(PeerCall {
                        id: call.id,
                        reply: true,
                        api_key: ApiKey::AddPartitionsToTxn as i16,
                        version: 4,
                        body: body.freeze(),
                    });
                }
                continue;
            }
            if call.api_key != ApiKey::WriteTxnMarkers as i16 || call.version != 1 {
                tracing::warn!(
                    from,
                    api_key = call.api_key,
                    version = call.version,
                    "a peer call this node does not serve"
                );
                continue;
            }
            let mut body = call.body;
            if call.reply {
                if (self.calls.sent.get(&call.id)).is_some_and(|s| s.to != from) {
                    tracing::warn!(from, id = call.id, "a marker answer from a node not asked");
                    continue;
                }
                match Response::decode(ApiKey::WriteTxnMarkers, call.version, &mut body) {
                    Ok(Response::WriteTxnMarkers(response)) => {
                        self.marker_replies(now_ms, call.id, response)
                    }
                    _ => tracing::warn!(from, "an undecodable marker answer"),
                }
            } else {
                match Request::decode(ApiKey::WriteTxnMarkers, call.version, &mut body) {
                    Ok(Request::WriteTxnMarkers(request)) => {
                        self.write_markers(now, CallFrom::Peer(from), call.id, &request)
                    }
                    _ => tracing::warn!(from, "an undecodable marker request"),
                }
            }
        }
    }

    /// Answers to a marker request of this node's coordinators.
    fn marker_replies(&mut self, now_ms: u64, id: u64, response: WriteTxnMarkersResponse) {
        let Some(sent) = self.calls.sent.remove(&id) else {
            return;
        };
        tracing::debug!(id = %sent.transactional_id, ?response, "markers answered");
        let Some(loaded) = self
            .txn_coordinators
            .get_mut(&sent.partition)
            .filter(|l| l.coordinator.epoch() == sent.epoch)
        else {
            return;
        };
        let image = &self.image;
        for marker in response.markers {
            for topic in marker.topics {
                for p in topic.partitions {
                    let mut code = p.error_code;
                    if code == codes::UNKNOWN_TOPIC_OR_PARTITION
                        && image.topic(&topic.name).is_some()
                    {
                        // A leader whose image lags (a restart) does not know the topic yet:
                        // only this node's own image, where the topic is gone, says the
                        // marker has nowhere to go (seed 7045 of three nodes lost a commit).
                        code = codes::NOT_LEADER_OR_FOLLOWER;
                    }
                    loaded.coordinator.marker_written(
                        now_ms,
                        &sent.transactional_id,
                        sent.producer_id,
                        sent.producer_epoch,
                        (topic.name.clone(), p.partition_index),
                        code,
                    );
                }
            }
        }
    }

    fn forget_old_calls(&mut self, now_ms: u64) {
        self.calls
            .sent
            .retain(|_, s| now_ms < s.sent_ms + CALL_MEMORY_MS);
        let late: Vec<u64> = (self.calls.verifying.iter())
            .filter(|(_, v)| now_ms >= v.sent_ms + VERIFY_TIMEOUT_MS)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.verified(Instant::from_millis(now_ms), id, None);
        }
    }

    /// WriteTxnMarkers, as a partition's leader: each marker appended as a control batch,
    /// answered once all have committed (or failed).
    fn write_markers(
        &mut self,
        now: Instant,
        from: CallFrom,
        id: u64,
        request: &WriteTxnMarkersRequest,
    ) {
        use crate::protocol::messages::write_txn_markers_response::*;
        let mut response = WriteTxnMarkersResponse::default();
        let mut waits = Vec::new();
        for (m, marker) in request.markers.iter().enumerate() {
            let mut topics = Vec::new();
            for (t, topic) in marker.topics.iter().enumerate() {
                let mut partitions = Vec::new();
                for (p, index) in topic.partition_indexes.iter().enumerate() {
                    let code = match self.write_marker(now, marker, &topic.name, *index) {
                        Ok(wait) => {
                            waits.push((wait.0, wait.1, wait.2, (m, t, p)));
                            codes::NONE
                        }
                        Err(code) => code,
                    };
                    partitions.push(WritableTxnMarkerPartitionResult {
                        partition_index: *index,
                        error_code: code,
                        ..Default::default()
                    });
                }
                topics.push(WritableTxnMarkerTopicResult {
                    name: topic.name.clone(),
                    partitions,
                    ..Default::default()
                });
            }
            response.markers.push(WritableTxnMarkerResult {
                producer_id: marker.producer_id,
                topics,
                ..Default::default()
            });
        }
        self.calls.held.push(HeldMarkers {
            from,
            id,
            response,
            waits,
        });
        self.complete_marker_waiters();
    }

    /// Appends one marker as the partition's leader: what its commit waits for (log id,
    /// offset, epoch), or the error code.
    fn write_marker(
        &mut self,
        now: Instant,
        marker: &crate::protocol::messages::write_txn_markers_request::WritableTxnMarker,
        topic: &str,
        partition: i32,
    ) -> Result<(u64, i64, i32), i16> {
        let p = super::handlers::held_partition(&mut self.topics, &self.image, topic, partition)?;
        let log_id = p.log_id;
        let log = p.log.as_mut().map_err(|_| codes::KAFKA_STORAGE_ERROR)?;
        let replica = (p.replica.as_ref())
            .filter(|r| r.is_leader())
            .ok_or(codes::NOT_LEADER_OR_FOLLOWER)?;
        let epoch = replica.leader_epoch();
        if let Err((code, message)) = log.producers().check_marker(
            marker.producer_id,
            marker.producer_epoch,
            marker.coordinator_epoch,
        ) {
            tracing::info!(topic, partition, code, %message, "a marker refused");
            return Err(code);
        }
        let bytes = crate::producers::txn_marker_batch(
            marker.producer_id,
            marker.producer_epoch,
            crate::producers::TxnMarker {
                commit: marker.transaction_result,
                coordinator_epoch: marker.coordinator_epoch,
            },
            now.as_millis(),
        );
        let batch = RecordBatch::parse(bytes).map_err(|_| codes::UNKNOWN_SERVER_ERROR)?;
        let (base, last) = log.append(&mut self.disk, &batch, epoch).map_err(|e| {
            tracing::warn!(topic, partition, error = %e, "a marker could not be appended");
            codes::KAFKA_STORAGE_ERROR
        })?;
        self.replica_appended(now, log_id, &[(base, last)]);
        if topic == super::groups::OFFSETS_TOPIC {
            self.group_marker_appended(
                partition,
                marker.producer_id,
                marker.transaction_result,
                last + 1,
            );
        }
        Ok((log_id, last + 1, epoch))
    }

    /// Marker writes whose markers all committed (or failed) are answered.
    pub(super) fn complete_marker_waiters(&mut self) {
        if self.calls.held.is_empty() {
            return;
        }
        let mut held = std::mem::take(&mut self.calls.held);
        for h in &mut held {
            let response = &mut h.response;
            h.waits.retain(|(log_id, offset, epoch, (m, t, p))| {
                let result = &mut response.markers[*m].topics[*t].partitions[*p];
                let Some(partition) = self.topics.by_log_id(*log_id) else {
                    result.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION;
                    return false;
                };
                let Some(replica) = partition.replica.as_ref() else {
                    result.error_code = codes::KAFKA_STORAGE_ERROR;
                    return false;
                };
                if replica.high_watermark() >= *offset {
                    return false;
                }
                if replica.leader_epoch() != *epoch || !replica.is_leader() {
                    result.error_code = codes::NOT_LEADER_OR_FOLLOWER;
                    return false;
                }
                true
            });
        }
        for h in held {
            if !h.waits.is_empty() {
                self.calls.held.push(h);
                continue;
            }
            match h.from {
                CallFrom::Local => self.calls.local_replies.push((h.id, h.response)),
                CallFrom::Peer(to) => {
                    let mut body = BytesMut::new();
                    if Response::WriteTxnMarkers(h.response)
                        .encode(&mut body, 1)
                        .is_err()
                    {
                        continue;
                    }
                    (self.calls.outbox.entry(to).or_default()).push(PeerCall {
                        id: h.id,
                        reply: true,
                        api_key: ApiKey::WriteTxnMarkers as i16,
                        version: 1,
                        body: body.freeze(),
                    });
                }
            }
        }
    }

    /// Makes the coordinator of `partition` if this node leads it and its log is all
    /// committed: the log is replayed up to the high watermark.
    fn maybe_load_txns(&mut self, now: Instant, partition: i32) {
        let Some(p) = self.topics.get(TXN_TOPIC, partition) else {
            return;
        };
        let log_id = p.log_id;
        let (Some(replica), Ok(log)) = (p.replica.as_ref(), p.log.as_ref()) else {
            return;
        };
        if !replica.is_leader() || !replica.serving() {
            return;
        }
        let high_watermark = replica.high_watermark();
        if log.log_end_offset() != high_watermark {
            return;
        }
        let epoch = replica.leader_epoch();
        let mut coordinator = TxnCoordinator::new(partition, epoch, txn_config(&self.config));
        let mut offset = log.log_start_offset();
        let p = self.topics.get(TXN_TOPIC, partition).expect("found");
        let Ok(log) = p.log.as_mut() else { return };
        while offset < high_watermark {
            let bytes = match log.read(
                &mut self.disk,
                offset,
                high_watermark,
                LOAD_READ_BYTES,
                true,
            ) {
                Ok(bytes) if !bytes.is_empty() => bytes,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(partition, %e, "cannot load the transaction coordinator");
                    return;
                }
            };
            for batch in record::split_batches(bytes) {
                let Ok(batch) = batch.and_then(RecordBatch::parse) else {
                    tracing::warn!(
                        partition,
                        offset,
                        "unreadable batch while loading transactions"
                    );
                    return;
                };
                offset = batch.header().last_offset() + 1;
                if batch.header().is_control() {
                    continue;
                }
                let Ok(records) = batch.records(DECOMPRESSED_BATCH_SIZE_MAX_BYTES) else {
                    continue;
                };
                for r in records {
                    coordinator.replay(r.key.clone(), r.value.clone());
                }
            }
        }
        coordinator.loaded(now.as_millis() as u64);
        tracing::info!(
            partition,
            epoch,
            ids = coordinator.txns().count(),
            "transaction coordinator loaded"
        );
        self.txn_coordinators.insert(
            partition,
            LoadedTxn {
                log_id,
                epoch,
                coordinator,
            },
        );
    }

    /// Appends what the coordinator of `partition` wrote. False if it was dropped.
    fn append_txn_writes(&mut self, now: Instant, partition: i32) -> bool {
        let Some(loaded) = self.txn_coordinators.get_mut(&partition) else {
            return false;
        };
        let writes = loaded.coordinator.take_writes();
        if writes.is_empty() {
            return true;
        }
        let (log_id, epoch) = (loaded.log_id, loaded.epoch);
        for (id, key, value) in writes {
            let record = NewRecord {
                key: Some(key),
                value: Some(value),
                ..Default::default()
            };
            let options = BatchOptions {
                base_timestamp: now.as_millis(),
                ..Default::default()
            };
            let appended = record::build(&[record], &options)
                .map_err(|e| e.to_string())
                .and_then(|bytes| RecordBatch::parse(bytes).map_err(|e| e.to_string()))
                .and_then(|batch| {
                    let p = (self.topics.get(TXN_TOPIC, partition))
                        .filter(|p| p.log_id == log_id)
                        .ok_or_else(|| "partition gone".to_string())?;
                    let log = p.log.as_mut().map_err(|e| e.to_string())?;
                    log.append(&mut self.disk, &batch, epoch)
                        .map_err(|e| e.to_string())
                });
            match appended {
                Ok((base, last)) => {
                    self.replica_appended(now, log_id, &[(base, last)]);
                    if let Some(loaded) = self.txn_coordinators.get_mut(&partition) {
                        loaded.coordinator.appended(id, last + 1);
                    }
                }
                Err(reason) => {
                    tracing::warn!(partition, %reason, "transaction write failed; the coordinator reloads");
                    self.drop_txn_coordinator(partition, codes::COORDINATOR_NOT_AVAILABLE);
                    return false;
                }
            }
        }
        true
    }

    fn drop_txn_coordinator(&mut self, partition: i32, code: i16) {
        if let Some(loaded) = self.txn_coordinators.remove(&partition) {
            tracing::info!(partition, "transaction coordinator dropped");
            let answers = loaded.coordinator.abandon(code);
            self.deliver_group_answers(answers);
        }
    }

    pub(super) fn drop_txn_coordinators(&mut self, code: i16) {
        let partitions: Vec<i32> = self.txn_coordinators.keys().copied().collect();
        for partition in partitions {
            self.drop_txn_coordinator(partition, code);
        }
    }

    /// The next coordinator deadline (timeouts, marker sends).
    pub(super) fn next_txn_deadline(&self) -> Option<Instant> {
        if !self.calls.local_replies.is_empty() {
            return Some(self.now);
        }
        let verifying = (self.calls.verifying.values())
            .map(|v| Instant::from_millis(v.sent_ms + VERIFY_TIMEOUT_MS))
            .min();
        (self.txn_coordinators.values())
            .filter_map(|l| l.coordinator.next_deadline_ms())
            .min()
            .map(Instant::from_millis)
            .into_iter()
            .chain(verifying)
            .min()
    }

    /// Checks that every coordinator sits on a partition this node leads in its epoch.
    pub(super) fn check_txn_coordinators(&self) {
        for (partition, loaded) in &self.txn_coordinators {
            let replica = (self.topics.peek(TXN_TOPIC, *partition))
                .filter(|p| p.log_id == loaded.log_id)
                .and_then(|p| p.replica.as_ref());
            assert!(
                replica.is_some_and(|r| r.is_leader() && r.leader_epoch() == loaded.epoch),
                "a transaction coordinator serves only while its node leads its partition in its epoch"
            );
            loaded.coordinator.check_invariants();
        }
    }
}

/// An empty answer of the kind a transaction request gets (errors are set on it).
fn blank_answer(request: &Request) -> Response {
    match request {
        Request::InitProducerId(_) => Response::InitProducerId(Default::default()),
        Request::AddPartitionsToTxn(r) => {
            use crate::protocol::messages::add_partitions_to_txn_response::*;
            Response::AddPartitionsToTxn(AddPartitionsToTxnResponse {
                results_by_topic_v3_and_below: (r.v3_and_below_topics.iter())
                    .map(|t| AddPartitionsToTxnTopicResult {
                        name: t.name.clone(),
                        results_by_partition: (t.partitions.iter())
                            .map(|p| AddPartitionsToTxnPartitionResult {
                                partition_index: *p,
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        }
        Request::AddOffsetsToTxn(_) => Response::AddOffsetsToTxn(Default::default()),
        Request::EndTxn(_) => Response::EndTxn(Default::default()),
        _ => Response::EndTxn(Default::default()),
    }
}
