//! The `Disk` trait over real files, and the fsync thread.
//!
//! Reads and writes are positional (`pread`/`pwrite`) on the owner task: they hit the page
//! cache. Syncs are slow, so they go to a dedicated thread, which answers each with its token;
//! the owner feeds the answers back to the node as `Input::Synced`. Directories are synced
//! when the node asks (`Disk::open_dir` handles): a file's creation or removal is durable only
//! once its directory is.
//!
//! Descriptors are budgeted. The node names every file it uses by a `FileId` for as long as
//! it likes (each partition's segments, recovery point and metadata), but at most
//! `descriptors_max` of them are open at once: the least recently used is closed when another
//! is needed and opened again, by name, when next used. Only a *clean* file is closed (one
//! whose every write a completed sync covered): Linux reports a failed write-back only to
//! descriptors open when it failed (and forgets it with the inode), so a file closed with
//! unsynced pages could later sync "successfully" through a new descriptor with its data
//! lost. When every open file is dirty, the least recently used is synced here, on the owner
//! task, then closed (rare: it takes more dirty files than the budget between two rounds);
//! if that sync fails, every later sync fails too, and the node halts as it does on any
//! failed sync. The fsync thread shares the owner's descriptor of a dirty file (which stays
//! open until that sync completes), and has nothing to do for a clean one, so syncs in flight
//! take no descriptor of their own. Directories hold none either: the fsync thread opens one
//! to sync it and closes it again (their entries are metadata, which the file system's
//! journal makes durable through any descriptor).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_core::disk::{Disk, DiskError, FileId};
use keel_core::node::SyncToken;

fn io_error(e: std::io::Error) -> DiskError {
    if e.raw_os_error() == Some(28) {
        // ENOSPC
        return DiskError::Full;
    }
    DiskError::Io(e.to_string())
}

pub struct RealDisk {
    root: PathBuf,
    /// Every file and directory the node named (`is_dir` for directories opened to be
    /// synced), open or not.
    files: BTreeMap<FileId, Handle>,
    next_id: FileId,
    /// Open handles by when they were last used: the least recent is closed first.
    open_by_use: BTreeMap<u64, FileId>,
    uses: u64,
    descriptors_max: usize,
    /// Syncs handed to the fsync thread: the file, and its write count when it was issued.
    syncs: BTreeMap<SyncToken, (FileId, u64)>,
    /// A sync made here to close a file failed: nothing can be trusted durable any more.
    poisoned: Option<String>,
    /// How long each fsync took, observed on the fsync thread (metrics).
    fsync_seconds: prometheus_client::metrics::histogram::Histogram,
}

struct Handle {
    name: String,
    /// Shared with the fsync thread while it syncs the file (no second descriptor).
    file: Option<Arc<File>>,
    is_dir: bool,
    /// When it was last used (its key in `open_by_use`, while open).
    used: u64,
    /// Writes and truncations so far, and how many of them a completed sync covered.
    writes: u64,
    synced_writes: u64,
}

impl Handle {
    fn clean(&self) -> bool {
        self.is_dir || self.writes == self.synced_writes
    }
}

impl RealDisk {
    /// A disk rooted at `root` keeping at most `descriptors_max` files open (at least two).
    pub fn open(root: &Path, descriptors_max: usize) -> std::io::Result<RealDisk> {
        std::fs::create_dir_all(root)?;
        Ok(RealDisk {
            root: root.to_path_buf(),
            files: BTreeMap::new(),
            next_id: 0,
            open_by_use: BTreeMap::new(),
            uses: 0,
            descriptors_max: descriptors_max.max(2),
            syncs: BTreeMap::new(),
            poisoned: None,
            fsync_seconds: crate::metrics::fsync_histogram(),
        })
    }

    /// Every fsync's duration so far (shared with the fsync thread, which observes them).
    pub fn fsync_seconds(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.fsync_seconds
    }

