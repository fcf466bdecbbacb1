//! Arbitrary bytes as record batches: split into batches, validate each, decompress and
//! iterate its records and headers. Nothing may panic, abort or allocate without bound.
//!
//! Random bytes almost never carry a valid CRC, so half the inputs are repaired first (length,
//! magic and CRC set right) to reach the record decoding and decompression behind them.
#![no_main]

use bytes::Bytes;
use keel_core::record::{split_batches, RecordBatch};
use libfuzzer_sys::fuzz_target;

const DECOMPRESSED_SIZE_MAX_BYTES: usize = 1 << 20;

fn check(batch: Bytes) {
    if let Ok(batch) = RecordBatch::parse(batch) {
        if let Ok(records) = batch.records(DECOMPRESSED_SIZE_MAX_BYTES) {
            assert_eq!(records.len(), batch.header().records_count as usize);
            for record in &records {
                assert_eq!(record.headers().count(), record.headers_count as usize);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [repair, rest @ ..] = data else {
        return;
    };
    if repair & 1 == 1 && rest.len() >= 61 {
        let mut batch = rest.to_vec();
        let length = (batch.len() - 12) as i32;
        batch[8..12].copy_from_slice(&length.to_be_bytes());
        batch[16] = 2;
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        check(Bytes::from(batch));
    } else {
        for batch in split_batches(Bytes::copy_from_slice(rest)).flatten() {
            check(batch);
        }
    }
});
