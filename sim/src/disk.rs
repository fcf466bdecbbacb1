//! The simulated disk: every file has a page cache (what reads see) and a durable image (what
//! survives a crash). A sync copies the cache to the durable image; a crash throws the cache
//! away, or, with torn writes on, keeps a random choice of the unsynced sectors, as a real disk
//! that reorders its writes does.
//!
//! Faults, each with a probability the seed chose ([`DiskFaults`]):
//! - a read returns flipped bits (the stored bytes stay intact: the flip happened on the way);
//! - a read fails with an I/O error (a latent sector error that a retry may get past);
//! - while the disk is full ([`SimDisk::set_full`]), creating or writing a file fails;
//! - on crash, unsynced sectors are persisted or lost one by one (torn writes).
//!
//! Sync failures and slow syncs belong to the harness, which decides when and how a sync
//! completes.

use std::collections::BTreeMap;

use keel_core::disk::{Disk, DiskError, FileId};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// A crash persists or loses unsynced data in units of this many bytes.
const SECTOR_BYTES: usize = 512;

/// Per-operation fault probabilities; all zero by default (a perfect disk).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskFaults {
    pub read_flip_probability: f64,
    pub read_error_probability: f64,
    /// Chance that a crash keeps each unsynced sector (0: a crash loses every unsynced write).
    pub torn_write_probability: f64,
}

/// How many faults of each kind the disk injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskFaultCounts {
    pub read_flips: u64,
    pub read_errors: u64,
    pub full_writes: u64,
    pub torn_files: u64,
}

#[derive(Debug, Clone, Default)]
struct SimFile {
    cache: Vec<u8>,
    /// `None`: the file was created but never synced; a crash loses it.
    durable: Option<Vec<u8>>,
    /// The byte range where `cache` may differ from `durable` (besides their lengths): a
    /// sync copies only this, so syncing a growing log costs what was appended, not its size.
    dirty: Option<(usize, usize)>,
    /// Writes and truncations so far: a sync that completes with none since it was issued
    /// leaves the file clean.
    changes: u64,
    /// The issue number of the latest sync applied: an older one completing later adds
    /// nothing (the newer one carried everything the older one did).
    applied_sync: u64,
}

/// A sync issued and not yet completed: what the file held when it was issued, which is what
/// its completion makes durable (Linux: an fsync covers writes made before it was called, not
/// those made while it runs).
#[derive(Debug, Clone)]
pub struct PendingSync {
    file: FileId,
    issued: u64,
    changes: u64,
    len: usize,
    /// The dirty range at issue and the cache's bytes in it.
    range: (usize, usize),
    bytes: Vec<u8>,
}

impl SimFile {
    fn mark_dirty(&mut self, start: usize, end: usize) {
        self.dirty = Some(match self.dirty {
            Some((lo, hi)) => (lo.min(start), hi.max(end)),
            None => (start, end),
        });
    }

    fn is_synced(&self) -> bool {
        self.dirty.is_none()
            && self
                .durable
                .as_ref()
                .is_some_and(|d| d.len() == self.cache.len())
    }
}

#[derive(Debug)]
pub struct SimDisk {
    files: BTreeMap<String, SimFile>,
    open: BTreeMap<FileId, String>,
    next_id: FileId,
    syncs_issued: u64,
    faults: DiskFaults,
    full: bool,
    rng: Xoshiro256PlusPlus,
    counts: DiskFaultCounts,
}

impl Default for SimDisk {
    fn default() -> Self {
        SimDisk::new()
    }
}

impl SimDisk {
    /// A perfect disk.
    pub fn new() -> SimDisk {
        SimDisk::with_faults(0, DiskFaults::default())
    }

    pub fn with_faults(seed: u64, faults: DiskFaults) -> SimDisk {
        SimDisk {
            files: BTreeMap::new(),
            open: BTreeMap::new(),
            next_id: 0,
            syncs_issued: 0,
            faults,
            full: false,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            counts: DiskFaultCounts::default(),
        }
    }

    /// Changes the fault probabilities (the simulator turns them off for its quiet phase).
    pub fn set_faults(&mut self, faults: DiskFaults) {
        self.faults = faults;
    }

    /// While full, creating a file or writing to one fails with [`DiskError::Full`].
    pub fn set_full(&mut self, full: bool) {
        self.full = full;
    }

    pub fn fault_counts(&self) -> DiskFaultCounts {
        self.counts
    }

