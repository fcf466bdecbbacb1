//! The checkers: what the history of client operations (invoke, then ok / fail / unknown, as
//! Jepsen records them) and the node's state must never show. Every check is incremental: it
//! runs as acknowledgements and reads arrive, so a run stops being cheap only when it fails.
//!
//! Every written value is unique in the run (a client retrying a write writes a new value), so
//! a value is a record's identity:
//! - **lost-write**: an acknowledged record is missing (after a restart, the log ends before
//!   it; at the end, consumers read past its offset and found something else, or nothing);
//! - **duplicate**: one value at two offsets;
//! - **inconsistent-offset**: one offset holding two values (acknowledged or read);
//! - **nonmonotonic-send**: one producer's acknowledged writes to one partition sit at offsets
//!   out of their send order;
//! - **poll-skip**: a consumer's fetch from position p returned records starting after p;
//! - **phantom-write**: a write the node refused (a definite failure) was read;
//! - **protocol**: a response that does not answer the request in front of it;
//! - **sync-failure-ignored**: a failed sync did not halt the node;
//! - **high-watermark-back**: a consumer saw a partition's high watermark go back (across
//!   restarts too: what a client was shown as committed stays committed);
//! - **wrong-topic**: one topic id for two topics, or a record read from a topic it was not
//!   written to (the admin workload's side topics, `admin.rs`);
//! - **two-leaders**: two nodes led one partition in one epoch (from the nodes' state);
//! - **undurable-vote**: a node granted a vote, or announced it leads an epoch, before that
//!   vote was durable on its disk (a crash could make it vote again in the same epoch);
//! - **unreplicated-ack**: an acks=all write was acknowledged before a majority of nodes had
//!   it on their disks, durably (fsync durability);
//! - **replicas-diverge**: two nodes hold different batches below both their high watermarks;
//! - **liveness**: after the faults stopped, an acknowledged record was not read back in time.
//!
//! Lasting damage (a rotten bit, a lost or misdirected write, an unreadable sector, a lost
//! file) can destroy acknowledged records on a single node; what it must never do is pass
//! unnoticed. A partition whose files were damaged may be taken offline (damage detected and
//! refused), or lose records past the recovery point found on the disk (where damage cannot
//! be told from a torn write), or lose records when that recovery point is itself gone: such
//! a partition is *retired* and no longer checked. Losing records below a readable recovery
//! point, or going offline without damage, is still a violation.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViolationKind {
    LostWrite,
    Duplicate,
    InconsistentOffset,
    NonmonotonicSend,
    PollSkip,
    PhantomWrite,
    Protocol,
    SyncFailureIgnored,
    HighWatermarkBack,
    WrongTopic,
    TwoLeaders,
    UndurableVote,
    UnreplicatedAck,
    ReplicasDiverge,
    ImagesDiverge,
    Liveness,
    /// A group's acknowledged commit for a partition below one acknowledged before it, or
    /// committed offsets read back below one acknowledged before the read.
    GroupCommitBack,
    /// Two members own a partition in one generation.
    TwoOwners,
    /// A group committed an offset past anything committed in the partition.
    CommitPastEnd,
    /// An acknowledged record gone from the log before retention or DeleteRecords allowed
    /// it (a consumer below the log start found it moved past the record).
    RemovedEarly,
    /// A record below an acknowledged DeleteRecords' start served by a fetch sent after it.
    ServedBelowStart,
    /// A compacted topic's acknowledged record gone from the log although no newer record of
    /// its key was committed when a consumer found it gone: compaction lost a key's latest
    /// value.
    CompactedLatest,
    /// A read_committed consumer read a record of an aborted transaction (or offsets an
    /// aborted transaction committed were read back).
    AbortedRead,
    /// A transaction that committed was read in part.
    TxnPartial,
    /// A fenced incarnation of a transactional producer wrote or committed.
    ZombieNotFenced,
    /// A last stable offset past the high watermark.
    StableOffset,
    /// A cycle among committed transactions of what each read of another's writes and of
    /// each producer's order (Adya's G1c: information flowing in a circle).
    CyclicInformationFlow,
}

impl ViolationKind {
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::LostWrite => "lost-write",
            ViolationKind::Duplicate => "duplicate",
            ViolationKind::InconsistentOffset => "inconsistent-offset",
            ViolationKind::NonmonotonicSend => "nonmonotonic-send",
            ViolationKind::PollSkip => "poll-skip",
            ViolationKind::PhantomWrite => "phantom-write",
            ViolationKind::Protocol => "protocol",
            ViolationKind::SyncFailureIgnored => "sync-failure-ignored",
            ViolationKind::HighWatermarkBack => "high-watermark-back",
            ViolationKind::WrongTopic => "wrong-topic",
            ViolationKind::TwoLeaders => "two-leaders",
            ViolationKind::UndurableVote => "undurable-vote",
            ViolationKind::UnreplicatedAck => "unreplicated-ack",
            ViolationKind::ReplicasDiverge => "replicas-diverge",
            ViolationKind::ImagesDiverge => "images-diverge",
            ViolationKind::Liveness => "liveness",
            ViolationKind::GroupCommitBack => "group-commit-back",
            ViolationKind::TwoOwners => "two-owners",
            ViolationKind::CommitPastEnd => "commit-past-end",
            ViolationKind::RemovedEarly => "removed-early",
            ViolationKind::ServedBelowStart => "served-below-start",
            ViolationKind::CompactedLatest => "compacted-latest",
            ViolationKind::AbortedRead => "aborted-read",
            ViolationKind::TxnPartial => "txn-partial",
            ViolationKind::ZombieNotFenced => "zombie-not-fenced",
            ViolationKind::StableOffset => "stable-offset",
            ViolationKind::CyclicInformationFlow => "g1c",
        }
    }

    pub fn is_safety(self) -> bool {
        self != ViolationKind::Liveness
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    /// Simulated time, nanoseconds since the run began.
    pub at_ns: u64,
    pub detail: String,
}

