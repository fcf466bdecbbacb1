//! librdkafka (through the `rdkafka` crate) against a real `keel serve`: every compression
//! codec, a SIGKILL in the middle of acknowledged writes, torn and corrupted segment files,
//! and hostile bytes on the wire.
// Real processes and librdkafka: not built for madsim (`--cfg madsim`).
#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{temp_dir, Broker};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
const RECORDS_PER_CODEC: usize = 100_000;
/// Bound on any wait for records in these tests.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(120);
const SEND_TIMEOUT: Duration = Duration::from_secs(120);

fn producer(broker: &Broker, extra: &[(&str, &str)]) -> BaseProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &broker.addr)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "60000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("producer")
}

fn consumer(broker: &Broker, topic: &str, partitions: i32) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "keel-tests")
        .set("enable.auto.commit", "false")
        .set("check.crcs", "true")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    consumer
}

/// (key, value, headers) of each consumed record, per partition.
type Consumed = BTreeMap<i32, Vec<(Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>)>>;

/// How long a consumer must find nothing more before the log counts as read to its end.
const END_QUIET: Duration = Duration::from_millis(1_000);

/// Everything in the log: at least `count` records, then on until nothing more arrives for
/// [`END_QUIET`], so that extra or duplicated records are returned too and callers that
/// compare with what they sent see them.
fn consume(consumer: &BaseConsumer, count: usize) -> Consumed {
    let mut consumed: Consumed = BTreeMap::new();
    let mut total = 0;
    let started = Instant::now();
    let mut last_record = Instant::now();
    while total < count || last_record.elapsed() < END_QUIET {
        assert!(
            started.elapsed() < CONSUME_TIMEOUT,
            "consumed only {total} of {count} records"
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        last_record = Instant::now();
        let message = message.expect("no consume error");
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        consumed.entry(message.partition()).or_default().push((
            message.key().unwrap_or_default().to_vec(),
            message.payload().unwrap_or_default().to_vec(),
            headers,
        ));
        total += 1;
    }
    consumed
}

fn send_all(producer: &BaseProducer, topic: &str, records: &[(i32, Vec<u8>, Vec<u8>)]) {
    let started = Instant::now();
    for (partition, key, value) in records {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "h",
                value: Some(&b"first"[..]),
            })
            .insert(Header {
                key: "h",
                value: Some(&b"second"[..]),
            });
        let mut record = BaseRecord::to(topic)
            .partition(*partition)
            .key(key)
            .payload(value)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((error, returned)) => {
                    // The local queue is full: serve delivery reports, then retry.
                    assert!(
                        started.elapsed() < SEND_TIMEOUT,
                        "could not send within {SEND_TIMEOUT:?}: {error}"
                    );
                    producer.poll(Duration::from_millis(10));
                    record = returned;
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("every record delivered");
}

#[test]
fn rdkafka_round_trips_100k_records_with_every_codec() {
    let dir = temp_dir("codecs");
    let broker = Broker::start(&dir.join("data"), &["--num-partitions", "4"]);
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        let records: Vec<(i32, Vec<u8>, Vec<u8>)> = (0..RECORDS_PER_CODEC)
            .map(|i| {
                let value = format!("{codec}-{i}-{}", "v".repeat(i % 97)).into_bytes();
                (
                    i as i32 % PARTITIONS,
                    format!("key-{i}").into_bytes(),
                    value,
                )
            })
            .collect();
        send_all(
            &producer(&broker, &[("compression.codec", codec)]),
            &topic,
            &records,
        );
        let consumed = consume(&consumer(&broker, &topic, PARTITIONS), records.len());
        for p in 0..PARTITIONS {
            let expected: Vec<_> = records
                .iter()
                .filter(|(rp, ..)| *rp == p)
                .map(|(_, k, v)| {
                    (
                        k.clone(),
                        v.clone(),
                        vec![
                            ("h".to_string(), b"first".to_vec()),
                            ("h".to_string(), b"second".to_vec()),
                        ],
                    )
                })
                .collect();
            assert_eq!(consumed[&p].len(), expected.len(), "{codec}: partition {p}");
            assert!(consumed[&p] == expected, "{codec}: partition {p} differs");
        }
    }
}

/// Records the value and offset of every acknowledged record.
/// (value, offset) of each acknowledged record, in acknowledgement order.
type Acks = Arc<Mutex<Vec<(Vec<u8>, i64)>>>;

struct AckLog(Acks);

impl ClientContext for AckLog {}

impl ProducerContext for AckLog {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(message) = result {
            self.0.lock().unwrap().push((
                message.payload().unwrap_or_default().to_vec(),
                message.offset(),
            ));
        }
    }
}

