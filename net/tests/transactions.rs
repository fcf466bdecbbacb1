//! Transactions with librdkafka against real `keel` processes: a transactional producer
//! commits and aborts in turn while a read_committed consumer reads, and the node that
//! coordinates the transactions is SIGKILLed in the middle of a commit and started again.
//! The consumer must read exactly the records of the transactions that committed: none of
//! an aborted one, every one of a committed one, once each; a transaction whose outcome the
//! producer could not learn (its commit failed across the kill) is read whole or not at all.
// Real processes and librdkafka: not built for madsim (`--cfg madsim`).
#![cfg(not(madsim))]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start_cluster, temp_dir, Broker};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(120);
const PARTITIONS: i32 = 3;
const TRANSACTIONS: usize = 24;
const RECORDS_PER_TRANSACTION: usize = 6;
/// The transaction whose commit meets the kill.
const KILLED_AT: usize = 9;
const TXN_ID: &str = "keel-txn-test";

fn bootstrap_of(nodes: &[Broker]) -> String {
    (nodes.iter().map(|b| b.addr.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

fn logs(nodes: &[Broker]) -> String {
    (nodes.iter().enumerate())
        .map(|(i, b)| format!("--- node {} ---\n{}", i + 1, b.log()))
        .collect()
}

fn create_topic(bootstrap: &str, topic: &str, replication: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(replication));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let result = runtime
            .block_on(admin.create_topics([&new], &options))
            .map(|mut r| r.remove(0));
        match result {
            Ok(Ok(_)) | Ok(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => {
                return
            }
            other => {
                assert!(started.elapsed() < WAIT, "{other:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", TXN_ID)
        .set("transaction.timeout.ms", "30000")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let started = Instant::now();
    loop {
        match producer.init_transactions(Duration::from_secs(30)) {
            Ok(()) => return producer,
            Err(e) => {
                assert!(started.elapsed() < WAIT, "init_transactions: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// How a transaction ended, as its producer learned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Committed,
    Aborted,
    /// The commit failed in a way that leaves its outcome open.
    Unknown,
}

/// The node leading `__transaction_state`'s partition for [`TXN_ID`] (Kafka's hash of the
/// id over its 50 partitions), as Metadata names it.
fn coordinator_node(bootstrap: &str) -> Option<i32> {
    let mut hash: i32 = 0;
    for unit in TXN_ID.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(unit as i32);
    }
    let partition = if hash == i32::MIN { 0 } else { hash.abs() } % 50;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    let metadata = consumer
        .fetch_metadata(Some("__transaction_state"), Duration::from_secs(10))
        .ok()?;
    let topic = metadata.topics().first()?;
    let leader = topic
        .partitions()
        .iter()
        .find(|p| p.id() == partition)?
        .leader();
    (leader > 0).then_some(leader)
}

/// Runs the transactions: returns each one's outcome and values.
fn run_transactions(
    nodes: &Arc<Mutex<Vec<Broker>>>,
    bootstrap: &str,
    topic: &str,
) -> Vec<(Outcome, Vec<String>)> {
    let mut producer = producer(bootstrap);
    let mut history = Vec::new();
    for t in 0..TRANSACTIONS {
        let commit = t % 2 == 0;
        let values: Vec<String> = (0..RECORDS_PER_TRANSACTION)
            .map(|i| format!("txn-{t}-{i}"))
            .collect();
        let mut outcome = None;
        let started = Instant::now();
        while outcome.is_none() {
            assert!(started.elapsed() < WAIT, "transaction {t} never ended");
            if let Err(e) = producer.begin_transaction() {
                panic!("begin_transaction {t}: {e}");
            }
            for (i, value) in values.iter().enumerate() {
                let partition = (i as i32) % PARTITIONS;
                let record = BaseRecord::<str, str>::to(topic)
                    .partition(partition)
                    .key(value)
                    .payload(value);
                producer.send(record).expect("queued");
            }
            let _ = producer.flush(Duration::from_secs(30));
            if t == KILLED_AT {
                // The coordinator's node dies with the commit in flight, and comes back.
                let mut guard = nodes.lock().unwrap();
                let at = coordinator_node(bootstrap).unwrap_or(1);
                let index = (at as usize).clamp(1, guard.len()) - 1;
                guard[index].kill();
                drop(guard);
                let nodes = nodes.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(2));
                    nodes.lock().unwrap()[index].restart();
                });
            }
            let result = if commit {
                producer.commit_transaction(Duration::from_secs(60))
            } else {
                producer.abort_transaction(Duration::from_secs(60))
            };
            outcome = match result {
                Ok(()) if commit => Some(Outcome::Committed),
                Ok(()) => Some(Outcome::Aborted),
                Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                    // An abortable error: the transaction is aborted.
                    let _ = producer.abort_transaction(Duration::from_secs(60));
                    Some(if commit {
                        Outcome::Unknown
                    } else {
                        Outcome::Aborted
                    })
                }
                Err(e) => {
                    // Fatal, or timed out across the kill: a new producer with the same id
                    // fences this one and aborts what it left open, unless its commit made it.
                    eprintln!("transaction {t}: {e}; starting the producer again");
                    drop(producer);
                    producer = self::producer(bootstrap);
                    Some(if commit {
                        Outcome::Unknown
                    } else {
                        Outcome::Aborted
                    })
                }
            };
        }
        history.push((outcome.expect("ended"), values));
    }
    history
}

/// A read_committed consumer of every partition from the start: what it read, by value, with
/// how often.
fn committed_reader(
    bootstrap: String,
    topic: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeMap<String, usize>> {
    std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "keel-txn-reader")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut assignment = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            assignment
                .add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut read: BTreeMap<String, usize> = BTreeMap::new();
        let mut quiet_since = None;
        let started = Instant::now();
        while started.elapsed() < WAIT * 2 {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let value = String::from_utf8_lossy(m.payload().unwrap_or_default());
                    *read.entry(value.into_owned()).or_default() += 1;
                    quiet_since = None;
                }
                Some(Err(e)) => eprintln!("consumer: {e}"),
                None => {
                    if stop.load(Ordering::SeqCst) {
                        // Drained: nothing more for a few seconds once the producer is done.
                        let since = *quiet_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(5) {
                            break;
                        }
                    }
                }
            }
        }
        read
    })
}

