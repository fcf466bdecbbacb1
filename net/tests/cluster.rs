//! Three real `keel` processes on loopback, replicating over their peer links: a topic with
//! replication factor 3 keeps every acknowledged record through a SIGKILL of a leader, while
//! an idempotent librdkafka producer carries on.
// Real processes and librdkafka: not built for madsim (`--cfg madsim`).
#![cfg(not(madsim))]

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

/// Acknowledged records: (partition, offset, value).
type Acked = Arc<Mutex<Vec<(i32, i64, String)>>>;

/// Logs every acknowledged record.
struct AckLog(Acked);

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

/// The nodes' client addresses, as a bootstrap list.
fn bootstrap_of(nodes: &[common::Broker]) -> String {
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    addrs.join(",")
}

/// Everything the nodes logged, for a failure's message.
fn logs(nodes: &[common::Broker]) -> String {
    let logs: Vec<String> = nodes.iter().map(|n| n.log()).collect();
    logs.join("\n----\n")
}

/// An acks=all producer that logs what is acknowledged into `acked`.
fn acked_producer(bootstrap: &str, acked: &Acked) -> BaseProducer<AckLog> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("message.timeout.ms", "60000")
        .create_with_context(AckLog(acked.clone()))
        .expect("producer")
}

/// Creates `topic` with three replicas, asking again while the cluster elects its first
/// controller.
fn create_topic(nodes: &[common::Broker], topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_of(nodes))
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(3));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let result = runtime
            .block_on(admin.create_topics([&new], &options))
            .map(|mut r| r.remove(0));
        match result {
            Ok(Ok(_)) | Ok(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => {
                return
            }
            other => {
                assert!(started.elapsed() < TIMEOUT, "{other:?}\n{}", logs(nodes));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// A producer with acks=all and idempotence writes while the leader of partition 0 is
/// SIGKILLed and, later, restarted: every acknowledged record is read back exactly once, at
/// the offset it was acknowledged at, in send order per partition.
#[test]
fn acknowledged_records_survive_a_leader_s_sigkill() {
    let dir = temp_dir("cluster-kill");
    let mut nodes = start_cluster(&dir, 3);
    let bootstrap = bootstrap_of(&nodes);

    let started = Instant::now();
    create_topic(&nodes, TOPIC, PARTITIONS);

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
            let leader = leader_of_topic(&producer, TOPIC, 0).expect("partition 0 has a leader");
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

/// With two of three nodes down, an acks=all write cannot commit: the producer gets a
/// retriable error (never success); once one node returns, writes succeed again.
#[test]
fn without_a_majority_writes_fail_retriably_and_resume_when_a_node_returns() {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let dir = temp_dir("cluster-majority");
    let mut nodes = start_cluster(&dir, 3);
    let bootstrap = bootstrap_of(&nodes);
    let producer = |timeout_ms: &str| -> rdkafka::producer::FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("message.timeout.ms", timeout_ms)
            .create()
            .expect("producer")
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let send = |producer: &rdkafka::producer::FutureProducer, value: &str| {
        let record = rdkafka::producer::FutureRecord::<(), _>::to("majority")
            .partition(0)
            .payload(value);
        runtime
            .block_on(producer.send(record, Duration::from_secs(0)))
            .map_err(|(error, _)| error)
    };
    // The topic is auto-created with three replicas; the first write may wait for that.
    let started = Instant::now();
    let first = producer("60000");
    assert!(
        send(&first, "before").is_ok(),
        "a healthy cluster takes a write\n{}",
        logs(&nodes)
    );
    // Two nodes down: whoever is left cannot commit.
    nodes[1].kill();
    nodes[2].kill();
    match send(&producer("4000"), "without-majority") {
        Ok(delivery) => panic!("acknowledged without a majority: {delivery:?}"),
        Err(KafkaError::MessageProduction(code)) => assert!(
            matches!(
                code,
                RDKafkaErrorCode::MessageTimedOut
                    | RDKafkaErrorCode::RequestTimedOut
                    | RDKafkaErrorCode::NotLeaderForPartition
                    | RDKafkaErrorCode::LeaderNotAvailable
                    | RDKafkaErrorCode::NotEnoughReplicas
                    | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
            ),
            "a retriable error, not {code:?}"
        ),
        Err(other) => panic!("a retriable error, not {other:?}"),
    }
    // One node back: a majority again, and writes go through.
    nodes[1].restart();
    let again = producer("60000");
    assert!(
        send(&again, "after").is_ok(),
        "writes resume with a majority\n{}",
        logs(&nodes)
    );
    assert!(started.elapsed() < TIMEOUT);
}

/// The leader of a partition is cut off from both its peers (through proxies on the peer
/// links) while a client on the majority's side keeps writing, and a client of the old
/// leader writes to it at once: the majority elects a new leader and takes its writes; the
/// old leader's appends never commit, and after the heal its uncommitted tail is cut. Every
/// acknowledged record is read back exactly once, and the three logs end byte for byte equal.
#[test]
fn a_leader_cut_off_from_its_peers_is_replaced_and_its_tail_repaired() {
    const CUT_TOPIC: &str = "cut";
    let dir = temp_dir("cluster-cut");
    let (mut nodes, proxies) = common::start_cluster_behind_proxies(&dir);
    let addr = |id: i32, nodes: &[common::Broker]| nodes[id as usize - 1].addr.clone();
    let all = bootstrap_of(&nodes);
    let started = Instant::now();
    create_topic(&nodes, CUT_TOPIC, 1);
    let producer = |bootstrap: &str, timeout_ms: &str, acked: &Arc<Mutex<Vec<_>>>| {
        let producer: BaseProducer<AckLog> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", timeout_ms)
            .create_with_context(AckLog(acked.clone()))
            .expect("producer");
        producer
    };
    let write = |producer: &BaseProducer<AckLog>, prefix: &str, count: usize| {
        for i in 0..count {
            let value = format!("{prefix}-{i:04}");
            let record = BaseRecord::<(), _>::to(CUT_TOPIC)
                .partition(0)
                .payload(&value);
            producer.send(record).expect("queued");
        }
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    let first = producer(&all, "60000", &acked);
    write(&first, "before", 50);
    first
        .flush(Duration::from_secs(60))
        .expect("written before the cut");
    let old = {
        let started = Instant::now();
        loop {
            if let Some(leader) = leader_of_topic(&first, CUT_TOPIC, 0) {
                break leader;
            }
            assert!(started.elapsed() < TIMEOUT, "no leader\n{}", logs(&nodes));
        }
    };
    println!("cutting node {old}, the leader, off its peers");
    for ((low, high), proxy) in &proxies {
        if *low == old || *high == old {
            proxy.cut();
        }
    }
    // At once, a client of the old leader writes: appended there, never committed.
    let stale_acked = Arc::new(Mutex::new(Vec::new()));
    let stale = producer(&addr(old, &nodes), "4000", &stale_acked);
    write(&stale, "stale", 20);
    // The majority's client writes through the new leader.
    let majority: Vec<String> = (1..=3)
        .filter(|id| *id != old)
        .map(|id| addr(id, &nodes))
        .collect();
    let during = producer(&majority.join(","), "60000", &acked);
    write(&during, "during", 50);
    if let Err(e) = during.flush(Duration::from_secs(60)) {
        let mut views = String::new();
        for node in &nodes {
            let one: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &node.addr)
                .create()
                .unwrap();
            let m = one
                .client()
                .fetch_metadata(Some(CUT_TOPIC), Duration::from_secs(5));
            let view = m.map(|m| {
                let brokers: Vec<i32> = m.brokers().iter().map(|b| b.id()).collect();
                let parts: Vec<String> = (m.topics().iter())
                    .flat_map(|t| t.partitions().iter())
                    .map(|p| {
                        format!(
                            "leader {} isr {:?} error {:?}",
                            p.leader(),
                            p.isr(),
                            p.error()
                        )
                    })
                    .collect();
                format!(
                    "brokers {brokers:?} controller {} {parts:?}",
                    m.orig_broker_id()
                )
            });
            views.push_str(&format!("{}: {view:?}\n", node.addr));
        }
        panic!("the majority takes writes: {e}\n{views}\n{}", logs(&nodes));
    }
    let _ = stale.flush(Duration::from_secs(10));
    for proxy in proxies.values() {
        proxy.heal();
    }
    // After the heal: one more write, and time for the old leader to catch up.
    let after = producer(&all, "60000", &acked);
    write(&after, "after", 50);
    after
        .flush(Duration::from_secs(60))
        .expect("written after the heal");
    let mut acked = acked.lock().unwrap().clone();
    acked.extend(stale_acked.lock().unwrap().iter().cloned());
    assert_eq!(
        acked
            .iter()
            .filter(|(_, _, v)| !v.starts_with("stale"))
            .count(),
        150
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &all)
        .set("group.id", "keel-cluster-cut")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(CUT_TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut consumed: Vec<(i64, String)> = Vec::new();
    let mut quiet_since = Instant::now();
    while consumed.len() < acked.len() || quiet_since.elapsed() < Duration::from_secs(2) {
        assert!(
            started.elapsed() < 2 * TIMEOUT,
            "read back {}\n{}",
            consumed.len(),
            logs(&nodes)
        );
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        quiet_since = Instant::now();
        let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
        consumed.push((message.offset(), value));
    }
    let mut expected: Vec<(i64, String)> = acked.into_iter().map(|(_, o, v)| (o, v)).collect();
    expected.sort();
    let read: Vec<&(i64, String)> = consumed
        .iter()
        .filter(|r| !r.1.starts_with("stale"))
        .collect();
    let wanted: Vec<&(i64, String)> = expected
        .iter()
        .filter(|r| !r.1.starts_with("stale"))
        .collect();
    assert_eq!(
        read, wanted,
        "every acknowledged record once, at its offset"
    );
    for record in expected.iter().filter(|r| r.1.starts_with("stale")) {
        assert!(
            consumed.contains(record),
            "an acknowledged stale write is there: {record:?}"
        );
    }
    // The three logs agree byte for byte once every node has stopped cleanly (after the old
    // leader, which redials its peers with a backoff, has caught up).
    drop(consumer);
    let log_bytes = |id: i32| -> u64 {
        let part = dir
            .join(format!("node-{id}"))
            .join(format!("{CUT_TOPIC}-0"));
        (std::fs::read_dir(&part).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    let caught_up = Instant::now();
    while !(log_bytes(1) == log_bytes(2) && log_bytes(2) == log_bytes(3)) {
        assert!(
            caught_up.elapsed() < Duration::from_secs(60),
            "the old leader catches up\n{}",
            logs(&nodes)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in &mut nodes {
        assert!(node.terminate().success(), "{}", node.log());
    }
    let segment = |id: i32| -> Vec<u8> {
        let part = dir
            .join(format!("node-{id}"))
            .join(format!("{CUT_TOPIC}-0"));
        let mut files: Vec<_> = std::fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| std::fs::read(f).unwrap())
            .collect()
    };
    let (one, two, three) = (segment(1), segment(2), segment(3));
    assert!(!one.is_empty());
    assert!(
        one == two && two == three,
        "the replicas' logs are equal after the heal"
    );
}

/// The current leader of `partition` of `topic`.
fn leader_of_topic(producer: &BaseProducer<AckLog>, topic: &str, partition: i32) -> Option<i32> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = metadata.topics().iter().find(|t| t.name() == topic)?;
    let p = t.partitions().iter().find(|p| p.id() == partition)?;
    (p.leader() > 0).then_some(p.leader())
}

/// SIGTERM on a leader hands its leaderships over before the process exits: the moment it
/// is gone, the other nodes already name a new leader (without the handover they would name
/// the stopped node until they stop hearing from it, a second later), and writes go on.
#[test]
fn sigterm_hands_leadership_over_before_exiting() {
    let dir = temp_dir("cluster-handover");
    let mut nodes = start_cluster(&dir, 3);
    let all = bootstrap_of(&nodes);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let producer = acked_producer(&all, &acked);
    let started = Instant::now();
    // The topic is auto-created (three replicas) by the first write.
    let record = BaseRecord::<(), _>::to("handover")
        .partition(0)
        .payload("first");
    producer.send(record).expect("queued");
    producer
        .flush(Duration::from_secs(60))
        .expect("first write");
    let leader = loop {
        if let Some(leader) = leader_of_topic(&producer, "handover", 0) {
            break leader;
        }
        assert!(started.elapsed() < TIMEOUT, "no leader\n{}", logs(&nodes));
    };
    println!("stopping node {leader}, the leader");
    assert!(
        nodes[leader as usize - 1].terminate().success(),
        "{}",
        logs(&nodes)
    );
    // Ask a survivor at once.
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let probe: BaseProducer<AckLog> = ClientConfig::new()
        .set("bootstrap.servers", &nodes[survivor as usize - 1].addr)
        .create_with_context(AckLog(Arc::new(Mutex::new(Vec::new()))))
        .expect("probe");
    let named = leader_of_topic(&probe, "handover", 0);
    assert!(
        named.is_some_and(|n| n != leader),
        "a new leader is named as the old one exits, not {named:?}\n{}",
        logs(&nodes)
    );
    let record = BaseRecord::<(), _>::to("handover")
        .partition(0)
        .payload("second");
    producer.send(record).expect("queued");
    producer
        .flush(Duration::from_secs(60))
        .expect("writes go on");
    assert_eq!(acked.lock().unwrap().len(), 2);
}

/// Strangers on the peer port are refused without harm to the cluster: garbage, a Kafka
/// client's request, a hello from another cluster, and a flood of bytes after a hello that
/// claims to be a member all lose their connection, and the cluster goes on taking writes.
#[test]
fn strangers_on_the_peer_port_are_refused_and_the_cluster_goes_on() {
    use std::io::{Read, Write};
    let dir = temp_dir("cluster-strangers");
    let (nodes, peers) = common::start_cluster_with_peers(&dir, 3);
    let all = bootstrap_of(&nodes);
    // Node 3 accepts links from nodes 1 and 2: knock on its door.
    let target = &peers[2];
    let closed = |mut stream: std::net::TcpStream| -> bool {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    };
    let hello = |cluster: &str, from: i32, to: i32| -> Vec<u8> {
        let mut out = b"KEELPEER".to_vec();
        out.extend_from_slice(&1u16.to_be_bytes());
        out.push(keel_core::raft::wire::PEER_WIRE_VERSION);
        out.extend_from_slice(&from.to_be_bytes());
        out.extend_from_slice(&to.to_be_bytes());
        out.push(cluster.len() as u8);
        out.extend_from_slice(cluster.as_bytes());
        out
    };
    let mut garbage = std::net::TcpStream::connect(target).unwrap();
    garbage.write_all(&[0xAB; 64]).unwrap();
    assert!(closed(garbage), "garbage is refused");
    let mut kafka = std::net::TcpStream::connect(target).unwrap();
    kafka
        .write_all(&[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0, 0])
        .unwrap();
    assert!(closed(kafka), "a Kafka request on the peer port is refused");
    let mut other = std::net::TcpStream::connect(target).unwrap();
    other.write_all(&hello("another-cluster", 1, 3)).unwrap();
    assert!(closed(other), "a node of another cluster is refused");
    // A hello as node 1, then a frame that claims to be larger than any frame may be.
    let mut flood = std::net::TcpStream::connect(target).unwrap();
    flood.write_all(&hello("keel-cluster", 1, 3)).unwrap();
    let mut reply = vec![0u8; 64];
    let _ = flood.read(&mut reply);
    flood.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let _ = flood.write_all(&[0u8; 65_536]);
    assert!(
        closed(flood),
        "a peer that sends an impossible frame is cut off"
    );
    let log = nodes[2].log();
    assert!(log.contains("peer connection refused"), "{log}");
    assert!(
        log.contains("another-cluster"),
        "the mismatch is named: {log}"
    );

    // The cluster still takes writes.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let producer = acked_producer(&all, &acked);
    let record = BaseRecord::<(), _>::to("strangers")
        .partition(0)
        .payload("still here");
    producer.send(record).expect("queued");
    producer
        .flush(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the cluster takes writes: {e}\n{}", logs(&nodes)));
    assert_eq!(acked.lock().unwrap().len(), 1);
}

/// Runs `keel cluster status` against `bootstrap`; its exit status, stdout and stderr.
fn cluster_status(bootstrap: &str) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "cluster",
            "status",
            "--bootstrap",
            bootstrap,
            "--timeout-ms",
            "2000",
        ])
        .output()
        .expect("keel runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The whitespace-separated cells of the first line of `text` that starts with `first`.
fn row<'a>(text: &'a str, first: &str) -> Option<Vec<&'a str>> {
    (text.lines())
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
}

/// `keel cluster status` names the three nodes (all reachable, one the controller), and
/// each partition's leader, its ISR of three and both followers' lag; a node that stops is
/// shown unreachable; a bootstrap nobody listens on fails with a message.
#[test]
fn cluster_status_shows_nodes_the_controller_and_partitions() {
    const STATUS_TOPIC: &str = "watched";
    let dir = temp_dir("cluster-status");
    let mut nodes = start_cluster(&dir, 3);
    create_topic(&nodes, STATUS_TOPIC, 3);
    let started = Instant::now();
    // Until every partition has a leader and its three replicas in sync (bounded).
    let text = loop {
        let (ok, text, stderr) = cluster_status(&nodes[0].addr);
        // TOPIC PARTITION LEADER EPOCH HIGH-WATERMARK REPLICAS ISR LAG (one cell per
        // follower).
        let complete = ok
            && (0..3).all(|p| {
                text.lines().any(|l| {
                    let cells: Vec<&str> = l.split_whitespace().collect();
                    cells.len() == 9
                        && cells[0] == STATUS_TOPIC
                        && cells[1] == p.to_string()
                        && cells[6] == "1,2,3"
                })
            })
            // Every row of the topic names its leader (one may be between leaders for a
            // moment while another row already shows the new one).
            && (text.lines())
                .filter(|l| l.starts_with(STATUS_TOPIC))
                .all(|l| (l.split_whitespace().nth(2)).is_some_and(|c| c.parse::<i32>().is_ok()));
        if complete {
            break text;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "status never complete:\n{text}\n{stderr}\n{}",
            logs(&nodes)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("{text}");
    assert!(text.contains("3 nodes, 3 reachable"), "{text}");
    for (id, node) in nodes.iter().enumerate() {
        let cells = row(&text, &(id + 1).to_string()).expect("a row per node");
        assert_eq!(cells[1], node.addr, "{text}");
        assert_eq!(cells[3], "yes", "{text}");
    }
    let controller_line = (text.lines())
        .find(|l| l.starts_with("Controller (metadata quorum leader): node "))
        .unwrap_or_else(|| panic!("a controller: {text}"));
    let controller: usize = controller_line["Controller (metadata quorum leader): node ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("a node id: {controller_line}"));
    assert!((1..=3).contains(&controller));
    let leader_role = row(&text, &controller.to_string()).expect("the controller's row");
    assert_eq!(leader_role[4], "leader", "{text}");
    for line in text.lines().filter(|l| l.starts_with(STATUS_TOPIC)) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let leader: i32 = cells[2].parse().expect("a leader id");
        assert!((1..=3).contains(&leader), "{line}");
        let mut replicas: Vec<&str> = cells[5].split(',').collect();
        replicas.sort_unstable();
        assert_eq!(replicas, ["1", "2", "3"], "{line}");
        assert_eq!(
            cells[6], "1,2,3",
            "the ISR, as the leader reports it: {line}"
        );
        // Each follower's lag: `id:records`.
        let lags: Vec<&str> = cells[7..].to_vec();
        assert_eq!(lags.len(), 2, "{line}");
        for lag in lags {
            let (id, records) = lag.split_once(':').expect("id:lag");
            assert_ne!(id, leader.to_string(), "{line}");
            assert!(records == "?" || records.parse::<i64>().is_ok(), "{line}");
        }
    }

    // A node other than the one asked stops: it is shown out of reach.
    nodes[2].kill();
    let started = Instant::now();
    loop {
        let (ok, text, stderr) = cluster_status(&nodes[0].addr);
        if ok && row(&text, "3").is_some_and(|cells| cells[3] == "no") {
            assert!(text.contains("3 nodes, 2 reachable"), "{text}");
            assert!(text.contains("node 3 not reached"), "{text}");
            break;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "node 3 never shown out of reach:\n{text}\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let nobody = format!("127.0.0.1:{}", common::free_port());
    let (ok, _, stderr) = cluster_status(&nobody);
    assert!(!ok, "an unreachable bootstrap is a failure");
    assert!(
        stderr.contains("no bootstrap server answered") && stderr.contains(&nobody),
        "{stderr}"
    );
}
