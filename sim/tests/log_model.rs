//! The partition log against an in-memory model, through random appends, reads, syncs,
//! crashes and recoveries, on a disk with faults: torn writes (a crash keeps a random part of
//! what was not synced, sector by sector, and may keep or lose unsynced directory entries),
//! bits flipped on reads and failed reads. What was synced is always there, whatever else
//! survives is a prefix of what was appended after it, and offsets never repeat.

use bytes::Bytes;
use keel_core::disk::Disk;
use keel_core::log::{LogConfig, PartitionLog};
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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5).prop_map(Op::Append),
        3 => Just(Op::Sync),
        3 => any::<u8>().prop_map(Op::Read),
        1 => Just(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

struct Model {
    /// Every record value in the log, by offset.
    values: Vec<String>,
    /// How many of them are synced.
    synced: usize,
    next_value: u64,
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
    log.complete_sync(end);
    end
}

fn read_all(log: &mut PartitionLog, disk: &mut SimDisk, from: i64) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        // A read may fail on a faulty disk (after the log's own retries); a client retries.
        let end = log.log_end_offset();
        let bytes = (0..10)
            .find_map(|_| log.read(disk, offset, end, 1000, true).ok())
            .expect("a read succeeds within ten tries");
        if bytes.is_empty() {
            return out;
        }
        for batch in record::split_batches(bytes) {
            let batch = RecordBatch::parse(batch.unwrap()).unwrap();
            let base = batch.header().base_offset;
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
    assert!(
        end >= model.synced as i64 && end <= model.values.len() as i64,
        "the log ends at {end}; {} were synced and {} appended",
        model.synced,
        model.values.len()
    );
    model.values.truncate(end as usize);
    check(log, disk, model);
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
        let mut model = Model { values: Vec::new(), synced: 0, next_value: 0 };
        for op in ops {
            match op {
                Op::Append(count) => {
                    let values: Vec<String> = (0..count).map(|_| { model.next_value += 1; format!("value-{}", model.next_value) }).collect();
                    let records: Vec<NewRecord> = values.iter().map(|v| NewRecord { value: Some(Bytes::from(v.clone())), ..NewRecord::default() }).collect();
                    let batch = RecordBatch::parse(record::build(&records, &BatchOptions::default()).unwrap()).unwrap();
                    let (base, last) = log.append(&mut disk, &batch, 0).unwrap();
                    prop_assert_eq!(base, model.values.len() as i64, "offsets continue the log, never repeat");
                    prop_assert_eq!(last, base + count as i64 - 1);
                    model.values.extend(values);
                }
                Op::Sync => {
                    model.synced = sync(&mut log, &mut disk) as usize;
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
                    log = reopen(&mut disk);
                    check(&mut log, &mut disk, &model);
                    model.synced = model.values.len();
                }
            }
            prop_assert!(log.durable_end_offset() <= log.log_end_offset());
        }
    }
}
