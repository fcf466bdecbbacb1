//! The transaction coordinator: Kafka's transactional producers, as a state machine over one
//! partition of `__transaction_state`.
//!
//! A transactional id lives on partition `hash(id) % partitions` of the internal topic (the
//! group coordinator's hash), and its coordinator is that partition's leader. One
//! [`TxnCoordinator`] holds the transactions of one partition; the node makes one when it
//! leads the partition and its log is all committed, by replaying the log, and drops it when
//! the leadership goes (the next leader replays the same log).
//!
//! A transaction goes Empty → Ongoing (partitions added) → PrepareCommit or PrepareAbort
//! (EndTxn, a timeout, or a new incarnation of the producer) → CompleteCommit or CompleteAbort
//! (every partition in it has its marker) → Ongoing again with the next partitions added.
//! Every step is a record of the log, and nothing is answered before its record commits:
//! - InitProducerId hands out an id and epoch once the record naming them commits; a second
//!   incarnation bumps the epoch (fencing the first) and, if the first left a transaction
//!   open, aborts it first (its markers carry the new epoch, so the first incarnation's late
//!   writes are refused by every partition);
//! - a prepared outcome, once committed, is final: the coordinator writes its markers
//!   through the partitions' leaders ([`TxnCoordinator::take_marker_sends`]) until every one
//!   is written, and a coordinator that fails over finds the prepared state in the log and
//!   writes them again (a marker written twice changes nothing: the second finds no open
//!   transaction);
//! - EndTxn is answered once the transaction is complete (its Complete record committed):
//!   a client that committed reads its own transaction at once;
//! - with EndTxn v5 (KIP-890 part 2) every transaction ends with the epoch bumped: its
//!   markers carry the new epoch, which the client gets in the answer, so a late or
//!   duplicated write, marker or EndTxn of one transaction can never land in the next.
//!
//! The coordinator never reads a clock: `now_ms` arrives with every call. Producer ids come
//! from the node (`alloc`), which hands out only ids whose block is durable.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ReplyTo;
use crate::limits;
use crate::protocol::codes;
use crate::protocol::messages::*;

/// The internal topic holding transactions (Kafka's name).
pub const TXN_TOPIC: &str = "__transaction_state";

/// Key version of a transaction record (Kafka's `TransactionLogKey` v0: the id).
const KEY_VERSION: i16 = 0;
/// Keel's value format: Kafka's fields, the epoch before the last bump and whether the
/// transaction ends with a bump (KIP-890 part 2).
const VALUE_VERSION: i16 = 0x4b30;

/// How long after a failed marker write the coordinator tries again.
const MARKER_RETRY_MS: u64 = 100;
/// How long a marker write may go unanswered before it is sent again (a lost message).
const MARKER_ANSWER_TIMEOUT_MS: u64 = 2_000;
/// How often open transactions are checked for their timeout (Kafka's
/// `transaction.abort.timed.out.transaction.cleanup.interval.ms` is 10 s).
const TIMEOUT_CHECK_INTERVAL_MS: u64 = 1_000;

/// The transaction settings a broker is configured with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`: the longest timeout a producer may ask for.
    pub max_timeout_ms: i32,
    /// The planted bug `no-epoch-bump`: EndTxn v5 answers the epoch it was given, and markers
    /// carry it, so nothing fences the transaction's late writes.
    pub planted_no_epoch_bump: bool,
    /// The planted bug `marker-before-append`: EndTxn's markers go out before its prepared
    /// state is written (it is, once they all are).
    pub planted_marker_before_append: bool,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            max_timeout_ms: 900_000,
            planted_no_epoch_bump: false,
            planted_marker_before_append: false,
        }
    }
}

/// Where a transaction is (Kafka's states and their numbers in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    fn code(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
        }
    }

    fn from_code(code: i8) -> Option<TxnState> {
        Some(match code {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }

    /// Kafka's names, as DescribeTransactions and ListTransactions give them.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    fn preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// One transactional id, as its last committed record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump (-1: none): a producer that did not hear of the bump
    /// (a lost answer, a timeout's abort) may still present it.
    pub last_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// The partitions in the transaction (for a prepared one: those its markers go to).
    pub partitions: BTreeSet<(String, i32)>,
    pub last_update_ms: i64,
    pub start_ms: i64,
    /// The transaction ends with the epoch bumped (its EndTxn was v5 or later).
    pub bump_at_end: bool,
}

/// A marker to write: the transaction's producer and epoch (the prepared record's), its
/// outcome, and the partitions still without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerSend {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub partitions: Vec<(String, i32)>,
}

/// Markers of one prepared transaction on their way.
#[derive(Debug)]
struct Markers {
    /// Partitions without their marker yet, with when each may be sent (again).
    due: BTreeMap<(String, i32), u64>,
}

/// A record to append and what waits for it.
#[derive(Debug)]
struct Write {
    id: u64,
    transactional_id: String,
    meta: TxnMeta,
    record: Option<(Bytes, Bytes)>,
    end_offset: Option<i64>,
    answers: Vec<(ReplyTo, Response)>,
}

