//! The partition log against an in-memory model, through random appends, reads, syncs,
//! crashes and recoveries, on a disk with faults: torn writes (a crash keeps a random part of
//! what was not synced, sector by sector, and may keep or lose unsynced directory entries),
//! bits flipped on reads and failed reads, and truncations (a follower's log repair). What was
//! synced (and not truncated since) is always there, whatever else survives was appended after
//! it or truncated away after it, and offsets never repeat.

use bytes::Bytes;
use keel_core::disk::Disk;
use keel_core::log::{LogConfig, LogError, PartitionLog};
use keel_core::record::{self, BatchOptions, NewRecord, RecordBatch};
use keel_sim::disk::DiskFaults;
use keel_sim::SimDisk;
use proptest::prelude::*;

const DIR: &str = "topic-0";

#[derive(Debug, Clone)]
enum Op {
    /// Append a batch of this many records.
    Append(usize),
    Sync,
    /// Read from the model's offset at this fraction of the log.
    Read(u8),
    Crash,
    /// Reopen without a crash (a clean restart keeps the page cache).
    Reopen,
    /// Truncate to the start of the batch at this fraction of the log.
    Truncate(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5).prop_map(Op::Append),
        3 => Just(Op::Sync),
        3 => any::<u8>().prop_map(Op::Read),
        1 => Just(Op::Crash),
        1 => Just(Op::Reopen),
        1 => any::<u8>().prop_map(Op::Truncate),
    ]
}

struct Model {
    /// Every record value in the log, by offset.
    values: Vec<String>,
    /// How many of them are synced.
    synced: usize,
    next_value: u64,
    /// Where each batch starts.
    bases: Vec<i64>,
    /// Values truncated away whose removal may not be durable yet, by offset: a crash may
    /// bring them back.
    ghosts: std::collections::BTreeMap<i64, Vec<String>>,
    /// Syncs completed since the last truncation (two make its cut durable).
    syncs_since_truncate: usize,
}

fn config() -> LogConfig {
    // Tiny segments and index intervals, so rolls and index lookups happen constantly.
    LogConfig {
        segment_size_bytes: 400,
        index_interval_bytes: 100,
        ..LogConfig::default()
    }
}

/// Recovers the log and completes its first sync round, as the node does before it reads a
/// request: recovery may cut a torn tail and remove segments, and until that is durable a
/// crash could bring the cut batches back behind new ones.
fn reopen(disk: &mut SimDisk) -> PartitionLog {
    let names = disk.list().unwrap();
    // A disk that keeps failing reads stops recovery (it must not pass for damage); like an
    // operator, start again.
    let (mut log, _) = (0..5)
        .find_map(|_| PartitionLog::recover(disk, DIR, &names, config()).ok())
        .expect("recovery succeeds within five starts");
    sync(&mut log, disk);
    log
}

fn sync(log: &mut PartitionLog, disk: &mut SimDisk) -> i64 {
    let (files, end) = log.begin_sync(disk).unwrap();
    for file in files {
        disk.sync(file).unwrap();
    }
    log.complete_sync(disk, end).unwrap();
    end
}

fn read_all(log: &mut PartitionLog, disk: &mut SimDisk, from: i64) -> Vec<(i64, String)> {
    read_batches(log, disk, from).0
}