    /// Files open now (for tests and metrics).
    pub fn open_descriptors(&self) -> usize {
        self.open_by_use.len()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The open handle of file `id`, opened again if it was closed, and marked as used now.
    fn handle(&mut self, id: FileId) -> Result<&mut Handle, DiskError> {
        let Some(handle) = self.files.get(&id) else {
            return Err(DiskError::UnknownFile(id));
        };
        if handle.is_dir {
            return Err(DiskError::UnknownFile(id));
        }
        let (old_use, reopen) = (handle.used, handle.file.is_none());
        if reopen {
            self.make_room()?;
            let path = self.path(&self.files[&id].name);
            let file = (OpenOptions::new().read(true).write(true).open(&path)).map_err(io_error)?;
            self.files.get_mut(&id).expect("listed").file = Some(Arc::new(file));
        } else {
            self.open_by_use.remove(&old_use);
        }
        self.uses += 1;
        self.open_by_use.insert(self.uses, id);
        let handle = self.files.get_mut(&id).expect("listed");
        handle.used = self.uses;
        Ok(handle)
    }

    fn file(&mut self, id: FileId) -> Result<&File, DiskError> {
        let handle = self.handle(id)?;
        Ok(handle.file.as_deref().expect("open"))
    }

    /// Closes handles until one more may open: the least recently used clean one, or if
    /// none is clean, the least recently used after syncing it here.
    fn make_room(&mut self) -> Result<(), DiskError> {
        while self.open_by_use.len() >= self.descriptors_max {
            let clean = (self.open_by_use.iter())
                .find(|(_, id)| self.files[*id].clean())
                .map(|(used, id)| (*used, *id));
            // Or the least recently used whose sync is not in flight (closing one in flight
            // would not free its descriptor).
            let idle = (self.open_by_use.iter())
                .find(|(_, id)| {
                    (self.files[*id].file.as_ref()).is_some_and(|f| Arc::strong_count(f) == 1)
                })
                .map(|(used, id)| (*used, *id));
            let (used, id) = match (clean, idle) {
                (Some(found), _) => found,
                (None, None) => {
                    // Every open file waits for a sync in flight: one more descriptor for now.
                    tracing::warn!(
                        open = self.open_by_use.len(),
                        "every open file is being synced; the budget is passed"
                    );
                    return Ok(());
                }
                (None, Some((used, id))) => {
                    let handle = self.files.get_mut(&id).expect("listed");
                    let file = handle.file.as_ref().expect("open");
                    let started = std::time::Instant::now();
                    let synced = file.sync_data();
                    (self.fsync_seconds).observe(started.elapsed().as_secs_f64());
                    if let Err(e) = synced {
                        let reason = format!("sync to close {} failed: {e}", handle.name);
                        self.poisoned = Some(reason.clone());
                        return Err(DiskError::Io(reason));
                    }
                    handle.synced_writes = handle.writes;
                    (used, id)
                }
            };
            self.open_by_use.remove(&used);
            self.files.get_mut(&id).expect("listed").file = None;
        }
        Ok(())
    }

    /// What the fsync thread needs to sync `id`: a handle of its own.
    pub fn sync_job(&mut self, token: SyncToken, id: FileId) -> SyncJob {
        if let Some(reason) = &self.poisoned {
            let job = Err(DiskError::Io(reason.clone()));
            return SyncJob {
                token,
                job,
                timed: None,
            };
        }
        let job = match self.files.get(&id) {
            None => Err(DiskError::UnknownFile(id)),
            Some(handle) if handle.is_dir => Ok(Job::Dir(self.path(&handle.name))),
            // Every write is covered by a sync that completed: nothing to do (and the file
            // may well be closed).
            Some(handle) if handle.clean() => Ok(Job::Nothing),
            Some(handle) => {
                let file = Arc::clone(handle.file.as_ref().expect("a dirty file stays open"));
                self.syncs.insert(token, (id, handle.writes));
                Ok(Job::File(file))
            }
        };
        let timed =
            matches!(job, Ok(Job::File(_) | Job::Dir(_))).then(|| self.fsync_seconds.clone());
        SyncJob { token, job, timed }
    }

    /// The fsync thread finished the sync of `token`: if it succeeded, the writes it covered
    /// are durable, and a file with no other write is clean (it may be closed).
    pub fn synced(&mut self, token: SyncToken, ok: bool) {
        let Some((id, writes)) = self.syncs.remove(&token) else {
            return;
        };
        if let Some(handle) = self.files.get_mut(&id).filter(|_| ok) {
            handle.synced_writes = handle.synced_writes.max(writes);
        }
    }

    fn insert(&mut self, name: &str, file: Option<File>, is_dir: bool) -> FileId {
        self.next_id += 1;
        self.uses += 1;
        if file.is_some() {
            self.open_by_use.insert(self.uses, self.next_id);
        }
        self.files.insert(
            self.next_id,
            Handle {
                name: name.to_string(),
                file: file.map(Arc::new),
                is_dir,
                used: self.uses,
                writes: 0,
                synced_writes: 0,
            },
        );
        self.next_id
    }

    /// Forgets every handle of `name` (of a directory if `is_dir`).
    fn forget(&mut self, name: &str, is_dir: bool) {
        let gone: Vec<FileId> = (self.files.iter())
            .filter(|(_, h)| h.is_dir == is_dir && h.name == name)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let handle = self.files.remove(&id).expect("listed");
            if handle.file.is_some() {
                self.open_by_use.remove(&handle.used);
            }
        }
    }

