//! Compaction (`cleanup.policy=compact`): the cleaner keeps each key's last record.
//!
//! A pass covers the log's *cleanable* segments: whole segments below the high watermark,
//! never the active one, whose newest batch is at least `min.compaction.lag.ms` old. It
//! first maps every key in them to the offset of its last record, then writes a cleaned copy
//! of each segment beside it (`<base>.cleaned`) and, once a sync round has made the copy
//! durable, renames it over the segment. A crash before the rename leaves the copy, which
//! recovery removes; after it, the directory holds the old segment or the new one, and both
//! hold every key's last record. Records above the high watermark or in the active segment
//! are never touched, so a key's newest record survives whatever the cleaner removes below.
//!
//! What a copy keeps, batch by batch (as Kafka's cleaner does, but for one thing): a record
//! whose key has a later record is gone; a tombstone (a null value) that is its key's last
//! record stays until its segment is `delete.retention.ms` old (consumers that read it in
//! that time learn of the deletion), then goes; a record without a key, and every control
//! batch, stays. A batch keeps its base offset, last offset delta, leader epoch, timestamps
//! and producer fields, and each record its offset: offsets never move. Where Kafka drops a
//! batch left without records, Keel keeps its header: the log checks the unbroken chain of
//! batch offsets on every read and at recovery (the base offset is outside the CRC), a
//! follower's fetch position stays on a batch boundary of its leader's log, and a producer's
//! last sequence stays readable for the replay of producer state.
//!
//! Work is bounded: the node steps a pass between requests, at most `budget_bytes` read per
//! step (`Config::log_cleaner_io_bytes_per_sec` sets the rate), and the map holds at most
//! [`limits::CLEANER_MAP_BYTES_MAX`] of keys (a pass then cleans the segments whose keys fit).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::*;
use crate::limits;
use crate::record::{rebuild, split_batches};

/// A cleaned copy's suffix: a leftover one (a crash before its rename) is removed at recovery.
pub(super) const CLEANED_SUFFIX: &str = ".cleaned";

/// What a key costs in the map besides its bytes (its offset and the table's overhead).
const MAP_ENTRY_OVERHEAD_BYTES: usize = 48;

/// A cleaning pass in progress.
#[derive(Debug)]
pub(super) struct Cleaning {
    /// Segments wholly below this offset are cleaned in this pass.
    end: i64,
    /// Each key's last offset below `end` (as far as mapped).
    latest: BTreeMap<Bytes, i64>,
    /// The aborted transactions begun below `end`, by producer: (first offset, marker).
    /// Their records never count as a key's last (read_committed consumers never see them,
    /// so they must not make a committed record go) and are dropped from copies.
    aborted: BTreeMap<i64, Vec<(i64, i64)>>,
    map_bytes: usize,
    /// When a tombstone this pass keeps may go (its segment's newest batch plus
    /// `delete.retention.ms`): a pass is due then even without new data.
    tombstone_due: Option<i64>,
    /// The planted bug dropped a key's newest record this pass (once per pass).
    planted_dropped: bool,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// Mapping keys: the next batch read starts at this offset.
    Mapping { next: i64 },
    /// Writing a segment's cleaned copy.
    Writing(Copy),
    /// The copy is written and waits for a sync round to make it durable: `armed` once a
    /// round that carries it has begun; its completion renames the copy over the segment.
    Syncing { copy: Copy, armed: bool },
}

/// A segment's cleaned copy, being written.
#[derive(Debug)]
struct Copy {
    /// The segment cleaned, as it was when the copy began: one that changed since (removed
    /// by retention, a reset) is not replaced.
    base: i64,
    size_bytes: u64,
    next_offset: i64,
    /// The next batch of the segment to read.
    next: i64,
    /// The copy as written so far: its file, size and index.
    written: Segment,
    removed_records: u64,
}

impl PartitionLog {
    /// Whether a cleaning pass is under way (the node steps it again soon).
    pub fn cleaning(&self) -> bool {
        self.cleaning.is_some()
    }

