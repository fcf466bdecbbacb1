//! The `Disk` trait over real files, and the fsync thread.
//!
//! Reads and writes are positional (`pread`/`pwrite`) on the owner task: they hit the page
//! cache. Syncs are slow, so they go to a dedicated thread, which answers each with its token;
//! the owner feeds the answers back to the node as `Input::Synced`. Directories are synced
//! when the node asks (`Disk::open_dir` handles): a file's creation or removal is durable only
//! once its directory is.

use std::collections::BTreeMap;
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
    /// Open handles: files, and directories opened to be synced (`is_dir`).
    files: BTreeMap<FileId, Handle>,
    next_id: FileId,
}

struct Handle {
    name: String,
    file: File,
    is_dir: bool,
}

impl RealDisk {
    pub fn open(root: &Path) -> std::io::Result<RealDisk> {
        std::fs::create_dir_all(root)?;
        Ok(RealDisk {
            root: root.to_path_buf(),
            files: BTreeMap::new(),
            next_id: 0,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn file(&self, id: FileId) -> Result<&File, DiskError> {
        self.files
            .get(&id)
            .filter(|h| !h.is_dir)
            .map(|h| &h.file)
            .ok_or(DiskError::UnknownFile(id))
    }

    /// What the fsync thread needs to sync `id`: a handle of its own.
    pub fn sync_job(&mut self, token: SyncToken, id: FileId) -> SyncJob {
        let job = match self.files.get(&id) {
            Some(handle) => handle
                .file
                .try_clone()
                .map(|f| (f, handle.is_dir))
                .map_err(io_error),
            None => Err(DiskError::UnknownFile(id)),
        };
        SyncJob { token, job }
    }

    fn insert(&mut self, name: &str, file: File, is_dir: bool) -> FileId {
        self.next_id += 1;
        self.files.insert(
            self.next_id,
            Handle {
                name: name.to_string(),
                file,
                is_dir,
            },
        );
        self.next_id
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
        Ok(self.insert(name, file, false))
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
        self.files.retain(|_, h| h.is_dir || h.name != name);
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    fn open_dir(&mut self, name: &str) -> Result<FileId, DiskError> {
        if name.contains("..") || name.starts_with('/') {
            return Err(DiskError::Io(format!("refusing path {name}")));
        }
        let path = self.path(name);
        std::fs::create_dir_all(&path).map_err(io_error)?;
        let dir = File::open(&path).map_err(io_error)?;
        Ok(self.insert(name, dir, true))
    }

    fn remove_dir(&mut self, name: &str) -> Result<(), DiskError> {
        self.files.retain(|_, h| !(h.is_dir && h.name == name));
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
    /// The handle to sync and whether it is a directory.
    job: Result<(File, bool), DiskError>,
}

impl SyncJob {
    /// Performs the sync (on the fsync thread).
    pub fn run(self) -> (SyncToken, Result<(), DiskError>) {
        let result = self.job.and_then(|(file, is_dir)| {
            if is_dir {
                file.sync_all().map_err(io_error)
            } else {
                file.sync_data().map_err(io_error)
            }
        });
        (self.token, result)
    }
}
