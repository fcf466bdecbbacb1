//! Topics and their partition logs, as found on disk and as created by requests.
//!
//! A partition lives in the directory `<topic>-<partition>/`, like Kafka's: its segments, its
//! recovery point and `partition.metadata`, which holds the topic id and the partition's
//! replicas. These are the replicas this node holds; which topics exist is the metadata
//! image's to say (`crate::metadata`), and the node makes its directories agree with it.

use std::collections::{BTreeMap, BTreeSet};

use crate::disk::{Disk, DiskError, FileId};
use crate::log::{LogConfig, LogError, PartitionLog};
use crate::partition::votes::VoteStore;
use crate::partition::Replica;
use crate::protocol::wire::Uuid;
use crate::raft::wire::GroupId;

const PARTITION_METADATA_FILE: &str = "partition.metadata";
/// Kafka's limit on topic name length.
pub const TOPIC_NAME_LENGTH_MAX: usize = 249;

/// What recovery did, one event per partition, for the operator's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryEvent {
    Recovered {
        topic: String,
        partition: i32,
        segments: usize,
        /// Segments taken from their summaries, unread.
        segments_unread: usize,
        batches: u64,
        truncated_bytes: u64,
    },
    Offline {
        topic: String,
        partition: i32,
        reason: String,
    },
    /// No partition of the topic had its id: a creation or a deletion a crash cut short.
    /// The topic was removed.
    Removed { topic: String },
}

/// A partition log and the offset a sync round makes durable in it: (log id, end, the
/// replica's sync generation). The log id tells a log from a later one of the same name (a
/// topic deleted and created again while the round was in flight), which the round must not
/// touch.
pub(crate) type SyncEnd = (u64, i64, u64);

#[derive(Debug)]
pub(crate) struct Partition {
    /// The log, or why the partition is offline (never served, never truncated).
    pub(crate) log: Result<PartitionLog, String>,
    /// Unique among the logs this node opened or created.
    pub(crate) log_id: u64,
    /// The partition's Raft group on this node (`None` while offline, or before the node
    /// made it).
    pub(crate) replica: Option<Replica>,
    /// The nodes that hold it (its group's voters); empty: every node of the cluster (a
    /// partition made before assignments were recorded).
    pub(crate) replicas: Vec<i32>,
    /// The id in its own `partition.metadata`: a crash can bring back a directory of an
    /// earlier topic of the same name (a removal undone), beside the current one's.
    pub(crate) topic_id: Uuid,
    /// What the node counted for it (metrics).
    pub(crate) counters: super::metrics::PartitionCounters,
}

impl Partition {
    /// Whether its log has anything to sync, a recovery point included.
    fn needs_sync(&self) -> bool {
        self.log.as_ref().is_ok_and(|l| l.needs_sync())
    }

    /// Whether its log has data or directory entries to sync, or its replica waits for a
    /// sync of its log.
    fn needs_data_sync(&self) -> bool {
        self.log.as_ref().is_ok_and(|l| l.needs_data_sync())
            || self.replica.as_ref().is_some_and(|r| r.sync_wanted())
    }
}

#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) id: Uuid,
    /// The partitions this node holds, by index (a node holds only those assigned to it).
    pub(crate) partitions: BTreeMap<i32, Partition>,
}

#[derive(Debug, Default)]
pub(crate) struct Topics {
    pub(crate) by_name: BTreeMap<String, Topic>,
    next_log_id: u64,
    /// Where each log id lives: (topic, partition).
    by_log_id: BTreeMap<u64, (String, i32)>,
    /// Which log id each Raft group drives.
    by_group: BTreeMap<GroupId, u64>,
    /// Logs that may need a sync: written, truncated or created since their last round, or
    /// with a recovery point still behind (pruned once clean). The checks that run every step
    /// look only here, so idle partitions cost nothing per step.
    touched: BTreeSet<u64>,
}

/// Kafka's rule: 1 to 249 characters of [a-zA-Z0-9._-], not "." or "..".
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOPIC_NAME_LENGTH_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The Raft group of a topic's partition.
pub(crate) fn group_id(topic_id: &Uuid, partition: i32) -> GroupId {
    GroupId {
        topic_id: topic_id.0,
        partition,
    }
}

