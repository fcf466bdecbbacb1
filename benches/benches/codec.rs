//! Codec benchmarks: decoding and validating a Produce request with one 1 MiB batch, CRC-32C
//! throughput, and encoding a Fetch response. Run: `cargo bench -p keel-benches --bench codec`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keel_core::protocol::codec::{encode_request, encode_response, parse_request, ParsedRequest};
use keel_core::protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use keel_core::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use keel_core::protocol::messages::{FetchResponse, ProduceRequest};
use keel_core::protocol::{ApiKey, Request, RequestHeader, Response};
use keel_core::record::{
    self, BatchOptions, NewRecord, RecordBatch, DECOMPRESSED_BATCH_SIZE_MAX_BYTES,
};

const BATCH_TARGET_BYTES: usize = 1 << 20;
const RECORD_VALUE_BYTES: usize = 1000;

/// One uncompressed batch of ~1 MiB: 1 KB values with keys and a header each.
fn one_mebibyte_batch() -> Bytes {
    let records: Vec<NewRecord> = (0..BATCH_TARGET_BYTES / (RECORD_VALUE_BYTES + 30))
        .map(|i| NewRecord {
            timestamp_delta: i as i64,
            key: Some(Bytes::from(format!("key-{i:08}"))),
            value: Some(Bytes::from(vec![(i % 251) as u8; RECORD_VALUE_BYTES])),
            headers: vec![record::batch::Header {
                key: Bytes::from_static(b"trace"),
                value: Some(Bytes::from_static(b"abc")),
            }],
        })
        .collect();
    record::build(&records, &BatchOptions::default()).expect("batch builds")
}

fn produce_frame(batch: Bytes) -> Bytes {
    let request = Request::Produce(ProduceRequest {
        acks: -1,
        timeout_ms: 30_000,
        topic_data: vec![TopicProduceData {
            name: "bench".into(),
            partition_data: vec![PartitionProduceData {
                index: 0,
                records: Some(batch),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    });
    let header = RequestHeader {
        api_key: ApiKey::Produce as i16,
        api_version: 9,
        correlation_id: 1,
        client_id: Some("bench".into()),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    encode_request(&mut out, &header, &request).expect("request encodes");
    Bytes::from(out).slice(4..) // the frame without its size prefix, as the decoder hands it on
}

/// Decodes a Produce frame and validates every batch in it (header, CRC), returning records.
fn decode_and_validate(frame: Bytes, iterate_records: bool) -> usize {
    let ParsedRequest::Request { request, .. } = parse_request(frame).expect("decodes") else {
        panic!("not a produce request");
    };
    let Request::Produce(produce) = *request else {
        panic!("not a produce request");
    };
    let mut records = 0;
    for topic in produce.topic_data {
        for partition in topic.partition_data {
            for batch in record::split_batches(partition.records.unwrap_or_default()) {
                let batch = RecordBatch::parse(batch.expect("whole batch")).expect("valid batch");
                records += if iterate_records {
                    batch
                        .records(DECOMPRESSED_BATCH_SIZE_MAX_BYTES)
                        .expect("valid records")
                        .len()
                } else {
                    batch.header().records_count as usize
                };
            }
        }
    }
    records
}

fn produce(c: &mut Criterion) {
    let frame = produce_frame(one_mebibyte_batch());
    let mut group = c.benchmark_group("produce_request_1mib_batch");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("decode_validate_crc", |b| {
        b.iter(|| decode_and_validate(frame.clone(), false))
    });
    group.bench_function("decode_validate_crc_iterate_records", |b| {
        b.iter(|| decode_and_validate(frame.clone(), true))
    });
    group.finish();
}

fn crc(c: &mut Criterion) {
    let data = vec![0xa5u8; 1 << 20];
    let mut group = c.benchmark_group("crc32c");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("1mib", |b| {
        b.iter(|| crc32c::crc32c(std::hint::black_box(&data)))
    });
    group.finish();
}

fn fetch(c: &mut Criterion) {
    // 8 partitions, each answering with 128 KiB of stored batches.
    let batch = one_mebibyte_batch().slice(..128 * 1024);
    let response = Response::Fetch(FetchResponse {
        responses: vec![FetchableTopicResponse {
            topic: "bench".into(),
            partitions: (0..8)
                .map(|index| PartitionData {
                    partition_index: index,
                    high_watermark: 1_000_000,
                    last_stable_offset: 1_000_000,
                    records: Some(batch.clone()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut out = BytesMut::new();
    encode_response(&mut out, 1, ApiKey::Fetch, 12, &response).unwrap();
    let size = out.len();
    let mut group = c.benchmark_group("fetch_response_8x128kib");
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function("encode_v12", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(size);
            encode_response(&mut out, 1, ApiKey::Fetch, 12, &response).unwrap();
            out
        })
    });
    group.finish();
}

criterion_group!(benches, produce, crc, fetch);
criterion_main!(benches);
