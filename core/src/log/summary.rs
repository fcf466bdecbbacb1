//! What recovery needs of a closed segment, and of producers, without reading the segment.
//!
//! A segment's *summary* (`<base>.summary`) is written when the segment closes (it rolls, or
//! recovery or the cleaner leaves it whole): its size, offsets, timestamps, offset index,
//! leader epochs, DeleteRecords markers, and where its last batch starts with the CRC that
//! batch's header carries. The *producer checkpoint* (`producer-checkpoint`) is written at
//! each roll: what the log knows of idempotent producers from the batches below the new
//! segment. Recovery believes a summary only for a segment wholly below the recovery point
//! (synced before it was written), whose file has the summary's length, which ends where the
//! next segment begins, and whose last batch header reads back as the summary says; and the
//! checkpoint only at a segment boundary below the recovery point whose last batch it names.
//! Everything else it reads, as before. Both files carry a CRC: a torn or damaged one is
//! ignored, and the segments are read instead. What recovery did not read is still checked by
//! every read (chain of offsets and CRC), and a read that finds damage takes the partition
//! offline.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::IndexEntry;
use crate::producers::{AbortedTxn, ProducerStates};

pub(super) const SUMMARY_SUFFIX: &str = ".summary";
pub(super) const PRODUCER_CHECKPOINT_FILE: &str = "producer-checkpoint";

const SUMMARY_MAGIC: u32 = 0x4b53_554d; // "KSUM"
const CHECKPOINT_MAGIC: u32 = 0x4b50_434b; // "KPCK"
/// 1: summaries list the segment's aborted transactions; checkpoints hold open ones.
const VERSION: u16 = 1;

/// A closed segment, as recovery would find it by reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Summary {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size_bytes: u64,
    pub max_timestamp: i64,
    pub first_timestamp: i64,
    /// Where the last batch starts, and the CRC in its header.
    pub last_batch_position: u64,
    pub last_batch_crc: u32,
    /// What tells the last batch from another at its place (`batch_identity`).
    pub last_batch_id: u32,
    /// Each leader epoch that starts in the segment (the first batch's included).
    pub epochs: Vec<(i32, i64)>,
    /// DeleteRecords markers: (offset, the start it names).
    pub markers: Vec<(i64, i64)>,
    /// Aborted transactions whose markers lie in the segment.
    pub aborted: Vec<AbortedTxn>,
    pub index: Vec<IndexEntry>,
}

impl Summary {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(80 + 24 * self.index.len());
        out.put_u32(SUMMARY_MAGIC);
        out.put_u16(VERSION);
        out.put_i64(self.base_offset);
        out.put_i64(self.next_offset);
        out.put_u64(self.size_bytes);
        out.put_i64(self.max_timestamp);
        out.put_i64(self.first_timestamp);
        out.put_u64(self.last_batch_position);
        out.put_u32(self.last_batch_crc);
        out.put_u32(self.last_batch_id);
        out.put_u32(self.epochs.len() as u32);
        for (epoch, offset) in &self.epochs {
            out.put_i32(*epoch);
            out.put_i64(*offset);
        }
        out.put_u32(self.markers.len() as u32);
        for (offset, start) in &self.markers {
            out.put_i64(*offset);
            out.put_i64(*start);
        }
        out.put_u32(self.aborted.len() as u32);
        for a in &self.aborted {
            out.put_i64(a.producer_id);
            out.put_i64(a.first_offset);
            out.put_i64(a.last_offset);
            out.put_i64(a.last_stable_offset);
        }
        out.put_u32(self.index.len() as u32);
        for entry in &self.index {
            out.put_i64(entry.base_offset);
            out.put_u64(entry.position);
            out.put_i64(entry.max_timestamp_so_far);
        }
        let crc = crc32c::crc32c(&out);
        out.put_u32(crc);
        out.freeze()
    }

    /// `None` unless the bytes are a whole summary with a good CRC.
    pub fn decode(bytes: &[u8]) -> Option<Summary> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut buf = body;
        let need = |buf: &[u8], n: usize| (buf.remaining() >= n).then_some(());
        need(buf, 4 + 2 + 8 * 6 + 4 + 4 + 4)?;
        if buf.get_u32() != SUMMARY_MAGIC || buf.get_u16() != VERSION {
            return None;
        }
        let mut summary = Summary {
            base_offset: buf.get_i64(),
            next_offset: buf.get_i64(),
            size_bytes: buf.get_u64(),
            max_timestamp: buf.get_i64(),
            first_timestamp: buf.get_i64(),
            last_batch_position: buf.get_u64(),
            last_batch_crc: buf.get_u32(),
            last_batch_id: buf.get_u32(),
            epochs: Vec::new(),
            markers: Vec::new(),
            aborted: Vec::new(),
            index: Vec::new(),
        };
        let count = buf.get_u32() as usize;
        need(buf, count.checked_mul(12)?)?;
        summary.epochs = (0..count).map(|_| (buf.get_i32(), buf.get_i64())).collect();
        need(buf, 4)?;
        let count = buf.get_u32() as usize;
        need(buf, count.checked_mul(16)?)?;
        summary.markers = (0..count).map(|_| (buf.get_i64(), buf.get_i64())).collect();
        need(buf, 4)?;
        let count = buf.get_u32() as usize;
        need(buf, count.checked_mul(32)?)?;
        summary.aborted = (0..count)
            .map(|_| AbortedTxn {
                producer_id: buf.get_i64(),
                first_offset: buf.get_i64(),
                last_offset: buf.get_i64(),
                last_stable_offset: buf.get_i64(),
            })
            .collect();
        need(buf, 4)?;
        let count = buf.get_u32() as usize;
        need(buf, count.checked_mul(24)?)?;
        summary.index = (0..count)
            .map(|_| IndexEntry {
                base_offset: buf.get_i64(),
                position: buf.get_u64(),
                max_timestamp_so_far: buf.get_i64(),
            })
            .collect();
        buf.is_empty().then_some(summary)
    }
}

