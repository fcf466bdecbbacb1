//! The cleaner (cleanup.policy=compact) against a model of the log, through random keyed
//! appends (tombstones and keyless records among them), cleaning steps with small budgets,
//! syncs, and crashes on a disk that tears unsynced writes and directory changes. Whatever
//! happens, reading the log gives records at the offsets they were written with their own
//! values, in order; every key's newest record is there (a tombstone until
//! delete.retention.ms has passed); a record is gone only if a newer one of its key is in
//! the log; records without a key stay; and the active segment is never rewritten.

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_core::disk::Disk;
use keel_core::log::{LogConfig, LogPolicy, PartitionLog};
use keel_core::record::{self, BatchOptions, NewRecord, RecordBatch};
use keel_sim::disk::DiskFaults;
use keel_sim::SimDisk;
use proptest::prelude::*;

const DIR: &str = "compacted-0";
const DELETE_RETENTION_MS: i64 = 300;

#[derive(Debug, Clone)]
enum Op {
    /// A batch of records: each with a key of 0..8 (or none), a tombstone when `None` value.
    Append(Vec<(Option<u8>, bool)>),
    /// Cleaner steps, each reading at most this many bytes.
    Clean(u16),
    Crash,
    /// Time passes.
    Wait(u16),
}

fn op() -> impl Strategy<Value = Op> {
    let record = (
        prop_oneof![1 => Just(None), 12 => (0u8..8).prop_map(Some)],
        prop::bool::weighted(0.15),
    );
    prop_oneof![
        8 => prop::collection::vec(record, 1..4).prop_map(Op::Append),
        4 => (50u16..2_000).prop_map(Op::Clean),
        1 => Just(Op::Crash),
        2 => (1u16..200).prop_map(Op::Wait),
    ]
}

fn config() -> LogConfig {
    LogConfig {
        segment_size_bytes: 500,
        index_interval_bytes: 100,
        ..LogConfig::default()
    }
}

fn policy() -> LogPolicy {
    LogPolicy {
        segment_size_bytes: 500,
        segment_ms: i64::MAX,
        retention_ms: -1,
        retention_bytes: -1,
        compact: true,
        min_compaction_lag_ms: 0,
        delete_retention_ms: DELETE_RETENTION_MS,
    }
}

/// One record as written: its key and value (`None`: a tombstone), and when.
#[derive(Debug, Clone)]
struct Written {
    key: Option<Bytes>,
    value: Option<Bytes>,
    at_ms: i64,
}

fn sync(log: &mut PartitionLog, disk: &mut SimDisk) {
    let (files, end) = log.begin_sync(disk).unwrap();
    for file in files {
        disk.sync(file).unwrap();
    }
    log.complete_sync(disk, end).unwrap();
}

fn reopen(disk: &mut SimDisk) -> PartitionLog {
    let names = disk.list().unwrap();
    let (mut log, _) = PartitionLog::recover(disk, DIR, &names, config()).unwrap();
    log.set_policy(policy());
    sync(&mut log, disk);
    log
}

/// Every record in the log, in order, and the end of each batch read.
fn read_all(
    log: &mut PartitionLog,
    disk: &mut SimDisk,
) -> Vec<(i64, Option<Bytes>, Option<Bytes>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let bytes = log.read(disk, offset, end, 700, true).unwrap();
        assert!(
            !bytes.is_empty(),
            "a read below the end at {offset} found nothing"
        );
        for batch in record::split_batches(bytes) {
            let batch = RecordBatch::parse(batch.unwrap()).unwrap();
            let header = *batch.header();
            for r in batch.records(1 << 20).unwrap() {
                let at = header.base_offset + i64::from(r.offset_delta);
                if at >= offset {
                    out.push((at, r.key, r.value));
                }
            }
            offset = offset.max(header.last_offset() + 1);
        }
    }
    out
}