/// A produce request's records: which partition, which values, in which place of the
/// producer's sends.
#[derive(Debug, Clone)]
pub struct Write {
    pub producer: usize,
    pub partition: i32,
    pub send_seq: u64,
    pub values: Vec<u64>,
    /// The batch's timestamp (retention counts from it).
    pub timestamp_ms: i64,
}

#[derive(Debug, Default)]
pub struct Checker {
    /// (partition, offset) -> the value there, from acknowledgements and reads.
    value_at: BTreeMap<(i32, i64), u64>,
    /// value -> where it was seen.
    place_of: BTreeMap<u64, (i32, i64)>,
    /// value -> where its acknowledgement put it.
    acked: BTreeMap<u64, (i32, i64)>,
    /// partition -> one past its highest acknowledged offset.
    acked_end: BTreeMap<i32, i64>,
    /// partition -> one past the highest offset a client saw committed (acknowledged or read).
    seen_end: BTreeMap<i32, i64>,
    /// (partition, offset) -> value, from consumers only.
    read: BTreeMap<(i32, i64), u64>,
    /// Values of writes the node refused.
    failed: BTreeSet<u64>,
    /// (producer, partition) -> send_seq -> base offset of its acknowledged writes.
    sent: BTreeMap<(usize, i32), BTreeMap<u64, i64>>,
    /// (consumer, partition) -> the highest high watermark its fetches were answered with.
    high_watermark_seen: BTreeMap<(usize, i32), i64>,
    /// Partitions no longer checked, and why: lasting damage destroyed records in them and
    /// the node refused to serve them or could not have known (see the module docs).
    retired: BTreeMap<i32, String>,
    violations: Vec<Violation>,
    /// (generation, partition) -> the member assigned it.
    owners: BTreeMap<(i32, i32), String>,
    /// partition -> every acknowledged group commit: (time, offset), in time order.
    group_commits: BTreeMap<i32, Vec<(u64, i64)>>,
    /// value -> the timestamp of its acknowledged batch.
    timestamp_of: BTreeMap<u64, i64>,
    /// The smallest retention.ms any client asked for (it may be in force from then on).
    retention_ms_min: Option<i64>,
    /// partition -> the highest offset a DeleteRecords asked for (acknowledged or not).
    delete_asked: BTreeMap<i32, i64>,
    /// partition -> DeleteRecords acknowledged: (time, new start).
    delete_acked: BTreeMap<i32, Vec<(u64, i64)>>,
    /// partition -> the highest start a consumer jumped to: acknowledged records below it
    /// that nobody read were checked as removed then.
    removed_below: BTreeMap<i32, i64>,
    /// partition -> every jump past a moved start, in time order: (the new start, the nodes'
    /// clock then), for acknowledgements that arrive after the jump that removed them.
    jumps: BTreeMap<i32, Vec<(i64, i64)>>,
    /// Keys of a compacted topic (`crate::plan::compaction_key`), if it is one.
    compaction_keys: Option<u32>,
    /// (partition, key) -> offsets of its records known committed (acknowledged or read).
    key_offsets: BTreeMap<(i32, u32), BTreeSet<i64>>,
    /// partition -> offset ranges a consumer found without records (the cleaner removed
    /// them), each with the high watermark of the fetch that showed it and when it came:
    /// (from, to, hw, at_ns).
    gaps: BTreeMap<i32, Vec<(i64, i64, i64, u64)>>,
    /// (partition, key) -> the writes sent with it: (when, value). One whose outcome never
    /// came may be committed, at an offset nobody saw before the cleaner removed it.
    key_sends: BTreeMap<(i32, u32), Vec<(u64, u64)>>,
    /// value -> when its acknowledgement came (compacted topics only).
    acked_ns: BTreeMap<u64, u64>,
    /// The transactional workload's history (`--transactions`).
    txns: TxnHistory,
}

/// How a transaction ended, as its producer learned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnOutcome {
    Open,
    /// EndTxn(commit) was answered: every record of it must be read, whole.
    Committed,
    /// EndTxn(abort) was answered, or its producer went before asking for a commit (the
    /// next incarnation's start or its timeout aborts it): nothing of it may be read.
    Aborted,
    /// A commit was asked for and no answer came: all of it or none.
    Unknown,
}

#[derive(Debug)]
struct TxnState {
    values: BTreeSet<u64>,
    outcome: TxnOutcome,
    /// Values read by read_committed consumers.
    seen: BTreeSet<u64>,
    /// Offsets committed in it (its number), if any.
    number: Option<i64>,
    /// Its offsets were read back as committed: it committed.
    offsets_seen: bool,
    /// Transactions it read records of (read_committed, before it ended).
    read_from: BTreeSet<u64>,
}

#[derive(Debug, Default)]
struct TxnHistory {
    txns: BTreeMap<u64, TxnState>,
    /// value -> its transaction.
    txn_of: BTreeMap<u64, u64>,
    /// Values a fenced incarnation sent after its successor started.
    zombie_values: BTreeSet<u64>,
    /// (client, number) -> the transaction that committed that offset.
    by_number: BTreeMap<(usize, i64), u64>,
    /// client -> the highest number of its transactions acknowledged committed with offsets.
    committed_number: BTreeMap<usize, i64>,
    /// Values acknowledged by the partitions.
    acked: BTreeSet<u64>,
}

/// What the simulated disk says of a partition at a restart: lasting damage struck its files,
/// and the recovery point stored there (`None`: unreadable or lost); and whether recovery cut
/// anything from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub recovery_point: Option<i64>,
    pub cut: bool,
}

impl Checker {
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// The workload's topic is compacted, its records keyed over `keys`.
    pub fn set_compaction_keys(&mut self, keys: u32) {
        self.compaction_keys = Some(keys);
    }