fn check(history: &[(Outcome, Vec<String>)], read: &BTreeMap<String, usize>, logs: &str) {
    let mut expected = BTreeSet::new();
    for (t, (outcome, values)) in history.iter().enumerate() {
        let seen = values.iter().filter(|v| read.contains_key(*v)).count();
        match outcome {
            Outcome::Committed => assert_eq!(
                seen,
                values.len(),
                "committed transaction {t} read in part ({seen} of {})\n{logs}",
                values.len()
            ),
            Outcome::Aborted => assert_eq!(
                seen, 0,
                "aborted transaction {t}: {seen} records read\n{logs}"
            ),
            Outcome::Unknown => assert!(
                seen == 0 || seen == values.len(),
                "transaction {t} of unknown outcome read in part ({seen} of {})\n{logs}",
                values.len()
            ),
        }
        if seen > 0 {
            expected.extend(values.iter().cloned());
        }
    }
    for (value, count) in read {
        assert!(
            expected.contains(value),
            "{value} read but no transaction wrote it whole\n{logs}"
        );
        assert_eq!(*count, 1, "{value} read {count} times\n{logs}");
    }
    let committed = (history.iter())
        .filter(|(o, _)| *o == Outcome::Committed)
        .count();
    assert!(
        committed >= TRANSACTIONS / 2 - 2,
        "too few transactions committed: {history:?}"
    );
}

fn commits_and_aborts_through_a_coordinator_kill(nodes: Vec<Broker>, replication: i32) {
    let bootstrap = bootstrap_of(&nodes);
    let topic = "keel-txn";
    create_topic(&bootstrap, topic, replication);
    let nodes = Arc::new(Mutex::new(nodes));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = committed_reader(bootstrap.clone(), topic.to_string(), stop.clone());
    let history = run_transactions(&nodes, &bootstrap, topic);
    stop.store(true, Ordering::SeqCst);
    let read = reader.join().expect("the reader ends");
    let logs = logs(&nodes.lock().unwrap());
    check(&history, &read, &logs);
}

#[test]
fn one_node_commits_and_aborts_through_a_kill() {
    let dir = temp_dir("txn-one");
    let node = Broker::start(&dir.join("node"), &[]);
    commits_and_aborts_through_a_coordinator_kill(vec![node], 1);
}

#[test]
fn three_nodes_commit_and_abort_through_a_coordinator_kill() {
    let dir = temp_dir("txn-three");
    let nodes = start_cluster(&dir, 3);
    commits_and_aborts_through_a_coordinator_kill(nodes, 3);
}