    fn open_with(&mut self, name: &str, create: bool) -> Result<FileId, DiskError> {
        if name.contains("..") || name.starts_with('/') {
            return Err(DiskError::Io(format!("refusing path {name}")));
        }
        let path = self.path(name);
        if create {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io_error)?;
            }
        }
        self.make_room()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    DiskError::NotFound(name.to_string())
                } else {
                    io_error(e)
                }
            })?;
        Ok(self.insert(name, Some(file), false))
    }
}

impl Disk for RealDisk {
    fn list(&mut self) -> Result<Vec<String>, DiskError> {
        let mut names = Vec::new();
        let mut dirs = vec![(self.root.clone(), String::new())];
        while let Some((dir, prefix)) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io_error)? {
                let entry = entry.map_err(io_error)?;
                let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
                if entry.file_type().map_err(io_error)?.is_dir() {
                    dirs.push((entry.path(), format!("{name}/")));
                } else {
                    names.push(name);
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn open(&mut self, name: &str) -> Result<FileId, DiskError> {
        self.open_with(name, false)
    }

    fn create(&mut self, name: &str) -> Result<FileId, DiskError> {
        self.open_with(name, true)
    }

    fn len(&mut self, file: FileId) -> Result<u64, DiskError> {
        Ok(self.file(file)?.metadata().map_err(io_error)?.len())
    }

    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let f = self.file(file)?;
        f.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                DiskError::ShortRead {
                    offset,
                    wanted_bytes: buf.len(),
                    len_bytes: f.metadata().map(|m| m.len()).unwrap_or(0),
                }
            } else {
                io_error(e)
            }
        })
    }

    fn write_at(&mut self, file: FileId, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        // Counted before the write: a write that failed half-way left pages to sync too.
        self.handle(file)?.writes += 1;
        self.file(file)?
            .write_all_at(data, offset)
            .map_err(io_error)
    }

    fn truncate(&mut self, file: FileId, len_bytes: u64) -> Result<(), DiskError> {
        self.handle(file)?.writes += 1;
        self.file(file)?.set_len(len_bytes).map_err(io_error)
    }

    fn remove(&mut self, name: &str) -> Result<(), DiskError> {
        self.forget(name, false);
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), DiskError> {
        for name in [from, to] {
            if name.contains("..") || name.starts_with('/') {
                return Err(DiskError::Io(format!("refusing path {name}")));
            }
        }
        std::fs::rename(self.path(from), self.path(to)).map_err(io_error)?;
        self.forget(to, false);
        for handle in self.files.values_mut() {
            if !handle.is_dir && handle.name == from {
                handle.name = to.to_string();
            }
        }
        Ok(())
    }

    fn open_dir(&mut self, name: &str) -> Result<FileId, DiskError> {
        if name.contains("..") || name.starts_with('/') {
            return Err(DiskError::Io(format!("refusing path {name}")));
        }
        let path = self.path(name);
        std::fs::create_dir_all(&path).map_err(io_error)?;
        Ok(self.insert(name, None, true))
    }

    fn remove_dir(&mut self, name: &str) -> Result<(), DiskError> {
        self.forget(name, true);
        match std::fs::remove_dir(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }
}