    /// Where the segments a pass may clean end at `now_ms`: the first segment that is the
    /// active one, reaches `high_watermark`, or holds a batch younger than
    /// `min.compaction.lag.ms` ends the cleanable prefix.
    fn cleanable_end(&self, now_ms: i64, high_watermark: i64) -> i64 {
        let lag = self.config.min_compaction_lag_ms;
        let mut end = self.segments[0].base_offset;
        for segment in &self.segments[..self.segments.len() - 1] {
            if segment.next_offset > high_watermark
                || now_ms.saturating_sub(segment.max_timestamp) < lag
            {
                break;
            }
            end = segment.next_offset;
        }
        end
    }

    /// One step of compaction at `now_ms`, reading at most `budget_bytes` (whole batches, at
    /// least one): starts a pass when the cleanable segments grew since the last one (or a
    /// kept tombstone's time is up), maps keys, writes cleaned copies. A copy replaces its
    /// segment when a sync round has made it durable ([`PartitionLog::complete_sync`]).
    /// Returns the bytes read.
    pub fn clean_step(
        &mut self,
        disk: &mut dyn Disk,
        now_ms: i64,
        high_watermark: i64,
        budget_bytes: u64,
    ) -> Result<u64, LogError> {
        if !self.config.compact {
            self.abandon_cleaning(disk);
            return Ok(0);
        }
        if self.cleaning.is_none() {
            // Never past an open transaction: whether its records count is not known yet.
            let stable = self.last_stable_offset(high_watermark);
            let end = self.cleanable_end(now_ms, stable);
            let tombstones_due = self.tombstones_due.is_some_and(|due| now_ms >= due);
            if end <= self.segments[0].base_offset || (end <= self.cleaned_to && !tombstones_due) {
                return Ok(0);
            }
            tracing::debug!(dir = %self.dir, end, cleaned_to = self.cleaned_to, "a cleaning pass begins");
            self.tombstones_due = None;
            let mut aborted: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
            let mut map_bytes = 0;
            for a in self.segments.iter().flat_map(|s| &s.aborted) {
                if a.first_offset < end {
                    let ranges = aborted.entry(a.producer_id).or_default();
                    ranges.push((a.first_offset, a.last_offset));
                    map_bytes += MAP_ENTRY_OVERHEAD_BYTES;
                }
            }
            self.cleaning = Some(Cleaning {
                end,
                latest: BTreeMap::new(),
                aborted,
                map_bytes,
                tombstone_due: None,
                planted_dropped: false,
                phase: Phase::Mapping {
                    next: self.segments[0].base_offset,
                },
            });
        }
        let mut read = 0u64;
        while read < budget_bytes {
            let cleaning = self.cleaning.as_mut().expect("a pass is under way");
            let step_bytes = (budget_bytes - read).min(limits::CLEANER_STEP_BYTES_MAX as u64);
            match &mut cleaning.phase {
                Phase::Mapping { next } => {
                    let next = *next;
                    if next >= cleaning.end {
                        self.next_copy(disk, i64::MIN)?;
                        continue;
                    }
                    read += self.map_keys(disk, next, step_bytes)?;
                }
                Phase::Writing(_) => read += self.write_copy(disk, now_ms, step_bytes)?,
                Phase::Syncing { .. } => break,
            }
            if self.cleaning.is_none() {
                break;
            }
        }
        Ok(read)
    }