    fn note_key(&mut self, partition: i32, offset: i64, value: u64) {
        if let Some(keys) = self.compaction_keys {
            let key = crate::plan::compaction_key(value, keys);
            (self.key_offsets.entry((partition, key)).or_default()).insert(offset);
        }
    }

    /// A consumer of the compacted topic found no record in `[from, to)` of `partition`, in
    /// a fetch answered with `high_watermark`: the cleaner may only have removed a record
    /// that a newer one of its key, committed by then, replaced. Judged at the end
    /// ([`Checker::finish`]), when every record acknowledged or read is known.
    pub fn on_compacted_gap(
        &mut self,
        at_ns: u64,
        partition: i32,
        from: i64,
        to: i64,
        high_watermark: i64,
    ) {
        if to > from {
            (self.gaps.entry(partition).or_default()).push((from, to, high_watermark, at_ns));
        }
    }

    /// A produce was sent (compacted topics: its keys may replace older records).
    pub fn on_send(&mut self, at_ns: u64, write: &Write) {
        let Some(keys) = self.compaction_keys else {
            return;
        };
        for value in &write.values {
            let key = crate::plan::compaction_key(*value, keys);
            (self.key_sends.entry((write.partition, key)).or_default()).push((at_ns, *value));
        }
    }

    /// Whether the acknowledged `value` at `partition`'s `offset` lies in a gap a consumer
    /// found: `Some(true)` if a newer record of its key was committed below the gap's high
    /// watermark (the cleaner could remove it), `Some(false)` if none was.
    fn compacted_away(&self, partition: i32, offset: i64, value: u64) -> Option<bool> {
        let keys = self.compaction_keys?;
        let gaps = self.gaps.get(&partition)?;
        let key = crate::plan::compaction_key(value, keys);
        let newer = self.key_offsets.get(&(partition, key));
        let acked_ns = self.acked_ns.get(&value).copied().unwrap_or(u64::MAX);
        let sends = self.key_sends.get(&(partition, key));
        let mut found = None;
        for (from, to, high_watermark, at_ns) in gaps {
            if offset < *from || offset >= *to {
                continue;
            }
            // A newer record of the key committed below the high watermark the gap was seen
            // with: one acknowledged or read there, or one sent after this record's
            // acknowledgement (so at a higher offset) and before the gap was seen, whose
            // outcome never came (it may be committed, and cleaned before anyone read it).
            let replaced = newer
                .is_some_and(|o| o.range(offset + 1..*high_watermark).next().is_some())
                || sends.is_some_and(|s| {
                    s.iter().any(|(sent_ns, v)| {
                        *sent_ns > acked_ns
                            && sent_ns < at_ns
                            && !self.failed.contains(v)
                            && !self.acked.contains_key(v)
                    })
                });
            if !replaced {
                return Some(false);
            }
            found = Some(true);
        }
        found
    }

    pub fn violate(&mut self, kind: ViolationKind, at_ns: u64, detail: String) {
        // The first few of each kind are enough to understand a run.
        if self.violations.iter().filter(|v| v.kind == kind).count() < 5 {
            tracing::warn!(kind = kind.name(), %detail, "violation");
            self.violations.push(Violation {
                kind,
                at_ns,
                detail,
            });
        }
    }

    /// Partitions that lasting damage took out of the check, with the reason.
    pub fn retired(&self) -> &BTreeMap<i32, String> {
        &self.retired
    }

    /// A partition whose files lasting damage struck went offline while its node ran (a read
    /// found the damage): it leaves the check, as one found damaged at a restart does.
    pub fn on_found_damaged(&mut self, partition: i32) {
        if !self.retired.contains_key(&partition) {
            self.retire(partition, "damaged, and offline (found by a read)".into());
        }
    }

    fn retire(&mut self, partition: i32, reason: String) {
        tracing::debug!(partition, %reason, "partition retired from the check");
        self.acked_end.remove(&partition);
        self.retired.insert(partition, reason);
    }

    fn observe(&mut self, at_ns: u64, partition: i32, offset: i64, value: u64, source: &str) {
        if self.retired.contains_key(&partition) {
            return;
        }
        let seen = self.seen_end.entry(partition).or_insert(0);
        *seen = (*seen).max(offset + 1);
        match self.value_at.insert((partition, offset), value) {
            Some(old) if old != value => self.violate(
                ViolationKind::InconsistentOffset,
                at_ns,
                format!("partition {partition} offset {offset} holds {value:#x} ({source}) and {old:#x}"),
            ),
            _ => {}
        }
        match self.place_of.insert(value, (partition, offset)) {
            Some(old) if old != (partition, offset) => self.violate(
                ViolationKind::Duplicate,
                at_ns,
                format!(
                    "value {value:#x} at partition {partition} offset {offset} ({source}) and at partition {} offset {}",
                    old.0, old.1
                ),
            ),
            _ => {}
        }
    }

