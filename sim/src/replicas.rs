//! What a node's disk holds of a partition, read by the simulator itself (not through the
//! node, whose reading is under test): the batches of its segments, from the page cache or
//! from the durable image. The cluster checks compare them across nodes: replicas agree below
//! their high watermarks, and an acks=all acknowledgement is on a majority's durable logs.

use crate::SimDisk;

/// One stored batch: where it is, who wrote it, and its CRC (which covers its records, not
/// its offset or leader epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub leader_epoch: i32,
    pub crc: u32,
}

/// Bytes of a batch header up to and including the last offset delta.
const HEADER_BYTES: usize = 27;
/// Where the CRC-covered part (attributes onward) starts.
const ATTRIBUTES_AT: usize = 21;

/// The CRC field of an encoded batch (as a client built it, or as stored).
pub fn batch_crc(batch: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(batch.get(17..21)?.try_into().ok()?))
}

/// The batches of one segment's bytes, up to the first that does not check out (a torn or
/// unwritten tail).
fn parse_segment(bytes: &[u8], out: &mut Vec<StoredBatch>) {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER_BYTES) {
        let int = |range: std::ops::Range<usize>| {
            i64::from_be_bytes({
                let mut raw = [0u8; 8];
                raw[8 - range.len()..].copy_from_slice(&header[range]);
                raw
            })
        };
        let base_offset = int(0..8);
        let length = int(8..12) as i32;
        let Some(end) = usize::try_from(length)
            .ok()
            .filter(|l| *l >= HEADER_BYTES - 12)
            .map(|l| at + 12 + l)
        else {
            return;
        };
        let Some(batch) = bytes.get(at..end) else {
            return;
        };
        let crc = batch_crc(batch).expect("a whole header");
        if crc32c::crc32c(&batch[ATTRIBUTES_AT..]) != crc {
            return;
        }
        out.push(StoredBatch {
            base_offset,
            last_offset: base_offset + int(23..27) as i32 as i64,
            leader_epoch: int(12..16) as i32,
            crc,
        });
        at = end;
    }
}

/// Segment files of `dir` (`<topic>-<partition>/`), in offset order (their names are their
/// zero-padded base offsets).
fn segments<'a>(disk: &'a SimDisk, dir: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    disk.files_under(dir).filter(|name| name.ends_with(".log"))
}

/// Every batch of the partition in `dir`, from the page cache (what reads see now).
pub fn cached_batches(disk: &SimDisk, dir: &str) -> Vec<StoredBatch> {
    let mut out = Vec::new();
    for name in segments(disk, dir) {
        if let Some(bytes) = disk.contents(name) {
            parse_segment(bytes, &mut out);
        }
    }
    out
}

/// The durable batch of the partition in `dir` that starts at `base_offset`, if a crash of
/// the machine now would keep it.
pub fn durable_batch_at(disk: &SimDisk, dir: &str, base_offset: i64) -> Option<StoredBatch> {
    // The last segment whose base is at or below the offset holds it, if any does.
    let name = segments(disk, dir)
        .filter(|name| {
            let base = name[dir.len()..].trim_end_matches(".log");
            base.parse::<i64>().is_ok_and(|b| b <= base_offset)
        })
        .last()?;
    let mut batches = Vec::new();
    parse_segment(disk.durable_contents(name)?, &mut batches);
    batches.into_iter().find(|b| b.base_offset == base_offset)
}

/// The log start of the partition in `dir` that a crash of the machine now would keep (its
/// `log-start-offset` file, durable), if its start ever moved.
pub fn durable_log_start(disk: &SimDisk, dir: &str) -> Option<i64> {
    let raw = disk.durable_contents(&format!("{dir}log-start-offset"))?;
    let raw = raw.first_chunk::<16>()?;
    let crc = u32::from_be_bytes(raw[12..].try_into().ok()?);
    (crc32c::crc32c(&raw[..12]) == crc)
        .then(|| i64::from_be_bytes(raw[..8].try_into().expect("8 bytes")))
}