    /// Maps the keys of the batches from `next` on, up to `step_bytes`.
    fn map_keys(
        &mut self,
        disk: &mut dyn Disk,
        next: i64,
        step_bytes: u64,
    ) -> Result<u64, LogError> {
        let lowest = self.segments[0].base_offset;
        let end = self.cleaning.as_ref().expect("mapping").end;
        let bytes = self.read_from(disk, lowest, next, end, step_bytes as usize, true)?;
        let cleaning = self.cleaning.as_mut().expect("mapping");
        let mut next_offset = next;
        for batch in split_batches(bytes.clone()) {
            let batch = RecordBatch::parse(batch.map_err(|e| self_unreadable(&self.dir, e))?)
                .map_err(|e| self_unreadable(&self.dir, e))?;
            let header = *batch.header();
            next_offset = header.last_offset() + 1;
            if header.is_control() || in_aborted(&cleaning.aborted, &header) {
                continue;
            }
            let records = batch
                .records(DECOMPRESSED_BATCH_SIZE_MAX_BYTES)
                .map_err(|e| self_unreadable(&self.dir, e))?;
            for record in records {
                let Some(key) = record.key else { continue };
                let offset = header.base_offset + i64::from(record.offset_delta);
                let size = key.len() + MAP_ENTRY_OVERHEAD_BYTES;
                if cleaning.latest.insert(key, offset).is_none() {
                    cleaning.map_bytes += size;
                }
            }
        }
        if next_offset == next {
            // Nothing below the end from here (a log whose segments changed under the pass).
            next_offset = end;
        }
        if cleaning.map_bytes > limits::CLEANER_MAP_BYTES_MAX {
            // The map is full: this pass cleans the segments below the one mapped last (the
            // keys mapped past them only make it keep less, never drop a key's last record).
            let at = self
                .segments
                .partition_point(|s| s.base_offset < next_offset);
            let cut = self.segments[at.saturating_sub(1)].base_offset;
            tracing::warn!(dir = %self.dir, keys = cleaning.latest.len(), cut, "the cleaner's map is full; this pass cleans below {cut}");
            cleaning.end = cleaning.end.min(cut);
            next_offset = cleaning.end;
        }
        cleaning.phase = Phase::Mapping { next: next_offset };
        Ok(bytes.len() as u64)
    }

    /// Begins the cleaned copy of the first segment after base `after` that lies below the
    /// pass's end, or ends the pass.
    fn next_copy(&mut self, disk: &mut dyn Disk, after: i64) -> Result<(), LogError> {
        let cleaning = self.cleaning.as_mut().expect("a pass is under way");
        let end = cleaning.end;
        let segment = (self.segments.iter())
            .take(self.segments.len() - 1)
            .find(|s| s.base_offset > after && s.next_offset <= end);
        let Some(segment) = segment else {
            tracing::debug!(dir = %self.dir, end, "a cleaning pass ends");
            self.cleaned_to = self.cleaned_to.max(end);
            self.tombstones_due = cleaning.tombstone_due;
            self.cleaning = None;
            return Ok(());
        };
        let name = format!("{}/{:020}{CLEANED_SUFFIX}", self.dir, segment.base_offset);
        disk.remove(&name)?;
        let file = disk.create(&name)?;
        cleaning.phase = Phase::Writing(Copy {
            base: segment.base_offset,
            size_bytes: segment.size_bytes,
            next_offset: segment.next_offset,
            next: segment.base_offset,
            written: Segment::empty(name, file, segment.base_offset),
            removed_records: 0,
        });
        Ok(())
    }

    /// Whether the segment a copy was begun from is still in the log, as it was.
    fn copy_source(&self, copy: &Copy) -> Option<usize> {
        self.segments[..self.segments.len() - 1]
            .iter()
            .position(|s| {
                s.base_offset == copy.base
                    && s.size_bytes == copy.size_bytes
                    && s.next_offset == copy.next_offset
            })
    }