    pub fn on_ack(&mut self, at_ns: u64, write: &Write, base_offset: i64) {
        if self.retired.contains_key(&write.partition) {
            return;
        }
        for (i, value) in write.values.iter().enumerate() {
            let offset = base_offset + i as i64;
            self.observe(at_ns, write.partition, offset, *value, "acknowledged");
            self.note_key(write.partition, offset, *value);
            if self.compaction_keys.is_some() {
                self.acked_ns.insert(*value, at_ns);
            }
            self.acked.insert(*value, (write.partition, offset));
            if self.txns.txn_of.contains_key(value) {
                self.txns.acked.insert(*value);
            }
            self.timestamp_of.insert(*value, write.timestamp_ms);
            // Acknowledged after a consumer found it gone: it had to be allowed to go then.
            let jump = (self.jumps.get(&write.partition).into_iter().flatten())
                .find(|(to, _)| offset < *to)
                .copied();
            if let Some((to, now_ms)) = jump {
                if !self.removal_allowed(write.partition, offset, *value, now_ms) {
                    let detail = format!(
                        "partition {} offset {offset} ({value:#x}) acknowledged after a consumer found the log starting at {to}, before retention or DeleteRecords allowed it to go",
                        write.partition
                    );
                    self.violate(ViolationKind::RemovedEarly, at_ns, detail);
                }
            }
            let end = self.acked_end.entry(write.partition).or_insert(0);
            *end = (*end).max(offset + 1);
        }
        let sent = self
            .sent
            .entry((write.producer, write.partition))
            .or_default();
        let before = sent
            .range(..write.send_seq)
            .next_back()
            .map(|(s, o)| (*s, *o));
        let after = sent
            .range(write.send_seq + 1..)
            .next()
            .map(|(s, o)| (*s, *o));
        sent.insert(write.send_seq, base_offset);
        let misplaced = before
            .filter(|(_, o)| *o >= base_offset)
            .or(after.filter(|(_, o)| *o <= base_offset));
        if let Some((other_seq, other_offset)) = misplaced {
            self.violate(
                ViolationKind::NonmonotonicSend,
                at_ns,
                format!(
                    "producer {} partition {}: send {} at offset {base_offset}, send {other_seq} at offset {other_offset}",
                    write.producer, write.partition, write.send_seq
                ),
            );
        }
    }

    // ---- transactions ----

    /// A transaction begins with these values (and commits offset `number` if given).
    pub fn on_txn_begin(&mut self, key: u64, values: &[u64], number: Option<i64>) {
        for value in values {
            self.txns.txn_of.insert(*value, key);
        }
        if let Some(number) = number {
            self.txns
                .by_number
                .insert(((key >> 32) as usize, number), key);
        }
        self.txns.txns.insert(
            key,
            TxnState {
                values: values.iter().copied().collect(),
                outcome: TxnOutcome::Open,
                seen: BTreeSet::new(),
                number,
                offsets_seen: false,
                read_from: BTreeSet::new(),
            },
        );
    }

    /// EndTxn was answered: the transaction committed or aborted.
    pub fn on_txn_end(&mut self, at_ns: u64, key: u64, commit: bool) {
        tracing::debug!(
            key = format_args!("{key:#x}"),
            commit,
            "checker: transaction ended"
        );
        let Some(t) = self.txns.txns.get_mut(&key) else {
            return;
        };
        t.outcome = if commit {
            TxnOutcome::Committed
        } else {
            TxnOutcome::Aborted
        };
        if commit {
            if let Some(number) = t.number {
                let n = self
                    .txns
                    .committed_number
                    .entry((key >> 32) as usize)
                    .or_insert(-1);
                *n = (*n).max(number);
            }
        }
        let (seen, offsets_seen) = (t.seen.len(), t.offsets_seen);
        if !commit && (seen > 0 || offsets_seen) {
            self.violate(
                ViolationKind::AbortedRead,
                at_ns,
                format!("transaction {key:#x} was aborted, yet a read_committed consumer read {seen} of its records (offsets read back: {offsets_seen})"),
            );
        }
    }

    /// The producer gave the transaction up (it crashed or was fenced): if it asked for a
    /// commit, the outcome is unknown; otherwise nobody will commit it.
    pub fn on_txn_abandoned(&mut self, at_ns: u64, key: u64, commit_sent: bool) {
        tracing::debug!(
            key = format_args!("{key:#x}"),
            commit_sent,
            "checker: transaction abandoned"
        );
        if let Some(t) = self.txns.txns.get_mut(&key) {
            if t.outcome == TxnOutcome::Open {
                t.outcome = if commit_sent {
                    TxnOutcome::Unknown
                } else {
                    TxnOutcome::Aborted
                };
            }
        }
        let aborted = (self.txns.txns.get(&key)).filter(|t| t.outcome == TxnOutcome::Aborted);
        if let Some(t) = aborted {
            if !t.seen.is_empty() || t.offsets_seen {
                let detail = format!("transaction {key:#x} was never committed (its producer gave it up before asking), yet a read_committed consumer read {} of its records", t.seen.len());
                self.violate(ViolationKind::AbortedRead, at_ns, detail);
            }
        }
    }

    /// A transactional producer started an incarnation (InitProducerId answered).
    pub fn on_txn_init(&mut self, _at_ns: u64, _client: usize) {}

    /// A fenced incarnation sent `value` for its old transaction after its successor started.
    pub fn on_txn_zombie_value(&mut self, key: u64, value: u64) {
        self.txns.txn_of.insert(value, key);
        self.txns.zombie_values.insert(value);
    }

    /// A fenced incarnation's batch, EndTxn(commit) or TxnOffsetCommit (`what`) was answered.
    pub fn on_txn_zombie_answer(&mut self, at_ns: u64, key: u64, what: &str, accepted: bool) {
        if accepted {
            self.violate(
                ViolationKind::ZombieNotFenced,
                at_ns,
                format!("a fenced incarnation's {what} for transaction {key:#x} was accepted after its successor started"),
            );
        }
    }

    /// A transactional producer read back the offset its group has committed (require_stable):
    /// it names the last transaction that committed with offsets.
    pub fn on_txn_offsets_fetched(&mut self, at_ns: u64, client: usize, group: &str, offset: i64) {
        let floor = self
            .txns
            .committed_number
            .get(&client)
            .copied()
            .unwrap_or(-1);
        if offset < floor {
            self.violate(
                ViolationKind::GroupCommitBack,
                at_ns,
                format!(
                    "{group}: offset {offset} read back, transaction {floor} committed it before"
                ),
            );
        }
        if offset < 0 {
            return;
        }
        let Some(key) = self.txns.by_number.get(&(client, offset)).copied() else {
            self.violate(
                ViolationKind::AbortedRead,
                at_ns,
                format!("{group}: offset {offset} read back, which no transaction committed"),
            );
            return;
        };
        let t = self.txns.txns.get_mut(&key).expect("known");
        t.offsets_seen = true;
        if t.outcome == TxnOutcome::Aborted {
            self.violate(
                ViolationKind::AbortedRead,
                at_ns,
                format!("{group}: offset {offset} of aborted transaction {key:#x} read back as committed"),
            );
        }
    }