/// One sync for the fsync thread.
pub struct SyncJob {
    pub token: SyncToken,
    job: Result<Job, DiskError>,
    /// Where the sync's duration goes, if it makes one (a clean file needs none).
    timed: Option<prometheus_client::metrics::histogram::Histogram>,
}

enum Job {
    /// A dirty file, through the owner's descriptor.
    File(Arc<File>),
    /// A directory, opened for the sync (one gone since has nothing left to make durable:
    /// its parent's sync covers its removal).
    Dir(PathBuf),
    /// A clean file.
    Nothing,
}

impl SyncJob {
    /// Performs the sync (on the fsync thread).
    pub fn run(self) -> (SyncToken, Result<(), DiskError>) {
        let started = std::time::Instant::now();
        let result = self.job.and_then(|job| match job {
            Job::File(file) => file.sync_data().map_err(io_error),
            Job::Dir(path) => match File::open(&path) {
                Ok(dir) => dir.sync_all().map_err(io_error),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(e)),
            },
            Job::Nothing => Ok(()),
        });
        if let Some(histogram) = self.timed {
            histogram.observe(started.elapsed().as_secs_f64());
        }
        (self.token, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many more files than descriptors: every write and read lands, at most the budget is
    /// ever open, and a file with writes no sync covered is never closed (it is synced here
    /// first when nothing else can go).
    #[test]
    fn files_past_the_budget_are_closed_when_clean_and_opened_again_when_used() {
        let root = std::env::temp_dir().join(format!("keel-disk-budget-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut disk = RealDisk::open(&root, 4).unwrap();
        let mut ids = Vec::new();
        let mut token = 0;
        for i in 0..20u8 {
            let id = disk.create(&format!("p-{i}/log")).unwrap();
            disk.write_at(id, 0, &[i; 100]).unwrap();
            assert!(disk.open_descriptors() <= 4);
            if i % 2 == 0 {
                // Half of them synced (as the node's rounds do): those may close.
                token += 1;
                let (t, result) = disk.sync_job(token, id).run();
                result.unwrap();
                disk.synced(t, true);
            }
            ids.push(id);
        }
        for (i, id) in ids.iter().enumerate() {
            let mut buf = [0u8; 100];
            disk.read_at(*id, 0, &mut buf).unwrap();
            assert_eq!(buf, [i as u8; 100]);
            disk.write_at(*id, 100, &[1]).unwrap();
            assert_eq!(disk.len(*id).unwrap(), 101);
            assert!(disk.open_descriptors() <= 4);
        }
        // A file written since its last sync is not clean until a later sync covers it.
        let id = ids[0];
        token += 1;
        let job = disk.sync_job(token, id);
        disk.write_at(id, 101, &[2]).unwrap();
        let (t, result) = job.run();
        result.unwrap();
        disk.synced(t, true);
        assert!(
            !disk.files[&id].clean(),
            "the write after the sync's issue is not covered"
        );
        disk.remove("p-0/log").unwrap();
        assert!(
            disk.read_at(id, 0, &mut [0u8; 1]).is_err(),
            "a removed file is gone"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