    /// Writes the cleaned copy of up to `step_bytes` more of the segment.
    fn write_copy(
        &mut self,
        disk: &mut dyn Disk,
        now_ms: i64,
        step_bytes: u64,
    ) -> Result<u64, LogError> {
        let Some(Cleaning {
            phase: Phase::Writing(copy),
            ..
        }) = self.cleaning.as_ref()
        else {
            unreachable!("writing a copy");
        };
        let Some(at) = self.copy_source(copy) else {
            // Retention or a reset took the segment: its copy goes too.
            let (base, name) = (copy.base, copy.written.name.clone());
            disk.remove(&name)?;
            return self.next_copy(disk, base).map(|()| 0);
        };
        if copy.next >= copy.next_offset {
            return self.finish_copy(disk).map(|()| 0);
        }
        let (next, upper) = (copy.next, copy.next_offset);
        let segment_max_timestamp = self.segments[at].max_timestamp;
        let lowest = self.segments[0].base_offset;
        let bytes = self.read_from(disk, lowest, next, upper, step_bytes as usize, true)?;
        let delete_retention_ms = self.config.delete_retention_ms;
        let planted = self.config.planted_cleaner_drops_newest;
        let interval = self.config.index_interval_bytes;
        let dir = self.dir.clone();
        let Some(Cleaning {
            phase: Phase::Writing(copy),
            latest,
            aborted,
            tombstone_due,
            planted_dropped,
            ..
        }) = self.cleaning.as_mut()
        else {
            unreachable!("writing a copy");
        };
        let tombstones_expired =
            now_ms.saturating_sub(segment_max_timestamp) >= delete_retention_ms;
        for raw in split_batches(bytes.clone()) {
            let batch = RecordBatch::parse(raw.map_err(|e| self_unreadable(&dir, e))?)
                .map_err(|e| self_unreadable(&dir, e))?;
            let header = *batch.header();
            let cleaned = match header.is_control() || header.records_count == 0 {
                true => None,
                false => {
                    let records = batch
                        .records(DECOMPRESSED_BATCH_SIZE_MAX_BYTES)
                        .map_err(|e| self_unreadable(&dir, e))?;
                    let count = records.len();
                    let mut kept = Vec::with_capacity(count);
                    let aborted = in_aborted(aborted, &header);
                    for record in records {
                        if aborted {
                            continue;
                        }
                        let offset = header.base_offset + i64::from(record.offset_delta);
                        let newest = match &record.key {
                            None => true,
                            Some(key) => latest.get(key).is_none_or(|last| *last <= offset),
                        };
                        let tombstone = record.key.is_some() && record.value.is_none();
                        let keep = match (newest, tombstone) {
                            (false, _) => false,
                            (true, true) if tombstones_expired => false,
                            (true, true) => {
                                let due = segment_max_timestamp.saturating_add(delete_retention_ms);
                                *tombstone_due = Some(tombstone_due.map_or(due, |d| d.min(due)));
                                true
                            }
                            (true, false)
                                if planted && record.key.is_some() && !*planted_dropped =>
                            {
                                *planted_dropped = true;
                                false
                            }
                            (true, false) => true,
                        };
                        if keep {
                            kept.push(record);
                        }
                    }
                    copy.removed_records += (count - kept.len()) as u64;
                    (kept.len() < count).then_some(kept)
                }
            };
            let out = match cleaned {
                None => batch,
                Some(kept) => {
                    let bytes = rebuild(&batch, &kept).map_err(|e| self_unreadable(&dir, e))?;
                    RecordBatch::parse(bytes).expect("a rebuilt batch parses")
                }
            };
            let position = copy.written.size_bytes;
            disk.write_at(copy.written.file, position, out.as_bytes())?;
            let size = out.as_bytes().len() as u64;
            copy.written
                .note_batch(out.header(), position, size, interval);
            copy.next = header.last_offset() + 1;
        }
        Ok(bytes.len() as u64)
    }

