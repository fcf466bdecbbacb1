//! The broker node driven through its inputs, with real Kafka requests encoded by Keel's codec
//! and the simulated disk underneath: produce, fetch, durability, crash and recovery.

use bytes::{Bytes, BytesMut};
use keel_core::metadata::METADATA_TOPIC;
use keel_core::node::{
    Config, ConnId, Input, Instant, Node, Output, RecoveryEvent, RECOVERY_POINT_DELAY_MS,
};
use keel_core::protocol::codec::{decode_response, encode_request};
use keel_core::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use keel_core::protocol::messages::metadata_request::MetadataRequestTopic;
use keel_core::protocol::messages::produce_response;
use keel_core::protocol::messages::*;
use keel_core::protocol::{codes, ApiKey, FrameDecoder, Request, RequestHeader, Response};
use keel_core::record::{self, BatchOptions, NewRecord, RecordBatch};
use keel_sim::{produce_request, SimDisk};

struct Harness {
    node: Node<SimDisk>,
    now: Instant,
    /// Sync requests not yet completed (when `auto_sync` is off).
    pending_syncs: Vec<(u64, u64)>,
    auto_sync: bool,
    correlation_id: i32,
    frames: std::collections::BTreeMap<ConnId, FrameDecoder>,
    responses: Vec<(ConnId, Bytes)>,
    closed: Vec<ConnId>,
}

impl Harness {
    fn new(disk: SimDisk) -> (Harness, Vec<RecoveryEvent>) {
        Harness::with(Config::default(), disk, true)
    }

    /// A node on `disk` with `config`; with `auto_sync` off, syncs wait for
    /// [`Harness::complete_syncs`] or [`Harness::complete_one_round`], from the first step on.
    fn with(config: Config, disk: SimDisk, auto_sync: bool) -> (Harness, Vec<RecoveryEvent>) {
        let (node, events) = Node::new(config, disk).expect("node starts");
        let events = client_topics(events);
        let mut harness = Harness {
            node,
            now: Instant::from_millis(1_700_000_000_000),
            pending_syncs: Vec::new(),
            auto_sync,
            correlation_id: 0,
            frames: Default::default(),
            responses: Vec::new(),
            closed: Vec::new(),
        };
        harness.step(Input::ConnOpened { conn: 1 });
        (harness, events)
    }

    fn step(&mut self, input: Input<'_>) {
        let mut out = Vec::new();
        self.node.step(self.now, input, &mut out);
        self.node.check_invariants();
        self.handle(out);
    }

    fn handle(&mut self, out: Vec<Output>) {
        for output in out {
            match output {
                Output::ConnSend { conn, bytes } => {
                    let decoder = self
                        .frames
                        .entry(conn)
                        .or_insert_with(|| FrameDecoder::new(1 << 30));
                    decoder.push(&bytes);
                    while let Some(frame) = decoder.next_frame().unwrap() {
                        self.responses.push((conn, frame));
                    }
                }
                Output::ConnClose { conn, .. } => self.closed.push(conn),
                Output::Sync { token, file } => self.pending_syncs.push((token, file)),
                Output::Halt { reason } => panic!("node halted: {reason}"),
                Output::PeerSend { to, .. } => panic!("a node alone sent a frame to {to}"),
            }
        }
        if self.auto_sync {
            self.complete_syncs();
        }
    }

    fn complete_syncs(&mut self) {
        while !self.pending_syncs.is_empty() {
            for (token, file) in std::mem::take(&mut self.pending_syncs) {
                let result = self.node.disk_mut().sync(file);
                let mut out = Vec::new();
                self.node
                    .step(self.now, Input::Synced { token, result }, &mut out);
                self.handle_no_sync(out);
            }
        }
    }

    /// Completes the syncs asked for so far, and no others (the round in flight).
    fn complete_one_round(&mut self) {
        let auto = self.auto_sync;
        self.auto_sync = false;
        for (token, file) in std::mem::take(&mut self.pending_syncs) {
            let result = self.node.disk_mut().sync(file);
            self.step(Input::Synced { token, result });
        }
        self.auto_sync = auto;
    }

    fn handle_no_sync(&mut self, out: Vec<Output>) {
        let auto = self.auto_sync;
        self.auto_sync = false;
        self.handle(out);
        self.auto_sync = auto;
    }