fn partition_dir(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

fn encode_uuid(id: &Uuid) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_uuid(text: &str) -> Option<Uuid> {
    if text.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Uuid(id))
}

/// Reads the topic id and the replicas in `dir`'s `partition.metadata`: `None` if the file
/// is missing or holds no id. The file has no checksum, so a read counts only when three
/// reads in a row return the same bytes (a bit flipped on the way must neither pass for
/// another id nor make the id look lost); a disk that never agrees is a read error.
fn read_topic_id(disk: &mut dyn Disk, dir: &str) -> Result<Option<(Uuid, Vec<i32>)>, DiskError> {
    let file = match disk.open(&format!("{dir}/{PARTITION_METADATA_FILE}")) {
        Ok(file) => file,
        Err(DiskError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = disk.len(file)? as usize;
    let raw = crate::disk::read_agreeing(disk, file, 0, len.min(4096), 3, 16)?;
    let text = String::from_utf8_lossy(&raw);
    let id = (text.lines())
        .find_map(|l| l.strip_prefix("topic_id: "))
        .and_then(decode_uuid);
    let replicas = (text.lines())
        .find_map(|l| l.strip_prefix("replicas: "))
        .map(|list| {
            (list.split(',').filter(|r| !r.is_empty()))
                .filter_map(|r| r.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Ok(id.map(|id| (id, replicas)))
}

/// Writes `partition.metadata` in `dir`; returns the file, to sync. Its text has one length,
/// so writing it again over itself is never torn into something else (no truncation first: a
/// crash may keep a truncation and lose the write after it).
fn write_topic_id(
    disk: &mut dyn Disk,
    dir: &str,
    id: &Uuid,
    replicas: &[i32],
) -> Result<FileId, DiskError> {
    let metadata = disk.create(&format!("{dir}/{PARTITION_METADATA_FILE}"))?;
    let replicas: Vec<String> = replicas.iter().map(i32::to_string).collect();
    let text = format!(
        "version: 0\ntopic_id: {}\nreplicas: {}\n",
        encode_uuid(id),
        replicas.join(",")
    );
    disk.write_at(metadata, 0, text.as_bytes())?;
    Ok(metadata)
}

/// Removes a partition's files and directory.
fn delete_partition(
    disk: &mut dyn Disk,
    name: &str,
    index: i32,
    partition: Partition,
) -> Result<(), LogError> {
    let dir = partition_dir(name, index);
    if let Ok(log) = partition.log {
        log.delete(disk)?;
    }
    // Files an offline partition left behind go too.
    for file in disk.list()? {
        if file.starts_with(&format!("{dir}/")) {
            disk.remove(&file)?;
        }
    }
    // Durable once the data directory is synced: the caller syncs it before it answers, or
    // the partition could come back after a crash.
    disk.remove_dir(&dir)?;
    Ok(())
}

impl Topics {
    pub(crate) fn recover(
        disk: &mut dyn Disk,
        config: LogConfig,
        votes: &VoteStore,
    ) -> Result<(Topics, Vec<RecoveryEvent>), DiskError> {
        let names = disk.list()?;
        // Group files by partition directory.
        let mut dirs: BTreeMap<(String, i32), Vec<String>> = BTreeMap::new();
        for name in &names {
            let Some((dir, _)) = name.split_once('/') else {
                continue;
            };
            let Some((topic, partition)) = dir.rsplit_once('-') else {
                continue;
            };
            let (Ok(partition), true) = (partition.parse::<i32>(), valid_topic_name(topic)) else {
                continue;
            };
            dirs.entry((topic.to_string(), partition))
                .or_default()
                .push(name.clone());
        }
        let mut topics = Topics::default();
        let mut events = Vec::new();
        let mut next_log_id = 0;
        for ((topic_name, partition), files) in dirs {
            let dir = partition_dir(&topic_name, partition);
            let found = read_topic_id(disk, &dir)?;
            let topic = topics
                .by_name
                .entry(topic_name.clone())
                .or_insert_with(|| Topic {
                    id: Uuid::default(),
                    partitions: BTreeMap::new(),
                });
            let id = found.as_ref().map(|(id, _)| *id);
            if let Some(id) = id {
                topic.id = id;
            }
            // No batch can carry an epoch later than the latest this partition's group voted
            // in (unknown if it never voted: a log older than the vote table, or its entry lost).
            let leader_epoch_max = match id {
                Some(id) => votes
                    .epoch_of(&group_id(&id, partition))
                    .unwrap_or(i32::MAX),
                None => i32::MAX,
            };
            let config = LogConfig {
                leader_epoch_max,
                ..config
            };
            let log = match PartitionLog::recover(disk, &dir, &files, config) {
                Ok((log, report)) => {
                    events.push(RecoveryEvent::Recovered {
                        topic: topic_name.clone(),
                        partition,
                        segments: report.segments,
                        segments_unread: report.segments_unread,
                        batches: report.batches,
                        truncated_bytes: report.truncated_bytes,
                    });
                    Ok(log)
                }
                Err(LogError::Disk(e)) => return Err(e),
                Err(e) => {
                    events.push(RecoveryEvent::Offline {
                        topic: topic_name.clone(),
                        partition,
                        reason: e.to_string(),
                    });
                    Err(e.to_string())
                }
            };
            next_log_id += 1;
            topic.partitions.insert(
                partition,
                Partition {
                    log,
                    log_id: next_log_id,
                    replica: None,
                    replicas: found.map(|(_, replicas)| replicas).unwrap_or_default(),
                    topic_id: id.unwrap_or_default(),
                    counters: Default::default(),
                },
            );
        }
        topics.next_log_id = next_log_id;
        // A partition without its `partition.metadata` never finished its creation (the file
        // is synced with the directory, before anything is acknowledged): it goes, and the
        // metadata image makes it again if it is still wanted.
        let unnamed: Vec<(String, i32)> = (topics.by_name.iter())
            .flat_map(|(name, t)| {
                (t.partitions.iter())
                    .filter(|(_, p)| p.topic_id == Uuid::default())
                    .map(move |(index, _)| (name.clone(), *index))
            })
            .filter(|(name, _)| topics.by_name[name].id != Uuid::default())
            .collect();
        for (name, index) in unnamed {
            tracing::warn!(topic = %name, partition = index, "partition without its id: an unfinished creation; removing it");
            let partition = (topics.by_name.get_mut(&name))
                .and_then(|t| t.partitions.remove(&index))
                .expect("listed");
            match delete_partition(disk, &name, index, partition) {
                Ok(()) => {}
                Err(LogError::Disk(e)) => return Err(e),
                Err(e) => return Err(DiskError::Io(e.to_string())),
            }
            events.retain(|e| {
                !matches!(e, RecoveryEvent::Recovered { topic, partition, .. } | RecoveryEvent::Offline { topic, partition, .. } if *topic == name && *partition == index)
            });
        }
        // A topic with no `partition.metadata` left anywhere never finished its creation (the
        // files are synced before CreateTopics answers, or any write to it is acknowledged)
        // or was being deleted: nothing in it was acknowledged and still wanted. It goes.
        let unnamed: Vec<String> = topics
            .by_name
            .iter()
            .filter(|(_, t)| t.id == Uuid::default())
            .map(|(name, _)| name.clone())
            .collect();
        for name in unnamed {
            tracing::warn!(topic = %name, "no partition of the topic has its id: an unfinished creation or deletion; removing it");
            match topics.delete(disk, &name) {
                Ok(()) => {}
                Err(LogError::Disk(e)) => return Err(e),
                Err(e) => return Err(DiskError::Io(e.to_string())),
            }
            events.retain(|e| match e {
                RecoveryEvent::Recovered { topic, .. } | RecoveryEvent::Offline { topic, .. } => {
                    *topic != name
                }
                RecoveryEvent::Removed { .. } => true,
            });
            events.push(RecoveryEvent::Removed { topic: name });
        }
        topics.reindex();
        Ok((topics, events))
    }

    /// After recovery: writes every partition's `partition.metadata` again: where it is
    /// missing (a partition created again), and where it may be only in the page cache (a
    /// failed fsync leaves pages there marked clean). Returns the files written, to sync.
    pub(crate) fn rewrite_metadata(
        &mut self,
        disk: &mut dyn Disk,
    ) -> Result<Vec<FileId>, DiskError> {
        let mut files = Vec::new();
        for (name, topic) in &self.by_name {
            for (index, partition) in &topic.partitions {
                if partition.log.is_ok() {
                    let dir = partition_dir(name, *index);
                    let id = &partition.topic_id;
                    files.push(write_topic_id(disk, &dir, id, &partition.replicas)?);
                }
            }
        }
        Ok(files)
    }

    /// Creates partitions of a topic on disk: (index, replicas) each, unless the node holds
    /// it already. Returns the metadata files written.
    pub(crate) fn create_partitions(
        &mut self,
        disk: &mut dyn Disk,
        name: &str,
        id: Uuid,
        partitions: &[(i32, Vec<i32>)],
        config: LogConfig,
    ) -> Result<Vec<FileId>, LogError> {
        let topic = self
            .by_name
            .entry(name.to_string())
            .or_insert_with(|| Topic {
                id,
                partitions: BTreeMap::new(),
            });
        let mut files = Vec::new();
        for (partition, replicas) in partitions {
            // Taken (by this topic, or another of the name the caller leaves alone).
            if topic.partitions.contains_key(partition) {
                continue;
            }
            let dir = partition_dir(name, *partition);
            let log = PartitionLog::create(disk, &dir, config)?;
            files.push(write_topic_id(disk, &dir, &topic.id, replicas)?);
            self.next_log_id += 1;
            topic.partitions.insert(
                *partition,
                Partition {
                    log: Ok(log),
                    log_id: self.next_log_id,
                    replica: None,
                    replicas: replicas.clone(),
                    topic_id: id,
                    counters: Default::default(),
                },
            );
        }
        self.reindex();
        Ok(files)
    }

    /// Deletes every partition of topic `id`, under whatever name. Returns whether it
    /// deleted any.
    pub(crate) fn delete_id(&mut self, disk: &mut dyn Disk, id: Uuid) -> Result<bool, LogError> {
        let held: Vec<(String, Vec<i32>)> = (self.by_name.iter())
            .map(|(name, t)| {
                let indexes = (t.partitions.iter())
                    .filter(|(_, p)| p.topic_id == id)
                    .map(|(index, _)| *index)
                    .collect();
                (name.clone(), indexes)
            })
            .filter(|(_, indexes): &(String, Vec<i32>)| !indexes.is_empty())
            .collect();
        for (name, indexes) in &held {
            self.delete_partitions(disk, name, indexes)?;
        }
        Ok(!held.is_empty())
    }

    /// Deletes partitions `indexes` of topic `name` (the topic too, once it has none).
    fn delete_partitions(
        &mut self,
        disk: &mut dyn Disk,
        name: &str,
        indexes: &[i32],
    ) -> Result<(), LogError> {
        let Some(topic) = self.by_name.get_mut(name) else {
            return Ok(());
        };
        let removed: Vec<(i32, Partition)> = (indexes.iter())
            .filter_map(|index| Some((*index, topic.partitions.remove(index)?)))
            .collect();
        if topic.partitions.is_empty() {
            self.by_name.remove(name);
        }
        self.reindex();
        for (index, partition) in removed {
            delete_partition(disk, name, index, partition)?;
        }
        Ok(())
    }

    /// Rebuilds the indexes by log id and by group (after topics come or go); every log not
    /// indexed before is touched (a new log, or every log after recovery).
    fn reindex(&mut self) {
        let before = std::mem::take(&mut self.by_log_id);
        for topic in self.by_name.values() {
            for partition in topic.partitions.values() {
                if !before.contains_key(&partition.log_id) {
                    self.touched.insert(partition.log_id);
                }
            }
        }
        self.by_group.clear();
        for (name, topic) in &self.by_name {
            for (index, partition) in &topic.partitions {
                self.by_log_id
                    .insert(partition.log_id, (name.clone(), *index));
                self.by_group
                    .insert(group_id(&partition.topic_id, *index), partition.log_id);
            }
        }
    }

    /// The partition with log id `log_id`, and its topic's id.
    pub(crate) fn by_log_id(&mut self, log_id: u64) -> Option<&mut Partition> {
        let (name, index) = self.by_log_id.get(&log_id)?;
        let topic = self.by_name.get_mut(name)?;
        topic.partitions.get_mut(index)
    }

    /// The topic name and partition index of log `log_id`.
    pub(crate) fn name_index_of(&self, log_id: u64) -> Option<(String, i32)> {
        self.by_log_id.get(&log_id).cloned()
    }

    /// The log id of the partition `group` drives.
    pub(crate) fn log_id_of(&self, group: &GroupId) -> Option<u64> {
        self.by_group.get(group).copied()
    }

    /// Every partition's log id, in the order they were opened.
    pub(crate) fn log_ids(&self) -> Vec<u64> {
        self.by_log_id.keys().copied().collect()
    }

    /// Online partitions without a Raft group yet: (log id, group, replicas).
    pub(crate) fn without_replica(&self) -> Vec<(u64, GroupId, Vec<i32>)> {
        let mut missing = Vec::new();
        for topic in self.by_name.values() {
            for (index, p) in &topic.partitions {
                if p.log.is_ok() && p.replica.is_none() {
                    missing.push((p.log_id, group_id(&p.topic_id, *index), p.replicas.clone()));
                }
            }
        }
        missing
    }

    pub(crate) fn delete(&mut self, disk: &mut dyn Disk, name: &str) -> Result<(), LogError> {
        let Some(topic) = self.by_name.remove(name) else {
            return Ok(());
        };
        self.reindex();
        for (index, partition) in topic.partitions {
            delete_partition(disk, name, index, partition)?;
        }
        Ok(())
    }

    pub(crate) fn get_log(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Option<&mut Result<PartitionLog, String>> {
        Some(&mut self.get(topic, partition)?.log)
    }

    pub(crate) fn get(&mut self, topic: &str, partition: i32) -> Option<&mut Partition> {
        let topic = self.by_name.get_mut(topic)?;
        topic.partitions.get_mut(&partition)
    }

    /// A partition, to look at.
    pub(crate) fn peek(&self, topic: &str, partition: i32) -> Option<&Partition> {
        self.by_name.get(topic)?.partitions.get(&partition)
    }

    pub(crate) fn name_of(&self, id: &Uuid) -> Option<&str> {
        self.by_name
            .iter()
            .find(|(_, t)| t.id == *id || t.partitions.values().any(|p| p.topic_id == *id))
            .map(|(n, _)| n.as_str())
    }

    /// Every partition forgets producers idle for `expiry_ms` or more.
    pub(crate) fn expire_producers(&mut self, now_ms: i64, expiry_ms: i64) {
        for topic in self.by_name.values_mut() {
            for partition in topic.partitions.values_mut() {
                if let Ok(log) = partition.log.as_mut() {
                    log.producers_mut().expire(now_ms, expiry_ms);
                }
            }
        }
    }

    /// Gives each log of `topic` held here its topic's segment and retention settings.
    pub(crate) fn set_policy(
        &mut self,
        topic: &str,
        config: &crate::metadata::configs::TopicConfig,
    ) {
        let Some(t) = self.by_name.get_mut(topic) else {
            return;
        };
        // Retention applies only to cleanup.policy delete (compaction keeps every key's last
        // record however old), and never to internal topics: their coordinators replay them
        // whole (a cluster made before configs existed has `__consumer_offsets` without its
        // cleanup.policy).
        let internal = topic.starts_with("__");
        let (retention_ms, retention_bytes) = match config.delete && !internal {
            true => (config.retention_ms, config.retention_bytes),
            false => (-1, -1),
        };
        for partition in t.partitions.values_mut() {
            if let Ok(log) = partition.log.as_mut() {
                log.set_policy(crate::log::LogPolicy {
                    segment_size_bytes: config.segment_bytes as u64,
                    segment_ms: config.segment_ms,
                    retention_ms,
                    retention_bytes,
                    compact: config.compact,
                    min_compaction_lag_ms: config.min_compaction_lag_ms,
                    delete_retention_ms: config.delete_retention_ms,
                });
            }
        }
    }

    /// One step of compaction at `now_ms` on the compacted logs held here, reading at most
    /// `budget_bytes` in all (each replica cleans its own log, below its high watermark, as
    /// in Kafka). Returns whether a pass is still under way on any of them.
    pub(crate) fn clean_step(
        &mut self,
        disk: &mut dyn crate::disk::Disk,
        now_ms: i64,
        budget_bytes: u64,
    ) -> bool {
        let mut left = budget_bytes;
        let mut under_way = false;
        for topic in self.by_name.values_mut() {
            for partition in topic.partitions.values_mut() {
                let (Ok(log), Some(replica)) = (partition.log.as_mut(), partition.replica.as_mut())
                else {
                    continue;
                };
                if left == 0 {
                    under_way |= log.cleaning();
                    continue;
                }
                match log.clean_step(disk, now_ms, replica.high_watermark(), left) {
                    Ok(read) => left = left.saturating_sub(read),
                    Err(e) => {
                        tracing::warn!(dir = %log.dir(), error = %e, "cleaning failed; tried again at the next check")
                    }
                }
                under_way |= log.cleaning();
                if log.cleaning() || log.needs_data_sync() {
                    // A copy waiting for its sync round needs one, and a rename the next.
                    self.touched.insert(partition.log_id);
                }
            }
        }
        under_way
    }

    /// Retention at `now_ms` on every log held here (or, `rolled_only`, on the logs written
    /// since the last round began that rolled a segment with retention.bytes set), below each
    /// one's high watermark: the logs whose start moved (their Raft groups are told, their
    /// next round writes it).
    pub(crate) fn apply_retention(
        &mut self,
        disk: &mut dyn crate::disk::Disk,
        now_ms: i64,
        rolled_only: bool,
    ) -> Vec<u64> {
        let mut moved = Vec::new();
        // Only the logs written since the last round began can have rolled.
        let places: Vec<(String, i32)> = match rolled_only {
            true => (self.touched.iter())
                .filter_map(|id| self.by_log_id.get(id).cloned())
                .collect(),
            false => (self.by_name.iter())
                .flat_map(|(name, t)| t.partitions.keys().map(|i| (name.clone(), *i)))
                .collect(),
        };
        for (name, index) in places {
            let Some(partition) =
                (self.by_name.get_mut(&name)).and_then(|t| t.partitions.get_mut(&index))
            else {
                continue;
            };
            let (Ok(log), Some(replica)) = (partition.log.as_mut(), partition.replica.as_mut())
            else {
                continue;
            };
            if rolled_only && !log.take_rolled() {
                continue;
            }
            match log.apply_retention(disk, now_ms, replica.high_watermark()) {
                Ok(true) => {
                    replica.raft_mut().handle_log_start(log.log_start_base());
                    moved.push(partition.log_id);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(dir = %log.dir(), error = %e, "retention failed; tried again at the next check")
                }
            }
        }
        for log_id in &moved {
            self.touched.insert(*log_id);
        }
        moved
    }

    /// `log_id`'s log was written (or its replica wants a sync): the next round looks at it.
    pub(crate) fn touch(&mut self, log_id: u64) {
        self.touched.insert(log_id);
    }

    /// The touched partition `log_id`, if it still exists.
    fn touched_partition(&self, log_id: &u64) -> Option<&Partition> {
        let (name, index) = self.by_log_id.get(log_id)?;
        self.by_name.get(name)?.partitions.get(index)
    }

    pub(crate) fn needs_sync(&self) -> bool {
        (self.touched.iter()).any(|id| {
            self.touched_partition(id)
                .is_some_and(Partition::needs_sync)
        })
    }

    /// Whether a log has data or directory entries to sync (not only a recovery point), or
    /// a replica waits for a sync of its log.
    pub(crate) fn needs_data_sync(&self) -> bool {
        (self.touched.iter()).any(|id| {
            self.touched_partition(id)
                .is_some_and(Partition::needs_data_sync)
        })
    }

    /// Forgets touched logs that are clean, and ids of logs gone.
    pub(crate) fn prune_touched(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        self.touched = (touched.into_iter())
            .filter(|id| {
                (self.touched_partition(id)).is_some_and(|p| p.needs_sync() || p.needs_data_sync())
            })
            .collect();
    }

    pub(crate) fn offsets(&self) -> Vec<super::PartitionOffsets> {
        let mut offsets = Vec::new();
        for (name, topic) in &self.by_name {
            for (i, p) in &topic.partitions {
                let log = p.log.as_ref().ok();
                offsets.push(super::PartitionOffsets {
                    topic: name.clone(),
                    partition: *i,
                    log_start_offset: log.map(PartitionLog::log_start_offset),
                    log_end_offset: log.map(PartitionLog::log_end_offset),
                    high_watermark: p.replica.as_ref().map(Replica::high_watermark),
                });
            }
        }
        offsets
    }

    /// The highest producer id any partition has seen.
    pub(crate) fn max_producer_id(&self) -> Option<i64> {
        self.logs()
            .filter_map(|(_, _, log)| log.producers().max_producer_id())
            .max()
    }

    fn logs(&self) -> impl Iterator<Item = (&str, i32, &PartitionLog)> {
        self.by_name.iter().flat_map(|(name, topic)| {
            (topic.partitions.iter())
                .filter_map(move |(i, p)| p.log.as_ref().ok().map(|log| (name.as_str(), *i, log)))
        })
    }

    /// Begins a sync of every log that needs one: the files to sync and, per partition, the
    /// offset they will make durable.
    pub(crate) fn begin_sync(
        &mut self,
        disk: &mut dyn Disk,
    ) -> Result<(Vec<FileId>, Vec<SyncEnd>), LogError> {
        let mut files = Vec::new();
        let mut ends = Vec::new();
        for log_id in self.touched.clone() {
            let Some(partition) = self.by_log_id(log_id) else {
                continue;
            };
            let wanted = (partition.replica.as_mut()).is_some_and(|r| r.take_sync_wanted());
            if let Ok(log) = partition.log.as_mut() {
                if log.needs_sync() || wanted {
                    let (mut log_files, end) = log.begin_sync(disk)?;
                    files.append(&mut log_files);
                    let generation =
                        (partition.replica.as_ref()).map_or(0, |r| r.sync_generation());
                    ends.push((partition.log_id, end, generation));
                }
            }
        }
        Ok((files, ends))
    }

    pub(crate) fn complete_sync(
        &mut self,
        disk: &mut dyn Disk,
        ends: &[SyncEnd],
    ) -> Result<(), LogError> {
        for (log_id, end, _) in ends {
            let Some(p) = self.by_log_id(*log_id) else {
                continue;
            };
            if let Ok(log) = p.log.as_mut() {
                log.complete_sync(disk, *end)?;
            }
        }
        Ok(())
    }

    pub(crate) fn check_invariants(&self) {
        for (_, _, log) in self.logs() {
            assert!(
                log.durable_end_offset() <= log.log_end_offset(),
                "durable offset within the log: {} durable to {}, [{}, {})",
                log.dir(),
                log.durable_end_offset(),
                log.log_start_offset(),
                log.log_end_offset()
            );
            assert!(log.log_start_offset() <= log.log_end_offset());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka() {
        assert!(valid_topic_name("orders.v2_eu-1"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("."));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("has space"));
        assert!(!valid_topic_name("slash/no"));
        assert!(!valid_topic_name(&"x".repeat(250)));
        assert!(valid_topic_name(&"x".repeat(249)));
    }

    #[test]
    fn uuids_survive_their_text_form() {
        let id = Uuid([7, 1, 255, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        assert_eq!(decode_uuid(&encode_uuid(&id)), Some(id));
        assert_eq!(decode_uuid("nothex"), None);
    }
}