    /// The copy is whole: one that removed nothing is dropped; otherwise it waits for a sync
    /// round.
    fn finish_copy(&mut self, disk: &mut dyn Disk) -> Result<(), LogError> {
        let cleaning = self.cleaning.as_mut().expect("a pass is under way");
        let Phase::Writing(copy) =
            std::mem::replace(&mut cleaning.phase, Phase::Mapping { next: 0 })
        else {
            unreachable!("finishing a copy");
        };
        if copy.removed_records == 0 {
            disk.remove(&copy.written.name)?;
            return self.next_copy(disk, copy.base);
        }
        self.dirty_files.push(copy.written.file);
        let void = summary_name(&self.dir, copy.base);
        cleaning.phase = Phase::Syncing { copy, armed: false };
        // The segment's summary is voided in the round that syncs the copy, before the
        // rename (see `install_cleaned_copy`).
        self.write_aux(disk, &void, &[])?;
        Ok(())
    }

    /// A sync round begins: a copy waiting for one is carried by it.
    pub(super) fn arm_cleaned_copy(&mut self) {
        if let Some(Cleaning {
            phase: Phase::Syncing { armed, .. },
            ..
        }) = self.cleaning.as_mut()
        {
            *armed = true;
        }
    }

    /// A sync round completed: a copy it carried replaces its segment (the rename is durable
    /// with the next round's sync of the directory; until then a crash keeps one of the two).
    pub(super) fn install_cleaned_copy(&mut self, disk: &mut dyn Disk) -> Result<(), LogError> {
        let Some(Cleaning {
            phase: Phase::Syncing { armed: true, .. },
            ..
        }) = self.cleaning.as_ref()
        else {
            return Ok(());
        };
        let cleaning = self.cleaning.as_mut().expect("checked");
        let Phase::Syncing { copy, .. } =
            std::mem::replace(&mut cleaning.phase, Phase::Mapping { next: 0 })
        else {
            unreachable!("checked");
        };
        let base = copy.base;
        match self.copy_source(&copy) {
            None => {
                disk.remove(&copy.written.name)?;
                self.dirty_files.retain(|f| *f != copy.written.file);
            }
            Some(at) => {
                // The old summary was voided with the copy's sync round; the copy's is
                // written once the rename is durable (`summaries_due`): no crash pairs a
                // summary with the other version of the segment.
                let old = &self.segments[at];
                disk.rename(&copy.written.name, &old.name)?;
                tracing::debug!(dir = %self.dir, base, removed = copy.removed_records, from = old.size_bytes, to = copy.written.size_bytes, "a segment cleaned");
                let (old_file, name) = (old.file, old.name.clone());
                let (markers, aborted) = (old.markers.clone(), old.aborted.clone());
                self.dirty_files.retain(|f| *f != old_file);
                let mut cleaned = copy.written;
                cleaned.name = name;
                cleaned.markers = markers;
                cleaned.aborted = aborted;
                self.segments[at] = cleaned;
                self.dir_dirty = true;
                self.summaries_due.push((base, false));
            }
        }
        self.next_copy(disk, base)
    }

    /// Stops a pass (the log was reset or truncated, or is no longer compacted): its copy,
    /// if any, is removed.
    pub(super) fn abandon_cleaning(&mut self, disk: &mut dyn Disk) {
        let Some(cleaning) = self.cleaning.take() else {
            return;
        };
        if let Phase::Writing(copy) | Phase::Syncing { copy, .. } = cleaning.phase {
            self.dirty_files.retain(|f| *f != copy.written.file);
            if let Err(e) = disk.remove(&copy.written.name) {
                tracing::warn!(file = %copy.written.name, error = %e, "a cleaned copy was not removed; recovery removes it");
            }
        }
    }
}

/// A batch the cleaner read (verified by the read) that does not decode: the log is damaged.
/// Whether a transactional batch belongs to an aborted transaction.
fn in_aborted(aborted: &BTreeMap<i64, Vec<(i64, i64)>>, header: &BatchHeader) -> bool {
    header.is_transactional()
        && (aborted.get(&header.producer_id)).is_some_and(|ranges| {
            (ranges.iter()).any(|(first, last)| (*first..=*last).contains(&header.base_offset))
        })
}

fn self_unreadable(dir: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unreadable {
        file: dir.to_string(),
        position: 0,
        reason: format!("the cleaner read a bad batch: {e}"),
    }
}
