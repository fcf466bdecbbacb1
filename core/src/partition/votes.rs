//! `VoteStore`: the epoch and vote of every Raft group on this node, in one pair of files.
//!
//! Raft's safety rests on a node never voting twice in one epoch, so what it voted must be
//! durable before any answer that depends on it leaves. One table for the whole node costs one
//! sync per round however many groups voted (an election after a restart moves thousands of
//! groups at once), and no file handle per partition.
//!
//! The table is written whole into a new file per generation, `quorum-state-<generation>`,
//! with a CRC-32C over everything before it; recovery takes the valid file of the highest
//! generation. A write can tear its file (a crash, or a failed fsync that reached some pages),
//! and a start cannot know what is durable (after a failed fsync the page cache may show a
//! file that never reached the disk), so no file is ever written over: a new generation is a
//! new file, synced with the data directory, and older files are removed only once a newer
//! one is known durable (its round completed in this start). Two fixed copies written in turn
//! were not enough: the simulator found starts where every choice of copy to overwrite could
//! be the only durable one.

use std::collections::{BTreeMap, BTreeSet};

use crate::disk::{Disk, DiskError, FileId};
use crate::limits;
use crate::raft::wire::GroupId;
use crate::raft::Persisted;

pub const FILE_PREFIX: &str = "quorum-state-";
const MAGIC: &[u8; 4] = b"KQS1";
/// Magic, generation, count.
const HEADER_BYTES: usize = 4 + 8 + 4;
/// Topic id, partition, epoch, voted for (-1: nobody).
const ENTRY_BYTES: usize = 16 + 4 + 4 + 4;
const CRC_BYTES: usize = 4;
/// Reads of a copy before it is taken for torn (or, if reads fail, before the start gives up):
/// a bit flipped on the way fails the CRC once, a torn copy every time.
const READ_ATTEMPTS: usize = 8;

/// A whole table file: its generation and entries.
type Table = (u64, BTreeMap<GroupId, Persisted>);

/// The files a write needs synced (the new file, the data directory) and the entries it
/// makes durable.
pub type VoteWrite = (Vec<FileId>, Vec<(GroupId, Persisted)>);

#[derive(Debug)]
pub struct VoteStore {
    /// The data directory (a new file's entry is durable once it is synced).
    root_dir: FileId,
    /// Every table file on the disk, by generation.
    files: BTreeMap<u64, String>,
    /// The generation written and not yet known durable.
    written: Option<u64>,
    generation: u64,
    table: BTreeMap<GroupId, Persisted>,
    /// Groups whose entry changed since the table was last written.
    changed: BTreeSet<GroupId>,
    /// A group left since the table was last written.
    removed: bool,
}

fn encode(generation: u64, table: &BTreeMap<GroupId, Persisted>) -> Vec<u8> {
    let mut raw = Vec::with_capacity(HEADER_BYTES + table.len() * ENTRY_BYTES + CRC_BYTES);
    raw.extend_from_slice(MAGIC);
    raw.extend_from_slice(&generation.to_be_bytes());
    raw.extend_from_slice(&(table.len() as u32).to_be_bytes());
    for (group, persisted) in table {
        raw.extend_from_slice(&group.topic_id);
        raw.extend_from_slice(&group.partition.to_be_bytes());
        raw.extend_from_slice(&persisted.epoch.to_be_bytes());
        raw.extend_from_slice(&persisted.voted_for.unwrap_or(-1).to_be_bytes());
    }
    let crc = crc32c::crc32c(&raw);
    raw.extend_from_slice(&crc.to_be_bytes());
    raw
}

fn be_i32(raw: &[u8]) -> i32 {
    i32::from_be_bytes(raw[..4].try_into().expect("4 bytes"))
}

/// A copy's generation and table, if it is whole.
/// A whole table file's generation and entries, if it is whole (the simulator reads durable
/// copies with it to check that votes were durable before they were used).
pub fn decode_table(raw: &[u8]) -> Option<(u64, BTreeMap<GroupId, Persisted>)> {
    decode(raw)
}

fn decode(raw: &[u8]) -> Option<Table> {
    if raw.len() < HEADER_BYTES + CRC_BYTES || &raw[..4] != MAGIC {
        return None;
    }
    let count = u32::from_be_bytes(raw[12..16].try_into().ok()?) as usize;
    if count > limits::RAFT_GROUPS_PER_NODE_MAX {
        return None;
    }
    let body = HEADER_BYTES + count * ENTRY_BYTES;
    if raw.len() < body + CRC_BYTES {
        return None;
    }
    let crc = u32::from_be_bytes(raw[body..body + CRC_BYTES].try_into().ok()?);
    if crc32c::crc32c(&raw[..body]) != crc {
        return None;
    }
    let generation = u64::from_be_bytes(raw[4..12].try_into().ok()?);
    let mut table = BTreeMap::new();
    for entry in raw[HEADER_BYTES..body].chunks_exact(ENTRY_BYTES) {
        let group = GroupId {
            topic_id: entry[..16].try_into().ok()?,
            partition: be_i32(&entry[16..]),
        };
        let voted_for = be_i32(&entry[24..]);
        let persisted = Persisted {
            epoch: be_i32(&entry[20..]),
            voted_for: (voted_for >= 0).then_some(voted_for),
        };
        table.insert(group, persisted);
    }
    Some((generation, table))
}