    fn send(&mut self, conn: ConnId, version: i16, request: Request) -> i32 {
        self.correlation_id += 1;
        let header = RequestHeader {
            api_key: request.api_key() as i16,
            api_version: version,
            correlation_id: self.correlation_id,
            client_id: Some("harness".into()),
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        encode_request(&mut buf, &header, &request).unwrap();
        self.step(Input::ConnBytes { conn, bytes: &buf });
        self.correlation_id
    }

    fn take_response(&mut self, conn: ConnId, api_key: ApiKey, version: i16) -> Option<Response> {
        let at = self.responses.iter().position(|(c, _)| *c == conn)?;
        let (_, frame) = self.responses.remove(at);
        let (_, response) = decode_response(frame, api_key, version).unwrap();
        Some(response)
    }

    fn call(&mut self, version: i16, request: Request) -> Response {
        let api_key = request.api_key();
        self.send(1, version, request);
        self.take_response(1, api_key, version).expect("a response")
    }

    /// Creates `name` (auto-created by Metadata) and checks that the answer names its
    /// leader: this node, elected in the round that made the topic durable.
    fn create_topic(&mut self, name: &str) {
        let Response::Metadata(metadata) = self.call(12, metadata_request(name)) else {
            panic!()
        };
        assert_eq!(metadata.topics[0].error_code, codes::NONE);
        for p in &metadata.topics[0].partitions {
            assert_eq!((p.error_code, p.leader_id), (codes::NONE, 1), "{p:?}");
        }
    }

    /// Sends a produce request for one partition and returns that partition's result.
    fn produce(
        &mut self,
        version: i16,
        request: Request,
    ) -> produce_response::PartitionProduceResponse {
        let Response::Produce(mut response) = self.call(version, request) else {
            panic!("not a produce response")
        };
        response.responses.remove(0).partition_responses.remove(0)
    }
}

/// Recovery events of the clients' topics (the metadata log's own left out).
fn client_topics(events: Vec<RecoveryEvent>) -> Vec<RecoveryEvent> {
    (events.into_iter())
        .filter(|e| match e {
            RecoveryEvent::Recovered { topic, .. }
            | RecoveryEvent::Offline { topic, .. }
            | RecoveryEvent::Removed { topic } => topic != METADATA_TOPIC,
        })
        .collect()
}

/// The offsets of the clients' partitions (the metadata log's left out).
fn client_offsets(node: &Node<SimDisk>) -> Vec<keel_core::node::PartitionOffsets> {
    (node.partition_offsets().into_iter())
        .filter(|p| p.topic != METADATA_TOPIC)
        .collect()
}

fn metadata_request(topic: &str) -> Request {
    Request::Metadata(MetadataRequest {
        topics: Some(vec![MetadataRequestTopic {
            name: Some(topic.into()),
            ..Default::default()
        }]),
        allow_auto_topic_creation: true,
        ..Default::default()
    })
}

fn batch(values: &[&str]) -> Bytes {
    batch_with(values, &BatchOptions::default())
}

fn batch_with(values: &[&str], options: &BatchOptions) -> Bytes {
    let records: Vec<NewRecord> = values
        .iter()
        .map(|v| NewRecord {
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            ..NewRecord::default()
        })
        .collect();
    record::build(&records, options).unwrap()
}

fn fetch_request(topic: &str, offset: i64, max_wait_ms: i32) -> Request {
    Request::Fetch(FetchRequest {
        max_wait_ms,
        min_bytes: 1,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            topic: topic.into(),
            partitions: vec![FetchPartition {
                partition: 0,
                fetch_offset: offset,
                partition_max_bytes: 1 << 20,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// ListOffsets v7 for partition 0 of `topic` at `timestamp` (-2 earliest, -1 latest, -3 max
/// timestamp, else by time): the partition's answer.
fn list_offset(
    h: &mut Harness,
    topic: &str,
    timestamp: i64,
) -> list_offsets_response::ListOffsetsPartitionResponse {
    use keel_core::protocol::messages::list_offsets_request::{
        ListOffsetsPartition, ListOffsetsTopic,
    };
    let Response::ListOffsets(mut response) = h.call(
        7,
        Request::ListOffsets(ListOffsetsRequest {
            replica_id: -1,
            topics: vec![ListOffsetsTopic {
                name: topic.into(),
                partitions: vec![ListOffsetsPartition {
                    partition_index: 0,
                    timestamp,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
    ) else {
        panic!("not a ListOffsets response")
    };
    response.topics.remove(0).partitions.remove(0)
}

fn values_in(records: &Bytes) -> Vec<String> {
    let mut values = Vec::new();
    for batch in record::split_batches(records.clone()) {
        let batch = RecordBatch::parse(batch.unwrap()).unwrap();
        if batch.header().is_control() {
            // Clients skip control batches (leader changes, DeleteRecords markers).
            continue;
        }
        for r in batch.records(1 << 20).unwrap() {
            values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    values
}

fn fetch_values(h: &mut Harness, topic: &str, offset: i64) -> (i16, Vec<String>) {
    let Response::Fetch(fetch) = h.call(11, fetch_request(topic, offset, 0)) else {
        panic!()
    };
    let p = &fetch.responses[0].partitions[0];
    (p.error_code, values_in(p.records.as_ref().unwrap()))
}

#[test]
fn produced_records_are_fetched_back_byte_for_byte() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("orders");
    for (i, values) in [&["a", "b"][..], &["c"][..], &["d", "e", "f"][..]]
        .iter()
        .enumerate()
    {
        let p = h.produce(9, produce_request("orders", 0, batch(values), -1));
        assert_eq!(p.error_code, codes::NONE, "{:?}", p.error_message);
        assert_eq!(p.base_offset, [0, 2, 3][i]);
    }
    assert_eq!(
        fetch_values(&mut h, "orders", 0),
        (
            codes::NONE,
            vec!["a", "b", "c", "d", "e", "f"]
                .into_iter()
                .map(String::from)
                .collect()
        )
    );
    // A fetch from inside a batch returns the whole batch (clients skip the earlier records).
    assert_eq!(fetch_values(&mut h, "orders", 4).1, vec!["d", "e", "f"]);
    assert_eq!(fetch_values(&mut h, "orders", 6), (codes::NONE, vec![]));
    assert_eq!(
        fetch_values(&mut h, "orders", 7).0,
        codes::OFFSET_OUT_OF_RANGE
    );
}

#[test]
fn acks_wait_for_the_sync_and_consumers_see_only_synced_records() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    h.auto_sync = false;
    h.send(1, 9, produce_request("t", 0, batch(&["x"]), -1));
    assert!(
        h.take_response(1, ApiKey::Produce, 9).is_none(),
        "no ack before the sync"
    );
    // A consumer on another connection sees nothing yet: the record is not durable.
    h.step(Input::ConnOpened { conn: 2 });
    h.send(2, 11, fetch_request("t", 0, 0));
    let Some(Response::Fetch(fetch)) = h.take_response(2, ApiKey::Fetch, 11) else {
        panic!()
    };
    assert_eq!(fetch.responses[0].partitions[0].high_watermark, 0);
    h.complete_syncs();
    let Some(Response::Produce(response)) = h.take_response(1, ApiKey::Produce, 9) else {
        panic!("acked after the sync")
    };
    assert_eq!(
        response.responses[0].partition_responses[0].error_code,
        codes::NONE
    );
    assert_eq!(fetch_values(&mut h, "t", 0).1, vec!["x"]);
}

/// Each data round writes the recovery points that the round before it reached; a round that
/// would only write recovery points waits a second, so writes in a row cost one round each
/// and the recovery points catch up once writes stop.
#[test]
fn recovery_points_catch_up_once_writes_stop_not_after_every_round() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    h.auto_sync = false;
    for (i, value) in ["a", "b", "c"].into_iter().enumerate() {
        h.send(1, 9, produce_request("t", 0, batch(&[value]), -1));
        assert!(!h.pending_syncs.is_empty(), "a write starts a round");
        h.complete_one_round();
        let Some(Response::Produce(_)) = h.take_response(1, ApiKey::Produce, 9) else {
            panic!("write {i} answered once its round completed")
        };
        assert!(
            h.pending_syncs.is_empty(),
            "no round only for the recovery points after write {i}"
        );
    }
    let recovery_point = |h: &mut Harness| {
        let raw = h.node.disk_mut().contents("t-0/recovery-point").unwrap();
        i64::from_be_bytes(raw[..8].try_into().unwrap())
    };
    assert_eq!(recovery_point(&mut h), 2, "written by the third round");
    let due = h.node.next_deadline().expect("the recovery points are due");
    assert_eq!(due, h.now.plus_millis(RECOVERY_POINT_DELAY_MS));
    h.now = due;
    h.step(Input::Timeout);
    assert!(!h.pending_syncs.is_empty(), "the recovery points' round");
    h.complete_one_round();
    assert!(h.pending_syncs.is_empty());
    let next = h.node.next_deadline();
    assert!(
        next.is_none_or(|d| d >= h.now.plus_millis(60_000)),
        "nothing due but the retention check, minutes away: {next:?}"
    );
    assert_eq!(recovery_point(&mut h), 3);
}

#[test]
fn a_long_poll_fetch_waits_for_data_without_blocking_other_connections() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    h.send(1, 11, fetch_request("t", 0, 5_000));
    assert!(
        h.take_response(1, ApiKey::Fetch, 11).is_none(),
        "the fetch waits"
    );
    h.step(Input::ConnOpened { conn: 2 });
    h.send(2, 9, produce_request("t", 0, batch(&["late"]), 1));
    assert!(
        h.take_response(2, ApiKey::Produce, 9).is_some(),
        "the producer is not blocked"
    );
    let Some(Response::Fetch(fetch)) = h.take_response(1, ApiKey::Fetch, 11) else {
        panic!("the parked fetch completes when data arrives")
    };
    assert_eq!(
        values_in(fetch.responses[0].partitions[0].records.as_ref().unwrap()),
        vec!["late"]
    );
    // And an empty long poll ends at its deadline.
    h.send(1, 11, fetch_request("t", 1, 100));
    assert!(h.take_response(1, ApiKey::Fetch, 11).is_none());
    assert_eq!(h.node.next_deadline(), Some(h.now.plus_millis(100)));
    h.now = h.now.plus_millis(100);
    h.step(Input::Timeout);
    assert!(h.take_response(1, ApiKey::Fetch, 11).is_some());
}

#[test]
fn responses_keep_request_order_on_a_connection() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    h.auto_sync = false;
    let first = h.send(1, 9, produce_request("t", 0, batch(&["1"]), -1));
    let second = h.send(1, 12, Request::Metadata(MetadataRequest::default()));
    assert!(
        h.responses.is_empty(),
        "the metadata answer waits behind the produce"
    );
    h.complete_syncs();
    let ids: Vec<i32> = h
        .responses
        .iter()
        .map(|(_, f)| i32::from_be_bytes(f[..4].try_into().unwrap()))
        .collect();
    assert_eq!(ids, vec![first, second]);
}

#[test]
fn a_crash_keeps_acknowledged_records_and_loses_only_unacknowledged_ones() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    h.call(9, produce_request("t", 0, batch(&["kept-1", "kept-2"]), -1));
    h.auto_sync = false;
    h.send(1, 9, produce_request("t", 0, batch(&["lost"]), -1));
    assert!(h.take_response(1, ApiKey::Produce, 9).is_none());
    let mut disk = h.node.into_disk();
    disk.crash();
    let (mut h, events) = Harness::new(disk);
    assert!(
        matches!(&events[..], [RecoveryEvent::Recovered { topic, .. }] if topic == "t"),
        "{events:?}"
    );
    assert_eq!(fetch_values(&mut h, "t", 0).1, vec!["kept-1", "kept-2"]);
    // Offsets go on from the recovered end.
    assert_eq!(
        h.produce(9, produce_request("t", 0, batch(&["next"]), -1))
            .base_offset,
        2
    );
}

/// A disk holding topic `t` with the batches "one", "two" and "three", all acknowledged.
fn three_batches_in_topic_t() -> SimDisk {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    for v in ["one", "two", "three"] {
        h.call(9, produce_request("t", 0, batch(&[v]), -1));
    }
    h.node.into_disk()
}

#[test]
fn a_torn_tail_is_cut_to_the_last_whole_batch() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    for v in ["one", "two"] {
        h.call(9, produce_request("t", 0, batch(&[v]), -1));
    }
    // The third batch is written and its round never completes: past the recovery point.
    h.auto_sync = false;
    h.send(1, 9, produce_request("t", 0, batch(&["three"]), -1));
    let mut disk = h.node.into_disk();
    let segment = disk.contents_mut("t-0/00000000000000000000.log").unwrap();
    let len = segment.len();
    segment.truncate(len - 10);
    disk.sync_all();
    let (mut h, events) = Harness::new(disk);
    assert!(
        matches!(&events[..], [RecoveryEvent::Recovered { truncated_bytes, batches: 2, .. }] if *truncated_bytes > 0),
        "{events:?}"
    );
    assert_eq!(fetch_values(&mut h, "t", 0).1, vec!["one", "two"]);
}

#[test]
fn a_flipped_bit_in_an_earlier_batch_takes_the_partition_offline() {
    let mut disk = three_batches_in_topic_t();
    let segment = disk.contents_mut("t-0/00000000000000000000.log").unwrap();
    segment[70] ^= 0x01;
    let len_before = segment.len();
    disk.sync_all();
    let (mut h, events) = Harness::new(disk);
    let [RecoveryEvent::Offline { reason, .. }] = &events[..] else {
        panic!("{events:?}")
    };
    assert!(
        reason.contains("CRC mismatch") && reason.contains("t-0/00000000000000000000.log"),
        "{reason}"
    );
    assert_eq!(fetch_values(&mut h, "t", 0).0, codes::KAFKA_STORAGE_ERROR);
    assert_eq!(
        h.produce(9, produce_request("t", 0, batch(&["more"]), -1))
            .error_code,
        codes::KAFKA_STORAGE_ERROR
    );
    let len_after = h
        .node
        .disk_mut()
        .contents_mut("t-0/00000000000000000000.log")
        .unwrap()
        .len();
    assert_eq!(len_after, len_before, "nothing was truncated");
}

#[test]
fn produce_validation_rejects_bad_batches_and_appends_nothing() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    let mut corrupt = batch(&["x"]).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let cases: Vec<(Request, i16, i16)> = vec![
        (
            produce_request("t", 0, Bytes::from(corrupt), -1),
            9,
            codes::CORRUPT_MESSAGE,
        ),
        (
            produce_request("t", 7, batch(&["x"]), -1),
            9,
            codes::UNKNOWN_TOPIC_OR_PARTITION,
        ),
        (
            produce_request("nope", 0, batch(&["x"]), -1),
            9,
            codes::UNKNOWN_TOPIC_OR_PARTITION,
        ),
        (
            produce_request("t", 0, batch(&["x"]), 2),
            9,
            codes::INVALID_REQUIRED_ACKS,
        ),
        (
            produce_request("t", 0, batch(&["x"]), -1),
            2,
            codes::UNSUPPORTED_VERSION,
        ),
        (
            produce_request("t", 0, batch(&[&"z".repeat(1_100_000)]), -1),
            9,
            codes::MESSAGE_TOO_LARGE,
        ),
    ];
    for (request, version, expected) in cases {
        assert_eq!(h.produce(version, request).error_code, expected);
    }
    assert_eq!(fetch_values(&mut h, "t", 0), (codes::NONE, vec![]));
}

#[test]
fn bad_bytes_close_only_their_connection() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    h.step(Input::ConnOpened { conn: 2 });
    // The forged Produce body: 54,265,856 topics in 14 bytes.
    let mut frame = vec![0, 0, 0, 24, 0, 0, 0, 3, 0, 0, 0, 7, 0xff, 0xff];
    frame.extend_from_slice(&[
        0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30, 0x03, 0x3c, 0x08, 0x00, 0, 0,
    ]);
    h.step(Input::ConnBytes {
        conn: 2,
        bytes: &frame,
    });
    assert_eq!(h.closed, vec![2]);
    h.step(Input::ConnOpened { conn: 3 });
    h.step(Input::ConnBytes {
        conn: 3,
        bytes: &[0x7f, 0xff, 0xff, 0xff],
    });
    assert_eq!(
        h.closed,
        vec![2, 3],
        "a frame over the maximum closes its connection"
    );
    assert_eq!(
        h.produce(9, produce_request("t", 0, batch(&["still"]), -1))
            .error_code,
        codes::NONE
    );
}

#[test]
fn list_offsets_finds_earliest_latest_and_by_timestamp() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    for (i, ts) in [1_000i64, 2_000, 3_000].iter().enumerate() {
        let records = vec![NewRecord {
            value: Some(Bytes::from(format!("v{i}"))),
            ..NewRecord::default()
        }];
        let options = BatchOptions {
            base_timestamp: *ts,
            ..BatchOptions::default()
        };
        h.call(
            9,
            produce_request("t", 0, record::build(&records, &options).unwrap(), -1),
        );
    }
    for (timestamp, expected) in [
        (-2i64, 0i64),
        (-1, 3),
        (1_500, 1),
        (3_000, 2),
        (9_000, -1),
        (-3, 2),
    ] {
        let p = list_offset(&mut h, "t", timestamp);
        assert_eq!(
            (p.error_code, p.offset),
            (codes::NONE, expected),
            "timestamp {timestamp}"
        );
    }
}

#[test]
fn deleting_a_topic_while_its_files_await_a_sync_is_not_fatal() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("brief");
    h.auto_sync = false;
    h.send(1, 9, produce_request("brief", 0, batch(&["x"]), 1));
    h.send(
        1,
        5,
        Request::DeleteTopics(DeleteTopicsRequest {
            topic_names: vec!["brief".into()],
            timeout_ms: 1000,
            ..Default::default()
        }),
    );
    h.complete_syncs();
    assert!(h.node.halted().is_none());
    assert!(h.take_response(1, ApiKey::Produce, 9).is_some());
    let Some(Response::DeleteTopics(deleted)) = h.take_response(1, ApiKey::DeleteTopics, 5) else {
        panic!("the delete is answered")
    };
    assert_eq!(deleted.responses[0].error_code, codes::NONE);
    h.auto_sync = true;
    h.create_topic("after");
    assert_eq!(
        h.produce(9, produce_request("after", 0, batch(&["y"]), -1))
            .error_code,
        codes::NONE
    );
}

#[test]
fn acks_zero_gets_no_answer_and_a_failure_closes_the_connection() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    h.send(1, 9, produce_request("t", 0, batch(&["quiet"]), 0));
    assert!(h.responses.is_empty(), "acks=0 is answered with nothing");
    assert!(h.closed.is_empty());
    h.send(1, 9, produce_request("t", 5, batch(&["nowhere"]), 0));
    assert_eq!(
        h.closed,
        vec![1],
        "a failed acks=0 produce closes the connection"
    );
    h.step(Input::ConnOpened { conn: 2 });
    h.send(2, 11, fetch_request("t", 0, 0));
    let Some(Response::Fetch(fetch)) = h.take_response(2, ApiKey::Fetch, 11) else {
        panic!()
    };
    assert_eq!(
        values_in(fetch.responses[0].partitions[0].records.as_ref().unwrap()),
        vec!["quiet"]
    );
}

fn init_producer_id(h: &mut Harness, version: i16, id: i64, epoch: i16) -> (i64, i16) {
    let Response::InitProducerId(r) = h.call(
        version,
        Request::InitProducerId(InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: 60_000,
            producer_id: id,
            producer_epoch: epoch,
            ..Default::default()
        }),
    ) else {
        panic!("not an InitProducerId response")
    };
    assert_eq!(r.error_code, codes::NONE);
    (r.producer_id, r.producer_epoch)
}

fn idempotent_batch(values: &[&str], id: i64, epoch: i16, sequence: i32) -> Bytes {
    let options = BatchOptions {
        // The harness's clock: a producer is remembered for a day after its last batch.
        base_timestamp: 1_700_000_000_000,
        producer_id: id,
        producer_epoch: epoch,
        base_sequence: sequence,
        ..BatchOptions::default()
    };
    batch_with(values, &options)
}

#[test]
fn producer_ids_are_never_reused_across_a_crash_and_epochs_bump() {
    let (mut h, _) = Harness::new(SimDisk::new());
    let (first, epoch) = init_producer_id(&mut h, 4, -1, -1);
    assert_eq!(epoch, 0);
    let (second, _) = init_producer_id(&mut h, 4, -1, -1);
    assert!(second > first);
    // KIP-360: the same id at the next epoch.
    assert_eq!(init_producer_id(&mut h, 4, second, 0), (second, 1));
    // Before v3 the request carries no id: a new one.
    let (third, _) = init_producer_id(&mut h, 2, -1, -1);
    assert!(third > second);
    let mut disk = h.node.into_disk();
    disk.crash();
    let (mut h, _) = Harness::new(disk);
    let (after, epoch) = init_producer_id(&mut h, 4, -1, -1);
    assert!(after > third, "{after} was handed out before the crash");
    assert_eq!(epoch, 0);
}

#[test]
fn a_retried_batch_is_not_appended_twice_even_after_a_restart() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    let (id, epoch) = init_producer_id(&mut h, 4, -1, -1);
    let first = idempotent_batch(&["a", "b"], id, epoch, 0);
    let r = h.produce(9, produce_request("t", 0, first.clone(), -1));
    assert_eq!((r.error_code, r.base_offset), (codes::NONE, 0));
    let r = h.produce(
        9,
        produce_request("t", 0, idempotent_batch(&["c"], id, epoch, 2), -1),
    );
    assert_eq!((r.error_code, r.base_offset), (codes::NONE, 2));
    // The retry of the first batch gets its original offset and appends nothing.
    let r = h.produce(9, produce_request("t", 0, first.clone(), -1));
    assert_eq!((r.error_code, r.base_offset), (codes::NONE, 0));
    // A gap, an old epoch.
    let r = h.produce(
        9,
        produce_request("t", 0, idempotent_batch(&["x"], id, epoch, 9), -1),
    );
    assert_eq!(r.error_code, codes::OUT_OF_ORDER_SEQUENCE_NUMBER);
    let (_, bumped) = init_producer_id(&mut h, 4, id, epoch);
    let r = h.produce(
        9,
        produce_request("t", 0, idempotent_batch(&["y"], id, bumped, 0), -1),
    );
    assert_eq!((r.error_code, r.base_offset), (codes::NONE, 3));
    let r = h.produce(
        9,
        produce_request("t", 0, idempotent_batch(&["z"], id, epoch, 3), -1),
    );
    assert_eq!(r.error_code, codes::INVALID_PRODUCER_EPOCH);
    // After a restart the state comes back from the log.
    let mut disk = h.node.into_disk();
    disk.crash();
    let (mut h, _) = Harness::new(disk);
    let retry = idempotent_batch(&["y"], id, bumped, 0);
    let r = h.produce(9, produce_request("t", 0, retry, -1));
    assert_eq!((r.error_code, r.base_offset), (codes::NONE, 3));
    assert_eq!(fetch_values(&mut h, "t", 0).1, vec!["a", "b", "c", "y"]);
    // A producer the partition never saw must start at sequence 0.
    let r = h.produce(
        9,
        produce_request("t", 0, idempotent_batch(&["w"], id + 1, 0, 5), -1),
    );
    assert_eq!(r.error_code, codes::UNKNOWN_PRODUCER_ID);
}