/// One partition's transactional ids.
#[derive(Debug)]
pub struct TxnCoordinator {
    partition: i32,
    /// The partition's leader epoch: markers carry it (a deposed coordinator's are refused).
    epoch: i32,
    config: TxnConfig,
    txns: BTreeMap<String, TxnMeta>,
    /// Ids with a write not yet committed: other requests for them wait (CONCURRENT).
    pending: BTreeMap<String, u64>,
    writes: VecDeque<Write>,
    next_write_id: u64,
    markers: BTreeMap<String, Markers>,
    /// EndTxn answers waiting for their transaction to complete.
    ending: BTreeMap<String, Vec<(ReplyTo, Response)>>,
    answers: Vec<(ReplyTo, Response)>,
    next_timeout_check_ms: u64,
    /// Prepared transactions whose markers went out before their record committed (the
    /// planted bug `marker-before-append`): its commit changes nothing more.
    early: BTreeSet<String>,
}

/// What an InitProducerId needs of the node: a fresh producer id, or `None` if none can be
/// handed out now (its block is not durable yet: the client asks again).
pub type AllocProducerId<'a> = &'a mut dyn FnMut() -> Option<i64>;

impl TxnCoordinator {
    pub fn new(partition: i32, epoch: i32, config: TxnConfig) -> TxnCoordinator {
        TxnCoordinator {
            partition,
            epoch,
            config,
            txns: BTreeMap::new(),
            pending: BTreeMap::new(),
            writes: VecDeque::new(),
            next_write_id: 1,
            markers: BTreeMap::new(),
            ending: BTreeMap::new(),
            answers: Vec::new(),
            next_timeout_check_ms: 0,
            early: BTreeSet::new(),
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn txns(&self) -> impl Iterator<Item = (&String, &TxnMeta)> {
        self.txns.iter()
    }

    pub fn txn(&self, id: &str) -> Option<&TxnMeta> {
        self.txns.get(id)
    }

    /// Applies one committed record of the log (the load).
    pub fn replay(&mut self, key: Option<Bytes>, value: Option<Bytes>) {
        let Some(id) = key.and_then(decode_key) else {
            tracing::warn!(
                partition = self.partition,
                "unreadable transaction key skipped"
            );
            return;
        };
        match value.map(decode_value) {
            None => {
                self.txns.remove(&id);
            }
            Some(Some(meta)) => {
                self.txns.insert(id, meta);
            }
            Some(None) => {
                tracing::warn!(
                    partition = self.partition,
                    id,
                    "unreadable transaction skipped"
                )
            }
        }
    }

    /// The load is over: prepared transactions have their markers written again.
    pub fn loaded(&mut self, now_ms: u64) {
        let prepared: Vec<String> = (self.txns.iter())
            .filter(|(_, m)| m.state.preparing())
            .map(|(id, _)| id.clone())
            .collect();
        for id in prepared {
            self.begin_markers(&id, now_ms);
        }
        self.next_timeout_check_ms = now_ms + TIMEOUT_CHECK_INTERVAL_MS;
    }

    fn write(&mut self, id: &str, meta: TxnMeta, answers: Vec<(ReplyTo, Response)>) {
        tracing::debug!(partition = self.partition, id, producer_id = meta.producer_id, epoch = meta.producer_epoch, state = meta.state.name(), partitions = ?meta.partitions, "transaction state written");
        let write_id = self.next_write_id;
        self.next_write_id += 1;
        let record = (encode_key(id), encode_value(&meta));
        self.pending.insert(id.to_string(), write_id);
        self.writes.push_back(Write {
            id: write_id,
            transactional_id: id.to_string(),
            meta,
            record: Some(record),
            end_offset: None,
            answers,
        });
    }

    /// Records waiting to be appended, each with its write id, in the order they must go.
    pub fn take_writes(&mut self) -> Vec<(u64, Bytes, Bytes)> {
        (self.writes.iter_mut())
            .filter(|w| w.end_offset.is_none())
            .filter_map(|w| w.record.take().map(|(k, v)| (w.id, k, v)))
            .collect()
    }

    /// A write was appended: it commits once the high watermark reaches `end_offset`.
    pub fn appended(&mut self, id: u64, end_offset: i64) {
        if let Some(write) = self.writes.iter_mut().find(|w| w.id == id) {
            write.end_offset = Some(end_offset);
        }
    }

    /// Writes the high watermark passed have committed: their state holds and their answers
    /// go; a prepared transaction has its markers sent, a completed one its EndTxn answered.
    pub fn committed(&mut self, now_ms: u64, high_watermark: i64) {
        while let Some(write) = self.writes.front() {
            match write.end_offset {
                Some(end) if end <= high_watermark => {}
                _ => break,
            }
            let write = self.writes.pop_front().expect("looked at");
            if self.pending.get(&write.transactional_id) == Some(&write.id) {
                self.pending.remove(&write.transactional_id);
            }
            let state = write.meta.state;
            if state.preparing() && self.early.remove(&write.transactional_id) {
                // The planted bug acted on it already (its markers, perhaps its completion).
                self.answers.extend(write.answers);
                continue;
            }
            self.txns.insert(write.transactional_id.clone(), write.meta);
            self.answers.extend(write.answers);
            if state.preparing() {
                self.begin_markers(&write.transactional_id, now_ms);
            }
            if matches!(state, TxnState::CompleteCommit | TxnState::CompleteAbort) {
                if let Some(waiting) = self.ending.remove(&write.transactional_id) {
                    self.answers.extend(waiting);
                }
            }
        }
    }

    pub fn take_answers(&mut self) -> Vec<(ReplyTo, Response)> {
        std::mem::take(&mut self.answers)
    }

    /// The coordinator is dropped: every request it holds is answered with `code`.
    pub fn abandon(mut self, code: i16) -> Vec<(ReplyTo, Response)> {
        let mut answers = std::mem::take(&mut self.answers);
        let held = (self.writes.drain(..).flat_map(|w| w.answers))
            .chain(std::mem::take(&mut self.ending).into_values().flatten());
        for (to, mut response) in held {
            refuse(&mut response, code);
            answers.push((to, response));
        }
        answers
    }

    fn begin_markers(&mut self, id: &str, now_ms: u64) {
        let Some(meta) = self.txns.get(id) else {
            return;
        };
        let due = (meta.partitions.iter())
            .map(|p| (p.clone(), now_ms))
            .collect();
        self.markers.insert(id.to_string(), Markers { due });
        self.complete_if_marked(id, now_ms);
    }

    /// Markers due now, one send per transaction; each partition is sent again if no answer
    /// comes within [`MARKER_ANSWER_TIMEOUT_MS`].
    pub fn take_marker_sends(&mut self, now_ms: u64) -> Vec<MarkerSend> {
        let mut sends = Vec::new();
        for (id, markers) in &mut self.markers {
            let Some(meta) = self.txns.get(id) else {
                continue;
            };
            let partitions: Vec<(String, i32)> = (markers.due.iter_mut())
                .filter(|(_, due)| **due <= now_ms)
                .map(|(p, due)| {
                    *due = now_ms + MARKER_ANSWER_TIMEOUT_MS;
                    p.clone()
                })
                .collect();
            if !partitions.is_empty() {
                sends.push(MarkerSend {
                    transactional_id: id.clone(),
                    producer_id: meta.producer_id,
                    producer_epoch: meta.producer_epoch,
                    commit: meta.state == TxnState::PrepareCommit,
                    partitions,
                });
            }
        }
        sends
    }

    /// The coordinator epoch markers carry.
    pub fn epoch(&self) -> i32 {
        self.epoch
    }

    /// A partition's leader answered a marker write for transaction `id` (written by the
    /// producer `producer_id` at `producer_epoch`): written (or the partition is gone), it is
    /// done; otherwise it is sent again shortly.
    pub fn marker_written(
        &mut self,
        now_ms: u64,
        id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partition: (String, i32),
        code: i16,
    ) {
        let current = self.txns.get(id).is_some_and(|m| {
            m.producer_id == producer_id
                && m.producer_epoch == producer_epoch
                && m.state.preparing()
        });
        let Some(markers) = self.markers.get_mut(id).filter(|_| current) else {
            return;
        };
        match code {
            codes::NONE | codes::UNKNOWN_TOPIC_OR_PARTITION => {
                markers.due.remove(&partition);
            }
            _ => {
                if let Some(due) = markers.due.get_mut(&partition) {
                    *due = now_ms + MARKER_RETRY_MS;
                }
            }
        }
        self.complete_if_marked(id, now_ms);
    }

    /// Every marker of a prepared transaction is written: its Complete record goes.
    fn complete_if_marked(&mut self, id: &str, now_ms: u64) {
        if !self.markers.get(id).is_some_and(|m| m.due.is_empty()) {
            return;
        }
        self.markers.remove(id);
        let Some(meta) = self.txns.get(id) else {
            return;
        };
        if self.early.contains(id) {
            // The planted bug `marker-before-append`: the prepared state, only now.
            self.write(id, meta.clone(), Vec::new());
        }
        let Some(meta) = self.txns.get(id) else {
            return;
        };
        let mut next = meta.clone();
        next.state = match meta.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            _ => TxnState::CompleteAbort,
        };
        next.partitions.clear();
        next.last_update_ms = now_ms as i64;
        self.write(id, next, Vec::new());
    }

    /// When the coordinator next needs [`TxnCoordinator::tick`] or a marker send.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let markers = (self.markers.values())
            .flat_map(|m| m.due.values().copied())
            .min();
        [markers, Some(self.next_timeout_check_ms)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Open transactions past their timeout are aborted, their producer fenced (the epoch
    /// bumped, as Kafka does: a producer that went quiet mid-transaction must not go on).
    pub fn tick(&mut self, now_ms: u64) {
        if now_ms < self.next_timeout_check_ms {
            return;
        }
        self.next_timeout_check_ms = now_ms + TIMEOUT_CHECK_INTERVAL_MS;
        let expired: Vec<String> = (self.txns.iter())
            .filter(|(id, m)| {
                m.state == TxnState::Ongoing
                    && !self.pending.contains_key(*id)
                    && now_ms as i64 > m.start_ms.saturating_add(i64::from(m.timeout_ms))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let meta = self.txns[&id].clone();
            tracing::info!(
                partition = self.partition,
                id,
                producer_id = meta.producer_id,
                "transaction timed out: aborting"
            );
            let next = prepare(&meta, false, true, now_ms);
            self.write(&id, next, Vec::new());
        }
    }

    /// InitProducerId with a transactional id. `None`: answered once its record commits.
    pub fn init_producer_id(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        request: &InitProducerIdRequest,
        alloc: AllocProducerId<'_>,
    ) -> Option<InitProducerIdResponse> {
        let id = request.transactional_id.as_deref().unwrap_or_default();
        let refuse = |error_code: i16| {
            Some(InitProducerIdResponse {
                error_code,
                producer_id: -1,
                producer_epoch: -1,
                ..Default::default()
            })
        };
        if id.is_empty() {
            return refuse(codes::INVALID_REQUEST);
        }
        if request.transaction_timeout_ms <= 0
            || request.transaction_timeout_ms > self.config.max_timeout_ms
        {
            return refuse(codes::INVALID_TRANSACTION_TIMEOUT);
        }
        if self.pending.contains_key(id) {
            return refuse(codes::CONCURRENT_TRANSACTIONS);
        }
        let now = now_ms as i64;
        let Some(meta) = self.txns.get(id).cloned() else {
            if self.txns.len() >= limits::TRANSACTIONAL_IDS_PER_PARTITION_MAX {
                return refuse(codes::COORDINATOR_NOT_AVAILABLE);
            }
            let Some(producer_id) = alloc() else {
                return refuse(codes::COORDINATOR_LOAD_IN_PROGRESS);
            };
            let meta = TxnMeta {
                producer_id,
                producer_epoch: 0,
                last_epoch: -1,
                timeout_ms: request.transaction_timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                last_update_ms: now,
                start_ms: -1,
                bump_at_end: false,
            };
            let answer = init_answer(&meta);
            self.write(id, meta, vec![(to, Response::InitProducerId(answer))]);
            return None;
        };
        let mut retried = false;
        if request.producer_id >= 0 {
            // KIP-360: the producer says which id and epoch it has; only the current ones, or
            // the one before a bump it did not hear of (its own bump's answer lost, or a
            // timeout's abort) may go on; that one is given the current epoch, not another
            // bump (a fresh start forgets the epoch before it: a fenced zombie presenting
            // it must not take the id back).
            retried = request.producer_id == meta.producer_id
                && meta.last_epoch >= 0
                && request.producer_epoch == meta.last_epoch;
            let known = request.producer_id == meta.producer_id
                && (request.producer_epoch == meta.producer_epoch || retried);
            if !known {
                return refuse(codes::PRODUCER_FENCED);
            }
        }
        if retried
            && matches!(
                meta.state,
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
            )
        {
            return Some(init_answer(&meta));
        }
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                refuse(codes::CONCURRENT_TRANSACTIONS)
            }
            TxnState::Ongoing => {
                // The previous incarnation left its transaction open: it is aborted with the
                // epoch bumped (fencing it); the new one asks again once that is complete.
                let next = prepare(&meta, false, true, now_ms);
                self.write(id, next, Vec::new());
                refuse(codes::CONCURRENT_TRANSACTIONS)
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let mut next = meta.clone();
                if meta.producer_epoch >= i16::MAX - 2 {
                    // The epochs of this id are used up: a new id starts at 0.
                    let Some(producer_id) = alloc() else {
                        return refuse(codes::COORDINATOR_LOAD_IN_PROGRESS);
                    };
                    next.producer_id = producer_id;
                    next.producer_epoch = 0;
                    next.last_epoch = -1;
                } else {
                    // Only a producer that says which epoch it has may present it again.
                    next.last_epoch = match request.producer_id >= 0 {
                        true => meta.producer_epoch,
                        false => -1,
                    };
                    next.producer_epoch = meta.producer_epoch + 1;
                }
                next.timeout_ms = request.transaction_timeout_ms;
                next.state = TxnState::Empty;
                next.partitions.clear();
                next.last_update_ms = now;
                next.start_ms = -1;
                next.bump_at_end = false;
                let answer = init_answer(&next);
                self.write(id, next, vec![(to, Response::InitProducerId(answer))]);
                None
            }
        }
    }

    /// Checks a request's producer id and epoch against the transaction's: the error code,
    /// or the transaction.
    fn current(
        &self,
        id: &str,
        producer_id: i64,
        producer_epoch: i16,
        fenced: i16,
    ) -> Result<&TxnMeta, i16> {
        let Some(meta) = self.txns.get(id) else {
            return Err(codes::INVALID_PRODUCER_ID_MAPPING);
        };
        if meta.producer_id != producer_id {
            return Err(codes::INVALID_PRODUCER_ID_MAPPING);
        }
        if meta.producer_epoch != producer_epoch {
            return Err(fenced);
        }
        if self.pending.contains_key(id) {
            return Err(codes::CONCURRENT_TRANSACTIONS);
        }
        Ok(meta)
    }

    /// AddPartitionsToTxn v0-3 (one transaction), and AddOffsetsToTxn (the group's offsets
    /// partition): `partitions` are added; `known` says which exist. `Ok(None)`: answered
    /// once the record commits. `Err`: the error code for every partition.
    #[allow(clippy::too_many_arguments)]
    pub fn add_partitions(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
        known: &dyn Fn(&str, i32) -> bool,
        fenced: i16,
        answer: Response,
    ) -> Result<Option<Response>, i16> {
        let meta = self.current(id, producer_id, producer_epoch, fenced)?;
        if meta.state.preparing() {
            return Err(codes::CONCURRENT_TRANSACTIONS);
        }
        if partitions.iter().any(|(t, p)| !known(t, *p)) {
            return Err(codes::UNKNOWN_TOPIC_OR_PARTITION);
        }
        let new: Vec<&(String, i32)> = (partitions.iter())
            .filter(|p| !meta.partitions.contains(*p))
            .collect();
        if new.is_empty() && meta.state == TxnState::Ongoing {
            return Ok(Some(answer));
        }
        if meta.partitions.len() + new.len() > limits::TXN_PARTITIONS_MAX {
            return Err(codes::INVALID_REQUEST);
        }
        let mut next = meta.clone();
        let now = now_ms as i64;
        if meta.state != TxnState::Ongoing {
            next.start_ms = now;
            next.state = TxnState::Ongoing;
        }
        next.partitions.extend(new.into_iter().cloned());
        next.last_update_ms = now;
        self.write(id, next, vec![(to, answer)]);
        Ok(None)
    }

    /// AddPartitionsToTxn v4+ from a partition's leader, `verify_only`: whether each partition
    /// is in the producer's open transaction (KIP-890 part 1), before it appends the first
    /// transactional batch of one.
    pub fn verify(
        &self,
        id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partition: &(String, i32),
    ) -> i16 {
        let Some(meta) = self.txns.get(id) else {
            return codes::INVALID_PRODUCER_ID_MAPPING;
        };
        if meta.producer_id != producer_id {
            return codes::INVALID_PRODUCER_ID_MAPPING;
        }
        if meta.producer_epoch != producer_epoch {
            return codes::PRODUCER_FENCED;
        }
        if meta.state == TxnState::Ongoing && meta.partitions.contains(partition) {
            codes::NONE
        } else {
            codes::INVALID_TXN_STATE
        }
    }

    /// EndTxn. `None`: answered once the transaction completes.
    pub fn end_txn(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        request: &EndTxnRequest,
        version: i16,
    ) -> Option<EndTxnResponse> {
        let id = request.transactional_id.as_str();
        let bump = version >= 5;
        let answer = |error_code: i16, meta: Option<&TxnMeta>| {
            Some(EndTxnResponse {
                error_code,
                producer_id: meta.map_or(-1, |m| m.producer_id),
                producer_epoch: meta.map_or(-1, |m| m.producer_epoch),
                ..Default::default()
            })
        };
        let fenced = if version >= 2 {
            codes::PRODUCER_FENCED
        } else {
            codes::INVALID_PRODUCER_EPOCH
        };
        let outcome = if request.committed {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        let prepared = if request.committed {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        if let Some(meta) = self.txns.get(id) {
            // A retry of an EndTxn whose transaction ended with a bump: the producer still
            // has the epoch before it.
            let retried = bump
                && meta.bump_at_end
                && meta.producer_id == request.producer_id
                && meta.last_epoch == request.producer_epoch
                && (meta.state == outcome || meta.state == prepared);
            if retried {
                if meta.state == outcome && !self.pending.contains_key(id) {
                    return answer(codes::NONE, Some(meta));
                }
                return answer(codes::CONCURRENT_TRANSACTIONS, None);
            }
        }
        let meta = match self.current(id, request.producer_id, request.producer_epoch, fenced) {
            Ok(meta) => meta,
            Err(code) => return answer(code, None),
        };
        match meta.state {
            TxnState::Ongoing => {
                let next = prepare(
                    meta,
                    request.committed,
                    bump && !self.config.planted_no_epoch_bump,
                    now_ms,
                );
                let response = EndTxnResponse {
                    producer_id: next.producer_id,
                    producer_epoch: next.producer_epoch,
                    ..Default::default()
                };
                if self.config.planted_marker_before_append {
                    // The planted bug: the markers go out first; the prepared state is
                    // written once they are all written (`complete_if_marked`).
                    self.txns.insert(id.to_string(), next);
                    self.early.insert(id.to_string());
                    self.begin_markers(id, now_ms);
                } else {
                    self.write(id, next, Vec::new());
                }
                (self.ending.entry(id.to_string()).or_default())
                    .push((to, Response::EndTxn(response)));
                None
            }
            state if state == prepared => answer(codes::CONCURRENT_TRANSACTIONS, None),
            state if state == outcome => answer(codes::NONE, Some(meta)),
            _ => answer(codes::INVALID_TXN_STATE, None),
        }
    }

    /// Whether `id`'s producer may commit offsets in its transaction (TxnOffsetCommit goes
    /// to the group coordinator, which asks): the code to answer with.
    pub fn offsets_allowed(&self, id: &str, producer_id: i64, producer_epoch: i16) -> i16 {
        match self.txns.get(id) {
            Some(m) if m.producer_id != producer_id => codes::INVALID_PRODUCER_ID_MAPPING,
            Some(m) if m.producer_epoch != producer_epoch => codes::PRODUCER_FENCED,
            Some(m) if m.state == TxnState::Ongoing => codes::NONE,
            Some(_) => codes::INVALID_TXN_STATE,
            None => codes::INVALID_PRODUCER_ID_MAPPING,
        }
    }

    /// Checks what must hold after every step.
    pub fn check_invariants(&self) {
        for (id, markers) in &self.markers {
            let meta = self.txns.get(id);
            assert!(
                meta.is_some_and(|m| m.state.preparing()),
                "markers are written only for a prepared transaction ({id})"
            );
            assert!(
                (markers.due.keys()).all(|p| meta.is_some_and(|m| m.partitions.contains(p))),
                "markers go only to the transaction's partitions ({id})"
            );
        }
    }
}

fn init_answer(meta: &TxnMeta) -> InitProducerIdResponse {
    InitProducerIdResponse {
        producer_id: meta.producer_id,
        producer_epoch: meta.producer_epoch,
        ..Default::default()
    }
}

/// The prepared state of `meta`'s open transaction, with the epoch bumped if `bump` (its
/// markers then fence the producer's older epoch).
fn prepare(meta: &TxnMeta, commit: bool, bump: bool, now_ms: u64) -> TxnMeta {
    let mut next = meta.clone();
    next.state = if commit {
        TxnState::PrepareCommit
    } else {
        TxnState::PrepareAbort
    };
    if bump && meta.producer_epoch < i16::MAX - 1 {
        next.last_epoch = meta.producer_epoch;
        next.producer_epoch = meta.producer_epoch + 1;
        next.bump_at_end = true;
    } else {
        next.bump_at_end = false;
    }
    next.last_update_ms = now_ms as i64;
    next
}

/// Sets `code` on an answer held for a transaction request.
pub fn refuse(response: &mut Response, code: i16) {
    match response {
        Response::InitProducerId(r) => {
            r.error_code = code;
            r.producer_id = -1;
            r.producer_epoch = -1;
        }
        Response::EndTxn(r) => {
            r.error_code = code;
            r.producer_id = -1;
            r.producer_epoch = -1;
        }
        Response::AddOffsetsToTxn(r) => r.error_code = code,
        Response::AddPartitionsToTxn(r) => {
            for p in (r.results_by_topic_v3_and_below.iter_mut())
                .flat_map(|t| t.results_by_partition.iter_mut())
            {
                p.partition_error_code = code;
            }
        }
        _ => {}
    }
}

pub fn encode_key(id: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + id.len());
    out.put_i16(KEY_VERSION);
    out.put_i16(id.len() as i16);
    out.put_slice(id.as_bytes());
    out.freeze()
}

pub fn decode_key(mut key: Bytes) -> Option<String> {
    if key.remaining() < 4 || key.get_i16() != KEY_VERSION {
        return None;
    }
    let len = usize::try_from(key.get_i16()).ok()?;
    if key.remaining() != len {
        return None;
    }
    String::from_utf8(key.to_vec()).ok()
}

pub fn encode_value(meta: &TxnMeta) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_i16(VALUE_VERSION);
    out.put_i64(meta.producer_id);
    out.put_i16(meta.producer_epoch);
    out.put_i16(meta.last_epoch);
    out.put_i32(meta.timeout_ms);
    out.put_i8(meta.state.code());
    out.put_u8(u8::from(meta.bump_at_end));
    out.put_i64(meta.last_update_ms);
    out.put_i64(meta.start_ms);
    out.put_u32(meta.partitions.len() as u32);
    for (topic, partition) in &meta.partitions {
        out.put_i16(topic.len() as i16);
        out.put_slice(topic.as_bytes());
        out.put_i32(*partition);
    }
    out.freeze()
}

/// `None` if the bytes are not a whole value (every count checked against what remains).
pub fn decode_value(mut value: Bytes) -> Option<TxnMeta> {
    const FIXED: usize = 2 + 8 + 2 + 2 + 4 + 1 + 1 + 8 + 8 + 4;
    if value.remaining() < FIXED || value.get_i16() != VALUE_VERSION {
        return None;
    }
    let producer_id = value.get_i64();
    let producer_epoch = value.get_i16();
    let last_epoch = value.get_i16();
    let timeout_ms = value.get_i32();
    let state = TxnState::from_code(value.get_i8())?;
    let bump_at_end = value.get_u8() != 0;
    let last_update_ms = value.get_i64();
    let start_ms = value.get_i64();
    let count = value.get_u32() as usize;
    if count > value.remaining() / 6 {
        return None;
    }
    let mut partitions = BTreeSet::new();
    for _ in 0..count {
        if value.remaining() < 2 {
            return None;
        }
        let len = usize::try_from(value.get_i16()).ok()?;
        if value.remaining() < len + 4 {
            return None;
        }
        let topic = String::from_utf8(value.split_to(len).to_vec()).ok()?;
        partitions.insert((topic, value.get_i32()));
    }
    value.is_empty().then_some(TxnMeta {
        producer_id,
        producer_epoch,
        last_epoch,
        timeout_ms,
        state,
        partitions,
        last_update_ms,
        start_ms,
        bump_at_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TO: ReplyTo = ReplyTo { conn: 1, slot: 1 };

    fn init(
        c: &mut TxnCoordinator,
        now_ms: u64,
        next_id: &mut i64,
    ) -> Option<InitProducerIdResponse> {
        let request = InitProducerIdRequest {
            transactional_id: Some("t".into()),
            transaction_timeout_ms: 10_000,
            producer_id: -1,
            producer_epoch: -1,
            ..Default::default()
        };
        let mut alloc = || {
            *next_id += 1;
            Some(*next_id)
        };
        c.init_producer_id(now_ms, TO, &request, &mut alloc)
    }

    /// Appends and commits everything the coordinator wrote.
    fn settle(c: &mut TxnCoordinator, now_ms: u64, end: &mut i64) -> Vec<Response> {
        for (id, _, _) in c.take_writes() {
            *end += 1;
            c.appended(id, *end);
        }
        c.committed(now_ms, *end);
        c.take_answers().into_iter().map(|(_, r)| r).collect()
    }

    fn add(
        c: &mut TxnCoordinator,
        pid: i64,
        epoch: i16,
        partitions: &[(&str, i32)],
    ) -> Result<Option<Response>, i16> {
        let partitions: Vec<(String, i32)> = partitions
            .iter()
            .map(|(t, p)| (t.to_string(), *p))
            .collect();
        c.add_partitions(
            0,
            TO,
            "t",
            pid,
            epoch,
            &partitions,
            &|_, _| true,
            codes::PRODUCER_FENCED,
            Response::AddPartitionsToTxn(Default::default()),
        )
    }

    fn end(
        c: &mut TxnCoordinator,
        pid: i64,
        epoch: i16,
        commit: bool,
        version: i16,
    ) -> Option<EndTxnResponse> {
        let request = EndTxnRequest {
            transactional_id: "t".into(),
            producer_id: pid,
            producer_epoch: epoch,
            committed: commit,
            ..Default::default()
        };
        c.end_txn(0, TO, &request, version)
    }

    /// A commit goes Ongoing → PrepareCommit → markers → CompleteCommit; EndTxn v5 answers
    /// with the bumped epoch, and a retry with the old epoch is answered the same.
    #[test]
    fn a_transaction_commits_through_its_markers_and_bumps_the_epoch() {
        let mut c = TxnCoordinator::new(0, 3, TxnConfig::default());
        let (mut end_offset, mut ids) = (0, 100);
        assert!(init(&mut c, 0, &mut ids).is_none());
        let answers = settle(&mut c, 0, &mut end_offset);
        let Response::InitProducerId(r) = &answers[0] else {
            panic!()
        };
        let (pid, epoch) = (r.producer_id, r.producer_epoch);
        assert_eq!((pid, epoch), (101, 0));
        assert_eq!(add(&mut c, pid, epoch, &[("a", 0), ("b", 1)]), Ok(None));
        assert_eq!(
            add(&mut c, pid, epoch, &[("a", 0)]),
            Err(codes::CONCURRENT_TRANSACTIONS)
        );
        assert_eq!(settle(&mut c, 0, &mut end_offset).len(), 1);
        assert!(end(&mut c, pid, epoch, true, 5).is_none());
        assert!(settle(&mut c, 0, &mut end_offset).is_empty());
        let sends = c.take_marker_sends(10);
        assert_eq!(sends.len(), 1);
        assert_eq!((sends[0].producer_epoch, sends[0].commit), (1, true));
        assert_eq!(sends[0].partitions.len(), 2);
        // A late old-epoch write to the next transaction is fenced, and so is a zombie's
        // AddPartitions.
        assert_eq!(
            add(&mut c, pid, epoch, &[("a", 0)]),
            Err(codes::PRODUCER_FENCED)
        );
        c.marker_written(10, "t", pid, 1, ("a".into(), 0), codes::NONE);
        c.marker_written(
            10,
            "t",
            pid,
            1,
            ("b".into(), 1),
            codes::NOT_LEADER_OR_FOLLOWER,
        );
        assert!(c.take_marker_sends(50).is_empty(), "not due again yet");
        let again = c.take_marker_sends(200);
        assert_eq!(again[0].partitions, vec![("b".to_string(), 1)]);
        c.marker_written(200, "t", pid, 1, ("b".into(), 1), codes::NONE);
        let answers = settle(&mut c, 200, &mut end_offset);
        let Response::EndTxn(r) = &answers[0] else {
            panic!()
        };
        assert_eq!(
            (r.error_code, r.producer_id, r.producer_epoch),
            (codes::NONE, pid, 1)
        );
        assert_eq!(c.txn("t").unwrap().state, TxnState::CompleteCommit);
        let retry = end(&mut c, pid, 0, true, 5).unwrap();
        assert_eq!((retry.error_code, retry.producer_epoch), (codes::NONE, 1));
        assert_eq!(
            end(&mut c, pid, 0, false, 5).unwrap().error_code,
            codes::PRODUCER_FENCED
        );
    }

    /// A new incarnation of an open transaction's producer aborts it with a bumped epoch, then
    /// gets the epoch after that.
    #[test]
    fn a_second_incarnation_aborts_the_first_ones_transaction() {
        let mut c = TxnCoordinator::new(0, 1, TxnConfig::default());
        let (mut end_offset, mut ids) = (0, 0);
        init(&mut c, 0, &mut ids);
        settle(&mut c, 0, &mut end_offset);
        assert_eq!(add(&mut c, 1, 0, &[("a", 0)]), Ok(None));
        settle(&mut c, 0, &mut end_offset);
        let r = init(&mut c, 5, &mut ids).unwrap();
        assert_eq!(r.error_code, codes::CONCURRENT_TRANSACTIONS);
        settle(&mut c, 5, &mut end_offset);
        let sends = c.take_marker_sends(5);
        assert_eq!((sends[0].commit, sends[0].producer_epoch), (false, 1));
        c.marker_written(5, "t", 1, 1, ("a".into(), 0), codes::NONE);
        settle(&mut c, 5, &mut end_offset);
        assert_eq!(c.txn("t").unwrap().state, TxnState::CompleteAbort);
        assert!(init(&mut c, 6, &mut ids).is_none());
        let answers = settle(&mut c, 6, &mut end_offset);
        let Response::InitProducerId(r) = &answers[0] else {
            panic!()
        };
        assert_eq!((r.producer_id, r.producer_epoch), (1, 2));
        // The first incarnation is fenced everywhere.
        assert_eq!(add(&mut c, 1, 0, &[("a", 0)]), Err(codes::PRODUCER_FENCED));
        assert_eq!(
            end(&mut c, 1, 0, true, 3).unwrap().error_code,
            codes::PRODUCER_FENCED
        );
    }

    /// A transaction past its timeout is aborted and its producer fenced; the state survives
    /// a reload from the records, and a prepared one has its markers sent again.
    #[test]
    fn timeouts_abort_and_a_reload_resumes_prepared_transactions() {
        let mut c = TxnCoordinator::new(0, 1, TxnConfig::default());
        let (mut end_offset, mut ids) = (0, 0);
        init(&mut c, 0, &mut ids);
        settle(&mut c, 0, &mut end_offset);
        add(&mut c, 1, 0, &[("a", 0)]).unwrap();
        settle(&mut c, 0, &mut end_offset);
        c.tick(20_000);
        let mut records = Vec::new();
        for (id, key, value) in c.take_writes() {
            end_offset += 1;
            c.appended(id, end_offset);
            records.push((key, value));
        }
        c.committed(20_000, end_offset);
        assert_eq!(c.txn("t").unwrap().state, TxnState::PrepareAbort);
        let mut reloaded = TxnCoordinator::new(0, 2, TxnConfig::default());
        for (key, value) in records {
            reloaded.replay(Some(key), Some(value));
        }
        reloaded.loaded(30_000);
        assert_eq!(reloaded.txn("t"), c.txn("t"));
        let sends = reloaded.take_marker_sends(30_000);
        assert_eq!((sends[0].commit, sends[0].producer_epoch), (false, 1));
        assert_eq!(reloaded.epoch(), 2);
    }

    #[test]
    fn records_round_trip_and_damaged_ones_are_refused() {
        let meta = TxnMeta {
            producer_id: 7,
            producer_epoch: 3,
            last_epoch: 2,
            timeout_ms: 60_000,
            state: TxnState::PrepareCommit,
            partitions: [("a".to_string(), 1), ("bb".to_string(), 0)].into(),
            last_update_ms: 5,
            start_ms: 4,
            bump_at_end: true,
        };
        let bytes = encode_value(&meta);
        assert_eq!(decode_value(bytes.clone()), Some(meta));
        for cut in 0..bytes.len() {
            assert_eq!(decode_value(bytes.slice(..cut)), None, "cut at {cut}");
        }
        assert_eq!(decode_key(encode_key("id")), Some("id".to_string()));
    }
}