    fn file(&mut self, id: FileId) -> Result<&mut SimFile, DiskError> {
        let name = self.open.get(&id).ok_or(DiskError::UnknownFile(id))?;
        self.files.get_mut(name).ok_or(DiskError::UnknownFile(id))
    }

    /// Makes the file's current contents durable at once (an fsync issued and completed with
    /// nothing written in between).
    pub fn sync(&mut self, id: FileId) -> Result<(), DiskError> {
        let pending = self.begin_sync(id)?;
        self.finish_sync(pending)
    }

    /// An fsync is issued: what the file holds now is what its completion makes durable.
    pub fn begin_sync(&mut self, id: FileId) -> Result<PendingSync, DiskError> {
        self.syncs_issued += 1;
        let issued = self.syncs_issued;
        let file = self.file(id)?;
        let len = file.cache.len();
        let range = match (&file.durable, file.dirty) {
            (None, _) => (0, len),
            (Some(_), Some((lo, hi))) => (lo.min(len), hi.min(len)),
            (Some(_), None) => (len, len),
        };
        Ok(PendingSync {
            file: id,
            issued,
            changes: file.changes,
            len,
            range,
            bytes: file.cache[range.0..range.1.max(range.0)].to_vec(),
        })
    }

    /// The fsync issued as `pending` completes.
    pub fn finish_sync(&mut self, pending: PendingSync) -> Result<(), DiskError> {
        let file = self.file(pending.file)?;
        if pending.issued <= file.applied_sync {
            return Ok(());
        }
        file.applied_sync = pending.issued;
        let durable = file.durable.get_or_insert_with(Vec::new);
        durable.resize(pending.len, 0);
        let (lo, hi) = pending.range;
        if lo < hi {
            durable[lo..hi].copy_from_slice(&pending.bytes);
        }
        if file.changes == pending.changes {
            file.dirty = None;
        }
        Ok(())
    }

    /// The process (or machine) crashed: every handle is closed and unsynced writes are lost,
    /// or with torn writes on, partly kept, sector by sector.
    pub fn crash(&mut self) {
        self.open.clear();
        let torn = self.faults.torn_write_probability;
        let mut lost = Vec::new();
        for (name, file) in self.files.iter_mut() {
            if file.is_synced() {
                continue;
            }
            let dirty = file.dirty.take();
            let Some(old) = file.durable.take() else {
                // A file never synced survives only if its directory entry happened to be
                // written, and then with whatever sectors made it.
                if torn > 0.0 && self.rng.random_bool(torn) {
                    self.counts.torn_files += 1;
                    let kept = tear(&mut self.rng, torn, &[], &file.cache, (0, file.cache.len()));
                    file.cache.clone_from(&kept);
                    file.durable = Some(kept);
                } else {
                    lost.push(name.clone());
                }
                continue;
            };
            if torn == 0.0 {
                file.cache.clone_from(&old);
                file.durable = Some(old);
                continue;
            }
            self.counts.torn_files += 1;
            let range = dirty.unwrap_or((old.len(), old.len()));
            let kept = tear(&mut self.rng, torn, &old, &file.cache, range);
            file.cache.clone_from(&kept);
            file.durable = Some(kept);
        }
        for name in lost {
            self.files.remove(&name);
        }
    }

    /// Raw access for tests that damage files on purpose.
    pub fn contents_mut(&mut self, name: &str) -> Option<&mut Vec<u8>> {
        self.files.get_mut(name).map(|f| &mut f.cache)
    }

    /// Makes every file durable as it is now (a clean shutdown of the machine).
    pub fn sync_all(&mut self) {
        for file in self.files.values_mut() {
            file.durable = Some(file.cache.clone());
            file.dirty = None;
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }
}

impl Disk for SimDisk {
    fn list(&mut self) -> Result<Vec<String>, DiskError> {
        Ok(self.files.keys().cloned().collect())
    }

    fn open(&mut self, name: &str) -> Result<FileId, DiskError> {
        if !self.files.contains_key(name) {
            return Err(DiskError::NotFound(name.to_string()));
        }
        self.next_id += 1;
        self.open.insert(self.next_id, name.to_string());
        Ok(self.next_id)
    }

    fn create(&mut self, name: &str) -> Result<FileId, DiskError> {
        if !self.files.contains_key(name) {
            if self.full {
                self.counts.full_writes += 1;
                return Err(DiskError::Full);
            }
            self.files.insert(name.to_string(), SimFile::default());
        }
        self.open(name)
    }

