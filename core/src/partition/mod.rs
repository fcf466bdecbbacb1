//! A partition replica: the partition's Raft group, driving its log.
//!
//! The partition log *is* the Raft log: a record batch is an entry, the batch header's
//! partition leader epoch is the Raft epoch, the engine's commit index is the high watermark.
//! [`Replica`] holds the engine and what the node needs to know of it (the high watermark, the
//! sync generation); [`Replica::apply`] performs the engine's commands on the log and hands
//! the rest (messages, votes to persist) to the node as [`Effects`]. A node alone is a group of
//! one voter: the same path, with nothing to send.

pub mod votes;

use bytes::Bytes;

use crate::disk::Disk;
use crate::log::{LogError, PartitionLog};
use crate::raft::wire::GroupId;
use crate::raft::{Command, Entry, FetchReply, Message, NodeId, Persisted, Raft, RaftConfig, Role};
use crate::record::{self, split_batches, BatchOptions, NewRecord, RecordBatch};

/// What applying commands leaves for the node to do.
#[derive(Debug, Default)]
pub struct Effects {
    /// Messages for other nodes.
    pub sends: Vec<(NodeId, GroupId, Message)>,
    /// Epochs and votes to make durable (then `Raft::handle_vote_synced`).
    pub votes: Vec<(GroupId, Persisted)>,
    /// The high watermark or the role moved: waiting requests may now be answered.
    pub changed: bool,
    /// The log was written or truncated, or the engine wants it synced.
    pub wrote: bool,
    /// The group became leader: if it may not know what is committed, it appends a marker.
    pub became_leader: bool,
    /// The group started an election (a new epoch, as a candidate).
    pub campaigned: bool,
}

#[derive(Debug)]
pub struct Replica {
    pub group: GroupId,
    raft: Raft,
    high_watermark: i64,
    /// The generation the engine's last `SyncLog` named: the next sync round reports to it.
    sync_generation: u64,
    /// The engine asked for a sync (the log may have nothing else to sync).
    sync_wanted: bool,
    /// A new leader could not append its leader-change marker yet (see
    /// `Node::append_leader_marker`).
    pub marker_wanted: bool,
}

