//! The `Disk` trait over real files, and the fsync thread.
//!
//! Reads and writes are positional (`pread`/`pwrite`) on the owner task: they hit the page
//! cache. Syncs are slow, so they go to a dedicated thread, which answers each with its token;
//! the owner feeds the answers back to the node as `Input::Synced`. A file created since its
//! last sync also gets its directory synced, so the file's existence is durable too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
    files: BTreeMap<FileId, (String, File)>,
    /// Files created and not yet synced: their directory needs a sync too.
    created: BTreeSet<String>,
    next_id: FileId,
}

impl RealDisk {
    pub fn open(root: &Path) -> std::io::Result<RealDisk> {
        std::fs::create_dir_all(root)?;
        Ok(RealDisk {
            root: root.to_path_buf(),
            files: BTreeMap::new(),
            created: BTreeSet::new(),
            next_id: 0,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn file(&self, id: FileId) -> Result<&File, DiskError> {
        self.files
            .get(&id)
            .map(|(_, f)| f)
            .ok_or(DiskError::UnknownFile(id))
    }

    /// What the fsync thread needs to sync `id`: a handle of its own, and the directory if
    /// the file is new.
    pub fn sync_job(&mut self, token: SyncToken, id: FileId) -> SyncJob {
        let job = match self.files.get(&id) {
            Some((name, file)) => {
                let dir = if self.created.remove(name) {
                    self.path(name).parent().map(Path::to_path_buf)
                } else {
                    None
                };
                file.try_clone().map(|f| (f, dir)).map_err(io_error)
            }
            None => Err(DiskError::UnknownFile(id)),
        };
        SyncJob { token, job }
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
        let existed = path.exists();
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
        if !existed {
            self.created.insert(name.to_string());
        }
        self.next_id += 1;
        self.files.insert(self.next_id, (name.to_string(), file));
        Ok(self.next_id)
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
        self.file(file)?
            .write_all_at(data, offset)
            .map_err(io_error)
    }

    fn truncate(&mut self, file: FileId, len_bytes: u64) -> Result<(), DiskError> {
        self.file(file)?.set_len(len_bytes).map_err(io_error)
    }

    fn remove(&mut self, name: &str) -> Result<(), DiskError> {
        self.files.retain(|_, (n, _)| n != name);
        self.created.remove(name);
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e)),
        }
        // Remove the partition directory once it is empty.
        if let Some(parent) = self.path(name).parent() {
            if parent != self.root {
                let _ = std::fs::remove_dir(parent);
            }
        }
        Ok(())
    }
}

/// One sync for the fsync thread.
pub struct SyncJob {
    pub token: SyncToken,
    job: Result<(File, Option<PathBuf>), DiskError>,
}

impl SyncJob {
    /// Performs the sync (on the fsync thread).
    pub fn run(self) -> (SyncToken, Result<(), DiskError>) {
        let result = self.job.and_then(|(file, dir)| {
            file.sync_data().map_err(io_error)?;
            if let Some(dir) = dir {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_error)?;
            }
            Ok(())
        });
        (self.token, result)
    }
}
