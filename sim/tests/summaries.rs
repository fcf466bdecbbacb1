//! Restart in O(what was not synced): closed segments are taken from their summaries, the
//! producer state from its checkpoint, and what recovery did not read is still checked when
//! it is read.

use bytes::Bytes;
use keel_core::disk::Disk;
use keel_core::log::{LogConfig, LogError, PartitionLog, RecoveryReport};
use keel_core::producers::Verdict;
use keel_core::record::{self, BatchOptions, NewRecord, RecordBatch};
use keel_sim::SimDisk;

const DIR: &str = "summarised-0";

fn config() -> LogConfig {
    LogConfig {
        segment_size_bytes: 1_000,
        index_interval_bytes: 200,
        ..LogConfig::default()
    }
}

fn sync(log: &mut PartitionLog, disk: &mut SimDisk) {
    let (files, end) = log.begin_sync(disk).unwrap();
    for file in files {
        disk.sync(file).unwrap();
    }
    log.complete_sync(disk, end).unwrap();
}

fn reopen(disk: &mut SimDisk) -> (PartitionLog, RecoveryReport) {
    let names = disk.list().unwrap();
    let (mut log, report) = PartitionLog::recover(disk, DIR, &names, config()).unwrap();
    sync(&mut log, disk);
    (log, report)
}

/// A batch of one producer's: `sequence` is its first record's.
fn batch(producer: i64, sequence: i32, value: &str) -> RecordBatch {
    let records = vec![NewRecord {
        value: Some(Bytes::from(value.to_string())),
        ..Default::default()
    }];
    let options = BatchOptions {
        base_timestamp: 1_000,
        producer_id: producer,
        producer_epoch: 0,
        base_sequence: sequence,
        ..Default::default()
    };
    RecordBatch::parse(record::build(&records, &options).unwrap()).unwrap()
}

fn read_values(log: &mut PartitionLog, disk: &mut SimDisk) -> Result<Vec<String>, LogError> {
    let mut values = Vec::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let bytes = log.read(disk, offset, end, 10_000, true)?;
        for raw in record::split_batches(bytes) {
            let batch = RecordBatch::parse(raw.unwrap()).unwrap();
            for r in batch.records(1 << 20).unwrap() {
                values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
            offset = batch.header().last_offset() + 1;
        }
    }
    Ok(values)
}

#[test]
fn a_restart_reads_only_the_active_segment_and_keeps_producers() {
    let mut disk = SimDisk::new();
    let mut log = PartitionLog::create(&mut disk, DIR, config()).unwrap();
    let root = disk.open_dir("").unwrap();
    disk.sync(root).unwrap();
    let mut written = Vec::new();
    for i in 0..200 {
        let value = format!("value-{i:03}-{}", ".".repeat(40));
        log.append(&mut disk, &batch(7, i, &value), 0).unwrap();
        written.push(value);
    }
    // Synced twice: the second round records the first one's end as the recovery point.
    sync(&mut log, &mut disk);
    sync(&mut log, &mut disk);
    let segments = disk.names().iter().filter(|n| n.ends_with(".log")).count();
    assert!(segments > 10, "{segments} segments");

    disk.crash();
    let (mut log, report) = reopen(&mut disk);
    assert_eq!(report.segments, segments);
    assert_eq!(report.segments_unread, segments - 1, "{report:?}");
    assert_eq!(read_values(&mut log, &mut disk).unwrap(), written);
    // The producer's last batches are known from the checkpoint and the active segment: a
    // retry of the last one is recognised, and the next sequence goes on.
    let retried = batch(7, 199, &written[199]);
    let verdict = log
        .producers()
        .check(retried.header(), 1_000, i64::MAX)
        .unwrap();
    assert!(
        matches!(verdict, Verdict::Duplicate { base_offset: 199 }),
        "{verdict:?}"
    );
    let next = batch(7, 200, "next");
    assert_eq!(
        log.producers().check(next.header(), 1_000, i64::MAX),
        Ok(Verdict::Append)
    );
    let gap = batch(7, 202, "gap");
    assert!(log
        .producers()
        .check(gap.header(), 1_000, i64::MAX)
        .is_err());

    // A second restart reads no more.
    disk.crash();
    let (_, again) = reopen(&mut disk);
    assert_eq!(again.segments_unread, segments - 1, "{again:?}");
}

#[test]
fn damage_recovery_did_not_read_is_found_by_the_read() {
    let mut disk = SimDisk::new();
    let mut log = PartitionLog::create(&mut disk, DIR, config()).unwrap();
    let root = disk.open_dir("").unwrap();
    disk.sync(root).unwrap();
    for i in 0..100 {
        let value = format!("value-{i:03}-{}", ".".repeat(40));
        log.append(&mut disk, &batch(7, i, &value), 0).unwrap();
    }
    sync(&mut log, &mut disk);
    sync(&mut log, &mut disk);
    // Damage at rest in the first segment, inside its first batch's records.
    let first = disk
        .names()
        .into_iter()
        .find(|n| n.ends_with(".log"))
        .unwrap();
    disk.sync_all();
    disk.contents_mut(&first).unwrap()[70] ^= 0x40;
    disk.sync_all();
    disk.crash();
    let (mut log, report) = reopen(&mut disk);
    assert!(report.segments_unread > 0, "{report:?}");
    match read_values(&mut log, &mut disk) {
        Err(LogError::Corrupt { file, .. }) => assert_eq!(file, first),
        other => panic!("the damage was not found: {other:?}"),
    }
}

#[test]
fn a_summary_that_does_not_match_its_segment_is_not_believed() {
    let mut disk = SimDisk::new();
    let mut log = PartitionLog::create(&mut disk, DIR, config()).unwrap();
    let root = disk.open_dir("").unwrap();
    disk.sync(root).unwrap();
    for i in 0..100 {
        let value = format!("value-{i:03}-{}", ".".repeat(40));
        log.append(&mut disk, &batch(7, i, &value), 0).unwrap();
    }
    sync(&mut log, &mut disk);
    sync(&mut log, &mut disk);
    let summaries: Vec<String> = (disk.names().into_iter())
        .filter(|n| n.ends_with(".summary"))
        .collect();
    assert!(summaries.len() > 2);
    // One summary damaged, one swapped for another segment's.
    disk.sync_all();
    disk.contents_mut(&summaries[0]).unwrap()[20] ^= 1;
    let other = disk.contents_mut(&summaries[2]).unwrap().clone();
    *disk.contents_mut(&summaries[1]).unwrap() = other;
    disk.sync_all();
    disk.crash();
    let (mut log, report) = reopen(&mut disk);
    let segments = disk.names().iter().filter(|n| n.ends_with(".log")).count();
    assert_eq!(report.segments_unread, segments - 3, "{report:?}");
    assert_eq!(read_values(&mut log, &mut disk).unwrap().len(), 100);
    // Read whole, they get good summaries again.
    disk.crash();
    let (_, again) = reopen(&mut disk);
    assert_eq!(again.segments_unread, segments - 1, "{again:?}");
}
