//! The simulated disk: every file has a page cache (what reads see) and a durable image (what
//! survives a crash). A sync copies the cache to the durable image; a crash throws the cache
//! away, or, with torn writes on, keeps a random choice of the unsynced sectors, as a real disk
//! that reorders its writes does.
//!
//! Faults, each with a probability the seed chose ([`DiskFaults`]):
//! - a read returns flipped bits (the stored bytes stay intact: the flip happened on the way);
//! - a read fails with an I/O error (a latent sector error that a retry may get past);
//! - while the disk is full ([`SimDisk::set_full`]), creating or writing a file fails;
//! - on crash, unsynced sectors are persisted or lost one by one (torn writes);
//! - lasting damage, to the files [`SimDisk::set_damageable`] names: on a crash of the
//!   machine, a bit of a stored sector rots, a sector becomes unreadable until it is written
//!   again (a latent sector error), or a whole file is lost; when a sync completes, one sector
//!   of what it wrote never reached the disk (a lost write) or landed elsewhere in the file (a
//!   misdirected write), while the sync reports success. The damaged files are listed
//!   ([`SimDisk::damaged`]) so that a checker can tell damage the node refused to serve from
//!   damage it let pass.
//!
//! Directories follow Linux too: a file's (or a directory's) creation or removal is an entry
//! in its parent directory, durable only once that directory is synced. A crash loses the
//! entries created since (a file with all its synced bytes, a directory with all its files),
//! and brings back the files and directories removed since, as they were last made durable;
//! with torn writes on, each such entry change may have reached the disk anyway.
//!
//! A sync makes durable what was written before it was issued ([`SimDisk::begin_sync`]),
//! not what was written while it ran. Sync failures and slow syncs belong to the harness,
//! which decides when and how a sync completes.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Chance, per crash of the machine, that a bit of a stored sector flips for good.
    pub rot_probability: f64,
    /// Chance, per crash of the machine, that a stored sector becomes unreadable.
    pub latent_error_probability: f64,
    /// Chance, per crash of the machine, that a file is lost.
    pub lost_file_probability: f64,
    /// Chance, per completed sync of a file, that one sector of it never reached the disk.
    pub lost_write_probability: f64,
    /// Chance, per completed sync of a file, that one sector of it landed elsewhere in it.
    pub misdirected_write_probability: f64,
}

impl DiskFaults {
    fn lasting_damage(&self) -> bool {
        self.rot_probability > 0.0
            || self.latent_error_probability > 0.0
            || self.lost_file_probability > 0.0
            || self.lost_write_probability > 0.0
            || self.misdirected_write_probability > 0.0
    }
}

/// How many faults of each kind the disk injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskFaultCounts {
    pub read_flips: u64,
    pub read_errors: u64,
    pub full_writes: u64,
    pub torn_files: u64,
    /// Directory entries a crash undid: created ones lost, removed ones brought back.
    pub lost_entry_changes: u64,
    /// Failed syncs whose unwritten pages stayed in the cache, marked clean.
    pub pages_left_clean: u64,
    pub rotten_sectors: u64,
    pub latent_sector_errors: u64,
    pub lost_files: u64,
    pub lost_writes: u64,
    pub misdirected_writes: u64,
}

impl DiskFaultCounts {
    /// Adds `other`'s counts (a cluster reports its disks together).
    pub fn add(&mut self, other: &DiskFaultCounts) {
        self.read_flips += other.read_flips;
        self.read_errors += other.read_errors;
        self.full_writes += other.full_writes;
        self.torn_files += other.torn_files;
        self.lost_entry_changes += other.lost_entry_changes;
        self.pages_left_clean += other.pages_left_clean;
        self.rotten_sectors += other.rotten_sectors;
        self.latent_sector_errors += other.latent_sector_errors;
        self.lost_files += other.lost_files;
        self.lost_writes += other.lost_writes;
        self.misdirected_writes += other.misdirected_writes;
    }
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
    /// The file's entry in its directory is durable (the directory was synced since the
    /// file was created).
    entry_durable: bool,
    /// A lost or misdirected write left the durable image different from the cache outside
    /// the dirty range: a crash must not keep the cache.
    durable_differs: bool,
    /// The entry came by a rename over a file of the same name: until the directory is
    /// synced a crash keeps either this one or the one it replaced, never neither.
    replaces: bool,
}

/// What a handle refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Handle {
    File(String),
    /// A directory, `""` for the data directory.
    Dir(String),
}

