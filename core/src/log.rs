//! The partition log: record batches, stored byte for byte as clients sent them (with base
//! offset and leader epoch stamped), in segment files named by their base offset.
//!
//! ```text
//! <topic>-<partition>/00000000000000000000.log    batches from offset 0
//! <topic>-<partition>/00000000000000004096.log    batches from offset 4096 (rolled at segment size)
//! <topic>-<partition>/recovery-point              the offset below which the log was synced
//! ```
//!
//! Indexes live in memory: a sparse offset index (one entry per `index_interval_bytes` of
//! log, mapping a batch's base offset to its position) and, in the same entries, the largest
//! timestamp so far, which serves as the time index. They are rebuilt from the log on every
//! start, so they can never disagree with it.
//!
//! Recovery reads every batch of every segment and verifies its CRC. The recovery point splits
//! the log in two: before it, everything was synced, so a bad batch there (a bad CRC, a length
//! that runs past the file, a gap between segments, a missing first segment) is corruption:
//! the partition goes offline with an error naming the file and position, and nothing is cut.
//! At or after it, writes may have been lost or torn by the crash, so the log is cut at the
//! first bad batch (a torn tail): those bytes were never acknowledged. A batch's length is
//! outside its CRC, so a batch that seems to run past the end of the file below the recovery
//! point is damage, never a tail to cut.

use bytes::{Bytes, BytesMut};

use crate::disk::{Disk, DiskError, FileId};
use crate::producers::{txn_marker_of, AbortedTxn, ProducerStates};
use crate::record::{BatchHeader, RecordBatch, DECOMPRESSED_BATCH_SIZE_MAX_BYTES};

mod cleaner;
mod summary;

const BATCH_HEADER_BYTES: usize = crate::record::batch::BATCH_HEADER_BYTES;
const BATCH_LENGTH_PREFIX_BYTES: i64 = crate::record::batch::BATCH_LENGTH_PREFIX_BYTES as i64;
const SEGMENT_SUFFIX: &str = ".log";
const RECOVERY_POINT_FILE: &str = "recovery-point";
const RECOVERY_POINT_BYTES: usize = 12;
/// The log start offset and the leader epoch in force there, with a CRC: written when
/// retention, DeleteRecords or a follower's reset moves the start (one sector, written whole).
const LOG_START_FILE: &str = "log-start-offset";
const LOG_START_BYTES: usize = 16;
/// What was known of idempotent producers from the batches below the log start (which
/// recovery can no longer read), written with the start: its length and CRC, then
/// `ProducerStates::encode_below`.
const PRODUCER_SNAPSHOT_FILE: &str = "producer-snapshot";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// A new segment starts once the active one would pass this size.
    pub segment_size_bytes: u64,
    /// The active segment rolls once its first batch is this old (segment.ms), so that
    /// retention can reach it.
    pub segment_ms: i64,
    /// Whole segments below the high watermark whose newest batch is older than this are
    /// deleted (retention.ms; negative: never).
    pub retention_ms: i64,
    /// The oldest segments below the high watermark are deleted while the log would still
    /// hold this many bytes without them (retention.bytes; negative: no limit).
    pub retention_bytes: i64,
    /// Log bytes between two offset-index entries.
    pub index_interval_bytes: u64,
    /// A producer id is forgotten by a partition once its last batch is this old (Kafka's
    /// `producer.id.expiration.ms`); its next batch must then start over at sequence 0.
    pub producer_id_expiration_ms: i64,
    /// The planted bug `cut-synced` (`node::PlantedBug::CutSynced`); only the simulator
    /// sets it.
    pub planted_cut_synced: bool,
    /// The planted bug `retention-early` (`node::PlantedBug::RetentionEarly`).
    pub planted_retention_early: bool,
    /// cleanup.policy contains compact: the cleaner keeps each key's last record.
    pub compact: bool,
    /// A segment is cleaned once its newest batch is this old (min.compaction.lag.ms).
    pub min_compaction_lag_ms: i64,
    /// A tombstone that is its key's last record is kept until its segment's newest batch
    /// is this old (delete.retention.ms).
    pub delete_retention_ms: i64,
    /// The planted bug `cleaner-drops-newest` (`node::PlantedBug::CleanerDropsNewest`).
    pub planted_cleaner_drops_newest: bool,
    /// The latest leader epoch this node knows: a stored batch with a later one is damaged
    /// (its epoch is outside the CRC).
    pub leader_epoch_max: i32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_size_bytes: 1 << 30,
            segment_ms: 604_800_000,
            retention_ms: -1,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            producer_id_expiration_ms: 86_400_000,
            planted_cut_synced: false,
            planted_retention_early: false,
            compact: false,
            min_compaction_lag_ms: 0,
            delete_retention_ms: 86_400_000,
            planted_cleaner_drops_newest: false,
            leader_epoch_max: i32::MAX,
        }
    }
}