/// The producer checkpoint: producers as of `offset` (a segment boundary), and the identity
/// of the last batch below it, to tell the log it was written for from another one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Checkpoint {
    pub offset: i64,
    pub last_batch_id: u32,
    pub producers: ProducerStates,
}

impl Checkpoint {
    pub fn encode(offset: i64, last_batch_id: u32, producers: &ProducerStates) -> Bytes {
        let states = producers.encode_below(offset);
        let mut out = BytesMut::with_capacity(22 + states.len());
        out.put_u32(CHECKPOINT_MAGIC);
        out.put_u16(VERSION);
        out.put_i64(offset);
        out.put_u32(last_batch_id);
        out.put_slice(&states);
        let crc = crc32c::crc32c(&out);
        out.put_u32(crc);
        out.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut buf = body;
        if buf.remaining() < 18 || buf.get_u32() != CHECKPOINT_MAGIC || buf.get_u16() != VERSION {
            return None;
        }
        let offset = buf.get_i64();
        let last_batch_id = buf.get_u32();
        let producers = ProducerStates::decode(Bytes::copy_from_slice(buf))?;
        Some(Checkpoint {
            offset,
            last_batch_id,
            producers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_reads_back_and_a_damaged_one_does_not() {
        let summary = Summary {
            base_offset: 100,
            next_offset: 250,
            size_bytes: 9_000,
            max_timestamp: 77,
            first_timestamp: 5,
            last_batch_position: 8_800,
            last_batch_crc: 0xdead_beef,
            last_batch_id: 0x1234_5678,
            epochs: vec![(3, 100), (4, 180)],
            markers: vec![(190, 150)],
            aborted: vec![AbortedTxn {
                producer_id: 9,
                first_offset: 120,
                last_offset: 200,
                last_stable_offset: 150,
            }],
            index: vec![
                IndexEntry {
                    base_offset: 100,
                    position: 0,
                    max_timestamp_so_far: 5,
                },
                IndexEntry {
                    base_offset: 170,
                    position: 4_100,
                    max_timestamp_so_far: 60,
                },
            ],
        };
        let bytes = summary.encode();
        assert_eq!(Summary::decode(&bytes), Some(summary));
        for at in 0..bytes.len() {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 0x10;
            assert_eq!(Summary::decode(&damaged), None, "a flip at {at}");
        }
        assert_eq!(Summary::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Summary::decode(&[]), None);
    }

    #[test]
    fn a_checkpoint_reads_back() {
        let producers = ProducerStates::default();
        let bytes = Checkpoint::encode(42, 7, &producers);
        let checkpoint = Checkpoint::decode(&bytes).unwrap();
        assert_eq!((checkpoint.offset, checkpoint.last_batch_id), (42, 7));
        assert_eq!(checkpoint.producers, producers);
        let mut damaged = bytes.to_vec();
        damaged[10] ^= 1;
        assert_eq!(Checkpoint::decode(&damaged), None);
    }
}