    /// A read_committed consumer read `value` at (`partition`, `offset`).
    pub fn on_committed_read(&mut self, at_ns: u64, partition: i32, offset: i64, value: u64) {
        let Some(key) = self.txns.txn_of.get(&value).copied() else {
            return;
        };
        tracing::debug!(
            partition,
            offset,
            value = format_args!("{value:#x}"),
            txn = format_args!("{key:#x}"),
            "read_committed read"
        );
        if self.txns.zombie_values.contains(&value) {
            self.violate(
                ViolationKind::ZombieNotFenced,
                at_ns,
                format!("a fenced incarnation's record {value:#x} read as committed at partition {partition} offset {offset}"),
            );
        }
        let t = self.txns.txns.get_mut(&key).expect("known");
        t.seen.insert(value);
        if t.outcome == TxnOutcome::Aborted {
            self.violate(
                ViolationKind::AbortedRead,
                at_ns,
                format!("a read_committed consumer read {value:#x} at partition {partition} offset {offset}, of aborted transaction {key:#x}"),
            );
        }
    }

    /// A read_committed fetch was answered with this last stable offset and high watermark.
    pub fn on_last_stable_offset(&mut self, at_ns: u64, partition: i32, lso: i64, hw: i64) {
        if lso > hw || lso < 0 {
            self.violate(
                ViolationKind::StableOffset,
                at_ns,
                format!("partition {partition}: last stable offset {lso}, high watermark {hw}"),
            );
        }
    }

    /// Transaction `key` read these values of `partition` (read_committed) before it ended:
    /// each is a committed transaction's, and none of its own writes' transactions may
    /// depend on it. A partition retired from the check (lasting damage, which may take a
    /// marker with it) is not held to that, as consumers' reads of it are not.
    pub fn on_txn_read(&mut self, at_ns: u64, key: u64, partition: i32, values: &[u64]) {
        tracing::debug!(
            key = format_args!("{key:#x}"),
            partition,
            ?values,
            "checker: transaction read"
        );
        if self.retired.contains_key(&partition) {
            return;
        }
        let writers: BTreeSet<u64> = (values.iter())
            .filter_map(|v| self.txns.txn_of.get(v).copied())
            .filter(|w| *w != key)
            .collect();
        for w in &writers {
            if (self.txns.txns.get(w)).is_some_and(|t| t.outcome == TxnOutcome::Aborted) {
                self.violate(
                    ViolationKind::AbortedRead,
                    at_ns,
                    format!("transaction {key:#x} read (read_committed) a record of {w:#x}, which aborted"),
                );
            }
        }
        if let Some(t) = self.txns.txns.get_mut(&key) {
            t.read_from.extend(writers);
        }
    }

    /// Whether transaction `t` committed, as far as anyone saw.
    fn txn_committed(t: &TxnState) -> bool {
        t.outcome == TxnOutcome::Committed || !t.seen.is_empty() || t.offsets_seen
    }

