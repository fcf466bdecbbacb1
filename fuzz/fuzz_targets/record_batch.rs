//! Arbitrary bytes as a records field: split into batches, validate each, decompress and
//! iterate its records and headers. Nothing may panic, abort or allocate without bound.
#![no_main]

use bytes::Bytes;
use keel_core::record::{split_batches, RecordBatch};
use libfuzzer_sys::fuzz_target;

const DECOMPRESSED_SIZE_MAX_BYTES: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for batch in split_batches(Bytes::copy_from_slice(data)).flatten() {
        if let Ok(batch) = RecordBatch::parse(batch) {
            if let Ok(records) = batch.records(DECOMPRESSED_SIZE_MAX_BYTES) {
                assert_eq!(records.len(), batch.header().records_count as usize);
                for record in &records {
                    assert_eq!(record.headers().count(), record.headers_count as usize);
                }
            }
        }
    }
});