/// The records from `from`, and where each batch starts.
fn read_batches(
    log: &mut PartitionLog,
    disk: &mut SimDisk,
    from: i64,
) -> (Vec<(i64, String)>, Vec<i64>) {
    let mut bases = Vec::new();
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        // A read may fail on a faulty disk (after the log's own retries); a client retries.
        let end = log.log_end_offset();
        let mut last_error = None;
        let bytes = (0..10)
            .find_map(|_| {
                (log.read(disk, offset, end, 1000, true))
                    .map_err(|e| last_error = Some(e))
                    .ok()
            })
            .unwrap_or_else(|| panic!("a read succeeds within ten tries: {last_error:?}"));
        if bytes.is_empty() {
            return (out, bases);
        }
        for batch in record::split_batches(bytes) {
            let batch = RecordBatch::parse(batch.unwrap()).unwrap();
            let base = batch.header().base_offset;
            bases.push(base);
            for r in batch.records(1 << 20).unwrap() {
                let at = base + i64::from(r.offset_delta);
                if at >= from {
                    out.push((at, String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
                }
                offset = at + 1;
            }
        }
    }
}

/// After a crash: the log keeps at least the synced prefix, and anything after it is a
/// prefix of what was appended (a torn tail may keep some unsynced batches whole). The model
/// keeps what survived.
fn check_after_crash(log: &mut PartitionLog, disk: &mut SimDisk, model: &mut Model) {
    let end = log.log_end_offset();
    let (records, bases) = read_batches(log, disk, 0);
    assert_eq!(records.len() as i64, end);
    assert!(
        end >= model.synced as i64,
        "the log ends at {end}; {} were synced",
        model.synced
    );
    for (offset, value) in &records {
        let at = *offset as usize;
        let appended = model.values.get(at) == Some(value);
        let ghost = model.ghosts.get(offset).is_some_and(|g| g.contains(value));
        assert!(
            appended || (at >= model.synced && ghost),
            "offset {offset} holds {value}: appended {:?}, truncated {:?}, {} synced",
            model.values.get(at),
            model.ghosts.get(offset),
            model.synced
        );
    }
    model.values = records.into_iter().map(|(_, v)| v).collect();
    model.bases = bases;
}

fn check(log: &mut PartitionLog, disk: &mut SimDisk, model: &Model) {
    assert_eq!(log.log_end_offset(), model.values.len() as i64);
    let all = read_all(log, disk, 0);
    let expected: Vec<(i64, String)> = model
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| (i as i64, v.clone()))
        .collect();
    assert_eq!(all, expected);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_log_keeps_what_was_synced_and_nothing_else(
        ops in prop::collection::vec(op(), 1..80),
        disk_seed in any::<u64>(),
        torn in prop_oneof![Just(0.0), 0.05f64..0.95],
        flips in prop_oneof![Just(0.0), 0.001f64..0.02],
    ) {
        let faults = DiskFaults {
            read_flip_probability: flips,
            read_error_probability: flips / 2.0,
            torn_write_probability: torn,
            // Lasting damage destroys synced data; the simulator's checker judges it.
            ..DiskFaults::default()
        };
        let mut disk = SimDisk::with_faults(disk_seed, faults);
        let mut log = PartitionLog::create(&mut disk, DIR, config()).unwrap();
        // The partition directory's entry is in the data directory (the node syncs it).
        let root = disk.open_dir("").unwrap();
        disk.sync(root).unwrap();
        let mut model = Model {
            values: Vec::new(),
            synced: 0,
            next_value: 0,
            bases: Vec::new(),
            ghosts: Default::default(),
            syncs_since_truncate: 0,
        };
        for op in ops {
            match op {
                Op::Append(count) => {
                    let values: Vec<String> = (0..count).map(|_| { model.next_value += 1; format!("value-{}", model.next_value) }).collect();
                    let records: Vec<NewRecord> = values.iter().map(|v| NewRecord { value: Some(Bytes::from(v.clone())), ..NewRecord::default() }).collect();
                    let batch = RecordBatch::parse(record::build(&records, &BatchOptions::default()).unwrap()).unwrap();
                    let (base, last) = match log.append(&mut disk, &batch, 0) {
                        Ok(appended) => appended,
                        // Nothing is appended while a truncation waits for its round.
                        Err(LogError::TruncationPending) => continue,
                        Err(e) => panic!("append: {e}"),
                    };
                    model.bases.push(base);
                    prop_assert_eq!(base, model.values.len() as i64, "offsets continue the log, never repeat");
                    prop_assert_eq!(last, base + count as i64 - 1);
                    model.values.extend(values);
                }
                Op::Sync => {
                    model.synced = sync(&mut log, &mut disk) as usize;
                    model.syncs_since_truncate += 1;
                    if model.syncs_since_truncate >= 2 {
                        model.ghosts.clear();
                    }
                    prop_assert_eq!(log.durable_end_offset(), model.synced as i64);
                }
                Op::Read(at) => {
                    let from = (model.values.len() * at as usize / 256) as i64;
                    let got = read_all(&mut log, &mut disk, from);
                    let expected: Vec<(i64, String)> = model.values.iter().enumerate().skip(from as usize).map(|(i, v)| (i as i64, v.clone())).collect();
                    prop_assert_eq!(got, expected);
                }
                Op::Crash => {
                    disk.crash();
                    log = reopen(&mut disk);
                    check_after_crash(&mut log, &mut disk, &mut model);
                    model.synced = model.values.len();
                }
                Op::Reopen => {
                    // Without a crash too: a truncation's cut not yet made is lost with the
                    // process, and its batches are read back.
                    log = reopen(&mut disk);
                    check_after_crash(&mut log, &mut disk, &mut model);
                    model.synced = model.values.len();
                }
                Op::Truncate(at) => {
                    if model.bases.is_empty() {
                        continue;
                    }
                    let offset = model.bases[model.bases.len() * at as usize / 256];
                    // A truncation reads headers to find the batch: it may fail on a faulty
                    // disk (changing nothing), and is tried again.
                    (0..10)
                        .find_map(|_| log.truncate_to(&mut disk, offset).ok())
                        .expect("a truncation succeeds within ten tries");
                    for (i, value) in model.values.iter().enumerate().skip(offset as usize) {
                        model.ghosts.entry(i as i64).or_default().push(value.clone());
                    }
                    model.values.truncate(offset as usize);
                    model.bases.retain(|b| *b < offset);
                    model.synced = model.synced.min(offset as usize);
                    model.syncs_since_truncate = 0;
                    check(&mut log, &mut disk, &model);
                }
            }
            prop_assert!(log.durable_end_offset() <= log.log_end_offset());
        }
    }
}