/// Where each batch of a segment starts, read from its length fields.
fn batch_positions(segment: &[u8]) -> Vec<usize> {
    let mut positions = Vec::new();
    let mut at = 0;
    while at + 12 <= segment.len() {
        positions.push(at);
        let length = i32::from_be_bytes(segment[at + 8..at + 12].try_into().unwrap());
        at += 12 + length as usize;
    }
    positions
}

fn delete_topic(h: &mut Harness, conn: ConnId, name: &str) {
    h.send(
        conn,
        5,
        Request::DeleteTopics(DeleteTopicsRequest {
            topic_names: vec![name.into()],
            timeout_ms: 1000,
            ..Default::default()
        }),
    );
}

#[test]
fn deleting_a_topic_answers_the_fetches_parked_on_it() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    h.send(1, 11, fetch_request("t", 0, 60_000));
    assert!(h.take_response(1, ApiKey::Fetch, 11).is_none(), "parked");
    delete_topic(&mut h, 1, "t");
    let Some(Response::Fetch(fetch)) = h.take_response(1, ApiKey::Fetch, 11) else {
        panic!("the parked fetch is answered once its topic is gone")
    };
    assert_eq!(
        fetch.responses[0].partitions[0].error_code,
        codes::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert!(
        h.take_response(1, ApiKey::DeleteTopics, 5).is_some(),
        "and the connection's later answers are not held back"
    );
    h.node.begin_shutdown(h.now, &mut Vec::new());
    assert!(h.node.is_shut_down(), "nothing stalls shutdown");
}

#[test]
fn a_topic_created_again_does_not_inherit_the_old_one_s_sync_round() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    h.auto_sync = false;
    h.step(Input::ConnOpened { conn: 2 });
    h.send(2, 9, produce_request("t", 0, batch(&["a", "b", "c"]), 1));
    // The round that syncs offsets 0..3 of the old log is in flight.
    h.step(Input::ConnOpened { conn: 3 });
    delete_topic(&mut h, 3, "t");
    // The deletion reaches the image (and the disk) once its metadata batch commits.
    h.complete_syncs();
    assert!(h.take_response(3, ApiKey::DeleteTopics, 5).is_some());
    // Created again (answered once its leader is elected, in a later round); the old log's
    // rounds must not move the new, empty log's durable end (the invariant checks after each
    // step catch that).
    h.step(Input::ConnOpened { conn: 4 });
    h.send(4, 12, metadata_request("t"));
    h.complete_syncs();
    let Some(Response::Metadata(created)) = h.take_response(4, ApiKey::Metadata, 12) else {
        panic!("the creation is answered")
    };
    assert_eq!(created.topics[0].partitions[0].leader_id, 1);
    let Response::Fetch(fetch) = h.call(11, fetch_request("t", 0, 0)) else {
        panic!()
    };
    assert_eq!(fetch.responses[0].partitions[0].high_watermark, 0);
}

