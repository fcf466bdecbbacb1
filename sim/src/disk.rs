//! The simulated disk: every file has a page cache (what reads see) and a durable image (what
//! survives a crash). A sync copies the cache to the durable image; a crash throws the cache
//! away. Faults come later (the simulator issue); this is the model the log's recovery is
//! tested against.

use std::collections::BTreeMap;

use keel_core::disk::{Disk, DiskError, FileId};

#[derive(Debug, Clone, Default)]
struct SimFile {
    cache: Vec<u8>,
    /// `None`: the file was created but never synced; a crash loses it.
    durable: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct SimDisk {
    files: BTreeMap<String, SimFile>,
    open: BTreeMap<FileId, String>,
    next_id: FileId,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn file(&mut self, id: FileId) -> Result<&mut SimFile, DiskError> {
        let name = self.open.get(&id).ok_or(DiskError::UnknownFile(id))?;
        self.files.get_mut(name).ok_or(DiskError::UnknownFile(id))
    }

    /// Makes the file's current contents durable (what an fsync does).
    pub fn sync(&mut self, id: FileId) -> Result<(), DiskError> {
        let file = self.file(id)?;
        file.durable = Some(file.cache.clone());
        Ok(())
    }

    /// The process crashed: unsynced writes are lost, files never synced vanish, and every
    /// handle is closed.
    pub fn crash(&mut self) {
        self.files.retain(|_, f| f.durable.is_some());
        for file in self.files.values_mut() {
            file.cache = file.durable.clone().expect("kept only durable files");
        }
        self.open.clear();
    }

    /// Raw access for tests that damage files on purpose.
    pub fn contents_mut(&mut self, name: &str) -> Option<&mut Vec<u8>> {
        self.files.get_mut(name).map(|f| &mut f.cache)
    }

    /// Makes every file durable as it is now (a clean shutdown of the machine).
    pub fn sync_all(&mut self) {
        for file in self.files.values_mut() {
            file.durable = Some(file.cache.clone());
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
        self.files.entry(name.to_string()).or_default();
        self.open(name)
    }

    fn len(&mut self, file: FileId) -> Result<u64, DiskError> {
        Ok(self.file(file)?.cache.len() as u64)
    }

    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
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
        Ok(())
    }

    fn write_at(&mut self, file: FileId, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let cache = &mut self.file(file)?.cache;
        let end = offset as usize + data.len();
        if cache.len() < end {
            cache.resize(end, 0);
        }
        cache[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn truncate(&mut self, file: FileId, len_bytes: u64) -> Result<(), DiskError> {
        self.file(file)?.cache.truncate(len_bytes as usize);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), DiskError> {
        self.files.remove(name);
        self.open.retain(|_, n| n != name);
        Ok(())
    }
}