/// Every acknowledged record is there after a SIGKILL, once, at its offset, in order. A
/// SIGKILL ends the process, not the machine: the page cache keeps every write, so this
/// would pass without fsync. Power loss is the simulator's to test (`sim/`, `skip-fsync`).
#[test]
fn every_acknowledged_record_survives_a_sigkill() {
    let dir = temp_dir("sigkill");
    let mut broker = Broker::start(&dir.join("data"), &[]);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let producer: BaseProducer<AckLog> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "3000")
        .create_with_context(AckLog(acked.clone()))
        .expect("producer");
    // A kill point that differs from run to run; printed so a failure can be replayed.
    let kill_after_ms = 500 + (std::process::id() as u64 * 7919) % 1000;
    println!("killing the broker after {kill_after_ms} ms");
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_millis(kill_after_ms) {
        let value = format!("record-{sent:08}");
        if producer
            .send(
                BaseRecord::<(), _>::to("crash")
                    .partition(0)
                    .payload(&value),
            )
            .is_ok()
        {
            sent += 1;
        }
        producer.poll(Duration::ZERO);
    }
    broker.kill();
    // Let every outstanding record resolve (acked before the kill, or failed).
    let _ = producer.flush(Duration::from_secs(10));
    let acked = acked.lock().unwrap().clone();
    assert!(
        !acked.is_empty(),
        "some records were acknowledged before the kill ({sent} sent)"
    );
    broker.restart();
    let consumer = consumer(&broker, "crash", 1);
    let consumed = consume(&consumer, acked.len());
    // Records sent but not acknowledged may be there too: read to the end.
    let mut values: Vec<Vec<u8>> = consumed
        .into_values()
        .flatten()
        .map(|(_, v, _)| v)
        .collect();
    while let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
        values.push(m.payload().unwrap_or_default().to_vec());
    }
    let mut positions: std::collections::HashMap<&[u8], Vec<usize>> =
        std::collections::HashMap::new();
    for (i, v) in values.iter().enumerate() {
        positions.entry(v.as_slice()).or_default().push(i);
    }
    let mut last_position = None;
    for (value, offset) in &acked {
        let found = positions.get(value.as_slice()).cloned().unwrap_or_default();
        assert_eq!(
            found.len(),
            1,
            "acknowledged record {} (offset {offset}) is there exactly once",
            String::from_utf8_lossy(value)
        );
        assert_eq!(
            found[0] as i64, *offset,
            "at the offset it was acknowledged with"
        );
        assert!(last_position.is_none_or(|l| l < found[0]), "in send order");
        last_position = Some(found[0]);
    }
    println!(
        "{} sent, {} acknowledged, {} in the log after restart",
        sent,
        acked.len(),
        values.len()
    );
}

fn segment_file(data: &std::path::Path, topic: &str) -> std::path::PathBuf {
    data.join(format!("{topic}-0"))
        .join("00000000000000000000.log")
}