#[test]
fn a_damaged_length_in_synced_data_is_corruption_not_a_torn_tail() {
    let mut disk = three_batches_in_topic_t();
    let segment = disk.contents_mut("t-0/00000000000000000000.log").unwrap();
    let second = batch_positions(segment)[1];
    // The length is outside the CRC: make the second batch claim more bytes than remain.
    segment[second + 8] ^= 0x40;
    let len_before = segment.len();
    disk.sync_all();
    let (_h, events) = Harness::new(disk);
    assert!(
        matches!(&events[..], [RecoveryEvent::Offline { .. }]),
        "acknowledged batches must not be cut: {events:?}"
    );
    let mut disk = _h.node.into_disk();
    assert_eq!(
        disk.contents_mut("t-0/00000000000000000000.log")
            .unwrap()
            .len(),
        len_before,
        "nothing was truncated"
    );
}

/// A config with tiny segments and a disk holding topic `t` with the batches "one", "two"
/// and "three", one per segment, all acknowledged.
fn one_batch_per_segment_in_topic_t() -> (Config, SimDisk) {
    let mut config = Config::default();
    config.topic_defaults.segment_bytes = 64;
    let (mut h, _) = Harness::with(config.clone(), SimDisk::new(), true);
    h.create_topic("t");
    for v in ["one", "two", "three"] {
        h.call(9, produce_request("t", 0, batch(&[v]), -1));
    }
    (config, h.node.into_disk())
}

#[test]
fn a_lost_first_segment_takes_the_partition_offline() {
    let (config, mut disk) = one_batch_per_segment_in_topic_t();
    let segments: Vec<String> = disk
        .names()
        .into_iter()
        .filter(|n| n.ends_with(".log") && n.starts_with("t-0/"))
        .collect();
    assert_eq!(segments.len(), 3, "one batch per segment: {segments:?}");
    use keel_core::disk::Disk;
    disk.remove(&segments[0]).unwrap();
    disk.sync_all();
    let (_, events) = Harness::with(config, disk, true);
    assert!(
        matches!(&events[..], [RecoveryEvent::Offline { .. }]),
        "offsets 0..1 were synced and are gone: {events:?}"
    );
}

#[test]
fn the_high_watermark_a_client_saw_survives_a_restart() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    h.call(9, produce_request("t", 0, batch(&["a"]), -1));
    h.auto_sync = false;
    h.send(1, 9, produce_request("t", 0, batch(&["b", "c"]), -1));
    // The data round completes: the produce is acknowledged and consumers see 3. The round
    // that would bring the recovery point up to 3 never completes.
    h.complete_one_round();
    assert!(h.take_response(1, ApiKey::Produce, 9).is_some());
    h.send(1, 11, fetch_request("t", 0, 0));
    let Some(Response::Fetch(fetch)) = h.take_response(1, ApiKey::Fetch, 11) else {
        panic!()
    };
    assert_eq!(fetch.responses[0].partitions[0].high_watermark, 3);
    let mut disk = h.node.into_disk();
    disk.crash();
    let (mut h, _) = Harness::with(Config::default(), disk, false);
    h.send(1, 11, fetch_request("t", 0, 0));
    let mut seen = Vec::new();
    for _ in 0..2 {
        if let Some(Response::Fetch(fetch)) = h.take_response(1, ApiKey::Fetch, 11) {
            seen.push(fetch.responses[0].partitions[0].high_watermark);
        }
        h.complete_syncs();
    }
    assert_eq!(seen, vec![3], "the high watermark never goes back");
}

/// A simulated disk that counts reads and can flip a bit in the first read of one file (on
/// the way, not on the disk).
struct WatchedDisk {
    disk: SimDisk,
    reads: std::rc::Rc<std::cell::Cell<u64>>,
    flip_first_read_of: Option<&'static str>,
    flip_file: Option<keel_core::disk::FileId>,
    flipped: bool,
}

impl WatchedDisk {
    fn new(disk: SimDisk) -> WatchedDisk {
        WatchedDisk {
            disk,
            reads: Default::default(),
            flip_first_read_of: None,
            flip_file: None,
            flipped: false,
        }
    }

    fn watch(&mut self, name: &str, id: keel_core::disk::FileId) {
        if self.flip_first_read_of == Some(name) {
            self.flip_file = Some(id);
        }
    }
}

impl keel_core::disk::Disk for WatchedDisk {
    fn list(&mut self) -> Result<Vec<String>, keel_core::disk::DiskError> {
        self.disk.list()
    }
    fn open(&mut self, name: &str) -> Result<u64, keel_core::disk::DiskError> {
        let id = self.disk.open(name)?;
        self.watch(name, id);
        Ok(id)
    }
    fn create(&mut self, name: &str) -> Result<u64, keel_core::disk::DiskError> {
        let id = self.disk.create(name)?;
        self.watch(name, id);
        Ok(id)
    }
    fn len(&mut self, file: u64) -> Result<u64, keel_core::disk::DiskError> {
        self.disk.len(file)
    }
    fn read_at(
        &mut self,
        file: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), keel_core::disk::DiskError> {
        self.reads.set(self.reads.get() + 1);
        self.disk.read_at(file, offset, buf)?;
        if Some(file) == self.flip_file && !self.flipped && !buf.is_empty() {
            self.flipped = true;
            buf[0] ^= 0x01;
        }
        Ok(())
    }
    fn write_at(
        &mut self,
        file: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), keel_core::disk::DiskError> {
        self.disk.write_at(file, offset, data)
    }
    fn truncate(&mut self, file: u64, len: u64) -> Result<(), keel_core::disk::DiskError> {
        self.disk.truncate(file, len)
    }
    fn remove(&mut self, name: &str) -> Result<(), keel_core::disk::DiskError> {
        self.disk.remove(name)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), keel_core::disk::DiskError> {
        self.disk.rename(from, to)
    }
    fn open_dir(&mut self, name: &str) -> Result<u64, keel_core::disk::DiskError> {
        self.disk.open_dir(name)
    }
    fn remove_dir(&mut self, name: &str) -> Result<(), keel_core::disk::DiskError> {
        self.disk.remove_dir(name)
    }
}

#[test]
fn one_flipped_read_of_the_recovery_point_does_not_unprotect_synced_data() {
    let mut disk = three_batches_in_topic_t();
    // Damage in the first, synced batch: corruption, whatever the recovery point read says.
    disk.contents_mut("t-0/00000000000000000000.log").unwrap()[70] ^= 0x01;
    disk.sync_all();
    let mut disk = WatchedDisk::new(disk);
    disk.flip_first_read_of = Some("t-0/recovery-point");
    let (node, events) = Node::new(Config::default(), disk).expect("node starts");
    let events = client_topics(events);
    assert!(
        matches!(&events[..], [RecoveryEvent::Offline { .. }]),
        "a flip on the way to the recovery point made synced batches look torn: {events:?}"
    );
    assert!(node.into_disk().flipped);
}

#[test]
fn list_offsets_by_time_survives_a_damaged_header() {
    for bad_length in [-100i32, -12, 0] {
        let (mut h, _) = Harness::new(SimDisk::new());
        h.create_topic("t");
        for ts in [1_000i64, 2_000] {
            let options = BatchOptions {
                base_timestamp: ts,
                ..BatchOptions::default()
            };
            h.call(9, produce_request("t", 0, batch_with(&["v"], &options), -1));
        }
        // Damage arrives after recovery checked everything.
        let segment = h
            .node
            .disk_mut()
            .contents_mut("t-0/00000000000000000000.log")
            .unwrap();
        segment[8..12].copy_from_slice(&bad_length.to_be_bytes());
        assert_eq!(
            list_offset(&mut h, "t", 1_500).error_code,
            codes::KAFKA_STORAGE_ERROR,
            "length {bad_length}"
        );
    }
}

fn topic_id(h: &mut Harness, name: &str) -> keel_core::protocol::wire::Uuid {
    let Response::Metadata(metadata) = h.call(
        12,
        Request::Metadata(MetadataRequest {
            topics: Some(vec![MetadataRequestTopic {
                name: Some(name.into()),
                ..Default::default()
            }]),
            allow_auto_topic_creation: true,
            ..Default::default()
        }),
    ) else {
        panic!()
    };
    metadata.topics[0].topic_id
}

#[test]
fn topic_ids_stay_unique_when_a_restart_replays_the_same_seed() {
    let (mut h, _) = Harness::new(SimDisk::new());
    let first = topic_id(&mut h, "first");
    let mut disk = h.node.into_disk();
    disk.crash();
    // The same config, so the same seed: the node draws the same ids again.
    let (mut h, _) = Harness::new(disk);
    let second = topic_id(&mut h, "second");
    assert_ne!(first, second, "two topics with one id");
    assert_eq!(topic_id(&mut h, "first"), first);
}

#[test]
fn connections_past_the_maximum_are_closed() {
    let (mut h, _) = Harness::new(SimDisk::new());
    let max = keel_core::limits::CONNECTIONS_MAX as u64;
    // Connection 1 is open already.
    for conn in 2..=max + 1 {
        h.step(Input::ConnOpened { conn });
    }
    assert_eq!(h.closed, vec![max + 1]);
    // Once one closes, another may open.
    h.step(Input::ConnClosed { conn: 2 });
    h.step(Input::ConnOpened { conn: max + 2 });
    assert_eq!(h.closed, vec![max + 1]);
}