    /// G1c over committed transactions: an edge from each transaction whose records another
    /// read to that reader (it committed before the reader read), and from each of a
    /// producer's transactions to its next (which began after it ended). Write order is no
    /// edge: Kafka lets two open transactions interleave in different orders on different
    /// partitions. A cycle means some transaction read what was written after it ended, or
    /// before it committed.
    fn check_g1c(&mut self, at_ns: u64) {
        let committed: BTreeSet<u64> = (self.txns.txns.iter())
            .filter(|(_, t)| Self::txn_committed(t))
            .map(|(k, _)| *k)
            .collect();
        let mut edges: BTreeMap<u64, Vec<(u64, &'static str)>> = BTreeMap::new();
        let mut aborted_reads = Vec::new();
        for &reader in &committed {
            for &writer in &self.txns.txns[&reader].read_from {
                if committed.contains(&writer) {
                    edges.entry(writer).or_default().push((reader, "wr"));
                } else if (self.txns.txns.get(&writer))
                    .is_some_and(|t| t.outcome == TxnOutcome::Aborted)
                {
                    aborted_reads.push(format!("committed transaction {reader:#x} read a record of {writer:#x}, which aborted"));
                }
            }
        }
        for detail in aborted_reads {
            self.violate(ViolationKind::AbortedRead, at_ns, detail);
        }
        // Keys are (client << 32) | its count of transactions begun: in order per producer.
        let mut previous: Option<u64> = None;
        for &key in &committed {
            if let Some(p) = previous.filter(|p| p >> 32 == key >> 32) {
                edges.entry(p).or_default().push((key, "so"));
            }
            previous = Some(key);
        }
        // Depth-first search with colours; a grey node met again closes a cycle.
        let mut colour: BTreeMap<u64, u8> = BTreeMap::new();
        for &root in &committed {
            if colour.contains_key(&root) {
                continue;
            }
            let mut path: Vec<(u64, usize)> = vec![(root, 0)];
            colour.insert(root, 1);
            while let Some((node, next)) = path.last().copied() {
                let out = edges.get(&node).map_or(&[][..], |e| &e[..]);
                let Some(&(to, _)) = out.get(next) else {
                    colour.insert(node, 2);
                    path.pop();
                    continue;
                };
                path.last_mut().expect("on the path").1 += 1;
                match colour.get(&to) {
                    None => {
                        colour.insert(to, 1);
                        path.push((to, 0));
                    }
                    Some(1) => {
                        let from = path.iter().position(|(n, _)| *n == to).expect("grey");
                        let cycle: Vec<String> = (path[from..].iter())
                            .map(|(n, i)| {
                                let kind = edges[n][*i - 1].1;
                                format!("{n:#x} -{kind}->")
                            })
                            .collect();
                        let detail = format!(
                            "a cycle among committed transactions: {} {to:#x}",
                            cycle.join(" ")
                        );
                        self.violate(ViolationKind::CyclicInformationFlow, at_ns, detail);
                        return;
                    }
                    Some(_) => {}
                }
            }
        }
    }

    /// At the end, with read_committed consumers caught up (`caught_up`): every transaction
    /// committed, or seen in part, was read whole, and no cycle formed among them (G1c).
    pub fn finish_txns(&mut self, at_ns: u64, caught_up: bool) {
        self.check_g1c(at_ns);
        let mut partial = Vec::new();
        for (key, t) in &self.txns.txns {
            if !Self::txn_committed(t) {
                continue;
            }
            let missing: Vec<u64> = (t.values.iter())
                .filter(|v| self.txns.acked.contains(v) && !t.seen.contains(v))
                .filter(|v| {
                    self.acked
                        .get(v)
                        .is_none_or(|(p, _)| !self.retired.contains_key(p))
                })
                .copied()
                .collect();
            if let Some(first) = missing.first() {
                partial.push((*key, t.seen.len(), missing.len(), *first));
            }
        }
        if let Some((key, seen, missing, first)) = partial.first() {
            let kind = if caught_up {
                ViolationKind::TxnPartial
            } else {
                ViolationKind::Liveness
            };
            self.violate(
                kind,
                at_ns,
                format!(
                    "{} committed transactions not read whole by read_committed consumers; first {key:#x}: {seen} records read, {missing} acknowledged ones not, first {first:#x}",
                    partial.len()
                ),
            );
        }
    }

    pub fn on_fail(&mut self, at_ns: u64, write: &Write) {
        for value in &write.values {
            self.failed.insert(*value);
            if let Some((partition, offset)) = self.read_place(*value) {
                self.violate(
                    ViolationKind::PhantomWrite,
                    at_ns,
                    format!("value {value:#x} was refused but read at partition {partition} offset {offset}"),
                );
            }
        }
    }

    fn read_place(&self, value: u64) -> Option<(i32, i64)> {
        let place = self.place_of.get(&value)?;
        (self.read.get(place) == Some(&value)).then_some(*place)
    }

    pub fn on_read(&mut self, at_ns: u64, partition: i32, offset: i64, value: u64) {
        if self.retired.contains_key(&partition) {
            return;
        }
        self.observe(at_ns, partition, offset, value, "read");
        self.note_key(partition, offset, value);
        self.read.insert((partition, offset), value);
        if self.failed.contains(&value) {
            self.violate(
                ViolationKind::PhantomWrite,
                at_ns,
                format!("value {value:#x} was refused but read at partition {partition} offset {offset}"),
            );
        }
    }

    /// A consumer's fetch was answered with `high_watermark` for `partition`. One consumer's
    /// answers arrive in the order the node gave them (one connection at a time, FIFO), so
    /// a lower value than before means the node took back what it had shown as committed.
    pub fn on_high_watermark(
        &mut self,
        at_ns: u64,
        consumer: usize,
        partition: i32,
        high_watermark: i64,
    ) {
        if self.retired.contains_key(&partition) {
            return;
        }
        let seen = self
            .high_watermark_seen
            .entry((consumer, partition))
            .or_insert(high_watermark);
        if high_watermark < *seen {
            let before = *seen;
            self.violate(
                ViolationKind::HighWatermarkBack,
                at_ns,
                format!("consumer {consumer} saw partition {partition}'s high watermark go from {before} to {high_watermark}"),
            );
        }
        let seen = self
            .high_watermark_seen
            .entry((consumer, partition))
            .or_insert(high_watermark);
        *seen = (*seen).max(high_watermark);
    }

    /// After a restart: every partition's log must still reach past each acknowledged record,
    /// unless `damage` struck it and the node refused it or could not have known.
    pub fn on_restart(
        &mut self,
        at_ns: u64,
        partition: i32,
        log_end_offset: Option<i64>,
        damage: Option<Damage>,
    ) {
        if self.retired.contains_key(&partition) {
            return;
        }
        if let Some(damage) = damage {
            match (log_end_offset, damage.recovery_point) {
                (None, _) => {
                    return self.retire(partition, "damaged, and offline (detected)".into());
                }
                // Nothing was cut, and nothing a client saw committed (acknowledged, or read
                // below the high watermark) is gone. (A cut may also take records whose
                // acknowledgement is still on its way: the check cannot wait for it.)
                (Some(end), _)
                    if !damage.cut && self.seen_end.get(&partition).is_none_or(|s| end >= *s) => {}
                (Some(end), Some(recovery_point)) if end >= recovery_point => {
                    return self.retire(
                        partition,
                        format!("damaged past the recovery point {recovery_point}, cut to {end}"),
                    );
                }
                (Some(end), None) => {
                    return self.retire(
                        partition,
                        format!("damaged with its recovery point, cut to {end}"),
                    );
                }
                (Some(_), Some(_)) => {}
            }
        }
        let Some(max_acked) = self.max_acked_offset(partition) else {
            return;
        };
        match log_end_offset {
            Some(end) if end > max_acked => {}
            Some(end) => self.violate(
                ViolationKind::LostWrite,
                at_ns,
                format!("after a restart partition {partition} ends at {end}, but offset {max_acked} was acknowledged"),
            ),
            None => self.violate(
                ViolationKind::LostWrite,
                at_ns,
                format!("after a restart partition {partition} is offline, with offset {max_acked} acknowledged"),
            ),
        }
    }

    pub fn max_acked_offset(&self, partition: i32) -> Option<i64> {
        self.acked_end.get(&partition).map(|end| end - 1)
    }

    /// One past the highest acknowledged offset of each partition: where consumers must get.
    pub fn acked_ends(&self) -> &BTreeMap<i32, i64> {
        &self.acked_end
    }

    /// At the end of the run: every acknowledged record was read where it was acknowledged.
    /// `positions` are how far consumers got in each partition (the furthest of them).
    pub fn finish(&mut self, at_ns: u64, positions: &BTreeMap<i32, i64>) {
        let mut lost = Vec::new();
        let mut unread = Vec::new();
        let mut compacted_latest = Vec::new();
        for (value, (partition, offset)) in &self.acked {
            if self.retired.contains_key(partition) {
                continue;
            }
            match self.compacted_away(*partition, *offset, *value) {
                Some(true) => continue,
                Some(false) => {
                    compacted_latest.push((*value, *partition, *offset));
                    continue;
                }
                None => {}
            }
            let reached = positions.get(partition).is_some_and(|p| p > offset);
            let removed = self
                .removed_below
                .get(partition)
                .is_some_and(|b| offset < b);
            match self.read.get(&(*partition, *offset)) {
                Some(v) if v == value => {}
                // Checked when a consumer found the log start past it.
                _ if removed => {}
                _ if reached => lost.push((*value, *partition, *offset)),
                _ => unread.push((*value, *partition, *offset)),
            }
        }
        if let Some((value, partition, offset)) = compacted_latest.first() {
            self.violate(
                ViolationKind::CompactedLatest,
                at_ns,
                format!(
                    "{} acknowledged records gone with no newer record of their key committed, first {value:#x} at partition {partition} offset {offset}",
                    compacted_latest.len()
                ),
            );
        }
        for (value, partition, offset) in lost {
            self.violate(
                ViolationKind::LostWrite,
                at_ns,
                format!("value {value:#x} acknowledged at partition {partition} offset {offset} was not there when read"),
            );
        }
        if let Some((value, partition, offset)) = unread.first() {
            self.violate(
                ViolationKind::Liveness,
                at_ns,
                format!(
                    "{} acknowledged records never read back, first {value:#x} at partition {partition} offset {offset}",
                    unread.len()
                ),
            );
        }
    }

    /// A client asked for retention.ms of the workload's topic to be `retention_ms`.
    pub fn on_retention_asked(&mut self, retention_ms: i64) {
        if retention_ms >= 0 {
            let min = self.retention_ms_min.get_or_insert(retention_ms);
            *min = (*min).min(retention_ms);
        }
    }

    /// A client asked for `partition`'s records below `offset` to be deleted.
    pub fn on_delete_records_asked(&mut self, partition: i32, offset: i64) {
        let asked = self.delete_asked.entry(partition).or_insert(offset);
        *asked = (*asked).max(offset);
    }

    /// DeleteRecords of `partition` acknowledged with its new start. `durable`: as for group
    /// commits (a crash of a majority under replicated durability may take it back).
    pub fn on_delete_records_acked(
        &mut self,
        at_ns: u64,
        partition: i32,
        low_watermark: i64,
        durable: bool,
    ) {
        if durable {
            (self.delete_acked.entry(partition).or_default()).push((at_ns, low_watermark));
        }
    }

    /// A fetch sent at `sent_ns` returned `partition`'s record at `offset`: it must not lie
    /// below a start that a DeleteRecords acknowledged before the fetch was sent.
    pub fn check_above_start(&mut self, at_ns: u64, sent_ns: u64, partition: i32, offset: i64) {
        let start = (self.delete_acked.get(&partition).into_iter().flatten())
            .filter(|(at, _)| *at < sent_ns)
            .map(|(_, start)| *start)
            .max();
        if let Some(start) = start.filter(|s| offset < *s) {
            self.violate(
                ViolationKind::ServedBelowStart,
                at_ns,
                format!("partition {partition} offset {offset} served after DeleteRecords moved its start to {start}"),
            );
        }
    }

    /// A consumer at `from` found `partition`'s log starting at `to` (at `now_ms` on the
    /// nodes' clock): every acknowledged record in between was removed, read before or not,
    /// which only DeleteRecords (an offset asked for past it) or retention (its batch older
    /// than the smallest retention.ms asked for) allows.
    pub fn on_start_moved(&mut self, at_ns: u64, now_ms: i64, partition: i32, from: i64, to: i64) {
        if self.retired.contains_key(&partition) || to <= from {
            return;
        }
        let asked = self.delete_asked.get(&partition).copied().unwrap_or(0);
        let mut early = Vec::new();
        for ((_, offset), value) in self.value_at.range((partition, from)..(partition, to)) {
            if self.acked.get(value) != Some(&(partition, *offset)) {
                continue;
            }
            if !self.removal_allowed(partition, *offset, *value, now_ms) {
                let timestamp = self.timestamp_of.get(value).copied().unwrap_or(i64::MAX);
                early.push((*offset, *value, timestamp));
            }
        }
        (self.jumps.entry(partition).or_default()).push((to, now_ms));
        if let Some((offset, value, timestamp)) = early.first() {
            let detail = format!(
                "partition {partition} starts at {to}: {} acknowledged records below it were removed early, first {value:#x} at offset {offset} (written at {timestamp}, now {now_ms}, retention.ms at least {:?}, DeleteRecords asked below {asked})",
                early.len(),
                self.retention_ms_min
            );
            self.violate(ViolationKind::RemovedEarly, at_ns, detail);
        }
        let below = self.removed_below.entry(partition).or_insert(to);
        *below = (*below).max(to);
    }

    /// Whether `partition`'s record `value` at `offset` may be gone at `now_ms` on the nodes'
    /// clock: a DeleteRecords asked past it, or its batch is older than the smallest
    /// retention.ms asked for.
    fn removal_allowed(&self, partition: i32, offset: i64, value: u64, now_ms: i64) -> bool {
        let asked = self.delete_asked.get(&partition).copied().unwrap_or(0);
        let timestamp = self.timestamp_of.get(&value).copied().unwrap_or(i64::MAX);
        offset < asked
            || (self.retention_ms_min).is_some_and(|r| now_ms.saturating_sub(timestamp) > r)
    }

    /// A member was assigned `partitions` in `generation`.
    pub fn on_assignment(&mut self, at_ns: u64, generation: i32, member: &str, partitions: &[i32]) {
        for p in partitions {
            match self.owners.get(&(generation, *p)) {
                Some(other) if other != member => {
                    let detail = format!(
                        "partition {p} assigned to {other} and to {member} in generation {generation}"
                    );
                    self.violate(ViolationKind::TwoOwners, at_ns, detail);
                }
                _ => {
                    self.owners.insert((generation, *p), member.to_string());
                }
            }
        }
    }

    /// The group's commit of `offset` for `partition` was acknowledged. `durable`: the nodes
    /// sync what they acknowledge (under replicated durability a crash of a majority may
    /// take acknowledged commits back, as it may records).
    pub fn on_commit_acked(&mut self, at_ns: u64, partition: i32, offset: i64, durable: bool) {
        if self.retired.contains_key(&partition) {
            return;
        }
        // Past what any client saw committed: acknowledged or read records, or a high
        // watermark a fetch was answered with (a consumer steps over a leader's marker
        // without reading a record there).
        let high_watermark = (self.high_watermark_seen.iter())
            .filter(|((_, p), _)| *p == partition)
            .map(|(_, hw)| *hw)
            .max();
        let seen = self
            .seen_end
            .get(&partition)
            .copied()
            .unwrap_or(0)
            .max(high_watermark.unwrap_or(0));
        if offset > seen {
            self.violate(
                ViolationKind::CommitPastEnd,
                at_ns,
                format!("offset {offset} committed for partition {partition}, past its committed end {seen}"),
            );
        }
        let commits = self.group_commits.entry(partition).or_default();
        let last = commits.last().map(|(_, o)| *o);
        commits.push((at_ns, offset));
        if durable && last.is_some_and(|l| offset < l) {
            let last = last.expect("checked");
            self.violate(
                ViolationKind::GroupCommitBack,
                at_ns,
                format!("partition {partition}'s committed offset went from {last} to {offset}"),
            );
        }
    }

    /// A member sent OffsetFetch at `sent_ns` and was told `offset` (-1: none) is committed.
    pub fn on_offset_fetched(&mut self, at_ns: u64, sent_ns: u64, partition: i32, offset: i64) {
        if self.retired.contains_key(&partition) {
            return;
        }
        let acked_before = (self.group_commits.get(&partition).into_iter().flatten())
            .filter(|(at, _)| *at < sent_ns)
            .map(|(_, o)| *o)
            .max();
        if let Some(acked) = acked_before.filter(|a| offset < *a) {
            self.violate(
                ViolationKind::GroupCommitBack,
                at_ns,
                format!("partition {partition}: offset {offset} read back as committed after {acked} was acknowledged"),
            );
        }
    }

    /// Whether the group's acknowledged commits reach every acknowledged record.
    pub fn group_committed_to_ends(&self) -> bool {
        self.acked_end.iter().all(|(p, end)| {
            self.retired.contains_key(p)
                || (self.group_commits.get(p))
                    .and_then(|c| c.iter().map(|(_, o)| *o).max())
                    .is_some_and(|o| o >= *end)
        })
    }

    /// At the end of a run with a group: its commits reached the end of every partition.
    pub fn finish_group(&mut self, at_ns: u64) {
        if self.group_committed_to_ends() {
            return;
        }
        let short: Vec<String> = (self.acked_end.iter())
            .filter(|(p, _)| !self.retired.contains_key(p))
            .map(|(p, end)| {
                let committed =
                    (self.group_commits.get(p)).and_then(|c| c.iter().map(|(_, o)| *o).max());
                format!("partition {p}: committed {committed:?} of {end}")
            })
            .collect();
        self.violate(
            ViolationKind::Liveness,
            at_ns,
            format!("the group's commits fall short: {}", short.join(", ")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(c: &Checker) -> Vec<ViolationKind> {
        c.violations().iter().map(|v| v.kind).collect()
    }

    /// Two producers' transactions, each reading what the other wrote: a cycle (each read
    /// what the other could only have committed after it), found; the same reads in one
    /// direction only are no cycle.
    #[test]
    fn g1c_finds_a_cycle_of_reads_and_producer_order() {
        let (a1, a2, b1) = (1u64, 2u64, (1u64 << 32) | 1);
        let run = |cyclic: bool| {
            let mut c = Checker::default();
            c.on_txn_begin(a1, &[10], None);
            c.on_txn_end(1, a1, true);
            c.on_txn_begin(b1, &[20], None);
            c.on_txn_begin(a2, &[11], None);
            // b1 reads a1's record; a2 (after a1, of the same producer) reads b1's.
            c.on_txn_read(2, b1, 0, &[10]);
            c.on_txn_end(3, b1, true);
            c.on_txn_read(4, a2, 0, &[20]);
            c.on_txn_end(5, a2, true);
            if cyclic {
                // a1 read what a2 wrote: a2 began after a1 ended.
                c.on_txn_read(6, a1, 0, &[11]);
            }
            c.finish_txns(7, false);
            kinds(&c)
        };
        assert!(!run(false).contains(&ViolationKind::CyclicInformationFlow));
        assert!(run(true).contains(&ViolationKind::CyclicInformationFlow));
    }

    /// A committed transaction that read an aborted one's record is an aborted read.
    #[test]
    fn a_transaction_reading_an_aborted_one_is_an_aborted_read() {
        let mut c = Checker::default();
        c.on_txn_begin(1, &[10], None);
        c.on_txn_end(1, 1, false);
        c.on_txn_begin(2, &[20], None);
        c.on_txn_read(2, 2, 0, &[10]);
        assert!(kinds(&c).contains(&ViolationKind::AbortedRead));
    }
}
