//! The storage interface the core writes against.
//!
//! Writes land in the "page cache": a read sees them at once, but they are durable only once
//! a sync of their file completed. The core never syncs by itself: it emits
//! `Output::Sync { token, file }` and learns of the result through `Input::Synced`. Two
//! implementations exist: real files with a dedicated fsync thread (`keel-net`) and an
//! in-memory disk with faults (`keel-sim`), so the recovery code that runs in production is
//! the code the simulator tortures.
//!
//! Names are relative paths with `/` separators (`orders-0/00000000000000000000.log`); the
//! implementation maps them to its storage and creates directories as needed.
//!
//! Directories follow Linux: creating or removing a file (or a directory) changes its parent
//! directory, and that change is durable only once the parent is synced. The core opens the
//! directories it changes with [`Disk::open_dir`] (`""` is the data directory itself) and
//! syncs them like files, in the same rounds.

/// A handle to an open file, valid until the file is removed.
pub type FileId = u64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    #[error("no file named {0}")]
    NotFound(String),
    #[error("no open file with id {0}")]
    UnknownFile(FileId),
    #[error(
        "read of {wanted_bytes} bytes at {offset} passes the end of the file ({len_bytes} bytes)"
    )]
    ShortRead {
        offset: u64,
        wanted_bytes: usize,
        len_bytes: u64,
    },
    #[error("disk full")]
    Full,
    #[error("I/O error: {0}")]
    Io(String),
}

pub trait Disk {
    /// Every file's name, in lexicographic order.
    fn list(&mut self) -> Result<Vec<String>, DiskError>;
    /// Opens an existing file.
    fn open(&mut self, name: &str) -> Result<FileId, DiskError>;
    /// Opens a file, creating it empty if it does not exist.
    fn create(&mut self, name: &str) -> Result<FileId, DiskError>;
    /// The file's length in bytes, as reads see it (unsynced writes included).
    fn len(&mut self, file: FileId) -> Result<u64, DiskError>;
    /// Fills `buf` from `offset`; a read past the end is an error.
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Writes `data` at `offset`, extending the file if needed. Durable only after a sync.
    fn write_at(&mut self, file: FileId, offset: u64, data: &[u8]) -> Result<(), DiskError>;
    /// Cuts the file to `len_bytes`. Durable only after a sync.
    fn truncate(&mut self, file: FileId, len_bytes: u64) -> Result<(), DiskError>;
    /// Removes a file (closing it if open). Durable once its directory is synced.
    fn remove(&mut self, name: &str) -> Result<(), DiskError>;
    /// Renames file `from` to `to` in the same directory, replacing `to` if it exists
    /// (atomically: a crash leaves `to` old or new, never neither). Handles of `from` now
    /// name `to`; handles of the replaced `to` are closed. Durable once the directory is
    /// synced; until then a crash may also bring `from` back.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), DiskError>;
    /// Opens a directory, creating it if needed, as a handle to sync: a sync of it makes the
    /// entries created and removed in it durable. `""` is the data directory.
    fn open_dir(&mut self, name: &str) -> Result<FileId, DiskError>;
    /// Removes an empty directory (closing its handles). Durable once its parent is synced.
    fn remove_dir(&mut self, name: &str) -> Result<(), DiskError>;
}

/// Reads `len_bytes` at `offset` until `agreement` reads return the same bytes, for data with
/// no checksum of its own to tell damage on the disk (which reads back the same way) from a
/// bit flipped on the way (which does not). The reads need not be in a row: a flip or a failed
/// read in between does not reset the count. After `attempts_max` reads without agreement it
/// is an error: the last read error, or the disk never agreeing.
pub fn read_agreeing(
    disk: &mut dyn Disk,
    file: FileId,
    offset: u64,
    len_bytes: usize,
    agreement: usize,
    attempts_max: usize,
) -> Result<Vec<u8>, DiskError> {
    let mut seen: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut last_error = None;
    for _ in 0..attempts_max {
        let mut bytes = vec![0u8; len_bytes];
        if let Err(e) = disk.read_at(file, offset, &mut bytes) {
            last_error = Some(e);
            continue;
        }
        let count = match seen.iter_mut().find(|(b, _)| *b == bytes) {
            Some((_, count)) => {
                *count += 1;
                *count
            }
            None => {
                seen.push((bytes.clone(), 1));
                1
            }
        };
        if count >= agreement {
            return Ok(bytes);
        }
    }
    Err(last_error.unwrap_or_else(|| {
        DiskError::Io(format!(
            "{len_bytes} bytes at {offset} read differently every time"
        ))
    }))
}