#[test]
fn pipelined_requests_past_the_maximum_wait_unread_and_are_answered_in_order() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    h.auto_sync = false;
    let max = keel_core::limits::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX;
    let count = max + max / 2;
    let ids: Vec<i32> = (0..count)
        .map(|i| h.send(1, 9, produce_request("t", 0, batch(&[&i.to_string()]), 1)))
        .collect();
    let ends = client_offsets(&h.node);
    assert_eq!(
        ends[0].log_end_offset,
        Some(max as i64),
        "only the first {max} requests were read"
    );
    h.complete_syncs();
    let answered: Vec<i32> = h
        .responses
        .iter()
        .map(|(_, f)| i32::from_be_bytes(f[..4].try_into().unwrap()))
        .collect();
    assert_eq!(answered, ids, "every request answered, in order");
    assert_eq!(
        client_offsets(&h.node)[0].log_end_offset,
        Some(count as i64)
    );
}

#[test]
fn partition_counts_past_the_maximum_are_refused() {
    let (mut h, _) = Harness::new(SimDisk::new());
    let create = |name: &str, partitions: i32| {
        Request::CreateTopics(CreateTopicsRequest {
            topics: vec![create_topics_request::CreatableTopic {
                name: name.into(),
                num_partitions: partitions,
                replication_factor: 1,
                ..Default::default()
            }],
            timeout_ms: 1000,
            ..Default::default()
        })
    };
    let per_topic = keel_core::limits::PARTITIONS_PER_TOPIC_MAX;
    let Response::CreateTopics(r) = h.call(7, create("huge", per_topic + 1)) else {
        panic!()
    };
    assert_eq!(r.topics[0].error_code, codes::INVALID_PARTITIONS);
    assert!(client_offsets(&h.node).is_empty(), "nothing created");
    let Response::CreateTopics(r) = h.call(7, create("small", 2)) else {
        panic!()
    };
    assert_eq!(r.topics[0].error_code, codes::NONE);
    let Response::CreatePartitions(r) = h.call(
        3,
        Request::CreatePartitions(CreatePartitionsRequest {
            topics: vec![create_partitions_request::CreatePartitionsTopic {
                name: "small".into(),
                count: per_topic + 1,
                assignments: None,
                ..Default::default()
            }],
            timeout_ms: 1000,
            ..Default::default()
        }),
    ) else {
        panic!()
    };
    assert_eq!(r.results[0].error_code, codes::INVALID_PARTITIONS);
    assert_eq!(client_offsets(&h.node).len(), 2);
}

#[test]
fn a_fetch_response_never_passes_the_maximum_whatever_max_bytes_asks() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    let value = "v".repeat(1_000_000);
    let max = keel_core::limits::FETCH_RESPONSE_MAX_BYTES;
    let batches = max / 1_000_000 + 2;
    for _ in 0..batches {
        let p = h.produce(9, produce_request("t", 0, batch(&[&value]), 1));
        assert_eq!(p.error_code, codes::NONE);
    }
    let Response::Fetch(fetch) = h.call(
        11,
        Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes: i32::MAX,
            topics: vec![FetchTopic {
                topic: "t".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    fetch_offset: 0,
                    partition_max_bytes: i32::MAX,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
    ) else {
        panic!()
    };
    let records = fetch.responses[0].partitions[0].records.as_ref().unwrap();
    assert!(!records.is_empty());
    assert!(records.len() <= max, "{} bytes", records.len());
}

#[test]
fn a_log_whose_every_segment_was_a_torn_tail_starts_over_empty() {
    use keel_core::disk::Disk;
    // The first segment never reached the disk and neither did the recovery point (a
    // creation cut short): nothing is known durable, so the later segments are a torn tail.
    let (config, mut disk) = one_batch_per_segment_in_topic_t();
    disk.remove("t-0/00000000000000000000.log").unwrap();
    disk.contents_mut("t-0/recovery-point").unwrap().clear();
    disk.sync_all();
    let (mut h, events) = Harness::with(config.clone(), disk, true);
    assert!(
        matches!(&events[..], [RecoveryEvent::Recovered { batches: 0, .. }]),
        "{events:?}"
    );
    let p = h.produce(9, produce_request("t", 0, batch(&["again"]), -1));
    assert_eq!((p.error_code, p.base_offset), (codes::NONE, 0));
    assert_eq!(fetch_values(&mut h, "t", 0).1, vec!["again"]);

    // Zeros are a recovery point never written too (the file grew, its first write never
    // reached the disk: found by the log model).
    let (config, mut disk) = one_batch_per_segment_in_topic_t();
    disk.remove("t-0/00000000000000000000.log").unwrap();
    disk.contents_mut("t-0/recovery-point").unwrap().fill(0);
    disk.sync_all();
    let (_, events) = Harness::with(config, disk, true);
    assert!(
        matches!(&events[..], [RecoveryEvent::Recovered { batches: 0, .. }]),
        "{events:?}"
    );

    // A recovery point that is there but reads bad every time is damage (it is one sector,
    // written whole): what was synced is unknown, so nothing is cut and the gap is corruption.
    let (config, mut disk) = one_batch_per_segment_in_topic_t();
    disk.remove("t-0/00000000000000000000.log").unwrap();
    disk.contents_mut("t-0/recovery-point").unwrap()[3] ^= 0x10;
    disk.sync_all();
    let (_, events) = Harness::with(config, disk, true);
    assert!(
        matches!(&events[..], [RecoveryEvent::Offline { .. }]),
        "{events:?}"
    );
}

/// A crash right after a topic is deleted and answered must not bring it back, and a crash
/// right after a segment rolls must not lose the new segment's acknowledged batches: both are
/// directory entries, durable only once their directory is synced.
#[test]
fn directory_entries_are_durable_before_answers_depend_on_them() {
    let mut config = Config::default();
    config.topic_defaults.segment_bytes = 64;
    let (mut h, _) = Harness::with(config.clone(), SimDisk::new(), true);
    h.create_topic("gone");
    h.call(9, produce_request("gone", 0, batch(&["old"]), -1));
    h.create_topic("kept");
    for v in ["one", "two", "three"] {
        let p = h.produce(9, produce_request("kept", 0, batch(&[v]), -1));
        assert_eq!(p.error_code, codes::NONE);
    }
    delete_topic(&mut h, 1, "gone");
    let Some(Response::DeleteTopics(deleted)) = h.take_response(1, ApiKey::DeleteTopics, 5) else {
        panic!("the delete is answered")
    };
    assert_eq!(deleted.responses[0].error_code, codes::NONE);
    let mut disk = h.node.into_disk();
    disk.crash();
    let (mut h, events) = Harness::with(config, disk, true);
    assert!(
        // Three segments, one batch each (the closed ones taken from their summaries).
        matches!(&events[..], [RecoveryEvent::Recovered { topic, segments: 3, .. }] if topic == "kept"),
        "{events:?}"
    );
    let mut values = Vec::new();
    while let (codes::NONE, more) = fetch_values(&mut h, "kept", values.len() as i64) {
        if more.is_empty() {
            break;
        }
        values.extend(more);
    }
    assert_eq!(values, vec!["one", "two", "three"]);
}

/// A crash in the middle of a topic's creation may leave some of its partition directories
/// and not others: the topic comes back whole. And a topic with no `partition.metadata` left
/// at all (a creation or a deletion cut short) is removed, not served under a made-up id.
#[test]
fn a_crash_during_topic_creation_leaves_no_partition_offline() {
    let config = Config {
        default_partitions: 3,
        ..Config::default()
    };
    let (mut h, _) = Harness::with(config.clone(), SimDisk::new(), true);
    h.create_topic("t");
    h.create_topic("u");
    let id = topic_id(&mut h, "t");
    let mut disk = h.node.into_disk();
    use keel_core::disk::Disk;
    for name in disk.names() {
        if name.starts_with("t-1/")
            || name.starts_with("u-") && name.ends_with("partition.metadata")
        {
            disk.remove(&name).unwrap();
        }
    }
    disk.remove_dir("t-1").unwrap();
    disk.sync_all();
    let (mut h, events) = Harness::with(config.clone(), disk, true);
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, RecoveryEvent::Offline { .. })),
        "{events:?}"
    );
    assert!(
        events.contains(&RecoveryEvent::Removed { topic: "u".into() }),
        "{events:?}"
    );
    assert_eq!(topic_id(&mut h, "t"), id, "the id survives");
    for partition in 0..3 {
        let p = h.produce(9, produce_request("t", partition, batch(&["x"]), -1));
        assert_eq!(p.error_code, codes::NONE, "partition {partition}");
    }
    // The recreated partition has its metadata again: another restart finds the same id.
    let mut disk = h.node.into_disk();
    disk.crash();
    let (mut h, _) = Harness::with(config, disk, true);
    assert_eq!(topic_id(&mut h, "t"), id);
}

/// Parked fetches look at the disk again only when a high watermark may have moved (or their
/// deadline passed), not on every step of the node.
#[test]
fn parked_fetches_read_the_disk_only_when_their_data_may_have_changed() {
    let mut disk = three_batches_in_topic_t();
    disk.sync_all();
    let disk = WatchedDisk::new(disk);
    let reads = disk.reads.clone();
    let (mut node, _) = Node::new(Config::default(), disk).expect("node starts");
    let now = Instant::from_millis(1_700_000_000_000);
    let mut out = Vec::new();
    node.step(now, Input::ConnOpened { conn: 1 }, &mut out);
    for output in std::mem::take(&mut out) {
        if let Output::Sync { token, file } = output {
            let result = node.disk_mut().disk.sync(file);
            node.step(now, Input::Synced { token, result }, &mut out);
        }
    }
    out.clear();
    // A long poll for more bytes than the log holds: it parks, with data to read.
    let Request::Fetch(mut fetch) = fetch_request("t", 0, 60_000) else {
        unreachable!()
    };
    fetch.min_bytes = 1 << 20;
    let mut buf = BytesMut::new();
    let header = RequestHeader {
        api_key: ApiKey::Fetch as i16,
        api_version: 11,
        correlation_id: 1,
        client_id: Some("harness".into()),
        ..Default::default()
    };
    encode_request(&mut buf, &header, &Request::Fetch(fetch)).unwrap();
    node.step(
        now,
        Input::ConnBytes {
            conn: 1,
            bytes: &buf,
        },
        &mut out,
    );
    assert!(out.is_empty(), "the fetch is parked: {out:?}");
    let before = reads.get();
    // Steps that change no high watermark: other connections coming and going, timeouts.
    for conn in 2..100 {
        node.step(now, Input::ConnOpened { conn }, &mut out);
        node.step(now, Input::Timeout, &mut out);
        node.step(now, Input::ConnClosed { conn }, &mut out);
    }
    assert_eq!(
        reads.get() - before,
        0,
        "the parked fetch read the disk again"
    );
    assert!(out.is_empty());
}