    fn len(&mut self, file: FileId) -> Result<u64, DiskError> {
        Ok(self.file(file)?.cache.len() as u64)
    }

    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let faults = self.faults;
        let data = &self.file(file)?.cache;
        let end = offset as usize + buf.len();
        if end > data.len() {
            return Err(DiskError::ShortRead {
                offset,
                wanted_bytes: buf.len(),
                len_bytes: data.len() as u64,
            });
        }
        buf.copy_from_slice(&data[offset as usize..end]);
        if faults.read_error_probability > 0.0
            && self.rng.random_bool(faults.read_error_probability)
        {
            self.counts.read_errors += 1;
            return Err(DiskError::Io("injected read error".into()));
        }
        if !buf.is_empty()
            && faults.read_flip_probability > 0.0
            && self.rng.random_bool(faults.read_flip_probability)
        {
            self.counts.read_flips += 1;
            let bit = self.rng.random_range(0..buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            tracing::debug!(file, offset, len = buf.len(), bit, "injected read flip");
        }
        Ok(())
    }

    fn write_at(&mut self, file: FileId, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        if self.full {
            self.file(file)?;
            self.counts.full_writes += 1;
            return Err(DiskError::Full);
        }
        let file = self.file(file)?;
        let start = offset as usize;
        let end = start + data.len();
        if file.cache.len() < end {
            file.cache.resize(end, 0);
        }
        file.cache[start..end].copy_from_slice(data);
        file.mark_dirty(start, end);
        file.changes += 1;
        Ok(())
    }

    fn truncate(&mut self, file: FileId, len_bytes: u64) -> Result<(), DiskError> {
        let file = self.file(file)?;
        let len = len_bytes as usize;
        if len < file.cache.len() {
            let old_len = file.cache.len();
            file.cache.truncate(len);
            file.mark_dirty(len, old_len);
            file.changes += 1;
        }
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), DiskError> {
        self.files.remove(name);
        self.open.retain(|_, n| n != name);
        Ok(())
    }
}

/// What a crash leaves of a file whose durable image is `old` and whose cache is `new`, when
/// they differ only within `dirty` (and in length): the length is either one, and each sector
/// of the dirty range is kept new with probability `torn`, else old (zeros past the old end).
fn tear(
    rng: &mut Xoshiro256PlusPlus,
    torn: f64,
    old: &[u8],
    new: &[u8],
    dirty: (usize, usize),
) -> Vec<u8> {
    let len = if rng.random_bool(0.5) {
        new.len()
    } else {
        old.len()
    };
    let mut kept = vec![0u8; len];
    let common = old.len().min(len);
    kept[..common].copy_from_slice(&old[..common]);
    let (lo, hi) = (dirty.0.min(len), dirty.1.max(old.len()).min(len));
    let mut start = lo - lo % SECTOR_BYTES;
    while start < hi {
        let end = (start + SECTOR_BYTES).min(len);
        if rng.random_bool(torn) {
            for (at, byte) in kept.iter_mut().enumerate().take(end).skip(start) {
                *byte = new.get(at).copied().unwrap_or(0);
            }
        }
        start = end;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's rule: an fsync makes durable what was written before it was called; a write
    /// made while it runs needs another.
    #[test]
    fn a_sync_covers_what_was_written_before_it_was_issued() {
        let mut disk = SimDisk::new();
        let file = disk.create("f").unwrap();
        disk.write_at(file, 0, b"before").unwrap();
        let pending = disk.begin_sync(file).unwrap();
        disk.write_at(file, 6, b"during").unwrap();
        disk.finish_sync(pending).unwrap();
        disk.crash();
        let file = disk.open("f").unwrap();
        assert_eq!(disk.len(file).unwrap(), 6);
        let mut read = [0u8; 6];
        disk.read_at(file, 0, &mut read).unwrap();
        assert_eq!(&read, b"before");
        // And a sync issued later covers both; an older one completing after it adds nothing.
        disk.write_at(file, 6, b"during").unwrap();
        let older = disk.begin_sync(file).unwrap();
        disk.write_at(file, 0, b"BEFORE").unwrap();
        let newer = disk.begin_sync(file).unwrap();
        disk.finish_sync(newer).unwrap();
        disk.finish_sync(older).unwrap();
        disk.crash();
        let file = disk.open("f").unwrap();
        let mut read = [0u8; 12];
        disk.read_at(file, 0, &mut read).unwrap();
        assert_eq!(&read, b"BEFOREduring");
    }
}