#[test]
fn a_torn_tail_is_cut_and_an_earlier_flipped_bit_takes_the_partition_offline() {
    let dir = temp_dir("damage");
    let data = dir.join("data");
    let mut broker = Broker::start(&data, &[]);
    let records: Vec<(i32, Vec<u8>, Vec<u8>)> = (0..50)
        .map(|i| {
            (
                0,
                format!("k{i}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    // One record per batch (linger 0), so there are many batches to damage.
    let p = producer(&broker, &[("linger.ms", "0"), ("batch.num.messages", "1")]);
    send_all(&p, "torn", &records);
    send_all(&p, "flipped", &records);
    drop(p);
    assert!(broker.terminate().success(), "SIGTERM exits 0");

    // A torn tail: half a batch after the last whole one, past the recovery point (as a
    // crash in the middle of an unsynced write leaves it). And a bit flipped in the first,
    // synced batch of the other topic.
    let torn = segment_file(&data, "torn");
    let whole = std::fs::read(&torn).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&torn)
        .unwrap();
    file.write_all(&whole[..40]).unwrap();
    drop(file);
    let flipped = segment_file(&data, "flipped");
    let mut bytes = std::fs::read(&flipped).unwrap();
    bytes[70] ^= 0x04;
    std::fs::write(&flipped, &bytes).unwrap();

    broker.restart();
    let consumed = consume(&consumer(&broker, "torn", 1), 50);
    assert_eq!(consumed[&0].len(), 50, "every record, nothing more");
    assert_eq!(
        consumed[&0].last().unwrap().1,
        b"v49",
        "recovered to the last whole batch"
    );
    assert_eq!(
        std::fs::metadata(&torn).unwrap().len(),
        whole.len() as u64,
        "the torn tail was cut"
    );
    let log = broker.log();
    assert!(
        log.contains("partition OFFLINE") && log.contains("CRC mismatch"),
        "the corruption is reported loudly:\n{log}"
    );
    assert_eq!(
        std::fs::read(&flipped).unwrap(),
        bytes,
        "a corrupt partition is never truncated"
    );
    let metadata = consumer(&broker, "torn", 1)
        .fetch_metadata(Some("flipped"), Duration::from_secs(10))
        .unwrap();
    let partition = &metadata.topics()[0].partitions()[0];
    assert!(
        partition.error().is_some(),
        "the partition reports an error"
    );
}

fn assert_closed(mut stream: TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

#[test]
fn hostile_bytes_close_only_their_connection() {
    let dir = temp_dir("hostile");
    let broker = Broker::start(&dir.join("data"), &[]);
    let p = producer(&broker, &[]);
    let records: Vec<_> = (0..100)
        .map(|i| (0, b"k".to_vec(), format!("before-{i}").into_bytes()))
        .collect();
    send_all(&p, "steady", &records);

    // The forged 14-byte Produce body claiming 54,265,856 topics.
    let mut stream = TcpStream::connect(&broker.addr).unwrap();
    let mut frame = vec![0, 0, 0, 24, 0, 0, 0, 3, 0, 0, 0, 7, 0xff, 0xff];
    frame.extend_from_slice(&[
        0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30, 0x03, 0x3c, 0x08, 0x00, 0, 0,
    ]);
    stream.write_all(&frame).unwrap();
    assert_closed(stream);

    // A frame longer than the maximum request size.
    let mut stream = TcpStream::connect(&broker.addr).unwrap();
    stream
        .write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0])
        .unwrap();
    assert_closed(stream);

    // Random bytes.
    let mut stream = TcpStream::connect(&broker.addr).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut noise_frame = 4092i32.to_be_bytes().to_vec();
    noise_frame.extend_from_slice(&noise[4..]);
    stream.write_all(&noise_frame).unwrap();
    assert_closed(stream);

    let records: Vec<_> = (0..100)
        .map(|i| (0, b"k".to_vec(), format!("after-{i}").into_bytes()))
        .collect();
    send_all(&p, "steady", &records);
    let consumed = consume(&consumer(&broker, "steady", 1), 200);
    assert_eq!(
        consumed[&0].len(),
        200,
        "the well-behaved producer was never disturbed"
    );
    assert!(
        broker.log().contains("bad request"),
        "the broker says why it closed"
    );
}

/// The broker's log goes to a file in these tests: it must hold text, not terminal colours.
#[test]
fn a_log_written_to_a_file_carries_no_colour_codes() {
    let dir = temp_dir("plain-log");
    let mut broker = Broker::start(&dir.join("data"), &[]);
    let status = broker.terminate();
    assert!(status.success(), "{status:?}");
    let log = broker.log();
    assert!(log.contains("keel is serving"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
}

/// A node whose process may open few files serves more partitions than it could keep open:
/// its disk closes files whose writes are synced and opens them again when they are used.
/// 256 descriptors leave 192 for files; 200 partitions have 600 (segment, recovery point,
/// metadata). Every partition is written, read back, and read back again after a restart,
/// whose recovery opens every file once more.
#[test]
fn more_partitions_than_open_files_are_served_through_a_budget_of_descriptors() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    const MANY: i32 = 200;
    let dir = temp_dir("few-files");
    let mut broker = Broker::start_with_open_files(&dir.join("data"), 256);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topic = NewTopic::new("many", MANY, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = runtime
        .block_on(admin.create_topics([&topic], &options))
        .expect("CreateTopics answered")
        .remove(0);
    assert!(created.is_ok(), "{created:?}\n{}", broker.log());
    let records: Vec<(i32, Vec<u8>, Vec<u8>)> = (0..3 * MANY)
        .map(|i| {
            (
                i % MANY,
                format!("k{i}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    send_all(&producer(&broker, &[]), "many", &records);
    let expected: BTreeMap<i32, Vec<Vec<u8>>> =
        records.iter().fold(BTreeMap::new(), |mut m, (p, _, v)| {
            m.entry(*p).or_default().push(v.clone());
            m
        });
    let values = |consumed: Consumed| -> BTreeMap<i32, Vec<Vec<u8>>> {
        (consumed.into_iter())
            .map(|(p, rs)| (p, rs.into_iter().map(|(_, v, _)| v).collect()))
            .collect()
    };
    let first = values(consume(&consumer(&broker, "many", MANY), records.len()));
    assert!(
        first == expected,
        "every partition reads back\n{}",
        broker.log()
    );
    assert!(broker.terminate().success(), "{}", broker.log());
    broker.restart();
    let again = values(consume(&consumer(&broker, "many", MANY), records.len()));
    assert!(
        again == expected,
        "and again after a restart\n{}",
        broker.log()
    );
    let status = broker.terminate();
    assert!(status.success(), "the node exits cleanly: {status:?}");
}

/// A node that must halt (here: its first sync round, which starts at once, cannot write a
/// recovery point, because the file is `/dev/full`) exits at once with a non-zero status,
/// rather than hang with its fsync thread or wait for a signal.
#[test]
fn a_node_that_must_halt_exits_non_zero_at_once() {
    let dir = temp_dir("halt");
    let data = dir.join("data");
    let mut broker = Broker::start(&data, &[]);
    let producer = producer(&broker, &[]);
    send_all(&producer, "full", &[(0, b"k".to_vec(), b"v".to_vec())]);
    drop(producer);
    assert!(broker.terminate().success());
    let recovery_point = data.join("full-0").join("recovery-point");
    std::fs::remove_file(&recovery_point).unwrap();
    std::os::unix::fs::symlink("/dev/full", &recovery_point).unwrap();
    let log = std::fs::File::create(dir.join("halt.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("a node that cannot sync did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(dir.join("halt.log")).unwrap();
    assert!(!status.success(), "{status:?}: {text}");
    assert!(text.contains("halting"), "{text}");
}