fn check(log: &mut PartitionLog, disk: &mut SimDisk, model: &BTreeMap<i64, Written>, now_ms: i64) {
    assert_eq!(log.log_end_offset(), model.len() as i64);
    let read = read_all(log, disk);
    let mut previous = -1;
    let mut present = BTreeMap::new();
    for (offset, key, value) in &read {
        assert!(*offset > previous, "offsets go {previous} then {offset}");
        previous = *offset;
        let written = &model[offset];
        assert_eq!(
            (&written.key, &written.value),
            (key, value),
            "offset {offset}"
        );
        present.insert(*offset, ());
    }
    let mut newest: BTreeMap<&Bytes, i64> = BTreeMap::new();
    for (offset, w) in model {
        if let Some(key) = &w.key {
            newest.insert(key, *offset);
        }
    }
    for (offset, w) in model {
        if present.contains_key(offset) {
            continue;
        }
        let Some(key) = &w.key else {
            panic!("offset {offset}: a record without a key was removed");
        };
        let last = newest[key];
        if last > *offset {
            // A newer record of the key: it is in the log (or a tombstone whose time passed).
            continue;
        }
        assert!(
            w.value.is_none(),
            "offset {offset}: the newest record of {key:?} was removed"
        );
        assert!(
            now_ms - w.at_ms >= DELETE_RETENTION_MS,
            "offset {offset}: a tombstone removed {} ms after it was written",
            now_ms - w.at_ms
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_cleaner_keeps_every_keys_newest_record(ops in prop::collection::vec(op(), 1..120), seed in any::<u64>()) {
        let faults = DiskFaults { torn_write_probability: 0.5, ..DiskFaults::default() };
        let mut disk = SimDisk::with_faults(seed, faults);
        let mut log = PartitionLog::create(&mut disk, DIR, config()).unwrap();
        log.set_policy(policy());
        sync(&mut log, &mut disk);
        // The log's directory is the data directory's entry: durable once that is synced.
        let root = disk.open_dir("").unwrap();
        disk.sync(root).unwrap();
        let mut model: BTreeMap<i64, Written> = BTreeMap::new();
        let mut now_ms = 1_000;
        let mut next_value = 0u64;
        for op in ops {
            match op {
                Op::Append(records) => {
                    let written: Vec<Written> = records
                        .iter()
                        .map(|(key, tombstone)| {
                            next_value += 1;
                            Written {
                                key: key.map(|k| Bytes::from(format!("key-{k}"))),
                                value: match *tombstone && key.is_some() {
                                    true => None,
                                    false => Some(Bytes::from(format!("value-{next_value}"))),
                                },
                                at_ms: now_ms,
                            }
                        })
                        .collect();
                    let new: Vec<NewRecord> = written
                        .iter()
                        .map(|w| NewRecord { key: w.key.clone(), value: w.value.clone(), ..Default::default() })
                        .collect();
                    let options = BatchOptions { base_timestamp: now_ms, ..Default::default() };
                    let batch = RecordBatch::parse(record::build(&new, &options).unwrap()).unwrap();
                    let (base, _) = log.append(&mut disk, &batch, 0).unwrap();
                    for (i, w) in written.into_iter().enumerate() {
                        model.insert(base + i as i64, w);
                    }
                    // Everything appended is synced: what a crash may take is the cleaner's.
                    sync(&mut log, &mut disk);
                }
                Op::Clean(budget) => {
                    let end = log.log_end_offset();
                    for _ in 0..20 {
                        log.clean_step(&mut disk, now_ms, end, u64::from(budget)).unwrap();
                        if log.needs_sync() {
                            sync(&mut log, &mut disk);
                        }
                        if !log.cleaning() {
                            break;
                        }
                    }
                }
                Op::Crash => {
                    disk.crash();
                    log = reopen(&mut disk);
                }
                Op::Wait(ms) => now_ms += i64::from(ms),
            }
            check(&mut log, &mut disk, &model, now_ms);
        }
    }
}

/// A cleaned log keeps less: with few keys written over and over, the cleaned segments hold
/// each key's last record and the headers of the batches emptied (they keep the offsets
/// chained), and the active segment is as written.
#[test]
fn cleaning_shrinks_a_log_of_few_keys() {
    let mut disk = SimDisk::new();
    let mut log = PartitionLog::create(&mut disk, DIR, config()).unwrap();
    log.set_policy(policy());
    for b in 0..50u32 {
        let records: Vec<NewRecord> = (0..8)
            .map(|r| NewRecord {
                key: Some(Bytes::from(format!("key-{}", r % 4))),
                value: Some(Bytes::from(format!("value-{}", b * 8 + r))),
                ..Default::default()
            })
            .collect();
        let options = BatchOptions {
            base_timestamp: 1_000,
            ..Default::default()
        };
        let batch = RecordBatch::parse(record::build(&records, &options).unwrap()).unwrap();
        log.append(&mut disk, &batch, 0).unwrap();
    }
    sync(&mut log, &mut disk);
    let before = log.size_bytes();
    let end = log.log_end_offset();
    while {
        log.clean_step(&mut disk, 2_000, end, 1 << 20).unwrap();
        sync(&mut log, &mut disk);
        log.cleaning()
    } {}
    let after = log.size_bytes();
    assert!(
        after * 3 < before,
        "{before} bytes before cleaning, {after} after"
    );
    let read = read_all(&mut log, &mut disk);
    let values: Vec<String> = (read.iter())
        .map(|(_, _, v)| String::from_utf8(v.as_ref().unwrap().to_vec()).unwrap())
        .collect();
    // Each key's last record, and every record of the active segment.
    for key in 0..4 {
        assert!(
            values.contains(&format!("value-{}", 396 + key)),
            "{values:?}"
        );
    }
    // Cleaning again finds nothing new to do.
    log.clean_step(&mut disk, 3_000, end, 1 << 20).unwrap();
    assert!(!log.cleaning());
    // And a restart reads the cleaned log back.
    disk.sync_all();
    disk.crash();
    let mut log = reopen(&mut disk);
    assert_eq!(read_all(&mut log, &mut disk), read);
}
