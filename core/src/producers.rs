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
//! The state is rebuilt from the log by recovery: it already reads every batch header.
//! A producer is forgotten once its last batch is older than the expiry (Kafka's
//! `producer.id.expiration.ms`): the time of its append, or, for batches found by recovery,
//! their max timestamp (the append time is not stored).

use std::collections::{BTreeMap, VecDeque};

use crate::protocol::codes;
use crate::record::BatchHeader;

/// Batches remembered per producer and partition.
pub const BATCHES_KEPT: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeptBatch {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<KeptBatch>,
    /// The max timestamp of its last batch, in milliseconds.
    last_timestamp_ms: i64,
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

/// The last sequence number of a batch: Kafka's sequences wrap from i32::MAX to 0.
pub fn last_sequence(first_sequence: i32, last_offset_delta: i32) -> i32 {
    ((i64::from(first_sequence) + i64::from(last_offset_delta)) % (i64::from(i32::MAX) + 1)) as i32
}

fn follows(last_sequence: i32, next_sequence: i32) -> bool {
    next_sequence == last_sequence.wrapping_add(1)
        || (last_sequence == i32::MAX && next_sequence == 0)
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerStates {
    entries: BTreeMap<i64, ProducerEntry>,
}

impl ProducerStates {
    fn live(&self, producer_id: i64, now_ms: i64, expiry_ms: i64) -> Option<&ProducerEntry> {
        self.entries
            .get(&producer_id)
            .filter(|e| now_ms.saturating_sub(e.last_timestamp_ms) < expiry_ms)
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
        if epoch > entry.epoch {
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

    /// Remembers a batch now in the log (stamped with its base offset), seen at `seen_ms`:
    /// the time of its append, or on recovery its max timestamp. A producer whose entry had
    /// expired by then starts over with nothing of its past: `check` treated it as unknown,
    /// so a stale batch must never make a later one pass for a retry.
    pub fn record(&mut self, header: &BatchHeader, seen_ms: i64, expiry_ms: i64) {
        if !header.has_producer_id() {
            return;
        }
        if self
            .entries
            .get(&header.producer_id)
            .is_some_and(|e| seen_ms.saturating_sub(e.last_timestamp_ms) >= expiry_ms)
        {
            self.entries.remove(&header.producer_id);
        }
        let entry = self
            .entries
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp_ms: seen_ms,
            });
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.batches.push_back(KeptBatch {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header.base_sequence, header.last_offset_delta),
            base_offset: header.base_offset,
        });
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(seen_ms);
    }

    /// Forgets every batch at or past `offset` (the log was truncated there). A producer left
    /// with no batch is forgotten: its next batch starts over, as after an expiry.
    pub fn truncate(&mut self, offset: i64) {
        for entry in self.entries.values_mut() {
            entry.batches.retain(|b| b.base_offset < offset);
        }
        self.entries.retain(|_, e| !e.batches.is_empty());
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
        out.put_u32(below.entries.len() as u32);
        for (id, entry) in &below.entries {
            out.put_i64(*id);
            out.put_i16(entry.epoch);
            out.put_i64(entry.last_timestamp_ms);
            out.put_u8(entry.batches.len() as u8);
            for b in &entry.batches {
                out.put_i32(b.first_sequence);
                out.put_i32(b.last_sequence);
                out.put_i64(b.base_offset);
            }
        }
        out.freeze()
    }

    /// The state [`ProducerStates::encode_below`] encoded; `None` if the bytes do not make
    /// sense (every count is checked against what remains first).
    pub fn decode(mut buf: bytes::Bytes) -> Option<ProducerStates> {
        use bytes::Buf;
        const ENTRY_BYTES: usize = 8 + 2 + 8 + 1;
        const BATCH_BYTES: usize = 4 + 4 + 8;
        if buf.remaining() < 4 {
            return None;
        }
        let count = buf.get_u32() as usize;
        if count > buf.remaining() / ENTRY_BYTES {
            return None;
        }
        let mut states = ProducerStates::default();
        for _ in 0..count {
            if buf.remaining() < ENTRY_BYTES {
                return None;
            }
            let id = buf.get_i64();
            let epoch = buf.get_i16();
            let last_timestamp_ms = buf.get_i64();
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
            states.entries.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_timestamp_ms,
                },
            );
        }
        Some(states)
    }

    /// Forgets producers idle for `expiry_ms` or more.
    pub fn expire(&mut self, now_ms: i64, expiry_ms: i64) {
        self.entries
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp_ms) < expiry_ms);
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
