//! Three real `keel` processes on loopback, replicating over their peer links: a topic with
//! replication factor 3 keeps every acknowledged record through a SIGKILL of a leader, while
//! an idempotent librdkafka producer carries on.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start_cluster, temp_dir};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const TOPIC: &str = "replicated";
const PARTITIONS: i32 = 6;
const RECORDS: usize = 3_000;
/// Bound on every wait in this test.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Every acknowledged record: (partition, offset, value).
struct AckLog(Arc<Mutex<Vec<(i32, i64, String)>>>);

impl ClientContext for AckLog {}

impl ProducerContext for AckLog {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            self.0
                .lock()
                .unwrap()
                .push((m.partition(), m.offset(), value));
        }
    }
}

/// The current leader of `partition`, as the cluster reports it (none while electing).
fn leader_of(producer: &BaseProducer<AckLog>, partition: i32) -> Option<i32> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
        .ok()?;
    let topic = metadata.topics().iter().find(|t| t.name() == TOPIC)?;
    let p = topic.partitions().iter().find(|p| p.id() == partition)?;
    (p.leader() > 0).then_some(p.leader())
}

/// A producer with acks=all and idempotence writes while the leader of partition 0 is
/// SIGKILLed and, later, restarted: every acknowledged record is read back exactly once, at
/// the offset it was acknowledged at, in send order per partition.
#[test]
fn acknowledged_records_survive_a_leader_s_sigkill() {
    let dir = temp_dir("cluster-kill");
    let mut nodes = start_cluster(&dir, 3);
    let bootstrap: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let bootstrap = bootstrap.join(",");
    let logs = |nodes: &[common::Broker]| -> String {
        nodes
            .iter()
            .map(|n| n.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        // The first answers may come before the quorum has a controller: ask again.
        let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let result = runtime
            .block_on(admin.create_topics([&topic], &options))
            .map(|mut r| r.remove(0));
        match result {
            Ok(Ok(_)) => break,
            Ok(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => break,
            other => {
                assert!(started.elapsed() < TIMEOUT, "{other:?}\n{}", logs(&nodes));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    let acked = Arc::new(Mutex::new(Vec::new()));
    let producer: BaseProducer<AckLog> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create_with_context(AckLog(acked.clone()))
        .expect("producer");
    let mut killed = None;
    let mut sent_at = BTreeMap::new();
    for i in 0..RECORDS {
        let partition = (i % PARTITIONS as usize) as i32;
        let value = format!("record-{i:06}");
        let mut record = BaseRecord::<(), _>::to(TOPIC)
            .partition(partition)
            .payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    assert!(started.elapsed() < TIMEOUT, "cannot send\n{}", logs(&nodes));
                    producer.poll(Duration::from_millis(10));
                    record = returned;
                }
            }
        }
        sent_at.insert(value, i);
        producer.poll(Duration::ZERO);
        if i == RECORDS / 3 {
            let _ = producer.flush(Duration::from_secs(30));
            let leader = leader_of(&producer, 0).expect("partition 0 has a leader");
            println!("killing node {leader}, the leader of partition 0");
            nodes[leader as usize - 1].kill();
            killed = Some(leader);
        }
        if i == 2 * RECORDS / 3 {
            let leader = killed.take().expect("killed before");
            nodes[leader as usize - 1].restart();
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    producer
        .flush(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("every record resolved: {e}\n{}", logs(&nodes)));
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() == RECORDS,
        "an idempotent producer with retries delivers everything: {} of {RECORDS}",
        acked.len()
    );

    // Read everything back from the beginning of each partition.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "keel-cluster-tests")
        .set("enable.auto.commit", "false")
        .set("check.crcs", "true")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut consumed: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let mut total = 0;
    let mut quiet_since = Instant::now();
    while total < RECORDS || quiet_since.elapsed() < Duration::from_secs(2) {
        assert!(
            started.elapsed() < 2 * TIMEOUT,
            "read back {total} of {RECORDS}\n{}",
            logs(&nodes)
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(message) = message else { continue };
        quiet_since = Instant::now();
        let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
        consumed
            .entry(message.partition())
            .or_default()
            .push((message.offset(), value));
        total += 1;
    }
    let mut expected: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (partition, offset, value) in acked {
        expected.entry(partition).or_default().push((offset, value));
    }
    for records in expected.values_mut() {
        records.sort();
    }
    for (partition, records) in &expected {
        let order: Vec<usize> = records.iter().map(|(_, v)| sent_at[v]).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "partition {partition}: acknowledged in send order"
        );
    }
    assert!(
        consumed == expected,
        "every acknowledged record read back exactly once, at its offset\n{}",
        logs(&nodes)
    );
}

/// A node started on a data directory that another node id (or cluster) wrote refuses to
/// start, naming the mismatch.
#[test]
fn a_data_directory_of_another_node_is_refused() {
    let dir = temp_dir("identity");
    let data = dir.join("data");
    let mut broker = common::Broker::start(&data, &["--node-id", "1"]);
    assert!(broker.terminate().success(), "{}", broker.log());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "2",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("keel runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("belongs to node 1, not node 2"), "{stderr}");
}
