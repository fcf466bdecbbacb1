//! Idempotent producers: what one partition remembers of each producer id, so that a batch
//! retried after a lost answer is recognised and not appended twice.
//!
//! For each producer id the partition keeps its epoch and the sequence ranges and offsets of
//! its last [`BATCHES_KEPT`] batches (Kafka keeps five, and clients keep at most five requests
//! in flight, so any retry is among them). For a new batch from a producer:
//! - an older epoch than the one known is refused (INVALID_PRODUCER_EPOCH): a zombie;
//! - a newer epoch must start at sequence 0 (else OUT_OF_ORDER_SEQUENCE_NUMBER);
//! - the same epoch and the same sequence range as a kept batch is a duplicate: answered with
//!   the original offset, not appended;
//! - otherwise the sequence must follow the last one (wrapping from i32::MAX to 0), else
//!   OUT_OF_ORDER_SEQUENCE_NUMBER;
//! - a producer the partition does not know (never seen, or expired) must start at 0, else
//!   UNKNOWN_PRODUCER_ID (the client then bumps its epoch and starts over).
//!
//! Transactions: a transactional batch opens its producer's transaction in the partition (if
//! none is open); a marker (a control batch the coordinator has the leader write) ends it. The
//! earliest open transaction bounds the last stable offset, below which read_committed
//! consumers read; an aborted one becomes an [`AbortedTxn`] the log indexes for them.
//!
//! The state is rebuilt from the log by recovery: it already reads every batch header.
//! A producer is forgotten once its last batch is older than the expiry (Kafka's
//! `producer.id.expiration.ms`): the time of its append, or, for batches found by recovery,
//! their max timestamp (the append time is not stored).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::protocol::codes;
use crate::record::{BatchHeader, RecordBatch, DECOMPRESSED_BATCH_SIZE_MAX_BYTES};

/// Batches remembered per producer and partition.
pub const BATCHES_KEPT: usize = 5;

/// Markers a producer's state can be taken back through (a truncation that cuts them). Only
/// a marker that changes the state is remembered (a retried one, resent while the high
/// watermark stalls, changes nothing), and a marker that ended a transaction commits before
/// the coordinator lets the next transaction begin: a few suffice.
const MARKERS_UNDONE_MAX: usize = 4;

/// Kafka's control record types for transaction markers.
const CONTROL_TYPE_ABORT: i16 = 0;
const CONTROL_TYPE_COMMIT: i16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeptBatch {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
}

/// What a partition knows of one producer at one point of its log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerState {
    epoch: i16,
    batches: VecDeque<KeptBatch>,
    /// The max timestamp of its last batch, in milliseconds.
    last_timestamp_ms: i64,
    /// Where its open transaction begins in this partition, if one is open.
    txn_first_offset: Option<i64>,
    /// The coordinator epoch of the last marker written for it (-1: none yet): a marker from
    /// an older coordinator is refused.
    coordinator_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    state: ProducerState,
    /// The state before each of its last markers, with the marker's offset: a truncation
    /// below a marker takes the producer back to what it was (its transaction open again).
    undo: VecDeque<(i64, ProducerState)>,
}

/// What to do with a batch that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// Already in the log at this base offset: answer with it, append nothing.
    Duplicate {
        base_offset: i64,
    },
}

/// A transaction marker: how the transaction ended, and the epoch of the coordinator that
/// wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnMarker {
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// A transaction that ended with an abort: read_committed consumers drop the producer's
/// records from `first_offset` up to the marker at `last_offset`. `last_stable_offset` is the
/// partition's last stable offset once the marker applied: a reader that looks for aborted
/// transactions touching offsets below some bound can stop at the first entry whose
/// `last_stable_offset` reaches it (every transaction begun below it has ended by then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub last_stable_offset: i64,
}

/// The control batch that ends producer `producer_id`'s transaction in a partition (Kafka's
/// format: key version 0 and type, 0 abort or 1 commit; value version 0 and the coordinator
/// epoch), as the partition's leader appends it.
pub fn txn_marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: TxnMarker,
    timestamp_ms: i64,
) -> Bytes {
    let kind = if marker.commit {
        CONTROL_TYPE_COMMIT
    } else {
        CONTROL_TYPE_ABORT
    };
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    let record = crate::record::NewRecord {
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        ..Default::default()
    };
    let options = crate::record::BatchOptions {
        base_timestamp: timestamp_ms,
        producer_id,
        producer_epoch,
        transactional: true,
        control: true,
        ..Default::default()
    };
    crate::record::build(&[record], &options).expect("a one-record batch builds")
}

