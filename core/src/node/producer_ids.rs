//! Producer ids: unique for the life of the data directory, never reused after a restart.
//!
//! Ids are handed out from a block whose end is recorded in the `producer-ids` file (8 bytes,
//! big-endian, then their CRC-32C) before any id of the block is: an InitProducerId that opens a
//! new block waits for the sync of that file, like a produce waits for its batch. After a
//! restart the next id is the recorded end, so ids handed out before the crash are behind it;
//! and it is above every producer id found in the logs, in case the file was lost.

use crate::disk::{Disk, DiskError, FileId};

pub(super) const FILE_NAME: &str = "producer-ids";
/// Ids recorded per write of the file.
const BLOCK_SIZE: i64 = 1_000;
const FILE_BYTES: usize = 12;
const READ_ATTEMPTS: usize = 3;

#[derive(Debug)]
pub(super) struct ProducerIds {
    next: i64,
    /// Ids below this are recorded in the file (durably once a sync round covers the write).
    block_end: i64,
    /// Ids below this are durably recorded: they may be handed out at once.
    durable_end: i64,
    file: Option<FileId>,
    /// The ids this node hands out are `residue` modulo `stride`: in a static cluster each
    /// node has its own share of the id space (until the metadata quorum hands out blocks).
    stride: i64,
    residue: i64,
}

impl ProducerIds {
    pub(super) fn recover(
        disk: &mut dyn Disk,
        max_in_logs: Option<i64>,
        (stride, residue): (i64, i64),
    ) -> Result<ProducerIds, DiskError> {
        debug_assert!(stride >= 1 && (0..stride).contains(&residue));
        let recorded = match disk.open(FILE_NAME) {
            Ok(file) if disk.len(file)? >= FILE_BYTES as u64 => {
                // A flipped bit on the way is not a damaged file: read again before giving up.
                let mut recorded = None;
                for _attempt in 0..READ_ATTEMPTS {
                    let mut raw = [0u8; FILE_BYTES];
                    disk.read_at(file, 0, &mut raw)?;
                    let value = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
                    let crc = u32::from_be_bytes(raw[8..].try_into().expect("4 bytes"));
                    if crc32c::crc32c(&raw[..8]) == crc {
                        recorded = Some(value);
                        break;
                    }
                }
                if recorded.is_none() {
                    tracing::error!(
                        "the producer-ids file is damaged; starting above the ids in the logs"
                    );
                }
                recorded
            }
            Ok(_) | Err(DiskError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let next = recorded
            .unwrap_or(0)
            .max(max_in_logs.map_or(0, |m| m.saturating_add(1)));
        tracing::debug!(?recorded, ?max_in_logs, next, "producer ids recovered");
        Ok(ProducerIds {
            next,
            block_end: next,
            durable_end: next,
            file: None,
            stride,
            residue,
        })
    }

    /// The next id; the file written if a new block was recorded (to sync in the next round);
    /// and whether the id may be handed out only after that round (its block is not durable).
    pub(super) fn allocate(
        &mut self,
        disk: &mut dyn Disk,
    ) -> Result<(i64, Option<FileId>, bool), DiskError> {
        let mut wrote = None;
        let id = self.next + (self.residue - self.next).rem_euclid(self.stride);
        if id >= self.block_end {
            let end = id + BLOCK_SIZE * self.stride;
            let file = match self.file {
                Some(file) => file,
                None => disk.create(FILE_NAME)?,
            };
            let mut raw = [0u8; FILE_BYTES];
            raw[..8].copy_from_slice(&end.to_be_bytes());
            let crc = crc32c::crc32c(&raw[..8]);
            raw[8..].copy_from_slice(&crc.to_be_bytes());
            disk.write_at(file, 0, &raw)?;
            self.file = Some(file);
            self.block_end = end;
            wrote = Some(file);
        }
        self.next = id + 1;
        Ok((id, wrote, id >= self.durable_end))
    }

    /// The recorded end as of now: what a sync round starting now makes durable.
    pub(super) fn recorded_end(&self) -> i64 {
        self.block_end
    }

    /// A sync round that started when the recorded end was `end` completed.
    pub(super) fn synced(&mut self, end: i64) {
        self.durable_end = self.durable_end.max(end);
    }

    /// Whether `id` was handed out by this node (now or before a restart).
    pub(super) fn issued(&self, id: i64) -> bool {
        (0..self.next).contains(&id) && id.rem_euclid(self.stride) == self.residue
    }
}