impl Replica {
    /// The group of `log`, starting from what it `persisted`. A log with a later epoch than the
    /// vote table knows (the table lost, or a planted `skip-fsync`) starts in that epoch, with
    /// its vote counted as cast for itself: the epoch must never go back below the log's, and a
    /// vote it may have cast in that epoch must not be cast again for another. (It cannot know
    /// what it voted in later epochs with no entries: a cluster must rebuild such a replica.)
    pub fn new(
        group: GroupId,
        config: RaftConfig,
        persisted: Persisted,
        log: &PartitionLog,
        now_ms: u64,
    ) -> Replica {
        let shape = log.shape();
        let mut persisted = persisted;
        if shape.last_epoch() > persisted.epoch {
            tracing::warn!(
                ?group,
                log_epoch = shape.last_epoch(),
                persisted.epoch,
                "the log is ahead of the vote table"
            );
            persisted = Persisted {
                epoch: shape.last_epoch(),
                voted_for: Some(config.id),
            };
        }
        Replica {
            group,
            raft: Raft::new(config, persisted, shape, now_ms),
            high_watermark: 0,
            sync_generation: 0,
            sync_wanted: false,
            marker_wanted: false,
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn raft_mut(&mut self) -> &mut Raft {
        &mut self.raft
    }

    pub fn is_leader(&self) -> bool {
        self.raft.role() == Role::Leader
    }

    /// The leader epoch: the Raft epoch.
    pub fn leader_epoch(&self) -> i32 {
        self.raft.epoch()
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.raft.leader()
    }

    /// Where this leader's epoch starts in its log (its end, until it appends): everything
    /// any earlier leader committed lies below it.
    pub fn leader_epoch_start(&self) -> Option<i64> {
        if !self.is_leader() {
            return None;
        }
        let shape = self.raft.log();
        let epoch = self.raft.epoch();
        Some(
            (shape.epochs.iter())
                .find(|(e, _)| *e == epoch)
                .map_or(shape.end, |(_, start)| *start),
        )
    }

    /// A leader serves reads once its high watermark reached the start of its epoch: before
    /// that, it may lag what the previous leader showed clients (a new leader learns what is
    /// committed only by committing something of its own), and a client would see the high
    /// watermark go back.
    pub fn serving(&self) -> bool {
        self.leader_epoch_start()
            .is_some_and(|start| self.high_watermark >= start)
    }

    /// A group started again keeps the high watermark its predecessor reached.
    pub fn keep_high_watermark(&mut self, high_watermark: i64) {
        self.high_watermark = self.high_watermark.max(high_watermark);
    }

    /// What consumers may read: committed offsets.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    pub fn sync_generation(&self) -> u64 {
        self.sync_generation
    }

    /// Whether the engine waits for a sync of the log (whether or not it was written).
    pub fn take_sync_wanted(&mut self) -> bool {
        std::mem::take(&mut self.sync_wanted)
    }

    pub fn sync_wanted(&self) -> bool {
        self.sync_wanted
    }

    /// Performs the engine's `commands` on `log`; what only the node can do goes to
    /// `effects`. A log error stops at the failing command (the node takes the partition
    /// offline or halts).
    pub fn apply(
        &mut self,
        disk: &mut dyn Disk,
        log: &mut PartitionLog,
        commands: Vec<Command>,
        now_ms: i64,
        producer_expiry_ms: i64,
        effects: &mut Effects,
    ) -> Result<(), LogError> {
        for command in commands {
            match command {
                Command::Send { to, message } => effects.sends.push((to, self.group, message)),
                Command::SendEntries {
                    to,
                    epoch,
                    high_watermark,
                    from,
                    last_fetched_epoch,
                    max_bytes,
                } => {
                    let entries = match read_entries(disk, log, from, max_bytes) {
                        Ok(entries) => entries,
                        // A read that failed every attempt: no answer this time (the follower
                        // asks again after its fetch times out). Corruption is still fatal.
                        Err(e @ (LogError::Unreadable { .. } | LogError::Disk(_))) => {
                            tracing::warn!(group = ?self.group, error = %e, "entries for a follower unreadable; not answered");
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let message = Message::FetchResponse {
                        epoch,
                        high_watermark,
                        fetch_offset: from,
                        last_fetched_epoch,
                        reply: FetchReply::Entries(entries),
                    };
                    effects.sends.push((to, self.group, message));
                }
                Command::PersistVote { epoch, voted_for } => {
                    effects
                        .votes
                        .push((self.group, Persisted { epoch, voted_for }));
                }
                Command::Append { entries } => {
                    effects.wrote = true;
                    for entry in entries {
                        let batch = RecordBatch::parse(entry.payload)
                            .map_err(|e| LogError::Replicated(e.to_string()))?;
                        let (_, last) = log.append_replicated(disk, &batch)?;
                        if last != entry.last_offset {
                            return Err(LogError::Replicated(format!(
                                "batch ends at {last}, the entry at {}",
                                entry.last_offset
                            )));
                        }
                        let seen_ms = now_ms.max(batch.header().max_timestamp);
                        let header = *batch.header();
                        log.producers_mut()
                            .record(&header, seen_ms, producer_expiry_ms);
                    }
                }
                Command::Reset {
                    offset,
                    epoch,
                    state,
                } => {
                    effects.wrote = true;
                    // State that does not decode (a damaged or buggy peer) leaves nothing known
                    // of producers: their next batches start over.
                    let producers = crate::producers::ProducerStates::decode(state);
                    if producers.is_none() {
                        tracing::warn!(group = ?self.group, "a log start's producer state does not decode");
                    }
                    log.reset_to(disk, offset, epoch, producers.unwrap_or_default())?;
                }
                Command::SendStartAt {
                    to,
                    epoch,
                    high_watermark,
                    fetch_offset,
                    last_fetched_epoch,
                    start,
                    start_epoch,
                } => {
                    let message = Message::FetchResponse {
                        epoch,
                        high_watermark,
                        fetch_offset,
                        last_fetched_epoch,
                        reply: FetchReply::StartAt {
                            offset: start,
                            epoch: start_epoch,
                            state: log.producers().encode_below(start),
                        },
                    };
                    effects.sends.push((to, self.group, message));
                }
                Command::Truncate { offset } => {
                    effects.wrote = true;
                    log.truncate_to(disk, offset)?;
                    // Below the high watermark only under replicated durability, after a
                    // majority lost committed entries (see the engine's log repair).
                    if offset < self.high_watermark {
                        self.high_watermark = offset;
                        effects.changed = true;
                    }
                }
                Command::SyncLog { generation } => {
                    effects.wrote = true;
                    self.sync_generation = generation;
                    self.sync_wanted = true;
                }
                Command::Commit { high_watermark } => {
                    // A group started again (after a full disk) learns the high watermark
                    // anew from below what it had shown: what it showed stays.
                    if high_watermark > self.high_watermark {
                        self.high_watermark = high_watermark;
                        effects.changed = true;
                    }
                    // DeleteRecords markers that just committed move the log start.
                    if log.apply_committed_starts(disk, high_watermark) {
                        self.raft.handle_log_start(log.log_start_base());
                        effects.wrote = true;
                        effects.changed = true;
                    }
                }
                Command::RoleChanged {
                    role,
                    epoch,
                    leader,
                } => {
                    tracing::debug!(group = ?self.group, ?role, epoch, ?leader, "role changed");
                    effects.changed = true;
                    effects.became_leader |= role == Role::Leader;
                    effects.campaigned |= role == Role::Candidate;
                }
            }
        }
        Ok(())
    }
}

/// Whole batches of `log` from `from` (at least one, then up to `max_bytes`), as entries.
fn read_entries(
    disk: &mut dyn Disk,
    log: &mut PartitionLog,
    from: i64,
    max_bytes: usize,
) -> Result<Vec<Entry>, LogError> {
    let end = log.log_end_offset();
    let bytes: Bytes = log.read_for_replica(disk, from, end, max_bytes)?;
    let mut entries = Vec::new();
    for batch in split_batches(bytes) {
        let batch = batch.map_err(|e| LogError::Replicated(e.to_string()))?;
        let raw: &[u8; crate::record::batch::BATCH_HEADER_BYTES] = batch
            .get(..crate::record::batch::BATCH_HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| LogError::Replicated("a batch shorter than its header".into()))?;
        let header = RecordBatch::header_of(raw);
        entries.push(Entry {
            epoch: header.partition_leader_epoch,
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            payload: batch,
        });
    }
    Ok(entries)
}

/// Kafka's leader-change control record (KIP-595), which a new leader appends when it cannot
/// tell what is committed: the high watermark reaches its epoch only by committing something
/// of its epoch. Key: version 0, type 2 (LEADER_CHANGE); value: `LeaderChangeMessage` v0 with
/// the leader's id (the voter lists left empty). Clients skip control batches.
pub fn leader_change_batch(leader: NodeId, timestamp_ms: i64) -> Bytes {
    let mut value = Vec::with_capacity(9);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&leader.to_be_bytes());
    // Two empty compact arrays (voters, granting voters), no tagged fields.
    value.extend_from_slice(&[1, 1, 0]);
    let marker = NewRecord {
        key: Some(Bytes::from_static(&[0, 0, 0, 2])),
        value: Some(Bytes::from(value)),
        ..Default::default()
    };
    let options = BatchOptions {
        base_timestamp: timestamp_ms,
        control: true,
        ..Default::default()
    };
    record::build(&[marker], &options).expect("a one-record batch builds")
}