/// The transaction marker a batch is, if it is one: a transactional control batch whose
/// record's key names commit or abort.
pub fn txn_marker_of(batch: &RecordBatch) -> Option<TxnMarker> {
    let header = batch.header();
    if !header.is_control() || !header.is_transactional() || !header.has_producer_id() {
        return None;
    }
    let records = batch.records(DECOMPRESSED_BATCH_SIZE_MAX_BYTES).ok()?;
    let record = records.first()?;
    let key = record.key.as_ref()?;
    if key.len() != 4 {
        return None;
    }
    let commit = match i16::from_be_bytes([key[2], key[3]]) {
        CONTROL_TYPE_ABORT => false,
        CONTROL_TYPE_COMMIT => true,
        _ => return None,
    };
    let value = record.value.as_ref()?;
    let coordinator_epoch = i32::from_be_bytes(value.get(2..6)?.try_into().ok()?);
    Some(TxnMarker {
        commit,
        coordinator_epoch,
    })
}

/// The last sequence number of a batch: Kafka's sequences wrap from i32::MAX to 0.
pub fn last_sequence(first_sequence: i32, last_offset_delta: i32) -> i32 {
    ((i64::from(first_sequence) + i64::from(last_offset_delta)) % (i64::from(i32::MAX) + 1)) as i32
}

fn follows(last_sequence: i32, next_sequence: i32) -> bool {
    next_sequence == last_sequence.wrapping_add(1)
        || (last_sequence == i32::MAX && next_sequence == 0)
}

impl ProducerState {
    fn new(epoch: i16, seen_ms: i64) -> ProducerState {
        ProducerState {
            epoch,
            batches: VecDeque::new(),
            last_timestamp_ms: seen_ms,
            txn_first_offset: None,
            coordinator_epoch: -1,
        }
    }

    /// Whether anything of it is worth keeping: batches to recognise retries by, an open
    /// transaction, or a marker's epochs (which fence zombies and old coordinators).
    fn worth_keeping(&self) -> bool {
        !self.batches.is_empty() || self.txn_first_offset.is_some() || self.coordinator_epoch >= 0
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerStates {
    entries: BTreeMap<i64, ProducerEntry>,
}

impl ProducerStates {
    fn live(&self, producer_id: i64, now_ms: i64, expiry_ms: i64) -> Option<&ProducerState> {
        self.entries
            .get(&producer_id)
            .map(|e| &e.state)
            .filter(|s| {
                s.txn_first_offset.is_some()
                    || now_ms.saturating_sub(s.last_timestamp_ms) < expiry_ms
            })
    }

    /// Checks a batch against what is known of its producer. Batches without a producer id
    /// pass untouched. `Err` holds the error code and a message.
    pub fn check(
        &self,
        header: &BatchHeader,
        now_ms: i64,
        expiry_ms: i64,
    ) -> Result<Verdict, (i16, String)> {
        if !header.has_producer_id() {
            if header.is_transactional() {
                return Err((
                    codes::INVALID_RECORD,
                    "a transactional batch without a producer id".into(),
                ));
            }
            return Ok(Verdict::Append);
        }
        let id = header.producer_id;
        let epoch = header.producer_epoch;
        let first = header.base_sequence;
        let last = last_sequence(first, header.last_offset_delta);
        let Some(entry) = self.live(id, now_ms, expiry_ms) else {
            if first == 0 {
                return Ok(Verdict::Append);
            }
            return Err((
                codes::UNKNOWN_PRODUCER_ID,
                format!("producer {id} is unknown here (expired or never seen); its batch starts at sequence {first}"),
            ));
        };
        if epoch < entry.epoch {
            return Err((
                codes::INVALID_PRODUCER_EPOCH,
                format!(
                    "producer {id} epoch {epoch} is older than its current epoch {}",
                    entry.epoch
                ),
            ));
        }
        if entry.txn_first_offset.is_some() && !header.is_transactional() {
            return Err((
                codes::INVALID_TXN_STATE,
                format!(
                    "producer {id} has a transaction open here; its batch is not transactional"
                ),
            ));
        }
        if epoch > entry.epoch || entry.batches.is_empty() {
            if first == 0 {
                return Ok(Verdict::Append);
            }
            return Err((
                codes::OUT_OF_ORDER_SEQUENCE_NUMBER,
                format!("producer {id} starts epoch {epoch} at sequence {first}, not 0"),
            ));
        }
        if let Some(kept) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == first && b.last_sequence == last)
        {
            return Ok(Verdict::Duplicate {
                base_offset: kept.base_offset,
            });
        }
        match entry.batches.back() {
            Some(b) if !follows(b.last_sequence, first) => Err((
                codes::OUT_OF_ORDER_SEQUENCE_NUMBER,
                format!(
                    "producer {id} epoch {epoch}: sequence {first} does not follow {}",
                    b.last_sequence
                ),
            )),
            _ => Ok(Verdict::Append),
        }
    }

    /// Checks a transaction marker for producer `producer_id` at `producer_epoch` from a
    /// coordinator in `coordinator_epoch`: an older producer epoch than the partition knows
    /// is a zombie's (INVALID_PRODUCER_EPOCH), an older coordinator a deposed one
    /// (TRANSACTION_COORDINATOR_FENCED).
    pub fn check_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), (i16, String)> {
        let Some(entry) = self.entries.get(&producer_id).map(|e| &e.state) else {
            return Ok(());
        };
        if coordinator_epoch < entry.coordinator_epoch {
            return Err((
                codes::TRANSACTION_COORDINATOR_FENCED,
                format!(
                    "a marker for producer {producer_id} from coordinator epoch {coordinator_epoch}; epoch {} wrote here",
                    entry.coordinator_epoch
                ),
            ));
        }
        if producer_epoch < entry.epoch {
            return Err((
                codes::INVALID_PRODUCER_EPOCH,
                format!(
                    "a marker for producer {producer_id} epoch {producer_epoch}, older than its epoch {}",
                    entry.epoch
                ),
            ));
        }
        Ok(())
    }