/// The directory part of a name (`""` for a file in the data directory).
fn parent(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// A sync issued and not yet completed: what the file held when it was issued, which is what
/// its completion makes durable (Linux: an fsync covers writes made before it was called, not
/// those made while it runs).
#[derive(Debug, Clone)]
pub struct PendingSync {
    file: FileId,
    what: PendingWhat,
}

#[derive(Debug, Clone)]
enum PendingWhat {
    File {
        issued: u64,
        changes: u64,
        len: usize,
        /// The dirty range at issue and the cache's bytes in it.
        range: (usize, usize),
        bytes: Vec<u8>,
    },
    /// A directory's entry changes as they were at issue: the entries created (files and
    /// directories) and removed.
    Dir {
        created_files: Vec<String>,
        created_dirs: Vec<String>,
        removed_files: Vec<String>,
        removed_dirs: Vec<String>,
    },
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
    /// Directories other than the data directory, and whether each one's entry is durable.
    dirs: BTreeMap<String, bool>,
    /// Files removed while their entry was durable, and that removal is not yet: a crash
    /// brings them back with their durable bytes.
    removed_files: BTreeMap<String, Vec<u8>>,
    /// Directories removed likewise.
    removed_dirs: BTreeSet<String>,
    open: BTreeMap<FileId, Handle>,
    next_id: FileId,
    syncs_issued: u64,
    faults: DiskFaults,
    full: bool,
    rng: Xoshiro256PlusPlus,
    /// Lasting damage draws from its own stream, so that turning it on changes nothing else.
    damage_rng: Xoshiro256PlusPlus,
    /// Which files lasting damage may strike.
    damageable: fn(&str) -> bool,
    /// Files lasting damage struck, with how many times.
    damaged: BTreeMap<String, u64>,
    /// Sectors that fail every read until written again: (file, sector index).
    unreadable: BTreeSet<(String, usize)>,
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
            dirs: BTreeMap::new(),
            removed_files: BTreeMap::new(),
            removed_dirs: BTreeSet::new(),
            open: BTreeMap::new(),
            next_id: 0,
            syncs_issued: 0,
            faults,
            full: false,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            damage_rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6461_6d61_6765),
            damageable: |_| true,
            damaged: BTreeMap::new(),
            unreadable: BTreeSet::new(),
            counts: DiskFaultCounts::default(),
        }
    }

    /// Limits lasting damage to the files `damageable` accepts (every file by default).
    pub fn set_damageable(&mut self, damageable: fn(&str) -> bool) {
        self.damageable = damageable;
    }

    /// Files that lasting damage struck (whether or not anything read them since).
    pub fn damaged(&self) -> impl Iterator<Item = &str> {
        self.damaged.keys().map(String::as_str)
    }

    /// What reads of `name` return now (the page cache), without transient faults; `None`
    /// if it is missing or has a sector no read gets past.
    pub fn contents(&self, name: &str) -> Option<&[u8]> {
        if self.unreadable.iter().any(|(n, _)| n == name) {
            return None;
        }
        Some(&self.files.get(name)?.cache)
    }

    /// What of `name` would survive a crash of the machine now: its durable image, if its
    /// entry in its directory is durable too (the directory's own entry is not looked at).
    /// A file renamed over a durable one whose rename is not durable yet gives its own image:
    /// a crash keeps it or the one it replaced (whose bytes the rename's caller took for the
    /// same, as a cleaned segment is for its original).
    pub fn durable_contents(&self, name: &str) -> Option<&[u8]> {
        let file = self
            .files
            .get(name)
            .filter(|f| f.entry_durable || f.replaces)?;
        file.durable.as_deref()
    }

    /// Names of the files under `dir` (a prefix ending in `/`), in order.
    pub fn files_under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        (self.files.range(dir.to_string()..))
            .map(|(name, _)| name.as_str())
            .take_while(move |name| name.starts_with(dir))
    }

    fn note_damage(&mut self, name: &str) {
        *self.damaged.entry(name.to_string()).or_default() += 1;
    }

    /// Damage at rest, while the machine is down: a rotten bit, an unreadable sector, a lost
    /// file, each with its probability.
    fn damage_at_rest(&mut self) {
        let faults = self.faults;
        let candidates: Vec<String> = (self.files.iter())
            .filter(|(n, f)| (self.damageable)(n) && !f.cache.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        if candidates.is_empty() {
            return;
        }
        if faults.rot_probability > 0.0 && self.damage_rng.random_bool(faults.rot_probability) {
            let name = &candidates[self.damage_rng.random_range(0..candidates.len())];
            let file = self.files.get_mut(name).expect("listed");
            let bit = self.damage_rng.random_range(0..file.cache.len() * 8);
            file.cache[bit / 8] ^= 1 << (bit % 8);
            file.durable = Some(file.cache.clone());
            tracing::debug!(file = %name, bit, "injected rot");
            self.counts.rotten_sectors += 1;
            self.note_damage(&name.clone());
        }
        if faults.latent_error_probability > 0.0
            && self.damage_rng.random_bool(faults.latent_error_probability)
        {
            let name = candidates[self.damage_rng.random_range(0..candidates.len())].clone();
            let len = self.files[&name].cache.len();
            let sector = self.damage_rng.random_range(0..len.div_ceil(SECTOR_BYTES));
            tracing::debug!(file = %name, sector, "injected latent sector error");
            self.unreadable.insert((name.clone(), sector));
            self.counts.latent_sector_errors += 1;
            self.note_damage(&name);
        }
        if faults.lost_file_probability > 0.0
            && self.damage_rng.random_bool(faults.lost_file_probability)
        {
            let name = candidates[self.damage_rng.random_range(0..candidates.len())].clone();
            tracing::debug!(file = %name, "injected lost file");
            self.files.remove(&name);
            self.unreadable.retain(|(n, _)| *n != name);
            self.counts.lost_files += 1;
            self.note_damage(&name);
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
        let Some(Handle::File(name)) = self.open.get(&id) else {
            return Err(DiskError::UnknownFile(id));
        };
        self.files.get_mut(name).ok_or(DiskError::UnknownFile(id))
    }

    /// Makes sure directory `dir` exists (a removed one whose removal is not durable comes
    /// back as the same entry).
    /// Makes sure directory `dir` exists. One created where another of that name was removed
    /// is a new directory: until the parent is synced, a crash may bring back the old one
    /// (with the files removed from it) instead.
    fn ensure_dir(&mut self, dir: &str) {
        if dir.is_empty() || self.dirs.contains_key(dir) {
            return;
        }
        self.dirs.insert(dir.to_string(), false);
    }

    /// Makes the file's current contents durable at once (an fsync issued and completed with
    /// nothing written in between).
    pub fn sync(&mut self, id: FileId) -> Result<(), DiskError> {
        let pending = self.begin_sync(id)?;
        self.finish_sync(pending)
    }

    /// An fsync is issued: what the file (or directory) holds now is what its completion
    /// makes durable.
    pub fn begin_sync(&mut self, id: FileId) -> Result<PendingSync, DiskError> {
        self.syncs_issued += 1;
        let issued = self.syncs_issued;
        if let Some(Handle::Dir(dir)) = self.open.get(&id) {
            let dir = dir.clone();
            let in_dir = |name: &String| parent(name) == dir;
            return Ok(PendingSync {
                file: id,
                what: PendingWhat::Dir {
                    created_files: (self.files.iter())
                        .filter(|(n, f)| !f.entry_durable && in_dir(n))
                        .map(|(n, _)| n.clone())
                        .collect(),
                    created_dirs: (self.dirs.iter())
                        .filter(|(n, durable)| !**durable && in_dir(n))
                        .map(|(n, _)| n.clone())
                        .collect(),
                    removed_files: (self.removed_files.keys())
                        .filter(|n| in_dir(n))
                        .cloned()
                        .collect(),
                    removed_dirs: self
                        .removed_dirs
                        .iter()
                        .filter(|n| in_dir(n))
                        .cloned()
                        .collect(),
                },
            });
        }
        let file = self.file(id)?;
        let len = file.cache.len();
        let range = match (&file.durable, file.dirty) {
            (None, _) => (0, len),
            (Some(_), Some((lo, hi))) => (lo.min(len), hi.min(len)),
            (Some(_), None) => (len, len),
        };
        Ok(PendingSync {
            file: id,
            what: PendingWhat::File {
                issued,
                changes: file.changes,
                len,
                range,
                bytes: file.cache[range.0..range.1.max(range.0)].to_vec(),
            },
        })
    }

    /// The fsync issued as `pending` completes.
    pub fn finish_sync(&mut self, pending: PendingSync) -> Result<(), DiskError> {
        let (issued, changes, len, range, bytes) = match pending.what {
            PendingWhat::File {
                issued,
                changes,
                len,
                range,
                bytes,
            } => (issued, changes, len, range, bytes),
            PendingWhat::Dir {
                created_files,
                created_dirs,
                removed_files,
                removed_dirs,
            } => {
                if !self.open.contains_key(&pending.file) {
                    return Err(DiskError::UnknownFile(pending.file));
                }
                for name in created_files {
                    if let Some(file) = self.files.get_mut(&name) {
                        file.entry_durable = true;
                    }
                }
                for name in created_dirs {
                    if let Some(durable) = self.dirs.get_mut(&name) {
                        *durable = true;
                    }
                }
                for name in removed_files {
                    self.removed_files.remove(&name);
                }
                for name in removed_dirs {
                    // The directory is gone for good, and every entry it still held with it.
                    self.removed_dirs.remove(&name);
                    self.removed_files.retain(|file, _| parent(file) != name);
                }
                return Ok(());
            }
        };
        let file = self.file(pending.file)?;
        if issued <= file.applied_sync {
            return Ok(());
        }
        file.applied_sync = issued;
        let durable = file.durable.get_or_insert_with(Vec::new);
        durable.resize(len, 0);
        let (lo, hi) = range;
        let old = durable[lo..hi].to_vec();
        if lo < hi {
            durable[lo..hi].copy_from_slice(&bytes);
        }
        if file.changes == changes {
            file.dirty = None;
        }
        if lo < hi {
            self.damage_on_write(pending.file, lo, hi, &old);
        }
        Ok(())
    }

    /// A sync just wrote `[lo, hi)` (over `old`) and reports success; with their
    /// probabilities, one sector of it never reached the disk, or landed elsewhere in the file.
    fn damage_on_write(&mut self, id: FileId, lo: usize, hi: usize, old: &[u8]) {
        let faults = self.faults;
        if faults.lost_write_probability == 0.0 && faults.misdirected_write_probability == 0.0 {
            return;
        }
        let Some(Handle::File(name)) = self.open.get(&id).cloned() else {
            return;
        };
        if !(self.damageable)(&name) {
            return;
        }
        let lost = faults.lost_write_probability > 0.0
            && self.damage_rng.random_bool(faults.lost_write_probability);
        let misdirected = !lost
            && faults.misdirected_write_probability > 0.0
            && self
                .damage_rng
                .random_bool(faults.misdirected_write_probability);
        if !lost && !misdirected {
            return;
        }
        let first = lo / SECTOR_BYTES;
        let last = (hi - 1) / SECTOR_BYTES;
        let sector = self.damage_rng.random_range(first..=last);
        let (start, end) = (
            (sector * SECTOR_BYTES).max(lo),
            ((sector + 1) * SECTOR_BYTES).min(hi),
        );
        let file = self.files.get_mut(&name).expect("open");
        let durable = file.durable.as_mut().expect("just synced");
        let written = durable[start..end].to_vec();
        durable[start..end].copy_from_slice(&old[start - lo..end - lo]);
        if misdirected {
            let sectors = durable.len().div_ceil(SECTOR_BYTES);
            let elsewhere = self.damage_rng.random_range(0..sectors) * SECTOR_BYTES;
            let end = (elsewhere + written.len()).min(durable.len());
            durable[elsewhere..end].copy_from_slice(&written[..end - elsewhere]);
            tracing::debug!(file = %name, sector, elsewhere, "injected misdirected write");
            self.counts.misdirected_writes += 1;
        } else {
            tracing::debug!(file = %name, sector, "injected lost write");
            self.counts.lost_writes += 1;
        }
        file.durable_differs = true;
        self.note_damage(&name);
    }

    /// The process (or machine) crashed: every handle is closed, unsynced writes are lost
    /// (or, with torn writes on, partly kept, sector by sector), entries created since their
    /// directory's last sync vanish and entries removed since come back (or, with torn writes
    /// on, each such change may have reached the disk).
    pub fn crash(&mut self) {
        self.open.clear();
        let torn = self.faults.torn_write_probability;
        let lucky = |rng: &mut Xoshiro256PlusPlus| torn > 0.0 && rng.random_bool(torn);
        // Directories: new ones survive only by luck; removed ones come back unless luck
        // made the removal durable, or a new one of the same name survived.
        let durable_before: BTreeSet<String> = (self.dirs.iter())
            .filter(|(_, durable)| **durable)
            .map(|(dir, _)| dir.clone())
            .collect();
        let mut lost_dirs = BTreeSet::new();
        for (dir, durable) in self.dirs.iter_mut() {
            if !*durable && !lucky(&mut self.rng) {
                lost_dirs.insert(dir.clone());
            }
            *durable = true;
        }
        let mut returned_dirs = BTreeSet::new();
        for dir in std::mem::take(&mut self.removed_dirs) {
            let new_one_survives = self.dirs.contains_key(&dir) && !lost_dirs.contains(&dir);
            if !new_one_survives && !lucky(&mut self.rng) {
                returned_dirs.insert(dir);
            }
        }
        for dir in &lost_dirs {
            self.counts.lost_entry_changes += 1;
            self.dirs.remove(dir);
        }
        for dir in &returned_dirs {
            self.counts.lost_entry_changes += 1;
            self.dirs.insert(dir.clone(), true);
        }
        // Removed files come back (with their durable bytes) in their own directory (never
        // in a new one of the same name), unless luck made the removal durable.
        let mut returning = Vec::new();
        for (name, durable) in std::mem::take(&mut self.removed_files) {
            let dir = parent(&name);
            let home = dir.is_empty()
                || returned_dirs.contains(dir)
                || (durable_before.contains(dir) && self.dirs.contains_key(dir));
            if home && !lucky(&mut self.rng) {
                returning.push((name, durable));
            }
        }
        let mut lost = Vec::new();
        for (name, file) in self.files.iter_mut() {
            let dir = parent(name);
            let gone = !dir.is_empty() && !self.dirs.contains_key(dir);
            // Files of a new directory go with it when the old one came back instead.
            if gone || returned_dirs.contains(dir) {
                lost.push(name.clone());
                continue;
            }
            if !file.entry_durable {
                let replaced_one_returns = returning.iter().any(|(n, _)| n == name);
                // A rename's new entry survives when the entry it replaced did not come
                // back (the two are one directory change).
                let kept = match std::mem::take(&mut file.replaces) {
                    true => !replaced_one_returns,
                    false => lucky(&mut self.rng) && !replaced_one_returns,
                };
                if !kept {
                    self.counts.lost_entry_changes += 1;
                    lost.push(name.clone());
                    continue;
                }
                file.entry_durable = true;
            }
            if file.is_synced() {
                if std::mem::take(&mut file.durable_differs) {
                    file.cache
                        .clone_from(file.durable.as_ref().expect("synced"));
                }
                continue;
            }
            file.durable_differs = false;
            let dirty = file.dirty.take();
            let never_synced = file.durable.is_none();
            let old = file.durable.take().unwrap_or_default();
            if torn == 0.0 {
                file.cache.clone_from(&old);
                file.durable = Some(old);
                continue;
            }
            self.counts.torn_files += 1;
            let range = if never_synced {
                (0, file.cache.len())
            } else {
                dirty.unwrap_or((old.len(), old.len()))
            };
            let kept = tear(&mut self.rng, torn, &old, &file.cache, range);
            file.cache.clone_from(&kept);
            file.durable = Some(kept);
        }
        for name in lost {
            tracing::debug!(file = %name, "a crash lost the file's entry");
            self.files.remove(&name);
        }
        for (name, durable) in returning {
            tracing::debug!(file = %name, "a crash undid the file's removal");
            self.files.insert(
                name,
                SimFile {
                    cache: durable.clone(),
                    durable: Some(durable),
                    entry_durable: true,
                    ..SimFile::default()
                },
            );
        }
        self.unreadable
            .retain(|(name, _)| self.files.contains_key(name));
        if self.faults.lasting_damage() {
            self.damage_at_rest();
        }
    }

    /// Raw access for tests that damage files on purpose.
    pub fn contents_mut(&mut self, name: &str) -> Option<&mut Vec<u8>> {
        self.files.get_mut(name).map(|f| &mut f.cache)
    }

    /// The fsync issued as `pending` failed (EIO), as Linux fails one: what it was to write
    /// never reached the disk, yet the pages stay in the cache marked clean, so reads still
    /// see them and a later fsync does not write them again.
    pub fn fail_sync(&mut self, pending: PendingSync) {
        let PendingWhat::File { changes, .. } = pending.what else {
            return;
        };
        if let Ok(file) = self.file(pending.file) {
            if file.changes == changes && file.durable.is_some() {
                file.dirty = None;
                self.counts.pages_left_clean += 1;
            }
        }
    }

    /// The process ended and the machine did not: handles close, the page cache stays.
    pub fn close_all(&mut self) {
        self.open.clear();
    }

    /// Makes every file and entry durable as it is now (a clean shutdown of the machine).
    pub fn sync_all(&mut self) {
        for file in self.files.values_mut() {
            file.durable = Some(file.cache.clone());
            file.dirty = None;
            file.entry_durable = true;
            file.durable_differs = false;
        }
        for durable in self.dirs.values_mut() {
            *durable = true;
        }
        self.removed_files.clear();
        self.removed_dirs.clear();
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
        self.open
            .insert(self.next_id, Handle::File(name.to_string()));
        Ok(self.next_id)
    }

    fn create(&mut self, name: &str) -> Result<FileId, DiskError> {
        if !self.files.contains_key(name) {
            if self.full {
                self.counts.full_writes += 1;
                return Err(DiskError::Full);
            }
            self.ensure_dir(parent(name));
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
        if !self.unreadable.is_empty() && !buf.is_empty() {
            let Some(Handle::File(name)) = self.open.get(&file) else {
                unreachable!("read from an open file");
            };
            let (first, last) = (offset as usize / SECTOR_BYTES, (end - 1) / SECTOR_BYTES);
            if (first..=last).any(|s| self.unreadable.contains(&(name.clone(), s))) {
                return Err(DiskError::Io("latent sector error".into()));
            }
        }
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

    fn write_at(&mut self, id: FileId, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        if self.full {
            self.file(id)?;
            self.counts.full_writes += 1;
            return Err(DiskError::Full);
        }
        let file = self.file(id)?;
        let start = offset as usize;
        let end = start + data.len();
        if file.cache.len() < end {
            file.cache.resize(end, 0);
        }
        file.cache[start..end].copy_from_slice(data);
        file.mark_dirty(start, end);
        file.changes += 1;
        if !self.unreadable.is_empty() && start < end {
            // A write replaces the sector (the drive remaps it; reads now come from the cache).
            let Some(Handle::File(name)) = self.open.get(&id) else {
                unreachable!("written to an open file");
            };
            let name = name.clone();
            let sectors = start / SECTOR_BYTES..=(end - 1) / SECTOR_BYTES;
            self.unreadable
                .retain(|(n, s)| *n != name || !sectors.contains(s));
        }
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
        self.unreadable.retain(|(n, _)| n != name);
        if let Some(file) = self.files.remove(name) {
            if file.entry_durable {
                self.removed_files
                    .insert(name.to_string(), file.durable.unwrap_or_default());
            }
        }
        self.open
            .retain(|_, h| *h != Handle::File(name.to_string()));
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), DiskError> {
        assert_eq!(parent(from), parent(to), "a rename stays in its directory");
        let Some(mut file) = self.files.remove(from) else {
            return Err(DiskError::NotFound(from.to_string()));
        };
        if file.entry_durable {
            // Until the directory is synced, a crash may bring the old name back.
            self.removed_files
                .insert(from.to_string(), file.durable.clone().unwrap_or_default());
        }
        let replaced = self.files.get(to).is_some_and(|f| f.entry_durable);
        self.remove(to)?;
        // The new entry replaces a durable old one at once on the disk: a crash keeps one of
        // them. One that replaces nothing durable is new, and survives a crash only by luck.
        file.entry_durable = false;
        file.replaces = replaced;
        self.unreadable = std::mem::take(&mut self.unreadable)
            .into_iter()
            .map(|(n, s)| {
                if n == from {
                    (to.to_string(), s)
                } else {
                    (n, s)
                }
            })
            .collect();
        self.files.insert(to.to_string(), file);
        for handle in self.open.values_mut() {
            if *handle == Handle::File(from.to_string()) {
                *handle = Handle::File(to.to_string());
            }
        }
        Ok(())
    }

    fn open_dir(&mut self, name: &str) -> Result<FileId, DiskError> {
        if !name.is_empty() && !self.dirs.contains_key(name) && self.full {
            self.counts.full_writes += 1;
            return Err(DiskError::Full);
        }
        self.ensure_dir(name);
        self.next_id += 1;
        self.open
            .insert(self.next_id, Handle::Dir(name.to_string()));
        Ok(self.next_id)
    }

    fn remove_dir(&mut self, name: &str) -> Result<(), DiskError> {
        if self.files.keys().any(|f| parent(f) == name) {
            return Err(DiskError::Io(format!("directory {name} is not empty")));
        }
        if let Some(durable) = self.dirs.remove(name) {
            if durable {
                self.removed_dirs.insert(name.to_string());
            }
        }
        self.open.retain(|_, h| *h != Handle::Dir(name.to_string()));
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
        let root = disk.open_dir("").unwrap();
        disk.sync(root).unwrap();
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

    /// Lasting damage: a lost write leaves the old bytes on the disk although its sync
    /// succeeded (the cache hides it until the machine goes down); an unreadable sector fails
    /// every read until it is written; every damaged file is listed.
    #[test]
    fn lasting_damage_outlives_reads_and_syncs() {
        let faults = DiskFaults {
            lost_write_probability: 1.0,
            ..DiskFaults::default()
        };
        let mut disk = SimDisk::with_faults(7, faults);
        let root = disk.open_dir("").unwrap();
        let file = disk.create("f").unwrap();
        disk.sync(root).unwrap();
        disk.write_at(file, 0, &[1u8; SECTOR_BYTES]).unwrap();
        disk.sync(file).unwrap();
        let mut read = [0u8; SECTOR_BYTES];
        disk.read_at(file, 0, &mut read).unwrap();
        assert_eq!(read, [1u8; SECTOR_BYTES], "the cache still holds the write");
        disk.set_faults(DiskFaults::default());
        disk.crash();
        let file = disk.open("f").unwrap();
        disk.read_at(file, 0, &mut read).unwrap();
        assert_eq!(
            read, [0u8; SECTOR_BYTES],
            "the write never reached the disk"
        );
        assert_eq!(disk.damaged().collect::<Vec<_>>(), vec!["f"]);

        disk.set_faults(DiskFaults {
            latent_error_probability: 1.0,
            ..DiskFaults::default()
        });
        disk.crash();
        disk.set_faults(DiskFaults::default());
        let file = disk.open("f").unwrap();
        for _ in 0..3 {
            assert!(disk.read_at(file, 0, &mut read).is_err());
        }
        assert_eq!(disk.contents("f"), None);
        disk.write_at(file, 0, &[2u8; SECTOR_BYTES]).unwrap();
        disk.read_at(file, 0, &mut read).unwrap();
        assert_eq!(read, [2u8; SECTOR_BYTES], "a write replaces the bad sector");
    }

    /// A file's creation and removal are durable only once its directory is synced.
    #[test]
    fn entries_are_durable_only_once_their_directory_is_synced() {
        let mut disk = SimDisk::new();
        let dir = disk.open_dir("t-0").unwrap();
        let file = disk.create("t-0/a").unwrap();
        disk.write_at(file, 0, b"synced bytes").unwrap();
        disk.sync(file).unwrap();
        disk.crash();
        assert!(disk.names().is_empty(), "the file's entry was never synced");
        let dir = {
            let _ = dir;
            disk.open_dir("t-0").unwrap()
        };
        let file = disk.create("t-0/a").unwrap();
        disk.write_at(file, 0, b"synced bytes").unwrap();
        disk.sync(file).unwrap();
        disk.sync(dir).unwrap();
        disk.crash();
        assert!(
            disk.names().is_empty(),
            "the directory's entry was never synced"
        );
        let dir = disk.open_dir("t-0").unwrap();
        let root = disk.open_dir("").unwrap();
        let file = disk.create("t-0/a").unwrap();
        disk.write_at(file, 0, b"synced bytes").unwrap();
        for id in [file, dir, root] {
            disk.sync(id).unwrap();
        }
        disk.crash();
        assert_eq!(disk.names(), vec!["t-0/a".to_string()]);
        // A removal not yet synced is undone by a crash, with the file's durable bytes.
        disk.remove("t-0/a").unwrap();
        disk.remove_dir("t-0").unwrap();
        disk.crash();
        assert_eq!(disk.names(), vec!["t-0/a".to_string()]);
        assert_eq!(
            disk.contents_mut("t-0/a").unwrap().as_slice(),
            b"synced bytes"
        );
        disk.remove("t-0/a").unwrap();
        disk.remove_dir("t-0").unwrap();
        let root = disk.open_dir("").unwrap();
        disk.sync(root).unwrap();
        disk.crash();
        assert!(disk.names().is_empty(), "the removal was made durable");
    }
}