/// What one copy holds: `Ok(None)` when it is empty or torn.
fn read_copy(disk: &mut dyn Disk, file: FileId) -> Result<Option<Table>, DiskError> {
    let len = disk.len(file)? as usize;
    if len == 0 {
        return Ok(None);
    }
    let mut last_error = None;
    for _ in 0..READ_ATTEMPTS {
        let mut raw = vec![0u8; len];
        match disk.read_at(file, 0, &mut raw) {
            Ok(()) => {
                if let Some(copy) = decode(&raw) {
                    return Ok(Some(copy));
                }
            }
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        // Never read: it cannot be told from a torn copy, and the other copy may hold all.
        Some(e) => Err(e),
        None => Ok(None),
    }
}

impl VoteStore {
    /// Reads the table files and keeps the whole one of the highest generation.
    pub fn recover(disk: &mut dyn Disk) -> Result<VoteStore, DiskError> {
        let root_dir = disk.open_dir("")?;
        let mut files = BTreeMap::new();
        for name in disk.list()? {
            let Some(generation) = name.strip_prefix(FILE_PREFIX) else {
                continue;
            };
            if let Ok(generation) = generation.parse::<u64>() {
                files.insert(generation, name);
            }
        }
        // The newest whole file wins; a newer one that cannot be read could be the latest,
        // so a start does not go on past it.
        let mut found = None;
        for (file_generation, name) in files.iter().rev() {
            let file = disk.open(name)?;
            if let Some((generation, table)) = read_copy(disk, file)? {
                if generation == *file_generation {
                    found = Some((generation, table));
                    break;
                }
            }
        }
        // A file newer than every whole one is torn: its generation is never used again.
        let generation_max = files.keys().next_back().copied().unwrap_or(0);
        let (_, table) = found.unwrap_or((0, BTreeMap::new()));
        tracing::debug!(
            files = files.len(),
            groups = table.len(),
            "vote table recovered"
        );
        Ok(VoteStore {
            root_dir,
            files,
            written: None,
            generation: generation_max,
            table,
            changed: BTreeSet::new(),
            removed: false,
        })
    }

    /// What `group` last persisted (epoch 0 and no vote if nothing).
    pub fn get(&self, group: &GroupId) -> Persisted {
        self.table.get(group).copied().unwrap_or_default()
    }

    /// The epoch `group` last persisted, if it ever voted here.
    pub fn epoch_of(&self, group: &GroupId) -> Option<i32> {
        self.table.get(group).map(|p| p.epoch)
    }

    pub fn set(&mut self, group: GroupId, persisted: Persisted) {
        if self.table.insert(group, persisted) != Some(persisted) {
            self.changed.insert(group);
        }
    }

    /// A group that left this node (its topic deleted).
    pub fn remove(&mut self, group: &GroupId) {
        if self.table.remove(group).is_some() {
            self.changed.remove(group);
            self.removed = true;
        }
    }

    pub fn needs_sync(&self) -> bool {
        !self.changed.is_empty() || self.removed
    }

    /// Writes the table into a new file; returns what to sync (the file and the data
    /// directory) and the entries that changed since the last write, durable once the sync
    /// completes.
    pub fn begin_sync(&mut self, disk: &mut dyn Disk) -> Result<Option<VoteWrite>, DiskError> {
        if !self.needs_sync() {
            return Ok(None);
        }
        self.removed = false;
        self.generation += 1;
        let name = format!("{FILE_PREFIX}{:020}", self.generation);
        let file = disk.create(&name)?;
        disk.write_at(file, 0, &encode(self.generation, &self.table))?;
        self.files.insert(self.generation, name);
        self.written = Some(self.generation);
        let changed = std::mem::take(&mut self.changed);
        let changed = changed.into_iter().map(|g| (g, self.table[&g])).collect();
        Ok(Some((vec![file, self.root_dir], changed)))
    }

    /// The round that carried the last write completed: that file is durable, and older
    /// ones go. Returns whether any went (their removal is durable once the data directory
    /// is synced again; one that comes back is older, and ignored).
    pub fn synced(&mut self, disk: &mut dyn Disk) -> Result<bool, DiskError> {
        let Some(durable) = self.written.take() else {
            return Ok(false);
        };
        let older: Vec<u64> = self.files.range(..durable).map(|(g, _)| *g).collect();
        for generation in &older {
            let name = self.files.remove(generation).expect("listed");
            match disk.remove(&name) {
                Ok(()) | Err(DiskError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(!older.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: u8, partition: i32) -> GroupId {
        GroupId {
            topic_id: [n; 16],
            partition,
        }
    }

    #[test]
    fn copies_round_trip_and_a_torn_one_is_refused() {
        let mut table = BTreeMap::new();
        table.insert(
            group(1, 0),
            Persisted {
                epoch: 4,
                voted_for: Some(2),
            },
        );
        table.insert(
            group(2, 7),
            Persisted {
                epoch: 9,
                voted_for: None,
            },
        );
        let raw = encode(5, &table);
        assert_eq!(decode(&raw), Some((5, table.clone())));
        for cut in 0..raw.len() {
            assert_eq!(decode(&raw[..cut]), None, "cut at {cut}");
        }
        for bit in 0..raw.len() * 8 {
            let mut flipped = raw.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(decode(&flipped), Some((5, table.clone())), "bit {bit}");
        }
    }
}