    /// Checks a coordinator's transactional write for producer `producer_id` at
    /// `producer_epoch` (offsets committed in its transaction): an older epoch than the
    /// partition knows is a zombie's.
    pub fn check_epoch(&self, producer_id: i64, producer_epoch: i16) -> Result<(), (i16, String)> {
        match self.entries.get(&producer_id) {
            Some(e) if producer_epoch < e.state.epoch => Err((
                codes::PRODUCER_FENCED,
                format!(
                    "producer {producer_id} epoch {producer_epoch} is older than its current epoch {}",
                    e.state.epoch
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Remembers a batch now in the log (stamped with its base offset), seen at `seen_ms`:
    /// the time of its append, or on recovery its max timestamp. A producer whose entry had
    /// expired by then starts over with nothing of its past: `check` treated it as unknown,
    /// so a stale batch must never make a later one pass for a retry. A transactional batch
    /// opens its producer's transaction here if none is open. Control batches are not
    /// recorded here (a marker goes through [`ProducerStates::end_txn`]).
    pub fn record(&mut self, header: &BatchHeader, seen_ms: i64, expiry_ms: i64) {
        if !header.has_producer_id() || header.is_control() {
            return;
        }
        if self.entries.get(&header.producer_id).is_some_and(|e| {
            e.state.txn_first_offset.is_none()
                && seen_ms.saturating_sub(e.state.last_timestamp_ms) >= expiry_ms
        }) {
            self.entries.remove(&header.producer_id);
        }
        let entry = self
            .entries
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                state: ProducerState::new(header.producer_epoch, seen_ms),
                undo: VecDeque::new(),
            });
        let state = &mut entry.state;
        if header.producer_epoch != state.epoch {
            state.epoch = header.producer_epoch;
            state.batches.clear();
        }
        if state.batches.len() == BATCHES_KEPT {
            state.batches.pop_front();
        }
        state.batches.push_back(KeptBatch {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header.base_sequence, header.last_offset_delta),
            base_offset: header.base_offset,
        });
        state.last_timestamp_ms = state.last_timestamp_ms.max(seen_ms);
        if header.is_transactional() && state.txn_first_offset.is_none() {
            state.txn_first_offset = Some(header.base_offset);
        }
    }

    /// Applies a transaction marker now in the log (`header` stamped with its offset): the
    /// producer's open transaction here ends, and its epoch and coordinator epoch become the
    /// marker's (a marker from a coordinator that bumped the epoch fences the producer's older
    /// epoch: its batches must start over at sequence 0). Returns the transaction, if one was
    /// open, with whether it aborted.
    pub fn end_txn(
        &mut self,
        header: &BatchHeader,
        marker: TxnMarker,
        seen_ms: i64,
    ) -> Option<(i64, bool)> {
        let entry = self
            .entries
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                state: ProducerState::new(header.producer_epoch, seen_ms),
                undo: VecDeque::new(),
            });
        let before = entry.state.clone();
        let state = &mut entry.state;
        if header.producer_epoch > state.epoch {
            state.epoch = header.producer_epoch;
            state.batches.clear();
        }
        state.coordinator_epoch = state.coordinator_epoch.max(marker.coordinator_epoch);
        state.last_timestamp_ms = state.last_timestamp_ms.max(seen_ms);
        let first = state.txn_first_offset.take();
        let changed = (
            before.epoch,
            before.coordinator_epoch,
            before.txn_first_offset,
        ) != (state.epoch, state.coordinator_epoch, state.txn_first_offset);
        if changed {
            // Cut, it takes the producer back to `before` (a retried marker, changing
            // nothing, needs nothing taken back: it must not push out one that does).
            if entry.undo.len() == MARKERS_UNDONE_MAX {
                entry.undo.pop_front();
            }
            entry.undo.push_back((header.base_offset, before));
        }
        Some((first?, !marker.commit))
    }