/// OffsetForLeaderEpoch v4 for partition 0 of `topic`: (leader epoch, end offset).
fn offset_for_leader_epoch(h: &mut Harness, topic: &str, leader_epoch: i32) -> (i32, i64) {
    match offset_for_leader_epoch_in(h, topic, -1, leader_epoch) {
        Ok(found) => found,
        Err(code) => panic!("error {code}"),
    }
}

/// The same, from a client that believes the current leader epoch is `current_leader_epoch`.
fn offset_for_leader_epoch_in(
    h: &mut Harness,
    topic: &str,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> Result<(i32, i64), i16> {
    use keel_core::protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    let Response::OffsetForLeaderEpoch(mut response) = h.call(
        4,
        Request::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest {
            replica_id: -1,
            topics: vec![OffsetForLeaderTopic {
                topic: topic.into(),
                partitions: vec![OffsetForLeaderPartition {
                    partition: 0,
                    current_leader_epoch,
                    leader_epoch,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
    ) else {
        panic!("not an OffsetForLeaderEpoch response")
    };
    let p = response.topics.remove(0).partitions.remove(0);
    if p.error_code != codes::NONE {
        return Err(p.error_code);
    }
    Ok((p.leader_epoch, p.end_offset))
}

/// The leader epoch is the partition's Raft epoch: a node alone is elected again at every
/// start. The log keeps where each epoch starts (rebuilt by recovery from the batches) and
/// answers OffsetForLeaderEpoch from it, with Kafka's fencing of clients that know an older
/// or a newer epoch; a leader epoch that goes back along the log, or passes the latest the
/// node voted in (it is outside the CRC), is damage.
#[test]
fn leader_epochs_come_from_the_log_and_never_go_back() {
    // Written in epoch 1 (the topic's first election); this start is epoch 2.
    let (mut h, _) = Harness::new(three_batches_in_topic_t());
    assert_eq!(offset_for_leader_epoch(&mut h, "t", 1), (1, 3));
    assert_eq!(offset_for_leader_epoch(&mut h, "t", 2), (2, 3));
    assert_eq!(offset_for_leader_epoch(&mut h, "t", 0), (-1, -1));
    assert_eq!(offset_for_leader_epoch(&mut h, "t", 7), (-1, -1));
    assert_eq!(offset_for_leader_epoch(&mut h, "t", -1), (-1, -1));
    assert_eq!(
        offset_for_leader_epoch_in(&mut h, "t", 1, 1),
        Err(codes::FENCED_LEADER_EPOCH)
    );
    assert_eq!(
        offset_for_leader_epoch_in(&mut h, "t", 3, 1),
        Err(codes::UNKNOWN_LEADER_EPOCH)
    );
    assert_eq!(offset_for_leader_epoch_in(&mut h, "t", 2, 1), Ok((1, 3)));
    h.produce(9, produce_request("t", 0, batch(&["four"]), -1));
    assert_eq!(offset_for_leader_epoch(&mut h, "t", 1), (1, 3));
    assert_eq!(offset_for_leader_epoch(&mut h, "t", 2), (2, 4));

    // The first batch's leader epoch rots to 5: past the latest epoch the node knows, and the
    // second batch's 0 (synced, below the recovery point) would go back from it.
    let mut disk = three_batches_in_topic_t();
    let segment = disk.contents_mut("t-0/00000000000000000000.log").unwrap();
    segment[15] = 5;
    disk.sync_all();
    let (_, events) = Harness::new(disk);
    assert!(
        matches!(&events[..], [RecoveryEvent::Offline { reason, .. }] if reason.contains("leader epoch 5")),
        "{events:?}"
    );
}

/// The vote table survives failed syncs followed by restarts, of the process alone (the page
/// cache, with what never reached the disk, stays) or of the machine (unsynced writes torn):
/// no durable vote is ever lost. (The simulator found two ways to lose one with two fixed
/// copies written in turn, in seeds 253190171281626 and 253772172470587: every group's epoch
/// went back, and a new leader appended below its log's epochs or its log went offline.)
#[test]
fn the_vote_table_never_loses_a_durable_vote_to_failed_syncs_and_restarts() {
    use keel_core::partition::votes::VoteStore;
    use keel_core::raft::wire::GroupId;
    use keel_core::raft::Persisted;
    use keel_sim::disk::DiskFaults;

    // Enough groups that a table spans many sectors, each torn on its own.
    let groups: Vec<GroupId> = (0..64)
        .map(|partition| GroupId {
            topic_id: [9; 16],
            partition,
        })
        .collect();
    let write_epoch = |votes: &mut VoteStore, disk: &mut SimDisk, epoch: i32, sync: bool| {
        for group in &groups {
            let persisted = Persisted {
                epoch,
                voted_for: Some(1),
            };
            votes.set(*group, persisted);
        }
        let (files, _) = votes.begin_sync(disk).unwrap().expect("changed");
        if sync {
            for file in files {
                let pending = disk.begin_sync(file).unwrap();
                disk.finish_sync(pending).unwrap();
            }
            votes.synced(disk).unwrap();
        }
    };
    // Each seed is a schedule: which failed writes a restart of the process alone follows
    // (rather than a crash of the machine), and whether some writes complete in between.
    for seed in 0..64u64 {
        let faults = DiskFaults {
            torn_write_probability: 0.5,
            ..DiskFaults::default()
        };
        let mut disk = SimDisk::with_faults(seed, faults);
        let mut votes = VoteStore::recover(&mut disk).unwrap();
        write_epoch(&mut votes, &mut disk, 1, true);
        write_epoch(&mut votes, &mut disk, 2, true);
        let mut durable = 2;
        let mut next = 3;
        for step in 0..6 {
            // A write whose sync fails (or never comes), then a restart.
            write_epoch(&mut votes, &mut disk, next, false);
            next += 1;
            if seed >> step & 1 == 1 {
                disk.close_all();
            } else {
                disk.crash();
            }
            votes = VoteStore::recover(&mut disk).unwrap();
            let found = votes.get(&groups[0]).epoch;
            assert!(
                found >= durable,
                "seed {seed}: the durable epoch {durable} was lost ({found})"
            );
            for group in &groups {
                assert_eq!(votes.get(group).epoch, found, "one table, whole");
            }
            if seed % 3 == 0 {
                // Now and then a write that completes.
                durable = next;
                next += 1;
                write_epoch(&mut votes, &mut disk, durable, true);
            }
        }
    }
}

/// A node registers itself with its metadata quorum (of one): clients are told its rack.
#[test]
fn the_broker_s_rack_is_registered_and_reported() {
    let config = Config {
        rack: Some("eu-west-1a".into()),
        ..Config::default()
    };
    let (mut h, _) = Harness::with(config, SimDisk::new(), true);
    h.create_topic("t");
    let Response::Metadata(m) = h.call(12, metadata_request("t")) else {
        panic!()
    };
    assert_eq!(m.brokers[0].rack.as_deref(), Some("eu-west-1a"));
    let Response::DescribeCluster(d) = h.call(0, Request::DescribeCluster(Default::default()))
    else {
        panic!()
    };
    assert_eq!(d.brokers[0].rack.as_deref(), Some("eu-west-1a"));
    assert_eq!(d.controller_id, 1);
    assert_eq!(
        h.node.metadata_image().brokers()[&1].rack.as_deref(),
        Some("eu-west-1a"),
        "in the image, not only the configuration"
    );
}

/// Topic configs given at creation are recorded by the metadata quorum: reported by
/// CreateTopics and DescribeConfigs (as the topic's, not defaults), `max.message.bytes`
/// enforced for that topic; a config Keel cannot honour is refused with INVALID_CONFIG.
#[test]
fn topic_configs_are_recorded_honoured_or_refused() {
    use keel_core::protocol::messages::create_topics_request::{
        CreatableTopic, CreatableTopicConfig,
    };
    use keel_core::protocol::messages::describe_configs_request::DescribeConfigsResource;
    let (mut h, _) = Harness::new(SimDisk::new());
    let create = |name: &str, configs: &[(&str, &str)]| {
        Request::CreateTopics(CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: name.into(),
                num_partitions: 1,
                replication_factor: -1,
                configs: (configs.iter())
                    .map(|(k, v)| CreatableTopicConfig {
                        name: k.to_string(),
                        value: Some(v.to_string()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            timeout_ms: 1_000,
            ..Default::default()
        })
    };
    let Response::CreateTopics(r) = h.call(
        5,
        create(
            "t",
            &[("max.message.bytes", "200"), ("retention.ms", "3600000")],
        ),
    ) else {
        panic!()
    };
    assert_eq!(r.topics[0].error_code, codes::NONE, "{r:?}");
    let reported: Vec<(String, Option<String>)> = (r.topics[0].configs.iter().flatten())
        .map(|c| (c.name.clone(), c.value.clone()))
        .collect();
    assert_eq!(
        reported,
        vec![
            ("max.message.bytes".to_string(), Some("200".to_string())),
            ("retention.ms".to_string(), Some("3600000".to_string()))
        ]
    );
    for (configs, why) in [
        (
            vec![("cleanup.policy", "compact,shred")],
            "an unknown policy",
        ),
        (vec![("no.such.config", "1")], "unknown"),
        (
            vec![("min.insync.replicas", "2")],
            "more than a majority of one replica",
        ),
    ] {
        let Response::CreateTopics(r) = h.call(5, create("refused", &configs)) else {
            panic!()
        };
        assert_eq!(r.topics[0].error_code, codes::INVALID_CONFIG, "{why}");
    }
    let Response::DescribeConfigs(d) = h.call(
        4,
        Request::DescribeConfigs(DescribeConfigsRequest {
            resources: vec![DescribeConfigsResource {
                resource_type: 2,
                resource_name: "t".into(),
                configuration_keys: Some(vec![
                    "max.message.bytes".into(),
                    "retention.bytes".into(),
                ]),
                ..Default::default()
            }],
            ..Default::default()
        }),
    ) else {
        panic!()
    };
    let entries: Vec<(String, Option<String>, i8)> = (d.results[0].configs.iter())
        .map(|c| (c.name.clone(), c.value.clone(), c.config_source))
        .collect();
    assert_eq!(
        entries,
        vec![
            ("max.message.bytes".to_string(), Some("200".to_string()), 1),
            ("retention.bytes".to_string(), Some("-1".to_string()), 5)
        ]
    );
    // The topic's own maximum: a batch of 300 bytes is refused there, not elsewhere.
    let big = "x".repeat(300);
    let p = h.produce(9, produce_request("t", 0, batch(&[&big]), 1));
    assert_eq!(p.error_code, codes::MESSAGE_TOO_LARGE);
    h.create_topic("u");
    let p = h.produce(9, produce_request("u", 0, batch(&[&big]), 1));
    assert_eq!(p.error_code, codes::NONE);
}

/// The node counts what it served (requests and how long they took on the time it is given,
/// bytes, each partition's offsets) and answers DescribeQuorum for a partition it leads and
/// for the metadata quorum, and refuses partitions it does not hold.
#[test]
fn metrics_count_what_was_served_and_describe_quorum_names_the_leader() {
    use keel_core::protocol::messages::describe_quorum_request::{PartitionData, TopicData};
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("orders");
    let before = h.node.metrics(h.now);
    let records = batch(&["a", "b"]);
    h.auto_sync = false;
    h.send(1, 9, produce_request("orders", 0, records.clone(), -1));
    h.now = h.now.plus_millis(3);
    h.complete_syncs();
    h.auto_sync = true;
    let Some(Response::Produce(_)) = h.take_response(1, ApiKey::Produce, 9) else {
        panic!("answered once synced")
    };
    assert_eq!(fetch_values(&mut h, "orders", 0).1, ["a", "b"]);
    let after = h.node.metrics(h.now);

    let produce = &after.counters.requests[&ApiKey::Produce];
    let produced_before = before.counters.requests.get(&ApiKey::Produce);
    assert_eq!(
        produce.requests,
        1 + produced_before.map_or(0, |r| r.requests)
    );
    assert_eq!(produce.duration.count(), produce.requests);
    assert!(
        produce.duration.sum_ns() >= 3_000_000,
        "3 ms waiting for its sync"
    );
    assert_eq!(after.counters.requests[&ApiKey::Fetch].requests, 1);
    assert!(after.counters.client_bytes_received > before.counters.client_bytes_received);
    assert!(after.counters.client_bytes_sent > before.counters.client_bytes_sent);
    assert!(
        after.counters.sync_round_duration.count() > before.counters.sync_round_duration.count()
    );
    assert_eq!((after.client_connections, after.controller), (1, Some(1)));
    let orders = (after.partitions.iter())
        .find(|p| p.topic == "orders")
        .unwrap();
    assert_eq!(
        (orders.log_end_offset, orders.high_watermark),
        (Some(2), Some(2))
    );
    assert_eq!((orders.leader, orders.is_leader), (Some(1), true));
    assert_eq!((orders.replicas, orders.in_sync_replicas), (1, Some(1)));
    assert!(orders.followers.is_empty());
    assert_eq!(orders.counters.produce_bytes, records.len() as u64);
    assert_eq!(orders.counters.fetch_bytes, records.len() as u64);
    assert_eq!(orders.counters.leaderships_won, 1);
    assert!(after.partitions.iter().any(|p| p.topic == METADATA_TOPIC));

    let ask = |topic: &str, partitions: &[i32]| TopicData {
        topic_name: topic.into(),
        partitions: (partitions.iter())
            .map(|p| PartitionData {
                partition_index: *p,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let request = Request::DescribeQuorum(DescribeQuorumRequest {
        topics: vec![
            ask("orders", &[0, 5]),
            ask(METADATA_TOPIC, &[0]),
            ask("nothing", &[0]),
        ],
        ..Default::default()
    });
    let Response::DescribeQuorum(r) = h.call(2, request) else {
        panic!("a DescribeQuorum answer")
    };
    assert_eq!(r.error_code, codes::NONE);
    let orders = &r.topics[0].partitions;
    assert_eq!(
        (orders[0].error_code, orders[0].leader_id),
        (codes::NONE, 1)
    );
    assert_eq!(orders[0].high_watermark, 2);
    let voter = &orders[0].current_voters[..];
    assert_eq!(voter.len(), 1);
    assert_eq!((voter[0].replica_id, voter[0].log_end_offset), (1, 2));
    assert_eq!(
        voter[0].last_fetch_timestamp,
        h.now.as_millis(),
        "a leader fetches now"
    );
    assert_eq!(orders[1].error_code, codes::UNKNOWN_TOPIC_OR_PARTITION);
    assert!(orders[1].error_message.is_some());
    let metadata = &r.topics[1].partitions[0];
    assert_eq!((metadata.error_code, metadata.leader_id), (codes::NONE, 1));
    assert_eq!(
        r.topics[2].partitions[0].error_code,
        codes::UNKNOWN_TOPIC_OR_PARTITION
    );
    // (v2) Where the leader is reached.
    assert_eq!(r.nodes.len(), 1);
    assert_eq!(r.nodes[0].node_id, 1);
    assert_eq!(r.nodes[0].listeners[0].port, 9092);
}

/// A DescribeQuorum naming more partitions than a node can hold is refused (its answer
/// would dwarf the request), and the connection closed.
#[test]
fn describe_quorum_past_the_maximum_closes_the_connection() {
    use keel_core::protocol::messages::describe_quorum_request::{PartitionData, TopicData};
    let (mut h, _) = Harness::new(SimDisk::new());
    let partitions = (0..=keel_core::limits::DESCRIBE_QUORUM_PARTITIONS_MAX as i32)
        .map(|p| PartitionData {
            partition_index: p,
            ..Default::default()
        })
        .collect();
    h.send(
        1,
        2,
        Request::DescribeQuorum(DescribeQuorumRequest {
            topics: vec![TopicData {
                topic_name: "t".into(),
                partitions,
                ..Default::default()
            }],
            ..Default::default()
        }),
    );
    assert_eq!(h.closed, [1]);
    assert!(h.take_response(1, ApiKey::DescribeQuorum, 2).is_none());
}

fn alter_incrementally(
    h: &mut Harness,
    topic: &str,
    ops: &[(&str, i8, Option<&str>)],
    validate_only: bool,
) -> (i16, Option<String>) {
    use keel_core::protocol::messages::incremental_alter_configs_request::*;
    let Response::IncrementalAlterConfigs(r) = h.call(
        1,
        Request::IncrementalAlterConfigs(IncrementalAlterConfigsRequest {
            resources: vec![AlterConfigsResource {
                resource_type: 2,
                resource_name: topic.into(),
                configs: (ops.iter())
                    .map(|(name, op, value)| AlterableConfig {
                        name: name.to_string(),
                        config_operation: *op,
                        value: value.map(str::to_string),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            validate_only,
            ..Default::default()
        }),
    ) else {
        panic!()
    };
    let result = &r.responses[0];
    (result.error_code, result.error_message.clone())
}

/// (value, source, synonyms as (name, source)) of `key` for `topic`.
fn described(h: &mut Harness, topic: &str, key: &str) -> (Option<String>, i8, Vec<(String, i8)>) {
    use keel_core::protocol::messages::describe_configs_request::DescribeConfigsResource;
    let Response::DescribeConfigs(d) = h.call(
        4,
        Request::DescribeConfigs(DescribeConfigsRequest {
            resources: vec![DescribeConfigsResource {
                resource_type: 2,
                resource_name: topic.into(),
                configuration_keys: Some(vec![key.into()]),
                ..Default::default()
            }],
            include_synonyms: true,
            ..Default::default()
        }),
    ) else {
        panic!()
    };
    let entry = &d.results[0].configs[0];
    let synonyms = (entry.synonyms.iter())
        .map(|s| (s.name.clone(), s.source))
        .collect();
    (entry.value.clone(), entry.config_source, synonyms)
}

/// IncrementalAlterConfigs sets, deletes, appends to and subtracts from a topic's configs,
/// which DescribeConfigs then reports with their sources and synonyms; bad values, unknown
/// keys and list operations on plain values are refused with INVALID_CONFIG naming the key;
/// validate_only changes nothing; AlterConfigs replaces the whole set.
#[test]
fn topic_configs_change_incrementally_and_describe_with_synonyms() {
    const SET: i8 = 0;
    const DELETE: i8 = 1;
    const APPEND: i8 = 2;
    const SUBTRACT: i8 = 3;
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    let ok = (codes::NONE, None);
    let set = [
        ("retention.ms", SET, Some("1000")),
        ("cleanup.policy", APPEND, Some("compact")),
    ];
    assert_eq!(alter_incrementally(&mut h, "t", &set, false), ok);
    assert_eq!(
        described(&mut h, "t", "retention.ms"),
        (
            Some("1000".into()),
            1,
            vec![("retention.ms".into(), 1), ("log.retention.ms".into(), 5)]
        )
    );
    assert_eq!(
        described(&mut h, "t", "cleanup.policy").0.as_deref(),
        Some("compact,delete")
    );
    let subtract = [("cleanup.policy", SUBTRACT, Some("delete"))];
    assert_eq!(alter_incrementally(&mut h, "t", &subtract, false), ok);
    assert_eq!(
        described(&mut h, "t", "cleanup.policy").0.as_deref(),
        Some("compact")
    );
    let delete = [("retention.ms", DELETE, None)];
    assert_eq!(alter_incrementally(&mut h, "t", &delete, false), ok);
    assert_eq!(
        described(&mut h, "t", "retention.ms"),
        (
            Some("604800000".into()),
            5,
            vec![("log.retention.ms".into(), 5)]
        )
    );
    for (ops, key) in [
        (vec![("retention.ms", SET, Some("soon"))], "retention.ms"),
        (vec![("retention.msx", SET, Some("1"))], "retention.msx"),
        (vec![("retention.ms", APPEND, Some("1"))], "retention.ms"),
        (
            vec![("cleanup.policy", SUBTRACT, Some("compact"))],
            "cleanup.policy",
        ),
    ] {
        let (code, message) = alter_incrementally(&mut h, "t", &ops, false);
        assert_eq!(code, codes::INVALID_CONFIG, "{ops:?}");
        assert!(message.unwrap_or_default().contains(key), "{ops:?}");
    }
    let dry = [("segment.ms", SET, Some("5000"))];
    assert_eq!(alter_incrementally(&mut h, "t", &dry, true), ok);
    assert_eq!(
        described(&mut h, "t", "segment.ms").0.as_deref(),
        Some("604800000"),
        "validate_only changes nothing"
    );
    assert_eq!(
        alter_incrementally(&mut h, "nope", &dry, false).0,
        codes::UNKNOWN_TOPIC_OR_PARTITION
    );
    {
        use keel_core::protocol::messages::alter_configs_request::*;
        let Response::AlterConfigs(r) = h.call(
            1,
            Request::AlterConfigs(AlterConfigsRequest {
                resources: vec![AlterConfigsResource {
                    resource_type: 2,
                    resource_name: "t".into(),
                    configs: vec![AlterableConfig {
                        name: "max.message.bytes".into(),
                        value: Some("5000".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
        ) else {
            panic!()
        };
        assert_eq!(r.responses[0].error_code, codes::NONE);
    }
    assert_eq!(
        described(&mut h, "t", "cleanup.policy").0.as_deref(),
        Some("delete"),
        "AlterConfigs replaces the whole set"
    );
    assert_eq!(
        described(&mut h, "t", "max.message.bytes").0.as_deref(),
        Some("5000")
    );
}

fn delete_records(h: &mut Harness, topic: &str, offset: i64) -> (i64, i16) {
    use keel_core::protocol::messages::delete_records_request::*;
    let Response::DeleteRecords(r) = h.call(
        2,
        Request::DeleteRecords(DeleteRecordsRequest {
            topics: vec![DeleteRecordsTopic {
                name: topic.into(),
                partitions: vec![DeleteRecordsPartition {
                    partition_index: 0,
                    offset,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            timeout_ms: 1_000,
            ..Default::default()
        }),
    ) else {
        panic!()
    };
    let p = &r.topics[0].partitions[0];
    (p.low_watermark, p.error_code)
}

/// Retention deletes whole segments whose newest record is past retention.ms, below the high
/// watermark and never the active one; the log start moves, survives a restart, and reads
/// below it are OFFSET_OUT_OF_RANGE while ListOffsets earliest names it.
#[test]
fn retention_deletes_old_segments_and_the_start_survives_a_restart() {
    let mut config = Config::default();
    config.topic_defaults.segment_bytes = 64;
    config.retention_check_interval_ms = 1_000;
    let (mut h, _) = Harness::with(config.clone(), SimDisk::new(), true);
    h.create_topic("t");
    let now_ms = h.now.as_millis();
    for (i, age_ms) in [10_000_000, 10_000_000, 10_000_000, 0, 0]
        .into_iter()
        .enumerate()
    {
        let options = BatchOptions {
            base_timestamp: now_ms - age_ms,
            ..Default::default()
        };
        let p = h.produce(
            9,
            produce_request("t", 0, batch_with(&[&format!("v{i}")], &options), -1),
        );
        assert_eq!(p.error_code, codes::NONE);
    }
    let set = [("retention.ms", 0, Some("3600000"))];
    assert_eq!(alter_incrementally(&mut h, "t", &set, false).0, codes::NONE);
    assert_eq!(list_offset(&mut h, "t", -2).offset, 0);
    h.now = h.now.plus_millis(1_500);
    h.step(Input::Timeout);
    assert_eq!(
        list_offset(&mut h, "t", -2).offset,
        3,
        "three old segments gone"
    );
    assert_eq!(fetch_values(&mut h, "t", 2).0, codes::OFFSET_OUT_OF_RANGE);
    assert_eq!(
        fetch_values(&mut h, "t", 3),
        (codes::NONE, vec!["v3".into()])
    );
    // The files go once the start is durable.
    h.now = h.now.plus_millis(1_500);
    h.step(Input::Timeout);
    let segments = |disk: &SimDisk| -> Vec<String> {
        (disk.names().into_iter())
            .filter(|n| n.starts_with("t-0/") && n.ends_with(".log"))
            .collect()
    };
    let disk = h.node.into_disk();
    assert_eq!(segments(&disk).len(), 2, "{:?}", segments(&disk));
    let (mut h, _) = Harness::with(config, disk, true);
    h.now = h.now.plus_millis(3_000);
    h.step(Input::Timeout);
    assert_eq!(list_offset(&mut h, "t", -2).offset, 3);
    assert_eq!(fetch_values(&mut h, "t", 1).0, codes::OFFSET_OUT_OF_RANGE);
}

/// retention.bytes keeps the newest segments that fit, dropping whole segments oldest first.
#[test]
fn retention_bytes_keeps_the_newest_segments() {
    let mut config = Config::default();
    config.topic_defaults.segment_bytes = 64;
    config.topic_defaults.retention_bytes = 200;
    config.retention_check_interval_ms = 1_000;
    let (mut h, _) = Harness::with(config, SimDisk::new(), true);
    h.create_topic("t");
    let options = BatchOptions {
        base_timestamp: h.now.as_millis(),
        ..Default::default()
    };
    for i in 0..10 {
        let records = batch_with(&[&format!("v{i}")], &options);
        h.produce(9, produce_request("t", 0, records, -1));
    }
    h.now = h.now.plus_millis(1_500);
    h.step(Input::Timeout);
    let start = list_offset(&mut h, "t", -2).offset;
    // Each one-record batch is 70 bytes: 200 bytes hold the active segment and two more.
    assert_eq!(start, 7, "segments whose loss leaves at least 200 bytes go");
    assert_eq!(fetch_values(&mut h, "t", 7).1, vec!["v7"]);
    assert_eq!(fetch_values(&mut h, "t", 6).0, codes::OFFSET_OUT_OF_RANGE);
}

/// DeleteRecords moves the start to an offset at or below the high watermark (-1: the high
/// watermark), once its marker commits; reads below it are refused; the start survives a
/// restart; offsets past the high watermark are OFFSET_OUT_OF_RANGE; a compacted topic
/// refuses it.
#[test]
fn delete_records_moves_the_start_durably() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    for i in 0..4 {
        h.produce(9, produce_request("t", 0, batch(&[&format!("v{i}")]), -1));
    }
    assert_eq!(delete_records(&mut h, "t", 2), (2, codes::NONE));
    assert_eq!(list_offset(&mut h, "t", -2).offset, 2);
    assert_eq!(fetch_values(&mut h, "t", 1).0, codes::OFFSET_OUT_OF_RANGE);
    assert_eq!(
        fetch_values(&mut h, "t", 2).1,
        vec!["v2", "v3"],
        "the marker is skipped"
    );
    assert_eq!(
        delete_records(&mut h, "t", 99).1,
        codes::OFFSET_OUT_OF_RANGE
    );
    assert_eq!(
        delete_records(&mut h, "t", 1),
        (2, codes::NONE),
        "never back"
    );
    let disk = h.node.into_disk();
    let (mut h, _) = Harness::with(Config::default(), disk, true);
    assert_eq!(list_offset(&mut h, "t", -2).offset, 2);
    let (end, code) = delete_records(&mut h, "t", -1);
    assert_eq!(code, codes::NONE);
    assert_eq!(
        end,
        list_offset(&mut h, "t", -1).offset - 1,
        "the high watermark (before the marker)"
    );
    assert_eq!(fetch_values(&mut h, "t", end).1, Vec::<String>::new());
    let set = [("cleanup.policy", 0, Some("compact"))];
    assert_eq!(alter_incrementally(&mut h, "t", &set, false).0, codes::NONE);
    assert_eq!(delete_records(&mut h, "t", 0).1, codes::POLICY_VIOLATION);
}

/// message.timestamp.type=LogAppendTime: the leader stamps each batch with its clock (the
/// produce answer says when); Metadata reports every operation as authorized when asked, as
/// a broker without an authorizer does.
#[test]
fn log_append_time_is_the_leader_s_and_every_operation_is_authorized() {
    let (mut h, _) = Harness::new(SimDisk::new());
    h.create_topic("t");
    let set = [("message.timestamp.type", 0, Some("LogAppendTime"))];
    assert_eq!(alter_incrementally(&mut h, "t", &set, false).0, codes::NONE);
    let options = BatchOptions {
        base_timestamp: 1_000,
        ..Default::default()
    };
    let p = h.produce(9, produce_request("t", 0, batch_with(&["a"], &options), -1));
    assert_eq!(p.error_code, codes::NONE);
    assert_eq!(p.log_append_time_ms, h.now.as_millis());
    let Response::Fetch(fetch) = h.call(11, fetch_request("t", 0, 0)) else {
        panic!()
    };
    let records = fetch.responses[0].partitions[0].records.clone().unwrap();
    let batch =
        RecordBatch::parse(record::split_batches(records).next().unwrap().unwrap()).unwrap();
    assert!(batch.header().is_log_append_time());
    assert_eq!(batch.header().max_timestamp, h.now.as_millis());
    let Response::Metadata(m) = h.call(
        12,
        Request::Metadata(MetadataRequest {
            topics: Some(vec![MetadataRequestTopic {
                name: Some("t".into()),
                ..Default::default()
            }]),
            include_topic_authorized_operations: true,
            ..Default::default()
        }),
    ) else {
        panic!()
    };
    // Read, write, create, delete, alter, describe, describe and alter configs.
    assert_eq!(m.topics[0].topic_authorized_operations, 0b1101_1111_1000);
}