/// A log's share of its topic's configs ([`PartitionLog::set_policy`]); the fields are
/// [`LogConfig`]'s of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPolicy {
    pub segment_size_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub compact: bool,
    pub min_compaction_lag_ms: i64,
    pub delete_retention_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("disk: {0}")]
    Disk(#[from] DiskError),
    #[error("corrupt batch in {file} at position {position} (before the recovery point {recovery_point}): {reason}")]
    Corrupt {
        file: String,
        position: u64,
        recovery_point: i64,
        reason: String,
    },
    #[error("cannot read {file} at position {position}: {reason}")]
    Unreadable {
        file: String,
        position: u64,
        reason: String,
    },
    #[error("a truncation waits for its sync round; nothing can be appended before it")]
    TruncationPending,
    #[error("a replicated batch does not fit the log: {0}")]
    Replicated(String),
    #[error("offset {offset} is not where a batch starts")]
    NotABatchBoundary { offset: i64 },
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexEntry {
    base_offset: i64,
    position: u64,
    /// The largest batch max-timestamp at or before this entry's batch.
    max_timestamp_so_far: i64,
}

#[derive(Debug)]
struct Segment {
    name: String,
    file: FileId,
    base_offset: i64,
    /// One past the last offset in the segment.
    next_offset: i64,
    size_bytes: u64,
    max_timestamp: i64,
    /// The max timestamp of its first batch (segment.ms counts from it, as Kafka's does).
    first_timestamp: i64,
    index: Vec<IndexEntry>,
    bytes_since_index_entry: u64,
    /// Each leader epoch that starts in the segment, with its first offset here.
    epochs: Vec<(i32, i64)>,
    /// DeleteRecords markers in the segment: (offset, the start it names).
    markers: Vec<(i64, i64)>,
    /// The transactions whose abort markers lie in the segment, in offset order (Kafka's
    /// per-segment aborted-transaction index).
    aborted: Vec<AbortedTxn>,
    /// Where its last batch starts and the CRC in that batch's header (`None` after a
    /// truncation: then no summary is written for it).
    last_batch: Option<(u64, u32, u32)>,
}

impl Segment {
    fn empty(name: String, file: FileId, base_offset: i64) -> Segment {
        Segment {
            name,
            file,
            base_offset,
            next_offset: base_offset,
            size_bytes: 0,
            max_timestamp: -1,
            first_timestamp: -1,
            index: Vec::new(),
            bytes_since_index_entry: 0,
            epochs: Vec::new(),
            markers: Vec::new(),
            aborted: Vec::new(),
            last_batch: None,
        }
    }

    fn note_batch(
        &mut self,
        header: &BatchHeader,
        position: u64,
        size_bytes: u64,
        index_interval_bytes: u64,
    ) {
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        if self.index.is_empty() {
            self.first_timestamp = header.max_timestamp;
        }
        if self.index.is_empty() || self.bytes_since_index_entry >= index_interval_bytes {
            self.index.push(IndexEntry {
                base_offset: header.base_offset,
                position,
                max_timestamp_so_far: self.max_timestamp,
            });
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += size_bytes;
        self.next_offset = header.last_offset() + 1;
        self.size_bytes = position + size_bytes;
        if self.epochs.last().map(|(e, _)| *e) != Some(header.partition_leader_epoch) {
            self.epochs
                .push((header.partition_leader_epoch, header.base_offset));
        }
        self.last_batch = Some((position, header.crc, batch_identity(header)));
    }

    /// What recovery needs of it once it is closed, if it can be told.
    fn summary(&self) -> Option<summary::Summary> {
        let (last_batch_position, last_batch_crc, last_batch_id) = self.last_batch?;
        Some(summary::Summary {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            size_bytes: self.size_bytes,
            max_timestamp: self.max_timestamp,
            first_timestamp: self.first_timestamp,
            last_batch_position,
            last_batch_crc,
            last_batch_id,
            epochs: self.epochs.clone(),
            markers: self.markers.clone(),
            aborted: self.aborted.clone(),
            index: self.index.clone(),
        })
    }

    /// The segment a summary describes.
    fn from_summary(name: String, file: FileId, summary: summary::Summary) -> Segment {
        Segment {
            name,
            file,
            base_offset: summary.base_offset,
            next_offset: summary.next_offset,
            size_bytes: summary.size_bytes,
            max_timestamp: summary.max_timestamp,
            first_timestamp: summary.first_timestamp,
            index: summary.index,
            bytes_since_index_entry: 0,
            epochs: summary.epochs,
            markers: summary.markers,
            aborted: summary.aborted,
            last_batch: Some((
                summary.last_batch_position,
                summary.last_batch_crc,
                summary.last_batch_id,
            )),
        }
    }

    /// The base offset and position of the last indexed batch starting at or before `offset`.
    fn index_entry(&self, offset: i64) -> (i64, u64) {
        let at = self.index.partition_point(|e| e.base_offset <= offset);
        if at == 0 {
            (self.base_offset, 0)
        } else {
            (self.index[at - 1].base_offset, self.index[at - 1].position)
        }
    }
}

/// Why a stored batch failed its check on recovery.
struct BadBatch {
    reason: String,
    /// The disk failed to read: nothing is known about the batch.
    read_error: Option<DiskError>,
    /// A digest of the bytes that were read, to tell damage on the disk (read back the same
    /// way) from a flip on the way.
    evidence: u32,
}

/// How many times a read that looks bad is tried again: a bit flipped on the way from the disk,
/// or a read that failed, is not damage on the disk.
const RECOVERY_READ_ATTEMPTS: usize = 3;
/// Recovery believes a batch is damaged on the disk only when this many reads return the same
/// bad bytes: damage on the disk reads back the same way every time, a flip on the way does
/// not. Two was not enough: a flip of the same bit twice happens about once per (flip
/// probability × bits read) bad reads, which a campaign of 60,000 seeds met five times (seeds
/// 1018518, 3018903, 3031493, 4001027, 4001341). Three has that chance squared. The reads
/// need not be in a row: a flip or a failed read in between once made a torn tail read as
/// undecided eight times over (seed 243186007098263).
const RECOVERY_READ_AGREEMENT: usize = 3;
/// Where a batch's partition leader epoch sits (after base offset and length).
const PARTITION_LEADER_EPOCH_AT: u64 = 12;

/// Reads of one bad-looking batch before recovery gives up telling damage from flips (the
/// node does not start, rather than take the partition for corrupt) or, if every read failed,
/// takes the batch for unreadable (the partition goes offline).
const RECOVERY_READ_ATTEMPTS_MAX: usize = 8;

/// Reads of one offset that failed every attempt ([`RECOVERY_READ_ATTEMPTS_MAX`] each), one
/// after the other, before a read takes it for a latent sector error (the partition goes
/// offline): a disk that fails reads at random fails eight in a row often enough over a long
/// run (seed 20420 of `--lifecycle` met it), three times eight far less.
const UNREADABLE_STREAK_MAX: usize = 3;

/// What recovery found, for the operator's log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Segments taken from their summaries without reading them.
    pub segments_unread: usize,
    pub batches: u64,
    /// Bytes cut from a torn tail, if any.
    pub truncated_bytes: u64,
}

#[derive(Debug)]
pub struct PartitionLog {
    dir: String,
    config: LogConfig,
    segments: Vec<Segment>,
    /// Offsets below this are synced: the high watermark when durability means fsync.
    durable_end_offset: i64,
    recovery_point_file: FileId,
    /// The value last written to the recovery point file.
    recovery_point: i64,
    /// Files written since the last sync began.
    dirty_files: Vec<FileId>,
    /// The log's directory, synced when a segment was created or removed in it: until then
    /// the new segment's entry (and with it every batch in it) could vanish in a crash.
    dir_file: FileId,
    dir_dirty: bool,
    /// What the partition knows of idempotent producers, from the batches in the log.
    producers: ProducerStates,
    /// Where each leader epoch starts (ascending; Kafka's leader-epoch cache), from the
    /// batches' partition leader epochs: what `OffsetForLeaderEpoch` answers and replication
    /// finds divergence with.
    epochs: Vec<(i32, i64)>,
    /// File cuts of a truncation, made once a sync round has made the lowered recovery point
    /// durable (`armed`): cut first, and a crash could leave a log that ends before a recovery
    /// point still on the disk, which recovery must take for lost data.
    deferred_cuts: Vec<DeferredCut>,
    deferred_armed: bool,
    /// Offsets below this are gone (retention, DeleteRecords, a follower's reset): never
    /// served. At or above the first segment's base.
    log_start_offset: i64,
    /// Where the batch holding the log start begins (the log start itself if none does).
    log_start_base: i64,
    /// The leader epoch of the batch before `log_start_base` (what an empty log claims as
    /// its last).
    log_start_epoch: i32,
    log_start_file: Option<FileId>,
    producer_snapshot_file: Option<FileId>,
    /// The log start moved since it was last written: the next round writes it.
    log_start_dirty: bool,
    /// Segments wholly below the log start, removed once a round that carries the start
    /// completes (`armed`): removed first, and a crash could keep the removal and lose the
    /// start, which recovery would take for a lost segment.
    doomed: Vec<(String, FileId)>,
    /// How many of `doomed` the round in flight covers (those doomed before it began).
    doomed_armed: usize,
    /// DeleteRecords markers in the log not yet committed: (the marker's offset, the start
    /// it moves to), applied when the high watermark passes them.
    pending_starts: Vec<(i64, i64)>,
    /// The cleaning pass under way (cleanup.policy compact), if any.
    cleaning: Option<cleaner::Cleaning>,
    /// The last pass cleaned the segments below this (nothing since a start: the first
    /// pass after a restart cleans again).
    cleaned_to: i64,
    /// When a tombstone the last pass kept may go: a pass is due then.
    tombstones_due: Option<i64>,
    /// Where the producer checkpoint on the disk stands, if one does.
    checkpoint_offset: Option<i64>,
    /// Cleaned segments whose summaries are written once their renames are durable: (base,
    /// whether the round in flight carries the rename).
    summaries_due: Vec<(i64, bool)>,
    /// The summaries and the producer checkpoint this log has opened, by name.
    aux_files: std::collections::BTreeMap<String, FileId>,
    /// Reads of this offset failed every attempt, this many times in a row.
    unreadable_streak: Option<(i64, usize)>,
    /// A segment rolled since [`PartitionLog::take_rolled`] was last asked: retention by
    /// size looks at once, not at the next check.
    rolled: bool,
}

/// Why a recovery attempt stopped.
#[derive(Debug)]
enum Recovery {
    Failed(LogError),
    /// The producer checkpoint belongs to another log (recovery starts again without it).
    CheckpointStale,
}

impl From<LogError> for Recovery {
    fn from(e: LogError) -> Recovery {
        Recovery::Failed(e)
    }
}

impl From<DiskError> for Recovery {
    fn from(e: DiskError) -> Recovery {
        Recovery::Failed(LogError::Disk(e))
    }
}

/// What tells a batch from another at the same place in another history of the log (a
/// truncation and a new leader's batches): its offsets, leader epoch and producer fields.
/// The cleaner keeps all of them (not the CRC, nor the records), so a checkpoint outlives it.
fn batch_identity(header: &BatchHeader) -> u32 {
    let mut bytes = [0u8; 30];
    bytes[..8].copy_from_slice(&header.base_offset.to_be_bytes());
    bytes[8..12].copy_from_slice(&header.last_offset_delta.to_be_bytes());
    bytes[12..16].copy_from_slice(&header.partition_leader_epoch.to_be_bytes());
    bytes[16..24].copy_from_slice(&header.producer_id.to_be_bytes());
    bytes[24..26].copy_from_slice(&header.producer_epoch.to_be_bytes());
    bytes[26..30].copy_from_slice(&header.base_sequence.to_be_bytes());
    crc32c::crc32c(&bytes)
}

/// A small file's whole contents, if it reads.
fn read_whole(disk: &mut dyn Disk, file: FileId) -> Option<Vec<u8>> {
    let len = disk.len(file).ok()?;
    let mut bytes = vec![0u8; usize::try_from(len).ok()?];
    disk.read_at(file, 0, &mut bytes).ok()?;
    Some(bytes)
}

/// The summary of the segment at `base`, if there is one and it decodes.
fn read_summary(
    disk: &mut dyn Disk,
    dir: &str,
    names: &[String],
    base: i64,
) -> Option<summary::Summary> {
    let name = summary_name(dir, base);
    if !names.contains(&name) {
        return None;
    }
    let file = disk.open(&name).ok()?;
    let summary = read_whole(disk, file).and_then(|bytes| summary::Summary::decode(&bytes));
    summary.filter(|s| s.base_offset == base)
}

#[derive(Debug)]
enum DeferredCut {
    Truncate { file: FileId, len_bytes: u64 },
    Remove { name: String, file: FileId },
}

fn segment_name(dir: &str, base_offset: i64) -> String {
    format!("{dir}/{base_offset:020}{SEGMENT_SUFFIX}")
}

fn summary_name(dir: &str, base_offset: i64) -> String {
    format!("{dir}/{base_offset:020}{}", summary::SUMMARY_SUFFIX)
}

/// The summary's name beside a segment's.
fn summary_of(segment_name: &str) -> String {
    let stem = segment_name
        .strip_suffix(SEGMENT_SUFFIX)
        .unwrap_or(segment_name);
    format!("{stem}{}", summary::SUMMARY_SUFFIX)
}

fn read_header(
    disk: &mut dyn Disk,
    file: FileId,
    position: u64,
) -> Result<[u8; BATCH_HEADER_BYTES], DiskError> {
    let mut header = [0u8; BATCH_HEADER_BYTES];
    disk.read_at(file, position, &mut header)?;
    Ok(header)
}

/// Checks a batch header read from a segment against what the log expects there: its base
/// offset, a possible length within the `room_bytes` left, a sane offset delta.
fn check_stored_header(
    header: &BatchHeader,
    expected_base: i64,
    room_bytes: u64,
) -> Result<(), String> {
    if header.base_offset != expected_base {
        return Err(format!(
            "batch starts at {}, expected {expected_base}",
            header.base_offset
        ));
    }
    let declared = i64::from(header.batch_length);
    if declared < BATCH_HEADER_BYTES as i64 - BATCH_LENGTH_PREFIX_BYTES
        || (BATCH_LENGTH_PREFIX_BYTES + declared) as u64 > room_bytes
    {
        return Err(format!("batch length {declared} is impossible here"));
    }
    if header.last_offset_delta < 0 {
        return Err(format!(
            "negative last offset delta {}",
            header.last_offset_delta
        ));
    }
    Ok(())
}

impl PartitionLog {
    /// Creates an empty log in `dir` (which must not hold one).
    pub fn create(
        disk: &mut dyn Disk,
        dir: &str,
        config: LogConfig,
    ) -> Result<PartitionLog, LogError> {
        let dir_file = disk.open_dir(dir)?;
        let name = segment_name(dir, 0);
        let file = disk.create(&name)?;
        let recovery_point_file = disk.create(&format!("{dir}/{RECOVERY_POINT_FILE}"))?;
        let mut log = PartitionLog {
            dir: dir.to_string(),
            config,
            segments: vec![Segment::empty(name, file, 0)],
            durable_end_offset: 0,
            recovery_point_file,
            recovery_point: -1,
            dirty_files: vec![file, recovery_point_file],
            dir_file,
            dir_dirty: true,
            producers: ProducerStates::default(),
            epochs: Vec::new(),
            deferred_cuts: Vec::new(),
            deferred_armed: false,
            log_start_offset: 0,
            log_start_base: 0,
            log_start_epoch: -1,
            log_start_file: None,
            producer_snapshot_file: None,
            log_start_dirty: false,
            doomed: Vec::new(),
            doomed_armed: 0,
            pending_starts: Vec::new(),
            cleaning: None,
            cleaned_to: 0,
            tombstones_due: None,
            checkpoint_offset: None,
            summaries_due: Vec::new(),
            aux_files: Default::default(),
            unreadable_streak: None,
            rolled: false,
        };
        log.write_recovery_point(disk, 0)?;
        Ok(log)
    }

    /// Opens and recovers the log in `dir` from the segment files `names` (all files of the
    /// directory): verifies every batch, cuts a torn tail, rebuilds the indexes.
    pub fn recover(
        disk: &mut dyn Disk,
        dir: &str,
        names: &[String],
        config: LogConfig,
    ) -> Result<(PartitionLog, RecoveryReport), LogError> {
        match Self::recover_with(disk, dir, names, config, true) {
            Err(Recovery::CheckpointStale) => {
                tracing::warn!(
                    dir,
                    "the producer checkpoint does not match the log; reading it whole"
                );
                let name = format!("{dir}/{}", summary::PRODUCER_CHECKPOINT_FILE);
                disk.remove(&name)?;
                Self::recover_with(disk, dir, names, config, false).map_err(|e| match e {
                    Recovery::Failed(e) => e,
                    Recovery::CheckpointStale => unreachable!("no checkpoint was used"),
                })
            }
            Err(Recovery::Failed(e)) => Err(e),
            Ok(recovered) => Ok(recovered),
        }
    }

    /// [`PartitionLog::recover`], starting from the producer checkpoint if `use_checkpoint`
    /// and it is good: then the segments below it whose summaries are good are not read.
    fn recover_with(
        disk: &mut dyn Disk,
        dir: &str,
        names: &[String],
        config: LogConfig,
        use_checkpoint: bool,
    ) -> Result<(PartitionLog, RecoveryReport), Recovery> {
        let dir_file = disk.open_dir(dir)?;
        let recovery_point_file = disk.create(&format!("{dir}/{RECOVERY_POINT_FILE}"))?;
        // An unreadable recovery point (damaged: it is one sector, written whole) says
        // nothing of what was synced: then nothing is cut, every bad batch is corruption.
        let known_recovery_point = Self::read_recovery_point(disk, recovery_point_file)?;
        let recovery_point = known_recovery_point.unwrap_or(i64::MAX);
        let prefix = format!("{dir}/");
        let mut bases: Vec<i64> = names
            .iter()
            .filter_map(|n| {
                n.strip_prefix(&prefix)?
                    .strip_suffix(SEGMENT_SUFFIX)?
                    .parse()
                    .ok()
            })
            .collect();
        bases.sort_unstable();
        // A cleaned copy never renamed over its segment (a crash came first): the segment
        // is whole, the copy goes.
        for name in names {
            let copy = name
                .strip_prefix(&prefix)
                .is_some_and(|n| n.ends_with(cleaner::CLEANED_SUFFIX) && !n.contains('/'));
            if copy {
                disk.remove(name)?;
            }
        }
        // The start file, if the start ever moved: segments wholly below it (a removal the
        // crash undid, or never made) go now.
        let start_name = format!("{dir}/{LOG_START_FILE}");
        let (log_start_file, known_start) = match names.contains(&start_name) {
            true => {
                let file = disk.create(&start_name)?;
                (Some(file), Self::read_log_start(disk, file)?)
            }
            false => (None, None),
        };
        // Never moved: 0 (a missing first segment is then a gap). Unreadable (a damaged
        // sector): the first segment's base, the best left to go by.
        let (log_start_offset, log_start_epoch) = match (log_start_file, known_start) {
            (_, Some(known)) => known,
            (Some(_), None) => (bases.first().copied().unwrap_or(0), -1),
            (None, None) => (0, -1),
        };
        let snapshot_name = format!("{dir}/{PRODUCER_SNAPSHOT_FILE}");
        let (producer_snapshot_file, snapshot) = match names.contains(&snapshot_name) {
            true => {
                let file = disk.create(&snapshot_name)?;
                (Some(file), Self::read_producer_snapshot(disk, file)?)
            }
            false => (None, None),
        };
        tracing::debug!(
            dir,
            ?bases,
            log_start_offset,
            ?known_recovery_point,
            "recovering"
        );
        // Removed only once the first round has written the start again: after a failed
        // fsync, what reads back here may be pages that never reached the disk.
        let mut doomed = Vec::new();
        while bases.len() > 1 && bases[1] <= log_start_offset {
            let name = segment_name(dir, bases.remove(0));
            let file = disk.create(&name)?;
            doomed.push((name, file));
        }
        if bases.is_empty() && known_recovery_point.is_none() {
            // A recovery point was written, so a segment was created with it: all were lost.
            return Err(Recovery::Failed(LogError::Corrupt {
                file: segment_name(dir, 0),
                position: 0,
                recovery_point: -1,
                reason: "no segment left, and the recovery point is unreadable".into(),
            }));
        }
        if bases.is_empty() {
            bases.push(log_start_offset);
        }
        let mut report = RecoveryReport::default();
        // With a snapshot of what lay below the start, only the batches from the start on
        // are replayed into it (those below are in it already).
        let replay_from = match snapshot {
            Some(_) => log_start_offset,
            None => 0,
        };
        let mut producers = snapshot.clone().unwrap_or_default();
        // The producer checkpoint, where recovery may start instead (`summary`): at a segment
        // boundary below the recovery point and at or past the start, naming the last batch
        // below it as the summary of the segment that ends there does. Segments below it
        // with good summaries are then not read.
        let checkpoint_name = format!("{dir}/{}", summary::PRODUCER_CHECKPOINT_FILE);
        let mut checkpoint = None;
        if use_checkpoint && names.contains(&checkpoint_name) {
            let found = (disk.open(&checkpoint_name).ok())
                .and_then(|file| read_whole(disk, file))
                .and_then(|bytes| summary::Checkpoint::decode(&bytes))
                .filter(|c| {
                    use_checkpoint
                        && known_recovery_point.is_some_and(|rp| c.offset <= rp)
                        && c.offset >= replay_from
                        && c.offset >= log_start_offset
                });
            let before = found.as_ref().and_then(|c| {
                let at = bases.iter().position(|b| *b == c.offset)?;
                let previous = *bases.get(at.checked_sub(1)?)?;
                read_summary(disk, dir, names, previous)
            });
            match (found, before) {
                (Some(c), Some(s))
                    if s.last_batch_id == c.last_batch_id && s.next_offset == c.offset =>
                {
                    checkpoint = Some((c.offset, c.last_batch_id));
                    producers = c.producers;
                }
                _ => disk.remove(&checkpoint_name)?,
            }
        }
        let replay_from = checkpoint.map_or(replay_from, |(offset, _)| offset);
        // Segments recovery did not read (their summaries were good).
        let mut trusted = Vec::new();
        // What producers were at the base of each segment read: the checkpoint written after
        // recovery, at the active segment's base, must hold that, not the state at the log's
        // end (an aborted transaction whose marker lies in the active segment would be
        // closed in it, and the next recovery from it would list no aborted transaction).
        let mut states_at: std::collections::BTreeMap<i64, ProducerStates> = Default::default();
        let mut epochs: Vec<(i32, i64)> = Vec::new();
        let mut segments: Vec<Segment> = Vec::new();
        // DeleteRecords markers: applied again once the high watermark passes them (one
        // applied before the crash changes nothing: the start never goes back).
        let mut pending_starts = Vec::new();
        // The first segment holds the log start (a missing one is a gap).
        let mut expected_offset = match bases.first() {
            Some(base) if *base <= log_start_offset => *base,
            _ => log_start_offset,
        };
        let mut cut = false;
        // Where the batches at or past the recovery point start: (segment index, position).
        let mut unsynced_from: Option<(usize, u64)> = None;
        for (i, base) in bases.iter().enumerate() {
            let name = segment_name(dir, *base);
            if cut {
                // Everything after a torn tail goes with it.
                disk.remove(&name)?;
                continue;
            }
            let file = disk.create(&name)?;
            let len_bytes = disk.len(file)?;
            let mut segment = Segment::empty(name.clone(), file, *base);
            if *base != expected_offset && expected_offset >= recovery_point {
                // The previous segment lost an unsynced tail (or, for the first, the whole
                // unsynced file) while this one, synced by its own fsync, kept its data: all
                // of it is past what was known durable. Cut.
                tracing::warn!(file = %name, expected_offset, recovery_point,
                    "a segment after a torn tail; removing it");
                report.truncated_bytes += len_bytes;
                disk.remove(&name)?;
                cut = true;
                continue;
            }
            if *base != expected_offset {
                let previous = if i == 0 {
                    format!("the log starts at {expected_offset}")
                } else {
                    format!("the previous one ended at {expected_offset}")
                };
                return Err(Recovery::Failed(LogError::Corrupt {
                    file: name,
                    position: 0,
                    recovery_point,
                    reason: format!("segment starts at {base}, {previous}"),
                }));
            }
            // Below the checkpoint, a segment whose summary holds need not be read.
            let summary = match checkpoint {
                Some((offset, _)) if bases.get(i + 1).is_some_and(|next| *next <= offset) => {
                    read_summary(disk, dir, names, *base).filter(|s| {
                        Self::summary_holds(
                            disk,
                            file,
                            s,
                            len_bytes,
                            bases[i + 1],
                            &epochs,
                            &config,
                        )
                    })
                }
                _ => None,
            };
            if let Some(summary) = summary {
                for (epoch, start) in &summary.epochs {
                    if epochs.last().map(|(e, _)| *e) != Some(*epoch) {
                        epochs.push((*epoch, *start));
                    }
                }
                pending_starts.extend(summary.markers.iter().copied());
                expected_offset = summary.next_offset;
                trusted.push(segments.len());
                segments.push(Segment::from_summary(name, file, summary));
                report.segments += 1;
                report.segments_unread += 1;
                continue;
            }
            states_at.insert(*base, producers.clone());
            let mut position = 0u64;
            while position < len_bytes {
                if unsynced_from.is_none() && expected_offset >= known_recovery_point.unwrap_or(0) {
                    unsynced_from = Some((segments.len(), position));
                }
                let last_epoch = epochs.last().map(|(e, _)| *e);
                let checked = Self::check_batch(disk, file, position, len_bytes, expected_offset)
                    .and_then(|(header, size_bytes, epoch_agreed)| {
                        Self::check_epoch(disk, file, position, header, last_epoch, epoch_agreed)
                            .and_then(|header| {
                                let max = config.leader_epoch_max;
                                if header.partition_leader_epoch > max {
                                    return Err(BadBatch {
                                        reason: format!(
                                            "leader epoch {} is past the latest known, {max}",
                                            header.partition_leader_epoch
                                        ),
                                        read_error: None,
                                        evidence: 0,
                                    });
                                }
                                Ok(header)
                            })
                            .map(|header| (header, size_bytes))
                    });
                match checked {
                    Ok((header, size_bytes)) => {
                        if last_epoch != Some(header.partition_leader_epoch) {
                            epochs.push((header.partition_leader_epoch, header.base_offset));
                        }
                        if header.is_control() {
                            let batch = Self::read_verified_batch(
                                disk,
                                &name,
                                file,
                                position,
                                header.base_offset,
                                len_bytes - position,
                            )?;
                            if let Some(start) = log_start_of(&batch) {
                                pending_starts.push((header.base_offset, start));
                                segment.markers.push((header.base_offset, start));
                            }
                            if let Some(marker) = txn_marker_of(&batch) {
                                if header.base_offset >= replay_from {
                                    let ended =
                                        producers.end_txn(&header, marker, header.max_timestamp);
                                    tracing::trace!(
                                        dir,
                                        at = header.base_offset,
                                        producer_id = header.producer_id,
                                        ?ended,
                                        "recovery: a transaction marker"
                                    );
                                    if let Some(aborted) = aborted_txn(&producers, &header, ended) {
                                        segment.aborted.push(aborted);
                                    }
                                } else if checkpoint.is_some() {
                                    // A marker in a segment below the checkpoint whose summary
                                    // did not hold: where its transaction began is known only
                                    // to a replay from the start.
                                    return Err(Recovery::CheckpointStale);
                                }
                            }
                        }
                        if header.last_offset() >= replay_from {
                            producers.record(
                                &header,
                                header.max_timestamp,
                                config.producer_id_expiration_ms,
                            );
                        }
                        segment.note_batch(
                            &header,
                            position,
                            size_bytes,
                            config.index_interval_bytes,
                        );
                        expected_offset = header.last_offset() + 1;
                        position += size_bytes;
                        report.batches += 1;
                    }
                    Err(BadBatch {
                        read_error: Some(e),
                        evidence: 1,
                        ..
                    }) => {
                        // Every read of this batch failed (a latent sector error): the
                        // partition stays offline, untouched, until a start reads it.
                        return Err(Recovery::Failed(LogError::Unreadable {
                            file: name,
                            position,
                            reason: e.to_string(),
                        }));
                    }
                    Err(BadBatch {
                        read_error: Some(e),
                        ..
                    }) => return Err(Recovery::Failed(LogError::Disk(e))),
                    Err(bad) => {
                        if expected_offset < recovery_point && !config.planted_cut_synced {
                            // Synced data is damaged, whatever the damage looks like: a batch
                            // that seems to run past the end of the file may only have a
                            // damaged length (outside the CRC). Nothing synced is ever cut.
                            return Err(Recovery::Failed(LogError::Corrupt {
                                file: name,
                                position,
                                recovery_point,
                                reason: bad.reason,
                            }));
                        }
                        report.truncated_bytes += len_bytes - position;
                        disk.truncate(file, position)?;
                        cut = true;
                        break;
                    }
                }
            }
            if let Some((offset, crc)) = checkpoint {
                if bases.get(i + 1) == Some(&offset)
                    && segment.last_batch.map(|(_, _, id)| id) != Some(crc)
                {
                    // The segment the checkpoint ends with was read (its summary did not
                    // hold): it must end as the checkpoint says, or the checkpoint is of
                    // another log.
                    return Err(Recovery::CheckpointStale);
                }
            }
            report.segments += 1;
            segments.push(segment);
        }
        if let Some((first, position)) = unsynced_from {
            // Past the recovery point, what recovery just read may be pages that a failed
            // fsync left in the page cache marked clean but never wrote (Linux does that, and
            // a process restarted on the same machine reads them back). Writing them again
            // makes the first sync of this start really write them.
            for (i, segment) in segments.iter().enumerate().skip(first) {
                let from = if i == first { position } else { 0 };
                Self::rewrite(disk, segment.file, from, segment.size_bytes)?;
            }
        }
        if segments.is_empty() {
            // Every segment was a torn tail (the first one, never synced, was lost): the log
            // starts over, empty, where it started.
            let name = segment_name(dir, log_start_offset);
            let file = disk.create(&name)?;
            disk.truncate(file, 0)?;
            segments.push(Segment::empty(name, file, log_start_offset));
        }
        if known_recovery_point.is_some_and(|rp| expected_offset < rp) && !cut {
            return Err(Recovery::Failed(LogError::Corrupt {
                file: segment_name(dir, bases[bases.len() - 1]),
                position: segments.last().map_or(0, |s| s.size_bytes),
                recovery_point,
                reason: format!("the log ends at {expected_offset}, before its recovery point"),
            }));
        }
        if expected_offset < log_start_offset && known_recovery_point.is_none() {
            return Err(Recovery::Failed(LogError::Corrupt {
                file: segment_name(dir, bases[bases.len() - 1]),
                position: segments.last().map_or(0, |s| s.size_bytes),
                recovery_point,
                reason: format!(
                    "the log ends at {expected_offset}, before its start {log_start_offset}, and its recovery point is unreadable"
                ),
            }));
        }
        if expected_offset < log_start_offset {
            // Everything left ends below the start, and below no recovery point (a follower's
            // reset whose new segment the crash lost: that round's recovery point was the old
            // log's): the log is empty from its start.
            for segment in segments.drain(..) {
                doomed.push((segment.name, segment.file));
            }
            let name = segment_name(dir, log_start_offset);
            let file = disk.create(&name)?;
            disk.truncate(file, 0)?;
            segments.push(Segment::empty(name, file, log_start_offset));
            epochs.clear();
            producers = snapshot.unwrap_or_default();
            pending_starts.clear();
            expected_offset = log_start_offset;
        }
        // Epochs start at the log start's batch at the earliest (trimmed below, once its base
        // is known).
        if epochs.is_empty() && log_start_epoch >= 0 {
            epochs.push((log_start_epoch, log_start_offset));
        }
        let dirty_files = segments.iter().map(|s| s.file).collect();
        let log = PartitionLog {
            dir: dir.to_string(),
            config,
            segments,
            durable_end_offset: (expected_offset.min(known_recovery_point.unwrap_or(0)))
                .max(log_start_offset),
            recovery_point_file,
            recovery_point: known_recovery_point.unwrap_or(-1),
            dirty_files,
            dir_file,
            // Entries created before the crash (a segment just rolled) may not be durable
            // yet, and recovery may have removed some: the first round syncs the directory.
            dir_dirty: true,
            producers,
            epochs,
            deferred_cuts: Vec::new(),
            deferred_armed: false,
            log_start_offset,
            log_start_base: log_start_offset,
            log_start_epoch,
            log_start_file,
            producer_snapshot_file,
            // Written again by the first round (see `rewrite`: the same holds for it).
            log_start_dirty: log_start_file.is_some(),
            doomed,
            doomed_armed: 0,
            pending_starts,
            cleaning: None,
            cleaned_to: 0,
            tombstones_due: None,
            checkpoint_offset: None,
            summaries_due: Vec::new(),
            aux_files: Default::default(),
            unreadable_streak: None,
            rolled: false,
        };
        let mut log = log;
        log.log_start_base = log.batch_base_holding(disk, log_start_offset);
        trim_epochs(&mut log.epochs, log.log_start_base);
        if let Some((epoch, _)) = log.epochs.first() {
            log.log_start_epoch = *epoch;
        }
        // Summaries for the closed segments read whole (the next start need not read them),
        // none for the active one nor for segments gone; and a producer checkpoint at the
        // active segment's base.
        let last = log.segments.len() - 1;
        for at in 0..last {
            if !trusted.contains(&at) {
                log.write_summary(disk, at)?;
            }
        }
        let keep: Vec<String> = (log.segments[..last].iter())
            .map(|s| summary_of(&s.name))
            .collect();
        for name in names {
            if name.starts_with(&prefix)
                && name.ends_with(summary::SUMMARY_SUFFIX)
                && !keep.contains(name)
            {
                disk.remove(name)?;
            }
        }
        match checkpoint {
            Some((offset, _)) if offset == log.segments[last].base_offset => {
                log.checkpoint_offset = Some(offset);
            }
            _ if last > 0 => {
                let states = states_at.remove(&log.segments[last].base_offset);
                log.write_checkpoint(disk, last - 1, states.as_ref())?
            }
            _ => {}
        }
        Ok((log, report))
    }

    /// Whether a summary describes the segment in `file` (of `len_bytes`) as it is: its
    /// length, its end at the next segment's base, leader epochs that go on from `epochs`
    /// and that the node can know, an index within the file, and its last batch header as
    /// recorded (one read).
    fn summary_holds(
        disk: &mut dyn Disk,
        file: FileId,
        summary: &summary::Summary,
        len_bytes: u64,
        next_base: i64,
        epochs: &[(i32, i64)],
        config: &LogConfig,
    ) -> bool {
        if summary.size_bytes != len_bytes
            || len_bytes == 0
            || summary.next_offset != next_base
            || summary.next_offset <= summary.base_offset
            || summary.last_batch_position >= len_bytes
            || summary.epochs.first().map(|(_, o)| *o) != Some(summary.base_offset)
        {
            return false;
        }
        let mut last = epochs.last().copied();
        for (epoch, start) in &summary.epochs {
            let follows = last.is_none_or(|(e, s)| *epoch >= e && *start >= s);
            if !follows || *epoch > config.leader_epoch_max || *start >= summary.next_offset {
                return false;
            }
            last = Some((*epoch, *start));
        }
        let index_inside = summary.index.iter().all(|e| {
            e.position < len_bytes
                && e.base_offset >= summary.base_offset
                && e.base_offset < summary.next_offset
        });
        if !index_inside {
            return false;
        }
        let Ok(raw) = read_header(disk, file, summary.last_batch_position) else {
            return false;
        };
        let header = RecordBatch::header_of(&raw);
        header.crc == summary.last_batch_crc
            && batch_identity(&header) == summary.last_batch_id
            && header.last_offset() + 1 == summary.next_offset
            && summary.last_batch_position + header.size_bytes() as u64 == len_bytes
            && Some(header.partition_leader_epoch) == summary.epochs.last().map(|(e, _)| *e)
    }

    /// Reads and verifies the batch at `position`: its size, its CRC, its records, and that it
    /// starts where the previous one ended. A batch that looks bad is read again until
    /// [`RECOVERY_READ_AGREEMENT`] reads return the same bad bytes (damage on the disk; a
    /// flip on the way or a failed read in between does not reset the count); a good read
    /// ends it at once. A batch that no read gets past within [`RECOVERY_READ_ATTEMPTS_MAX`]
    /// is unreadable (a latent sector error: `read_error` and `evidence` 1). Anything else is
    /// a disk that cannot make up its mind (`read_error` and `evidence` 0): recovery stops,
    /// rather than take it for damage, and the next start tries again.
    fn check_batch(
        disk: &mut dyn Disk,
        file: FileId,
        position: u64,
        len_bytes: u64,
        expected_offset: i64,
    ) -> Result<(BatchHeader, u64, bool), BadBatch> {
        // Each distinct bad read (by its evidence) and how many reads returned it.
        let mut bad_reads: Vec<(u32, usize)> = Vec::new();
        let mut last_read_error = None;
        let mut failed_reads = 0;
        for attempt in 1..=RECOVERY_READ_ATTEMPTS_MAX {
            match Self::check_batch_once(disk, file, position, len_bytes, expected_offset) {
                Ok(found) => return Ok(found),
                Err(bad) if bad.read_error.is_some() => {
                    tracing::warn!(position, attempt, reason = %bad.reason, "batch unreadable; reading it again");
                    failed_reads += 1;
                    last_read_error = bad.read_error;
                }
                Err(bad) => {
                    let count = match bad_reads.iter_mut().find(|(e, _)| *e == bad.evidence) {
                        Some((_, count)) => {
                            *count += 1;
                            *count
                        }
                        None => {
                            bad_reads.push((bad.evidence, 1));
                            1
                        }
                    };
                    if count >= RECOVERY_READ_AGREEMENT {
                        return Err(bad);
                    }
                    tracing::warn!(position, attempt, count, reason = %bad.reason, "batch looks bad; reading it again");
                }
            }
        }
        let unreadable = failed_reads == RECOVERY_READ_ATTEMPTS_MAX;
        let reason = match last_read_error {
            Some(e) if unreadable => format!("batch at {position}: {e}"),
            _ => format!("batch at {position} reads differently every time"),
        };
        Err(BadBatch {
            reason: reason.clone(),
            read_error: Some(DiskError::Io(reason)),
            evidence: u32::from(unreadable),
        })
    }

    /// A batch's partition leader epoch, which its CRC does not cover: one that differs from
    /// the epoch before it (or starts the log), or that the batch's two reads (its header,
    /// then the whole batch) disagree on, is read until three reads agree, so that a flip on
    /// the way neither starts a false epoch, nor looks like an epoch going back, nor hides a
    /// new epoch behind the one before (the simulator found a flip that turned a new epoch's
    /// first batch into the previous epoch's: the epoch cache then refused it at every read).
    /// Epochs never go back along a log: a batch whose epoch does is damaged.
    fn check_epoch(
        disk: &mut dyn Disk,
        file: FileId,
        position: u64,
        mut header: BatchHeader,
        last_epoch: Option<i32>,
        epoch_agreed: bool,
    ) -> Result<BatchHeader, BadBatch> {
        if epoch_agreed && last_epoch == Some(header.partition_leader_epoch) {
            return Ok(header);
        }
        let raw = crate::disk::read_agreeing(
            disk,
            file,
            position + PARTITION_LEADER_EPOCH_AT,
            4,
            RECOVERY_READ_AGREEMENT,
            RECOVERY_READ_ATTEMPTS_MAX,
        )
        .map_err(|e| BadBatch {
            reason: format!("leader epoch at {position}: {e}"),
            read_error: Some(e),
            evidence: 0,
        })?;
        let epoch = i32::from_be_bytes(raw[..4].try_into().expect("4 bytes"));
        if let Some(last) = last_epoch.filter(|last| epoch < *last) {
            return Err(BadBatch {
                reason: format!("the leader epoch goes back from {last} to {epoch}"),
                read_error: None,
                evidence: 0,
            });
        }
        header.partition_leader_epoch = epoch;
        Ok(header)
    }

    fn check_batch_once(
        disk: &mut dyn Disk,
        file: FileId,
        position: u64,
        len_bytes: u64,
        expected_offset: i64,
    ) -> Result<(BatchHeader, u64, bool), BadBatch> {
        let read_failed = |e: DiskError| BadBatch {
            reason: e.to_string(),
            read_error: Some(e),
            evidence: 0,
        };
        if len_bytes - position < BATCH_HEADER_BYTES as u64 {
            return Err(BadBatch {
                reason: format!(
                    "{} bytes at the end, less than a batch header",
                    len_bytes - position
                ),
                read_error: None,
                evidence: 0,
            });
        }
        let header = read_header(disk, file, position).map_err(read_failed)?;
        let header_evidence = crc32c::crc32c(&header);
        let at = PARTITION_LEADER_EPOCH_AT as usize;
        let first_epoch = i32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let invalid = |reason: String, evidence: u32| BadBatch {
            reason,
            read_error: None,
            evidence,
        };
        let declared = i32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let size_bytes = BATCH_LENGTH_PREFIX_BYTES + i64::from(declared);
        if i64::from(declared) < BATCH_HEADER_BYTES as i64 - BATCH_LENGTH_PREFIX_BYTES {
            return Err(invalid(
                format!("batch length {declared} is impossible"),
                header_evidence,
            ));
        }
        if size_bytes as u64 > len_bytes - position {
            return Err(BadBatch {
                reason: format!(
                    "a batch of {size_bytes} bytes with {} left in the file",
                    len_bytes - position
                ),
                read_error: None,
                evidence: header_evidence,
            });
        }
        let mut bytes = vec![0u8; size_bytes as usize];
        disk.read_at(file, position, &mut bytes)
            .map_err(read_failed)?;
        let evidence = crc32c::crc32c(&bytes);
        let batch =
            RecordBatch::parse(Bytes::from(bytes)).map_err(|e| invalid(e.to_string(), evidence))?;
        let header = *batch.header();
        if header.base_offset != expected_offset {
            return Err(invalid(
                format!(
                    "batch starts at {}, expected {expected_offset}",
                    header.base_offset
                ),
                evidence,
            ));
        }
        batch
            .records(DECOMPRESSED_BATCH_SIZE_MAX_BYTES)
            .map_err(|e| invalid(format!("invalid records: {e}"), evidence))?;
        let epoch_agreed = first_epoch == header.partition_leader_epoch;
        Ok((header, size_bytes as u64, epoch_agreed))
    }

    /// Writes `[from, to)` of `file` again with what it holds, in chunks, each read until two
    /// reads agree (a bit flipped on the way must not be written back as damage).
    fn rewrite(disk: &mut dyn Disk, file: FileId, from: u64, to: u64) -> Result<(), LogError> {
        const CHUNK_BYTES: u64 = 1 << 20;
        let mut start = from;
        while start < to {
            let end = (start + CHUNK_BYTES).min(to);
            let bytes = crate::disk::read_agreeing(
                disk,
                file,
                start,
                (end - start) as usize,
                2,
                RECOVERY_READ_ATTEMPTS_MAX,
            )?;
            disk.write_at(file, start, &bytes)?;
            start = end;
        }
        Ok(())
    }

    /// The recovery point on disk. A read that fails its CRC (or fails) is read again: a flip
    /// on the way must not pass for damage. One that reads bad every time is damaged (it is
    /// 12 bytes in one sector, always written whole): `None`, nothing known to be synced and
    /// nothing to be cut. A file shorter than a recovery point, or holding only zeros, was
    /// never written (a creation cut short): `Some(0)`, everything may be torn.
    fn read_recovery_point(disk: &mut dyn Disk, file: FileId) -> Result<Option<i64>, LogError> {
        if disk.len(file)? < RECOVERY_POINT_BYTES as u64 {
            // Never written whole: a log whose creation a crash cut short (nothing in it was
            // synced), or a lost file. Everything may be torn.
            return Ok(Some(0));
        }
        let mut last_error = None;
        let mut bad_reads = 0;
        let mut zero_reads = 0;
        for _ in 0..RECOVERY_READ_ATTEMPTS_MAX {
            let mut raw = [0u8; RECOVERY_POINT_BYTES];
            if let Err(e) = disk.read_at(file, 0, &mut raw) {
                last_error = Some(e);
                continue;
            }
            let offset = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
            let crc = u32::from_be_bytes(raw[8..].try_into().expect("4 bytes"));
            if crc32c::crc32c(&raw[..8]) == crc && offset >= 0 {
                return Ok(Some(offset));
            }
            bad_reads += 1;
            if raw == [0u8; RECOVERY_POINT_BYTES] {
                zero_reads += 1;
                if zero_reads == RECOVERY_READ_AGREEMENT {
                    // Zeros, with a CRC that cannot be zero: the file grew but its first
                    // write never reached the disk (a crash soon after the log's creation;
                    // filesystems may keep a new size without the data). As a short file.
                    return Ok(Some(0));
                }
            }
        }
        tracing::warn!(
            bad_reads,
            error = ?last_error,
            "the recovery point is unreadable; nothing will be cut"
        );
        Ok(None)
    }

    /// The log start on disk and the epoch in force there, read until its CRC passes. One
    /// that never passes (damaged: one sector, written whole), or was never written whole,
    /// says nothing: the start is then the first segment's base, as before any was written.
    fn read_log_start(disk: &mut dyn Disk, file: FileId) -> Result<Option<(i64, i32)>, LogError> {
        if disk.len(file)? < LOG_START_BYTES as u64 {
            return Ok(None);
        }
        for _ in 0..RECOVERY_READ_ATTEMPTS_MAX {
            let mut raw = [0u8; LOG_START_BYTES];
            if disk.read_at(file, 0, &mut raw).is_err() {
                continue;
            }
            let offset = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
            let epoch = i32::from_be_bytes(raw[8..12].try_into().expect("4 bytes"));
            let crc = u32::from_be_bytes(raw[12..].try_into().expect("4 bytes"));
            if crc32c::crc32c(&raw[..12]) == crc && offset >= 0 {
                return Ok(Some((offset, epoch)));
            }
        }
        tracing::warn!("the log start is unreadable; the log starts at its first segment");
        Ok(None)
    }

    fn write_log_start(&mut self, disk: &mut dyn Disk) -> Result<FileId, DiskError> {
        let file = match self.log_start_file {
            Some(file) => file,
            None => {
                let file = disk.create(&format!("{}/{LOG_START_FILE}", self.dir))?;
                self.log_start_file = Some(file);
                self.dir_dirty = true;
                file
            }
        };
        let mut raw = [0u8; LOG_START_BYTES];
        raw[..8].copy_from_slice(&self.log_start_offset.to_be_bytes());
        raw[8..12].copy_from_slice(&self.log_start_epoch.to_be_bytes());
        let crc = crc32c::crc32c(&raw[..12]);
        raw[12..].copy_from_slice(&crc.to_be_bytes());
        disk.write_at(file, 0, &raw)?;
        Ok(file)
    }

    /// The producer snapshot written with the log start; `None` if it does not read back
    /// whole (a torn or damaged write: what lay below the start is then forgotten, and those
    /// producers start over, as after an expiry).
    fn read_producer_snapshot(
        disk: &mut dyn Disk,
        file: FileId,
    ) -> Result<Option<ProducerStates>, LogError> {
        let len = disk.len(file)?;
        for _ in 0..RECOVERY_READ_ATTEMPTS {
            let mut head = [0u8; 8];
            if len < 8 || disk.read_at(file, 0, &mut head).is_err() {
                continue;
            }
            let size = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as u64;
            let crc = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
            if 8 + size > len {
                continue;
            }
            let mut payload = vec![0u8; size as usize];
            if disk.read_at(file, 8, &mut payload).is_err() || crc32c::crc32c(&payload) != crc {
                continue;
            }
            return Ok(ProducerStates::decode(Bytes::from(payload)));
        }
        tracing::warn!("the producer snapshot does not read back whole; producers below the log start are forgotten");
        Ok(None)
    }

    fn write_producer_snapshot(&mut self, disk: &mut dyn Disk) -> Result<FileId, DiskError> {
        let file = match self.producer_snapshot_file {
            Some(file) => file,
            None => {
                let file = disk.create(&format!("{}/{PRODUCER_SNAPSHOT_FILE}", self.dir))?;
                self.producer_snapshot_file = Some(file);
                self.dir_dirty = true;
                file
            }
        };
        let payload = self.producers.encode_below(self.log_start_base);
        let mut raw = Vec::with_capacity(8 + payload.len());
        raw.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        raw.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
        raw.extend_from_slice(&payload);
        disk.write_at(file, 0, &raw)?;
        disk.truncate(file, raw.len() as u64)?;
        Ok(file)
    }

    fn write_recovery_point(&mut self, disk: &mut dyn Disk, offset: i64) -> Result<(), DiskError> {
        self.recovery_point = offset;
        let mut raw = [0u8; RECOVERY_POINT_BYTES];
        raw[..8].copy_from_slice(&offset.to_be_bytes());
        let crc = crc32c::crc32c(&raw[..8]);
        raw[8..].copy_from_slice(&crc.to_be_bytes());
        disk.write_at(self.recovery_point_file, 0, &raw)
    }

    /// The leader epoch of the batch at `offset`, from the epoch cache.
    fn epoch_of(&self, offset: i64) -> Option<i32> {
        let at = self.epochs.partition_point(|(_, start)| *start <= offset);
        at.checked_sub(1).map(|i| self.epochs[i].0)
    }

    /// Where each leader epoch starts, ascending.
    pub fn epochs(&self) -> &[(i32, i64)] {
        &self.epochs
    }

    /// The largest epoch at or below `epoch` and where it ends (`OffsetForLeaderEpoch`).
    pub fn epoch_end(&self, epoch: i32) -> Option<(i32, i64)> {
        crate::raft::epoch_end(&self.epochs, self.log_end_offset(), epoch)
    }

    /// The log's shape as the Raft engine keeps it.
    pub fn shape(&self) -> crate::raft::LogShape {
        crate::raft::LogShape {
            epochs: self.epochs.clone(),
            end: self.log_end_offset(),
            synced: self.durable_end_offset,
            start: self.log_start_base,
        }
    }

    /// What this partition knows of idempotent producers.
    pub fn producers(&self) -> &ProducerStates {
        &self.producers
    }

    pub fn producers_mut(&mut self) -> &mut ProducerStates {
        &mut self.producers
    }

    /// The last stable offset under `high_watermark`: no transaction open below it (Kafka's
    /// LSO), what read_committed consumers may read up to.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        (self.producers.first_unstable_offset()).map_or(high_watermark, |f| f.min(high_watermark))
    }

    /// The aborted transactions with records in `[from, upper)`, in the order their markers
    /// lie in the log: what a read_committed fetch lists so that the client drops their
    /// records. The walk starts at the segment holding `from` and stops at the first entry
    /// at or past `from` whose last stable offset reaches `upper` (every transaction begun
    /// below `upper` has ended by then), as Kafka's does. Past `max` entries, the offset
    /// where the earliest one left out begins: a read must stop there.
    pub fn aborted_txns(
        &self,
        from: i64,
        upper: i64,
        max: usize,
    ) -> (Vec<AbortedTxn>, Option<i64>) {
        let mut found = Vec::new();
        let mut cut: Option<i64> = None;
        let at = self.segments.partition_point(|s| s.next_offset <= from);
        'walk: for segment in &self.segments[at..] {
            for aborted in &segment.aborted {
                if aborted.last_offset < from {
                    continue;
                }
                if aborted.first_offset < upper {
                    if found.len() < max {
                        found.push(*aborted);
                    } else {
                        let first = aborted.first_offset.max(from);
                        cut = Some(cut.map_or(first, |c| c.min(first)));
                    }
                }
                if aborted.last_stable_offset >= upper {
                    break 'walk;
                }
            }
        }
        if let Some(cut) = cut {
            // Listed ones that begin at or past the cut are not served either.
            found.retain(|a| a.first_offset < cut);
        }
        (found, cut)
    }

    pub fn dir(&self) -> &str {
        &self.dir
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        self.segments.last().map_or(0, |s| s.next_offset)
    }

    pub fn durable_end_offset(&self) -> i64 {
        self.durable_end_offset
    }

    /// Appends one validated batch: stamps its base offset and leader epoch and writes it at
    /// the end of the active segment (rolling first if it would pass the segment size).
    /// Returns the batch's (base offset, last offset).
    pub fn append(
        &mut self,
        disk: &mut dyn Disk,
        batch: &RecordBatch,
        leader_epoch: i32,
    ) -> Result<(i64, i64), LogError> {
        if !self.deferred_cuts.is_empty() {
            return Err(LogError::TruncationPending);
        }
        let base_offset = self.log_end_offset();
        let size_bytes = batch.as_bytes().len() as u64;
        let active = self.segments.last().expect("a log has a segment");
        if active.size_bytes > 0 && active.size_bytes + size_bytes > self.config.segment_size_bytes
        {
            self.roll(disk, base_offset)?;
        }
        let mut stamped = BytesMut::from(&batch.as_bytes()[..]);
        crate::record::stamp(&mut stamped, base_offset, leader_epoch);
        let mut header = *batch.header();
        header.base_offset = base_offset;
        header.partition_leader_epoch = leader_epoch;
        let interval = self.config.index_interval_bytes;
        let active = self.segments.last_mut().expect("a log has a segment");
        let position = active.size_bytes;
        disk.write_at(active.file, position, &stamped)?;
        active.note_batch(&header, position, size_bytes, interval);
        if self.epochs.last().map(|(e, _)| *e) != Some(leader_epoch) {
            debug_assert!(self.epochs.last().is_none_or(|(e, _)| *e < leader_epoch));
            self.epochs.push((leader_epoch, base_offset));
        }
        if !self.dirty_files.contains(&active.file) {
            self.dirty_files.push(active.file);
        }
        if header.is_control() {
            if let Some(start) = log_start_of(batch) {
                tracing::debug!(dir = %self.dir, at = base_offset, start, "a log start marker");
                self.pending_starts.push((base_offset, start));
                let active = self.segments.last_mut().expect("a log has a segment");
                active.markers.push((base_offset, start));
            }
            if let Some(marker) = txn_marker_of(batch) {
                let ended = self
                    .producers
                    .end_txn(&header, marker, header.max_timestamp);
                tracing::trace!(dir = %self.dir, at = base_offset, producer_id = header.producer_id, ?ended, "a transaction marker");
                if let Some(aborted) = aborted_txn(&self.producers, &header, ended) {
                    let active = self.segments.last_mut().expect("a log has a segment");
                    active.aborted.push(aborted);
                }
            }
        }
        Ok((base_offset, header.last_offset()))
    }

    /// Appends a batch a leader wrote (a follower's append): its base offset and leader
    /// epoch are already stamped, and must continue the log.
    pub fn append_replicated(
        &mut self,
        disk: &mut dyn Disk,
        batch: &RecordBatch,
    ) -> Result<(i64, i64), LogError> {
        let header = batch.header();
        if header.base_offset != self.log_end_offset() {
            return Err(LogError::Replicated(format!(
                "batch at {}, the log ends at {}",
                header.base_offset,
                self.log_end_offset()
            )));
        }
        let epoch = header.partition_leader_epoch;
        if self.epochs.last().is_some_and(|(e, _)| *e > epoch) {
            return Err(LogError::Replicated(format!(
                "leader epoch {epoch} after {}",
                self.epochs.last().map_or(0, |(e, _)| *e)
            )));
        }
        self.append(disk, batch, epoch)
    }

    /// Moves the log start forward to `offset` (at most the log end): reads below it are
    /// refused at once, and segments wholly below it are removed once a round has made the
    /// new start durable. Returns whether the start moved.
    pub fn advance_start(&mut self, disk: &mut dyn Disk, offset: i64) -> bool {
        if offset <= self.log_start_offset {
            return false;
        }
        tracing::debug!(dir = %self.dir, offset, start = self.log_start_offset, end = self.log_end_offset(), segments = self.segments.len(), "log start moves");
        assert!(
            offset <= self.log_end_offset(),
            "the log start {offset} passes the log end {}",
            self.log_end_offset()
        );
        self.log_start_offset = offset;
        self.log_start_base = self.batch_base_holding(disk, offset);
        trim_epochs(&mut self.epochs, self.log_start_base);
        if let Some((epoch, _)) = self.epochs.first() {
            self.log_start_epoch = *epoch;
        }
        while self.segments.len() > 1 && self.segments[1].base_offset <= self.log_start_base {
            let segment = self.segments.remove(0);
            self.doomed.push((segment.name, segment.file));
        }
        self.log_start_dirty = true;
        true
    }

    /// Where the batch that holds `offset` starts (`offset` itself past the last batch): the
    /// log keeps that whole batch, and replication starts there. A read that fails gives the
    /// segment's base, a boundary too (only less tight).
    fn batch_base_holding(&self, disk: &mut dyn Disk, offset: i64) -> i64 {
        let at = self.segments.partition_point(|s| s.base_offset <= offset);
        let Some(segment) = at.checked_sub(1).map(|i| &self.segments[i]) else {
            return offset;
        };
        if offset >= segment.next_offset {
            return offset;
        }
        let (mut base, mut position) = segment.index_entry(offset);
        while position < segment.size_bytes {
            let Ok(raw) = read_header(disk, segment.file, position) else {
                return segment.base_offset;
            };
            let header = RecordBatch::header_of(&raw);
            if check_stored_header(&header, base, segment.size_bytes - position).is_err() {
                return segment.base_offset;
            }
            if header.last_offset() >= offset {
                return header.base_offset;
            }
            position += header.size_bytes() as u64;
            base = header.last_offset() + 1;
        }
        segment.base_offset
    }

    /// Where the batch that holds the log start begins: the log keeps it whole, and
    /// replication (the Raft engine's view) starts there.
    pub fn log_start_base(&self) -> i64 {
        self.log_start_base
    }

    /// Retention (cleanup.policy delete) at `now_ms`, below `high_watermark`: the active
    /// segment rolls once its first batch is `segment_ms` old, and the start moves past every
    /// whole segment, oldest first, whose newest batch is older than `retention_ms` or without
    /// which the log still holds `retention_bytes`. Returns whether the start moved.
    pub fn apply_retention(
        &mut self,
        disk: &mut dyn Disk,
        now_ms: i64,
        high_watermark: i64,
    ) -> Result<bool, LogError> {
        let config = self.config;
        let active = self.segments.last().expect("a log has a segment");
        let due = active.first_timestamp >= 0
            && now_ms.saturating_sub(active.first_timestamp) >= config.segment_ms;
        if active.size_bytes > 0 && due && self.deferred_cuts.is_empty() {
            self.roll(disk, self.log_end_offset())?;
        }
        let mut size_bytes: u64 = self.segments.iter().map(|s| s.size_bytes).sum();
        let mut new_start = None;
        for pair in self.segments.windows(2) {
            let (segment, next) = (&pair[0], &pair[1]);
            if segment.next_offset > high_watermark {
                break;
            }
            let by_time = (config.retention_ms >= 0 && config.planted_retention_early)
                || config.retention_ms >= 0
                    && segment.max_timestamp >= 0
                    && now_ms.saturating_sub(segment.max_timestamp) > config.retention_ms;
            let by_size = config.retention_bytes >= 0
                && size_bytes - segment.size_bytes >= config.retention_bytes as u64;
            if !by_time && !by_size {
                break;
            }
            size_bytes -= segment.size_bytes;
            new_start = Some(next.base_offset);
        }
        Ok(new_start.is_some_and(|start| self.advance_start(disk, start)))
    }

    /// Empties the log and starts it at `offset`, with `epoch` in force there: a follower
    /// whose leader's log starts past this log's end (what it lacks is gone there). The old
    /// segments are removed once a round has made the new start durable; until then a crash
    /// brings back the old log, which fetches from the leader again.
    pub fn reset_to(
        &mut self,
        disk: &mut dyn Disk,
        offset: i64,
        epoch: i32,
        producers: ProducerStates,
    ) -> Result<(), LogError> {
        tracing::debug!(dir = %self.dir, offset, epoch, start = self.log_start_offset, end = self.log_end_offset(), "log reset");
        if !self.deferred_cuts.is_empty() {
            return Err(LogError::TruncationPending);
        }
        self.abandon_cleaning(disk);
        assert!(
            offset >= self.log_end_offset() && offset >= self.log_start_offset,
            "a reset to {offset} goes back (the log is [{}, {}))",
            self.log_start_offset,
            self.log_end_offset()
        );
        if self.checkpoint_offset.take().is_some() {
            let name = format!("{}/{}", self.dir, summary::PRODUCER_CHECKPOINT_FILE);
            self.write_aux(disk, &name, &[])?;
        }
        // An empty active segment already at `offset` (rolled there) is the new log's.
        // Otherwise the new segment is made first: a full disk leaves the log as it was.
        let reuse = (self.segments.last()).is_some_and(|s| s.base_offset == offset);
        let segment = match reuse {
            true => self.segments.pop().expect("checked"),
            false => {
                let name = segment_name(&self.dir, offset);
                let file = disk.create(&name)?;
                disk.truncate(file, 0)?;
                self.dirty_files.push(file);
                Segment::empty(name, file, offset)
            }
        };
        for segment in self.segments.drain(..) {
            self.doomed.push((segment.name, segment.file));
        }
        self.segments.push(segment);
        self.dir_dirty = true;
        self.log_start_offset = offset;
        self.log_start_base = offset;
        self.log_start_epoch = epoch;
        self.log_start_dirty = true;
        self.epochs = vec![(epoch, offset)];
        self.pending_starts.clear();
        // What the leader knew of producers as of the new start: what this log knew came from
        // batches it no longer has, and a retried batch from before the start must still be
        // recognised if this replica leads next.
        self.producers = producers;
        Ok(())
    }

    /// Applies the DeleteRecords markers below `high_watermark` (committed). Returns whether
    /// the start moved.
    pub fn apply_committed_starts(&mut self, disk: &mut dyn Disk, high_watermark: i64) -> bool {
        if self
            .pending_starts
            .first()
            .is_none_or(|(at, _)| *at >= high_watermark)
        {
            return false;
        }
        let mut moved = false;
        let pending = std::mem::take(&mut self.pending_starts);
        for (at, start) in pending {
            if at < high_watermark {
                moved |= self.advance_start(disk, start.min(at));
            } else {
                self.pending_starts.push((at, start));
            }
        }
        moved
    }

    /// Whether a segment rolled since the last time this was asked, when retention.bytes is
    /// set (retention by size then runs at once).
    pub fn take_rolled(&mut self) -> bool {
        std::mem::take(&mut self.rolled) && self.config.retention_bytes >= 0
    }

    /// The segments' total size, for retention.bytes and operators.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size_bytes).sum()
    }

    /// This log's retention, compaction and segment settings (a topic's configs changed).
    pub fn set_policy(&mut self, policy: LogPolicy) {
        self.config.segment_size_bytes = policy.segment_size_bytes;
        self.config.segment_ms = policy.segment_ms;
        self.config.retention_ms = policy.retention_ms;
        self.config.retention_bytes = policy.retention_bytes;
        self.config.compact = policy.compact;
        self.config.min_compaction_lag_ms = policy.min_compaction_lag_ms;
        self.config.delete_retention_ms = policy.delete_retention_ms;
    }

    fn roll(&mut self, disk: &mut dyn Disk, base_offset: i64) -> Result<(), LogError> {
        // The segment that closes gets its summary, and producers a checkpoint at its end,
        // for a restart that need not read it (`summary`).
        let closing = self.segments.len() - 1;
        if self.segments[closing].size_bytes > 0 {
            self.write_summary(disk, closing)?;
            let producers = std::mem::take(&mut self.producers);
            let written = self.write_checkpoint(disk, closing, Some(&producers));
            self.producers = producers;
            written?;
        }
        let name = segment_name(&self.dir, base_offset);
        let file = disk.create(&name)?;
        self.rolled = true;
        self.segments.push(Segment::empty(name, file, base_offset));
        self.dirty_files.push(file);
        self.dir_dirty = true;
        Ok(())
    }

    /// Writes segment `at`'s summary (an empty one, which recovery ignores, for a segment
    /// truncated since it was read).
    fn write_summary(&mut self, disk: &mut dyn Disk, at: usize) -> Result<(), DiskError> {
        let segment = &self.segments[at];
        let name = summary_name(&self.dir, segment.base_offset);
        let bytes = segment.summary().map(|s| s.encode()).unwrap_or_default();
        self.write_aux(disk, &name, &bytes)
    }

    /// Writes the producer checkpoint at the end of segment `at`: `producers` as they were
    /// there (none known: a void checkpoint, which recovery ignores).
    fn write_checkpoint(
        &mut self,
        disk: &mut dyn Disk,
        at: usize,
        producers: Option<&ProducerStates>,
    ) -> Result<(), DiskError> {
        let segment = &self.segments[at];
        let name = format!("{}/{}", self.dir, summary::PRODUCER_CHECKPOINT_FILE);
        let (Some((_, _, last_batch_id)), Some(producers)) = (segment.last_batch, producers) else {
            self.checkpoint_offset = None;
            return self.write_aux(disk, &name, &[]);
        };
        let offset = segment.next_offset;
        let bytes = summary::Checkpoint::encode(offset, last_batch_id, producers);
        self.write_aux(disk, &name, &bytes)?;
        self.checkpoint_offset = Some(offset);
        Ok(())
    }

    /// Writes a summary or the checkpoint whole (empty: void, as a torn one is). Such a file
    /// is voided, not removed, while the log lives (a sync round in flight may hold it);
    /// it goes with its segment ([`PartitionLog::remove_aux`]).
    fn write_aux(
        &mut self,
        disk: &mut dyn Disk,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), DiskError> {
        let file = match self.aux_files.get(name) {
            Some(file) => *file,
            None => {
                let file = disk.create(name)?;
                self.aux_files.insert(name.to_string(), file);
                self.dir_dirty = true;
                file
            }
        };
        disk.truncate(file, 0)?;
        if !bytes.is_empty() {
            disk.write_at(file, 0, bytes)?;
        }
        if !self.dirty_files.contains(&file) {
            self.dirty_files.push(file);
        }
        Ok(())
    }

    /// Removes a summary with its segment, when no sync round is in flight.
    fn remove_aux(&mut self, disk: &mut dyn Disk, name: &str) -> Result<(), DiskError> {
        if let Some(file) = self.aux_files.remove(name) {
            self.dirty_files.retain(|f| *f != file);
        }
        disk.remove(name)
    }

    /// Starts a sync: records the durable offset reached so far in the recovery point and
    /// returns the files to sync and the log end offset they will make durable.
    pub fn begin_sync(&mut self, disk: &mut dyn Disk) -> Result<(Vec<FileId>, i64), LogError> {
        self.write_recovery_point(disk, self.durable_end_offset)?;
        // This round carries a recovery point at or below any pending truncation.
        self.deferred_armed = !self.deferred_cuts.is_empty();
        let mut files = std::mem::take(&mut self.dirty_files);
        if std::mem::take(&mut self.log_start_dirty) {
            files.push(self.write_log_start(disk)?);
            files.push(self.write_producer_snapshot(disk)?);
        }
        // And the log start that the doomed segments lie below (written now or before).
        self.doomed_armed = self.doomed.len();
        self.arm_cleaned_copy();
        for (_, armed) in &mut self.summaries_due {
            *armed = true;
        }
        files.push(self.recovery_point_file);
        if std::mem::take(&mut self.dir_dirty) {
            files.push(self.dir_file);
        }
        files.sort_unstable();
        files.dedup();
        Ok((files, self.log_end_offset()))
    }

    /// Whether anything was written since the last sync began, or the recovery point lags
    /// the durable offset (one more small sync brings it up to date).
    pub fn needs_sync(&self) -> bool {
        !self.dirty_files.is_empty()
            || self.dir_dirty
            || self.recovery_point != self.durable_end_offset
            || self.log_start_dirty
            || !self.doomed.is_empty()
    }

    /// Whether data or directory entries were written since the last sync began.
    pub fn needs_data_sync(&self) -> bool {
        !self.dirty_files.is_empty()
            || self.dir_dirty
            || !self.deferred_cuts.is_empty()
            || self.log_start_dirty
            || !self.doomed.is_empty()
    }

    /// A sync begun at `end_offset` completed. If it carried the recovery point of a pending
    /// truncation, the truncation's file cuts are made now (durable with the next round).
    pub fn complete_sync(&mut self, disk: &mut dyn Disk, end_offset: i64) -> Result<(), LogError> {
        self.durable_end_offset = self
            .durable_end_offset
            .max(end_offset.min(self.log_end_offset()));
        let armed = std::mem::take(&mut self.doomed_armed).min(self.doomed.len());
        if armed > 0 {
            // The start they lie below is durable: removing them cannot look like a loss.
            for (name, file) in self.doomed.drain(..armed).collect::<Vec<_>>() {
                disk.remove(&name)?;
                self.remove_aux(disk, &summary_of(&name))?;
                self.dirty_files.retain(|f| *f != file);
                self.dir_dirty = true;
            }
        }
        // Cleaned segments whose renames this round made durable get their summaries (one
        // that changed since, or is gone, gets none: recovery reads it).
        let due = std::mem::take(&mut self.summaries_due);
        for (base, armed) in due {
            if !armed {
                self.summaries_due.push((base, armed));
                continue;
            }
            let closed = &self.segments[..self.segments.len() - 1];
            if let Some(at) = closed.iter().position(|s| s.base_offset == base) {
                self.write_summary(disk, at)?;
            }
        }
        self.install_cleaned_copy(disk)?;
        if std::mem::take(&mut self.deferred_armed) {
            for cut in std::mem::take(&mut self.deferred_cuts) {
                match cut {
                    DeferredCut::Truncate { file, len_bytes } => {
                        disk.truncate(file, len_bytes)?;
                        if !self.dirty_files.contains(&file) {
                            self.dirty_files.push(file);
                        }
                    }
                    DeferredCut::Remove { name, file } => {
                        disk.remove(&name)?;
                        self.remove_aux(disk, &summary_of(&name))?;
                        self.dirty_files.retain(|f| *f != file);
                        self.dir_dirty = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes every batch at or past `offset`, which must be where a batch starts (a
    /// follower's log repair). Reads and the log's end see it at once; the files are cut once
    /// the next sync round has made a recovery point at or below `offset` durable, and
    /// nothing can be appended until then ([`LogError::TruncationPending`]). A crash before
    /// the cut leaves the removed batches on the disk, past the recovery point: whatever of
    /// them survives is read back as if never removed.
    pub fn truncate_to(&mut self, disk: &mut dyn Disk, offset: i64) -> Result<(), LogError> {
        tracing::debug!(dir = %self.dir, offset, start = self.log_start_offset, end = self.log_end_offset(), "log truncated");
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        if offset < self.log_start_offset() {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset(),
                log_end_offset: self.log_end_offset(),
            });
        }
        self.abandon_cleaning(disk);
        let at = self.segments.partition_point(|s| s.base_offset <= offset) - 1;
        let position = self.batch_position(disk, at, offset)?;
        for segment in self.segments.drain(at + 1..) {
            self.deferred_cuts.push(DeferredCut::Remove {
                name: segment.name,
                file: segment.file,
            });
        }
        // Summaries of what is cut are voided at once (a crash that keeps one keeps its
        // segment whole too, or recovery finds the length changed), and so is a producer
        // checkpoint past the cut.
        let bases: Vec<i64> = self.segments[at..].iter().map(|s| s.base_offset).collect();
        for base in bases {
            self.write_aux(disk, &summary_name(&self.dir, base), &[])?;
        }
        if self.checkpoint_offset.is_some_and(|c| c > offset) {
            let name = format!("{}/{}", self.dir, summary::PRODUCER_CHECKPOINT_FILE);
            self.write_aux(disk, &name, &[])?;
            self.checkpoint_offset = None;
        }
        let segment = &mut self.segments[at];
        self.deferred_cuts.push(DeferredCut::Truncate {
            file: segment.file,
            len_bytes: position,
        });
        segment.size_bytes = position;
        segment.next_offset = offset;
        segment.index.retain(|e| e.base_offset < offset);
        segment.epochs.retain(|(_, start)| *start < offset);
        segment.markers.retain(|(at, _)| *at < offset);
        segment.aborted.retain(|a| a.last_offset < offset);
        segment.last_batch = None;
        // The time index may now overstate the segment's largest timestamp (a lookup by time
        // then reads a little further than it must; it never misses a batch).
        let first = self.epochs.first().copied();
        self.epochs.retain(|(_, start)| *start < offset);
        if let Some((epoch, start)) = first.filter(|_| self.epochs.is_empty()) {
            // Cut back to the log start: the epoch before it still stands for what is gone.
            if start <= offset && self.log_start_base > 0 {
                self.epochs.push((epoch, start));
            }
        }
        self.producers.truncate(offset);
        self.pending_starts.retain(|(at, _)| *at < offset);
        self.durable_end_offset = self.durable_end_offset.min(offset);
        self.deferred_armed = false;
        Ok(())
    }

    /// Where the batch starting at `offset` sits in segment `at`: a walk over the headers from
    /// the nearest index entry, each checked against the chain, read again if a flip breaks it.
    fn batch_position(&self, disk: &mut dyn Disk, at: usize, offset: i64) -> Result<u64, LogError> {
        let segment = &self.segments[at];
        let mut last_problem = String::new();
        let mut not_a_boundary = 0;
        for _ in 0..RECOVERY_READ_ATTEMPTS_MAX {
            let (mut expected_base, mut position) = segment.index_entry(offset);
            loop {
                if expected_base == offset && position < segment.size_bytes {
                    // The header there must say so too (a flipped offset delta or length
                    // on the way could have led here).
                    let confirmed = read_header(disk, segment.file, position).is_ok_and(|raw| {
                        let header = RecordBatch::header_of(&raw);
                        check_stored_header(&header, offset, segment.size_bytes - position).is_ok()
                    });
                    if confirmed {
                        return Ok(position);
                    }
                    last_problem = format!("no batch of offset {offset} at {position}");
                    break;
                }
                if expected_base > offset || position >= segment.size_bytes {
                    // Or a flipped offset delta jumped over it: walk again to be sure.
                    not_a_boundary += 1;
                    break;
                }
                let raw = match read_header(disk, segment.file, position) {
                    Ok(raw) => raw,
                    Err(e) => {
                        last_problem = e.to_string();
                        break;
                    }
                };
                let header = RecordBatch::header_of(&raw);
                if let Err(reason) =
                    check_stored_header(&header, expected_base, segment.size_bytes - position)
                {
                    last_problem = reason;
                    break;
                }
                position += header.size_bytes() as u64;
                expected_base = header.last_offset() + 1;
            }
            if not_a_boundary >= RECOVERY_READ_AGREEMENT {
                return Err(LogError::NotABatchBoundary { offset });
            }
        }
        Err(LogError::Unreadable {
            file: segment.name.clone(),
            position: 0,
            reason: last_problem,
        })
    }

    /// Whole batches from the one holding `offset`, below `upper_offset`, up to `max_bytes`
    /// (but at least one batch when `at_least_one`). Empty at the end of the log.
    pub fn read(
        &mut self,
        disk: &mut dyn Disk,
        offset: i64,
        upper_offset: i64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<Bytes, LogError> {
        let start = self.log_start_offset;
        self.read_from(disk, start, offset, upper_offset, max_bytes, at_least_one)
    }

    /// [`PartitionLog::read`] for a follower: from the batch that holds the log start on
    /// (its replication starts there, [`PartitionLog::log_start_base`]).
    pub fn read_for_replica(
        &mut self,
        disk: &mut dyn Disk,
        offset: i64,
        upper_offset: i64,
        max_bytes: usize,
    ) -> Result<Bytes, LogError> {
        let base = self.log_start_base;
        self.read_from(disk, base, offset, upper_offset, max_bytes, true)
    }

    fn read_from(
        &mut self,
        disk: &mut dyn Disk,
        lowest: i64,
        offset: i64,
        upper_offset: i64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<Bytes, LogError> {
        if offset < lowest || offset > self.log_end_offset() {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset(),
                log_end_offset: self.log_end_offset(),
            });
        }
        if offset >= upper_offset {
            return Ok(Bytes::new());
        }
        // A failed read is tried again like a bad-looking one: both are often transient. The
        // same bad bytes read back [`RECOVERY_READ_AGREEMENT`] times, or every read failing,
        // is damage on the disk (recovery reads only what the summaries do not vouch for, so
        // reads meet damage too): [`LogError::Corrupt`], and the partition goes offline.
        let mut seen: Vec<((u64, String), usize)> = Vec::new();
        let mut read_errors = 0;
        let mut last = (0, String::new());
        for attempt in 1..=RECOVERY_READ_ATTEMPTS_MAX {
            let failure = match self.read_once(disk, offset, upper_offset, max_bytes, at_least_one)
            {
                Ok(Ok(bytes)) => {
                    self.unreadable_streak = None;
                    return Ok(bytes);
                }
                Ok(Err(failure)) => failure,
                Err(LogError::Disk(e)) => {
                    read_errors += 1;
                    last = (0, format!("read failed: {e}"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            tracing::warn!(dir = %self.dir, position = failure.0, attempt, reason = %failure.1, "read looks corrupt; reading again");
            let count = match seen.iter_mut().find(|(f, _)| *f == failure) {
                Some((_, count)) => {
                    *count += 1;
                    *count
                }
                None => {
                    seen.push((failure.clone(), 1));
                    1
                }
            };
            if count >= RECOVERY_READ_AGREEMENT {
                return Err(LogError::Corrupt {
                    file: self.segment_holding(offset),
                    position: failure.0,
                    recovery_point: self.recovery_point,
                    reason: failure.1,
                });
            }
            last = failure;
        }
        let (position, reason) = last;
        let file = self.segment_holding(offset);
        let streak = match self.unreadable_streak {
            Some((at, n)) if at == offset && read_errors == RECOVERY_READ_ATTEMPTS_MAX => n + 1,
            _ if read_errors == RECOVERY_READ_ATTEMPTS_MAX => 1,
            _ => 0,
        };
        self.unreadable_streak = (streak > 0).then_some((offset, streak));
        if streak >= UNREADABLE_STREAK_MAX {
            // A latent sector error: no read gets past it, read after read.
            return Err(LogError::Corrupt {
                file,
                position,
                recovery_point: self.recovery_point,
                reason,
            });
        }
        Err(LogError::Unreadable {
            file,
            position,
            reason,
        })
    }

    fn segment_holding(&self, offset: i64) -> String {
        let at = self.segments.partition_point(|s| s.base_offset <= offset);
        self.segments[at.saturating_sub(1)].name.clone()
    }

    /// One attempt at [`PartitionLog::read`]. Nothing read from the disk is trusted: the walk
    /// over batch headers checks each one against the chain of offsets the log expects, and
    /// the bytes returned are checked again (the chain, and every CRC) because a bit can flip
    /// on any read, and the base offset is not covered by the CRC. `Ok(Err((position,
    /// reason)))` says what looked wrong.
    #[allow(clippy::type_complexity)]
    fn read_once(
        &mut self,
        disk: &mut dyn Disk,
        offset: i64,
        upper_offset: i64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<Result<Bytes, (u64, String)>, LogError> {
        let at = self.segments.partition_point(|s| s.base_offset <= offset);
        let Some(segment) = self.segments.get(at.saturating_sub(1)) else {
            return Ok(Ok(Bytes::new()));
        };
        let (mut expected_base, mut position) = segment.index_entry(offset);
        let mut start = None;
        let mut first_base = expected_base;
        let mut end = position;
        while position < segment.size_bytes {
            let raw = read_header(disk, segment.file, position)?;
            let header = RecordBatch::header_of(&raw);
            if let Err(reason) =
                check_stored_header(&header, expected_base, segment.size_bytes - position)
            {
                return Ok(Err((position, reason)));
            }
            let size_bytes = header.size_bytes() as u64;
            if header.last_offset() < offset {
                position += size_bytes;
                expected_base = header.last_offset() + 1;
                continue;
            }
            if header.base_offset >= upper_offset {
                break;
            }
            let taken = position - start.unwrap_or(position);
            if taken + size_bytes > max_bytes as u64 && !(start.is_none() && at_least_one) {
                if start.is_none() {
                    // The first batch is larger than the caller takes: an empty answer.
                    return Ok(Ok(Bytes::new()));
                }
                break;
            }
            if start.is_none() {
                start = Some(position);
                first_base = header.base_offset;
            }
            position += size_bytes;
            expected_base = header.last_offset() + 1;
            end = position;
        }
        // `offset` is below the log end and this segment holds it (the next one starts past
        // it): a walk that found no batch for it read a header wrong (a flipped
        // last-offset delta skips the batch), not the end of the log.
        let Some(start) = start else {
            return Ok(Err((position, format!("no batch holds offset {offset}"))));
        };
        let mut bytes = vec![0u8; (end - start) as usize];
        disk.read_at(segment.file, start, &mut bytes)?;
        let bytes = Bytes::from(bytes);
        let mut expected_base = first_base;
        let mut at = 0usize;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let Some(raw) = rest.first_chunk::<BATCH_HEADER_BYTES>() else {
                return Ok(Err((start + at as u64, "a partial batch header".into())));
            };
            let header = RecordBatch::header_of(raw);
            if let Err(reason) = check_stored_header(&header, expected_base, rest.len() as u64) {
                return Ok(Err((start + at as u64, reason)));
            }
            let size_bytes = header.size_bytes();
            if let Err(e) = RecordBatch::parse(bytes.slice(at..at + size_bytes)) {
                return Ok(Err((start + at as u64, e.to_string())));
            }
            if at == 0 && header.last_offset() < offset {
                return Ok(Err((start, format!("the batch read ends before {offset}"))));
            }
            // The leader epoch is outside the CRC too: it must be the one the log recorded.
            let expected_epoch = self.epoch_of(header.base_offset);
            if expected_epoch.is_some_and(|e| e != header.partition_leader_epoch) {
                return Ok(Err((
                    start + at as u64,
                    format!(
                        "leader epoch {}, the log says {expected_epoch:?}",
                        header.partition_leader_epoch
                    ),
                )));
            }
            expected_base = header.last_offset() + 1;
            at += size_bytes;
        }
        Ok(Ok(bytes))
    }

    pub fn offset_for_timestamp(
        &mut self,
        disk: &mut dyn Disk,
        timestamp: i64,
        upper_offset: i64,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let log_start_offset = self.log_start_offset;
        for segment in &self.segments {
            if segment.max_timestamp < timestamp {
                continue;
            }
            let at = segment
                .index
                .partition_point(|e| e.max_timestamp_so_far < timestamp);
            let (mut expected_base, mut position) = if at == 0 {
                (segment.base_offset, 0)
            } else {
                (
                    segment.index[at - 1].base_offset,
                    segment.index[at - 1].position,
                )
            };
            while position < segment.size_bytes {
                let batch = Self::read_verified_batch(
                    disk,
                    &segment.name,
                    segment.file,
                    position,
                    expected_base,
                    segment.size_bytes - position,
                )?;
                let header = *batch.header();
                expected_base = header.last_offset() + 1;
                if header.base_offset >= upper_offset {
                    return Ok(None);
                }
                if header.max_timestamp >= timestamp {
                    let records =
                        batch
                            .records(DECOMPRESSED_BATCH_SIZE_MAX_BYTES)
                            .map_err(|e| LogError::Unreadable {
                                file: segment.name.clone(),
                                position,
                                reason: e.to_string(),
                            })?;
                    for record in records {
                        let record_timestamp = if header.is_log_append_time() {
                            header.max_timestamp
                        } else {
                            header.base_timestamp + record.timestamp_delta
                        };
                        let offset = header.base_offset + i64::from(record.offset_delta);
                        if record_timestamp >= timestamp && offset >= log_start_offset {
                            return Ok(Some((offset, record_timestamp)));
                        }
                    }
                }
                position += header.size_bytes() as u64;
            }
        }
        Ok(None)
    }

    /// The whole batch at `position`, checked before anything in it is believed: its header
    /// against the offset chain and the room left, its CRC (which covers the timestamps a
    /// lookup by time decides on). Read again up to [`RECOVERY_READ_ATTEMPTS`] times.
    fn read_verified_batch(
        disk: &mut dyn Disk,
        name: &str,
        file: FileId,
        position: u64,
        expected_base: i64,
        room_bytes: u64,
    ) -> Result<RecordBatch, LogError> {
        let mut reason = String::new();
        // The batch passed its check already (its CRC held): a read that fails now is a
        // fault on the way, and a log with many control batches (transaction markers) reads
        // many, so it is read as often as a bad-looking batch would be before giving up.
        for _ in 0..RECOVERY_READ_ATTEMPTS_MAX {
            let raw = match read_header(disk, file, position) {
                Ok(raw) => raw,
                Err(e) => {
                    reason = e.to_string();
                    continue;
                }
            };
            let header = RecordBatch::header_of(&raw);
            if let Err(why) = check_stored_header(&header, expected_base, room_bytes) {
                reason = why;
                continue;
            }
            let mut bytes = vec![0u8; header.size_bytes()];
            if let Err(e) = disk.read_at(file, position, &mut bytes) {
                reason = e.to_string();
                continue;
            }
            match RecordBatch::parse(Bytes::from(bytes)) {
                Ok(batch) if batch.header().base_offset == expected_base => return Ok(batch),
                Ok(batch) => {
                    reason = format!(
                        "batch starts at {}, expected {expected_base}",
                        batch.header().base_offset
                    )
                }
                Err(e) => reason = e.to_string(),
            }
        }
        Err(LogError::Unreadable {
            file: name.to_string(),
            position,
            reason,
        })
    }

    /// The largest timestamp below `upper_offset` and the offset of its batch (ListOffsets -3).
    pub fn max_timestamp(&self) -> Option<i64> {
        self.segments
            .iter()
            .map(|s| s.max_timestamp)
            .filter(|t| *t >= 0)
            .max()
    }

    /// Removes every file of the log (its directory's removal is the caller's: other files
    /// live there too).
    pub fn delete(mut self, disk: &mut dyn Disk) -> Result<(), LogError> {
        self.abandon_cleaning(disk);
        for segment in &self.segments {
            disk.remove(&segment.name)?;
            disk.remove(&summary_of(&segment.name))?;
        }
        for (name, _) in &self.doomed {
            disk.remove(name)?;
            disk.remove(&summary_of(name))?;
        }
        disk.remove(&format!(
            "{}/{}",
            self.dir,
            summary::PRODUCER_CHECKPOINT_FILE
        ))?;
        if self.log_start_file.is_some() {
            disk.remove(&format!("{}/{LOG_START_FILE}", self.dir))?;
        }
        if self.producer_snapshot_file.is_some() {
            disk.remove(&format!("{}/{PRODUCER_SNAPSHOT_FILE}", self.dir))?;
        }
        disk.remove(&format!("{}/{RECOVERY_POINT_FILE}", self.dir))?;
        Ok(())
    }
}

/// The index entry of a transaction a marker (`header`, stamped) just ended, if it aborted:
/// the last stable offset it records is the partition's once the marker applied.
fn aborted_txn(
    producers: &ProducerStates,
    header: &BatchHeader,
    ended: Option<(i64, bool)>,
) -> Option<AbortedTxn> {
    let (first_offset, true) = ended? else {
        return None;
    };
    let after = header.base_offset + 1;
    Some(AbortedTxn {
        producer_id: header.producer_id,
        first_offset,
        last_offset: header.base_offset,
        last_stable_offset: producers
            .first_unstable_offset()
            .map_or(after, |f| f.min(after)),
    })
}

/// Keel's control record type for a log start moved by DeleteRecords. Kafka's control types
/// are small numbers (0 to 6 so far); clients skip control batches whatever their type.
pub const LOG_START_CONTROL_TYPE: i16 = 0x4b45;

/// A control batch that moves the log start to `log_start_offset` once it commits: every
/// replica applies it when its high watermark passes it, so a DeleteRecords answered at its
/// commit holds on whichever replica leads next (a majority has the batch). Key: version 0,
/// type [`LOG_START_CONTROL_TYPE`]; value: version 0, the new start.
pub fn log_start_batch(log_start_offset: i64, timestamp_ms: i64) -> Bytes {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&LOG_START_CONTROL_TYPE.to_be_bytes());
    let mut value = Vec::with_capacity(10);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&log_start_offset.to_be_bytes());
    let marker = crate::record::NewRecord {
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        ..Default::default()
    };
    let options = crate::record::BatchOptions {
        base_timestamp: timestamp_ms,
        control: true,
        ..Default::default()
    };
    crate::record::build(&[marker], &options).expect("a one-record batch builds")
}

/// The log start a batch moves the log to, if it is a [`log_start_batch`].
pub fn log_start_of(batch: &RecordBatch) -> Option<i64> {
    if !batch.header().is_control() {
        return None;
    }
    let records = batch.records(DECOMPRESSED_BATCH_SIZE_MAX_BYTES).ok()?;
    let record = records.first()?;
    let key = record.key.as_ref()?;
    if key.len() != 4 || key[2..4] != LOG_START_CONTROL_TYPE.to_be_bytes() {
        return None;
    }
    let value = record.value.as_ref()?;
    let start = i64::from_be_bytes(value.get(2..10)?.try_into().ok()?);
    (start >= 0).then_some(start)
}

/// Drops the epochs of batches below `base` (the first batch the log keeps): the last epoch
/// that started before it now starts there, so that the epoch of the batch before the log
/// (what an empty log claims in elections, and what a follower's last fetched epoch is
/// checked against) stays known. Kafka's leader-epoch cache is trimmed the same way.
pub fn trim_epochs(epochs: &mut Vec<(i32, i64)>, base: i64) {
    let below = epochs.partition_point(|(_, start)| *start < base);
    if below > 0 {
        let (epoch, _) = epochs[below - 1];
        epochs.drain(..below);
        epochs.insert(0, (epoch, base));
    }
}