    /// The first offset of the earliest transaction still open here: the last stable offset
    /// cannot pass it.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        (self.entries.values())
            .filter_map(|e| e.state.txn_first_offset)
            .min()
    }

    /// Whether producer `producer_id` has a transaction open here.
    pub fn txn_open(&self, producer_id: i64) -> bool {
        (self.entries.get(&producer_id)).is_some_and(|e| e.state.txn_first_offset.is_some())
    }

    /// The producers with a transaction open here, with where each began.
    pub fn open_txns(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        (self.entries.iter()).filter_map(|(id, e)| e.state.txn_first_offset.map(|f| (*id, f)))
    }

    /// Forgets every batch at or past `offset` (the log was truncated there); a marker cut
    /// takes its producer back to its state before it (the transaction open again). A
    /// producer left with nothing worth keeping is forgotten: its next batch starts over, as
    /// after an expiry.
    pub fn truncate(&mut self, offset: i64) {
        for entry in self.entries.values_mut() {
            if let Some(at) = entry.undo.iter().position(|(marker, _)| *marker >= offset) {
                entry.state = entry.undo[at].1.clone();
                entry.undo.truncate(at);
            }
            let state = &mut entry.state;
            state.batches.retain(|b| b.base_offset < offset);
            if state.txn_first_offset.is_some_and(|f| f >= offset) {
                state.txn_first_offset = None;
            }
        }
        self.entries.retain(|_, e| e.state.worth_keeping());
    }

    /// What was known of producers as of `offset` (their batches below it), encoded for a
    /// follower that starts its log over there (`raft::FetchReply::StartAt`): it replays
    /// what follows from the log itself. Producers whose batches all lie at or past `offset`
    /// are left out (the replay brings them).
    pub fn encode_below(&self, offset: i64) -> bytes::Bytes {
        use bytes::BufMut;
        let mut below = self.clone();
        below.truncate(offset);
        let mut out = bytes::BytesMut::new();
        out.put_u32(STATES_MAGIC);
        out.put_u32(below.entries.len() as u32);
        for (id, entry) in &below.entries {
            out.put_i64(*id);
            encode_state(&mut out, &entry.state);
            out.put_u8(entry.undo.len() as u8);
            for (marker, state) in &entry.undo {
                out.put_i64(*marker);
                encode_state(&mut out, state);
            }
        }
        out.freeze()
    }

    /// The state [`ProducerStates::encode_below`] encoded; `None` if the bytes do not make
    /// sense (every count is checked against what remains first).
    pub fn decode(mut buf: bytes::Bytes) -> Option<ProducerStates> {
        use bytes::Buf;
        if buf.remaining() < 8 || buf.get_u32() != STATES_MAGIC {
            return None;
        }
        let count = buf.get_u32() as usize;
        if count > buf.remaining() / (8 + STATE_BYTES_MIN + 1) {
            return None;
        }
        let mut states = ProducerStates::default();
        for _ in 0..count {
            if buf.remaining() < 8 {
                return None;
            }
            let id = buf.get_i64();
            let state = decode_state(&mut buf)?;
            if buf.remaining() < 1 {
                return None;
            }
            let undone = buf.get_u8() as usize;
            if undone > MARKERS_UNDONE_MAX {
                return None;
            }
            let mut undo = VecDeque::with_capacity(undone);
            for _ in 0..undone {
                if buf.remaining() < 8 {
                    return None;
                }
                let marker = buf.get_i64();
                undo.push_back((marker, decode_state(&mut buf)?));
            }
            states.entries.insert(id, ProducerEntry { state, undo });
        }
        buf.is_empty().then_some(states)
    }

    /// Forgets producers idle for `expiry_ms` or more (never one with a transaction open).
    pub fn expire(&mut self, now_ms: i64, expiry_ms: i64) {
        self.entries.retain(|_, e| {
            e.state.txn_first_offset.is_some()
                || now_ms.saturating_sub(e.state.last_timestamp_ms) < expiry_ms
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest producer id seen (new ids must be above it).
    pub fn max_producer_id(&self) -> Option<i64> {
        self.entries.keys().next_back().copied()
    }
}

/// Marks the encoding of [`ProducerStates::encode_below`] (its second form: transactions).
const STATES_MAGIC: u32 = 0x4b50_5332; // "KPS2"
const BATCH_BYTES: usize = 4 + 4 + 8;
const STATE_BYTES_MIN: usize = 2 + 8 + 8 + 4 + 1;

fn encode_state(out: &mut bytes::BytesMut, state: &ProducerState) {
    use bytes::BufMut;
    out.put_i16(state.epoch);
    out.put_i64(state.last_timestamp_ms);
    out.put_i64(state.txn_first_offset.unwrap_or(-1));
    out.put_i32(state.coordinator_epoch);
    out.put_u8(state.batches.len() as u8);
    for b in &state.batches {
        out.put_i32(b.first_sequence);
        out.put_i32(b.last_sequence);
        out.put_i64(b.base_offset);
    }
}

fn decode_state(buf: &mut Bytes) -> Option<ProducerState> {
    use bytes::Buf;
    if buf.remaining() < STATE_BYTES_MIN {
        return None;
    }
    let epoch = buf.get_i16();
    let last_timestamp_ms = buf.get_i64();
    let txn_first_offset = Some(buf.get_i64()).filter(|f| *f >= 0);
    let coordinator_epoch = buf.get_i32();
    let batches = buf.get_u8() as usize;
    if batches > BATCHES_KEPT || buf.remaining() < batches * BATCH_BYTES {
        return None;
    }
    let batches = (0..batches)
        .map(|_| KeptBatch {
            first_sequence: buf.get_i32(),
            last_sequence: buf.get_i32(),
            base_offset: buf.get_i64(),
        })
        .collect();
    Some(ProducerState {
        epoch,
        batches,
        last_timestamp_ms,
        txn_first_offset,
        coordinator_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;

    fn batch(id: i64, epoch: i16, first: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 1_000,
            max_timestamp: 1_000,
            producer_id: id,
            producer_epoch: epoch,
            base_sequence: first,
            records_count: count,
        }
    }

    fn check(states: &ProducerStates, header: &BatchHeader) -> Result<Verdict, i16> {
        states
            .check(header, 2_000, HOUR_MS)
            .map_err(|(code, _)| code)
    }

    #[test]
    fn a_retried_batch_is_answered_with_its_offset_and_gaps_are_refused() {
        let mut states = ProducerStates::default();
        let b0 = batch(7, 0, 0, 3, 100);
        assert_eq!(check(&states, &b0), Ok(Verdict::Append));
        states.record(&b0, 1_000, HOUR_MS);
        let b1 = batch(7, 0, 3, 2, 103);
        assert_eq!(check(&states, &b1), Ok(Verdict::Append));
        states.record(&b1, 1_000, HOUR_MS);
        assert_eq!(
            check(&states, &batch(7, 0, 0, 3, -1)),
            Ok(Verdict::Duplicate { base_offset: 100 })
        );
        assert_eq!(
            check(&states, &batch(7, 0, 3, 2, -1)),
            Ok(Verdict::Duplicate { base_offset: 103 })
        );
        assert_eq!(
            check(&states, &batch(7, 0, 6, 1, -1)),
            Err(codes::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(check(&states, &batch(7, 0, 5, 1, -1)), Ok(Verdict::Append));
    }

    #[test]
    fn epochs_fence_old_producers_and_a_new_epoch_starts_at_zero() {
        let mut states = ProducerStates::default();
        states.record(&batch(7, 3, 0, 1, 0), 1_000, HOUR_MS);
        assert_eq!(
            check(&states, &batch(7, 2, 1, 1, -1)),
            Err(codes::INVALID_PRODUCER_EPOCH)
        );
        assert_eq!(
            check(&states, &batch(7, 4, 1, 1, -1)),
            Err(codes::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(check(&states, &batch(7, 4, 0, 1, -1)), Ok(Verdict::Append));
        states.record(&batch(7, 4, 0, 1, 1), 1_000, HOUR_MS);
        // The old epoch's batches are forgotten with it.
        assert_eq!(
            check(&states, &batch(7, 3, 0, 1, -1)),
            Err(codes::INVALID_PRODUCER_EPOCH)
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for i in 0..7 {
            states.record(&batch(1, 0, i, 1, i64::from(i)), 1_000, HOUR_MS);
        }
        assert_eq!(
            check(&states, &batch(1, 0, 2, 1, -1)),
            Ok(Verdict::Duplicate { base_offset: 2 })
        );
        assert_eq!(
            check(&states, &batch(1, 0, 1, 1, -1)),
            Err(codes::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(last_sequence(i32::MAX - 1, 3), 1);
        let mut states = ProducerStates::default();
        states.record(&batch(1, 0, 0, 1, 0), 1_000, HOUR_MS);
        states.record(&batch(1, 0, i32::MAX - 2, 3, 1), 1_000, HOUR_MS);
        assert_eq!(check(&states, &batch(1, 0, 0, 2, -1)), Ok(Verdict::Append));
    }

    #[test]
    fn an_expired_producer_is_unknown_unless_it_starts_over() {
        let mut states = ProducerStates::default();
        states.record(&batch(9, 0, 0, 1, 0), 1_000, HOUR_MS);
        let later_ms = 1_000 + HOUR_MS;
        let next = batch(9, 0, 1, 1, -1);
        assert_eq!(
            states.check(&next, later_ms, HOUR_MS).map_err(|e| e.0),
            Err(codes::UNKNOWN_PRODUCER_ID)
        );
        assert_eq!(
            states.check(&batch(9, 0, 0, 1, -1), later_ms, HOUR_MS),
            Ok(Verdict::Append)
        );
        states.expire(later_ms, HOUR_MS);
        assert!(states.is_empty());
    }

    /// A producer that expired and starts over at sequence 0 (same id, same epoch) is a new
    /// producer: nothing of its old batches may make a new batch pass for a retry.
    #[test]
    fn a_producer_that_starts_over_after_expiry_keeps_nothing_of_its_past() {
        let mut states = ProducerStates::default();
        for (i, first) in [0, 1, 2].into_iter().enumerate() {
            states.record(&batch(9, 0, first, 1, i as i64), 1_000, HOUR_MS);
        }
        let later_ms = 1_000 + HOUR_MS;
        let mut fresh = ProducerStates::default();
        for (i, first) in [0, 1, 2].into_iter().enumerate() {
            let next = batch(9, 0, first, 1, -1);
            let verdict = states.check(&next, later_ms, HOUR_MS);
            assert_eq!(
                verdict,
                fresh.check(&next, later_ms, HOUR_MS),
                "sequence {first}"
            );
            assert_eq!(verdict, Ok(Verdict::Append), "sequence {first}");
            let appended = batch(9, 0, first, 1, 100 + i as i64);
            states.record(&appended, later_ms, HOUR_MS);
            fresh.record(&appended, later_ms, HOUR_MS);
        }
        assert_eq!(states, fresh);
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    fn header(producer_id: i64, base_sequence: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: 2,
            base_sequence,
            records_count: 2,
        }
    }

    /// A follower that starts its log over, or a restart whose first segments are gone, gets
    /// the state as of the start back, and a retry of a batch from before it is still
    /// recognised.
    #[test]
    fn the_state_below_a_start_round_trips_and_lying_counts_are_refused() {
        let mut states = ProducerStates::default();
        states.record(&header(7, 0, 10), 1_000, 60_000);
        states.record(&header(7, 2, 12), 1_000, 60_000);
        states.record(&header(9, 0, 14), 1_000, 60_000);
        let below = ProducerStates::decode(states.encode_below(14)).expect("decodes");
        assert_eq!(
            below.check(&header(7, 2, 99), 2_000, 60_000),
            Ok(Verdict::Duplicate { base_offset: 12 })
        );
        assert!(
            !below.entries.contains_key(&9),
            "its batch lies past the start"
        );
        let bytes = states.encode_below(i64::MAX);
        for cut in 0..bytes.len() {
            assert!(
                ProducerStates::decode(bytes.slice(..cut)).is_none(),
                "cut at {cut}"
            );
        }
        let lying = bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
        assert!(ProducerStates::decode(lying).is_none());
    }
}

#[cfg(test)]
mod txn_tests {
    use super::*;

    fn data(id: i64, epoch: i16, first: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0x10,
            last_offset_delta: 0,
            base_timestamp: 1_000,
            max_timestamp: 1_000,
            producer_id: id,
            producer_epoch: epoch,
            base_sequence: first,
            records_count: 1,
        }
    }

    #[test]
    fn a_marker_batch_parses_back() {
        let marker = TxnMarker {
            commit: true,
            coordinator_epoch: 7,
        };
        let batch = RecordBatch::parse(txn_marker_batch(5, 2, marker, 1_000)).expect("parses");
        assert_eq!(txn_marker_of(&batch), Some(marker));
        assert!(batch.header().is_control() && batch.header().is_transactional());
    }

    /// Markers resent while the high watermark stalls change nothing, and do not push the one
    /// that ended the transaction out of what a truncation can take back.
    #[test]
    fn retried_markers_leave_the_ending_one_undoable() {
        let mut states = ProducerStates::default();
        states.record(&data(1, 0, 0, 10), 1_000, 60_000);
        let commit = TxnMarker {
            commit: true,
            coordinator_epoch: 3,
        };
        let mut marker = data(1, 0, -1, 20);
        marker.attributes = 0x30;
        assert_eq!(states.end_txn(&marker, commit, 1_000), Some((10, false)));
        for offset in 21..21 + 2 * MARKERS_UNDONE_MAX as i64 {
            let mut again = data(1, 0, -1, offset);
            again.attributes = 0x30;
            assert_eq!(states.end_txn(&again, commit, 1_000), None);
        }
        assert_eq!(states.first_unstable_offset(), None);
        states.truncate(20);
        assert_eq!(states.first_unstable_offset(), Some(10));
    }

    /// A transaction opens with its first batch, ends with its marker, and a truncation of
    /// the marker opens it again; the last stable offset follows.
    #[test]
    fn markers_end_transactions_and_truncation_undoes_them() {
        let mut states = ProducerStates::default();
        states.record(&data(1, 0, 0, 10), 1_000, 60_000);
        states.record(&data(2, 0, 0, 12), 1_000, 60_000);
        states.record(&data(1, 0, 1, 14), 1_000, 60_000);
        assert_eq!(states.first_unstable_offset(), Some(10));
        let mut marker = data(1, 1, -1, 20);
        marker.attributes = 0x30;
        let abort = TxnMarker {
            commit: false,
            coordinator_epoch: 3,
        };
        assert_eq!(states.end_txn(&marker, abort, 1_000), Some((10, true)));
        assert_eq!(states.first_unstable_offset(), Some(12));
        // The marker bumped the epoch: the old epoch is fenced, the new starts at 0.
        assert_eq!(
            states
                .check(&data(1, 0, 2, -1), 2_000, 60_000)
                .map_err(|e| e.0),
            Err(codes::INVALID_PRODUCER_EPOCH)
        );
        assert_eq!(
            states
                .check(&data(1, 1, 2, -1), 2_000, 60_000)
                .map_err(|e| e.0),
            Err(codes::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(
            states.check(&data(1, 1, 0, -1), 2_000, 60_000),
            Ok(Verdict::Append)
        );
        assert_eq!(
            states.check_marker(1, 1, 2).map_err(|e| e.0),
            Err(codes::TRANSACTION_COORDINATOR_FENCED)
        );
        let encoded = ProducerStates::decode(states.encode_below(i64::MAX)).expect("decodes");
        assert_eq!(encoded, states);
        states.truncate(20);
        assert_eq!(states.first_unstable_offset(), Some(10));
        assert_eq!(
            states.check(&data(1, 0, 2, -1), 2_000, 60_000),
            Ok(Verdict::Append)
        );
        states.truncate(11);
        assert_eq!(states.first_unstable_offset(), Some(10));
        states.truncate(10);
        assert_eq!(states.first_unstable_offset(), None);
    }
}
