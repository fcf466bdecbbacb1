//! Consumer groups with librdkafka against real `keel` processes: members in child processes
//! (so that one can be SIGKILLed), a producer writing meanwhile, members closed and killed,
//! and the node coordinating the group SIGKILLed.
//!
//! Each member is this test binary run again as a child (`group_member`, selected by
//! `KEEL_GROUP_MEMBER`): it subscribes, prints every record it consumes and every offset it
//! committed (after the commit was acknowledged), each with the time, and closes the
//! consumer when its stdin closes. The parent checks that every acknowledged record was
//! consumed at least once, and that no member consumed a record below an offset already
//! committed for its partition when it read it (none committed before a rebalance is consumed
//! again after it).
// Real processes and librdkafka: not built for madsim (`--cfg madsim`).
#![cfg(not(madsim))]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{start_cluster_with_args, temp_dir, Broker};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset};

const GROUP: &str = "keel-group-test";
/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(180);

fn micros() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// The child: one group member. Does nothing unless run by a parent test.
#[test]
#[ignore = "a group member, run as a child process by the tests below"]
fn group_member() {
    let Ok(bootstrap) = std::env::var("KEEL_GROUP_MEMBER") else {
        return;
    };
    let topic = std::env::var("KEEL_GROUP_TOPIC").unwrap();
    let mut config = ClientConfig::new();
    let protocol = std::env::var("KEEL_GROUP_PROTOCOL").unwrap_or_else(|_| "classic".into());
    config.set("group.protocol", &protocol);
    if protocol == "classic" {
        config
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500");
    }
    if let Ok(debug) = std::env::var("KEEL_GROUP_DEBUG") {
        // librdkafka's own trace (for example `cgrp`), on stderr.
        config.set("debug", debug);
    }
    let consumer: BaseConsumer = config
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    // Stdin closing (the parent's word, or its death) ends the member.
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = closing.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let mut out = std::io::stdout().lock();
    let mut uncommitted = 0;
    let mut last_commit = Instant::now();
    while !closing.load(std::sync::atomic::Ordering::SeqCst) {
        if let Some(message) = consumer.poll(Duration::from_millis(50)) {
            match message {
                Ok(m) => {
                    writeln!(out, "{} consume {} {}", micros(), m.partition(), m.offset()).unwrap();
                    uncommitted += 1;
                }
                Err(e) => eprintln!("consume error: {e}"),
            }
        }
        if uncommitted > 0
            && (uncommitted >= 500 || last_commit.elapsed() > Duration::from_millis(200))
        {
            last_commit = Instant::now();
            let Ok(positions) = consumer.position() else {
                continue;
            };
            if consumer.commit(&positions, CommitMode::Sync).is_ok() {
                uncommitted = 0;
                let at = micros();
                for e in positions.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        writeln!(out, "{at} commit {} {o}", e.partition()).unwrap();
                    }
                }
            }
            out.flush().unwrap();
        }
    }
    // What was read is committed before the member leaves, as a careful application does.
    if let Ok(positions) = consumer.position() {
        if consumer.commit(&positions, CommitMode::Sync).is_ok() {
            let at = micros();
            for e in positions.elements() {
                if let Offset::Offset(o) = e.offset() {
                    writeln!(out, "{at} commit {} {o}", e.partition()).unwrap();
                }
            }
        }
    }
    out.flush().unwrap();
    drop(consumer);
    writeln!(out, "{} closed", micros()).unwrap();
}

/// What members reported: (time, member, partition, offset), for consumes and commits.
#[derive(Default)]
struct Reports {
    consumed: Vec<(u128, usize, i32, i64)>,
    committed: Vec<(u128, usize, i32, i64)>,
}

struct Member {
    child: Child,
}

impl Member {
    fn start(index: usize, bootstrap: &str, topic: &str, reports: &Arc<Mutex<Reports>>) -> Member {
        Member::start_with(index, bootstrap, topic, reports, "classic")
    }

    /// A member speaking `protocol` (`classic`, or KIP-848's `consumer`).
    fn start_with(
        index: usize,
        bootstrap: &str,
        topic: &str,
        reports: &Arc<Mutex<Reports>>,
        protocol: &str,
    ) -> Member {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "group_member",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KEEL_GROUP_MEMBER", bootstrap)
            .env("KEEL_GROUP_TOPIC", topic)
            .env("KEEL_GROUP_PROTOCOL", protocol)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("member starts");
        let stdout = child.stdout.take().unwrap();
        let reports = reports.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The last four words: the test harness may have printed its own first.
                let words: Vec<&str> = line.split_whitespace().collect();
                let [at, kind, partition, offset] = words[words.len().saturating_sub(4)..] else {
                    continue;
                };
                let (Ok(at), Ok(p), Ok(o)) = (at.parse(), partition.parse(), offset.parse()) else {
                    continue;
                };
                let mut r = reports.lock().unwrap();
                match kind {
                    "consume" => r.consumed.push((at, index, p, o)),
                    "commit" => r.committed.push((at, index, p, o)),
                    _ => {}
                }
            }
        });
        Member { child }
    }

    /// Closes the consumer (LeaveGroup) and waits for the process.
    fn close(mut self) {
        drop(self.child.stdin.take());
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "member did not close"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Each acknowledged record's partition and offset (control batches, such as a new
/// leader's marker, take offsets too: only these are records a consumer must see).
#[derive(Clone, Default)]
struct Acks(Arc<Mutex<BTreeMap<i32, BTreeSet<i64>>>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(message) = result {
            let mut acks = self.0.lock().unwrap();
            acks.entry(message.partition())
                .or_default()
                .insert(message.offset());
        }
    }
}

fn producer(bootstrap: &str, acks: &Acks) -> BaseProducer<Acks> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .create_with_context(acks.clone())
        .expect("producer")
}

/// The node leading the group's partition of `__consumer_offsets`, as Metadata says.
fn coordinator(producer: &BaseProducer<Acks>) -> i32 {
    let metadata = producer
        .client()
        .fetch_metadata(Some("__consumer_offsets"), Duration::from_secs(10))
        .expect("metadata");
    let topic = &metadata.topics()[0];
    let partitions = topic.partitions().len() as i32;
    let partition = keel_core::coordinator::records::partition_for(GROUP, partitions);
    let p = topic
        .partitions()
        .iter()
        .find(|p| p.id() == partition)
        .unwrap();
    p.leader()
}

/// Checks the reports against what was acknowledged: every record consumed at least once,
/// none consumed below an offset committed for its partition before it was read.
fn check(reports: &Reports, acknowledged: &BTreeMap<i32, BTreeSet<i64>>) {
    let consumed: BTreeSet<(i32, i64)> = reports.consumed.iter().map(|c| (c.2, c.3)).collect();
    let mut missing = 0;
    for (p, offsets) in acknowledged {
        missing += offsets
            .iter()
            .filter(|o| !consumed.contains(&(*p, **o)))
            .count();
    }
    assert_eq!(missing, 0, "acknowledged records never consumed");
    let mut commits: Vec<&(u128, usize, i32, i64)> = reports.committed.iter().collect();
    commits.sort();
    let mut reread = Vec::new();
    for (at, member, p, o) in &reports.consumed {
        let committed_before = (commits.iter())
            .take_while(|c| c.0 < *at)
            .filter(|c| c.2 == *p)
            .map(|c| c.3)
            .max();
        if committed_before.is_some_and(|c| c > *o) {
            reread.push((member, p, o, committed_before));
        }
    }
    assert!(
        reread.is_empty(),
        "{} records consumed again after their offset was committed, first: {:?}",
        reread.len(),
        &reread[..reread.len().min(5)]
    );
}

/// Sends `count` records and waits until each is acknowledged; `during` is called with the
/// count sent so far, every thousand.
fn produce(
    producer: &BaseProducer<Acks>,
    topic: &str,
    count: usize,
    mut during: impl FnMut(usize),
) {
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let key = sent.to_string();
        let record = BaseRecord::to(topic).key(&key).payload(&key);
        match producer.send(record) {
            Ok(()) => {
                sent += 1;
                if sent % 1_000 == 0 {
                    during(sent);
                    // Paced, so that the group's changes happen while records arrive.
                    producer.poll(Duration::from_millis(20));
                }
            }
            Err(_) => {
                assert!(started.elapsed() < WAIT, "could not send");
                producer.poll(Duration::from_millis(10));
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("every record delivered");
}

/// Waits until members have consumed every acknowledged offset.
fn wait_consumed(reports: &Arc<Mutex<Reports>>, acknowledged: &BTreeMap<i32, BTreeSet<i64>>) {
    let started = Instant::now();
    loop {
        let done = {
            let r = reports.lock().unwrap();
            let consumed: BTreeSet<(i32, i64)> = r.consumed.iter().map(|c| (c.2, c.3)).collect();
            (acknowledged.iter()).all(|(p, os)| os.iter().all(|o| consumed.contains(&(*p, *o))))
        };
        if done {
            return;
        }
        if started.elapsed() > WAIT {
            let r = reports.lock().unwrap();
            let mut seen: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
            for c in &r.consumed {
                seen.entry(c.2).or_default().insert(c.3);
            }
            let summary: Vec<String> = (acknowledged.iter())
                .map(|(p, os)| {
                    let got = seen
                        .get(p)
                        .map_or(0, |s| s.iter().filter(|o| os.contains(o)).count());
                    let missing: Vec<&i64> = (os.iter())
                        .filter(|o| !seen.get(p).is_some_and(|s| s.contains(o)))
                        .take(5)
                        .collect();
                    let commits: Vec<(usize, i64)> = (r.committed.iter())
                        .filter(|c| c.2 == *p)
                        .map(|c| (c.1, c.3))
                        .collect();
                    let last = &commits[commits.len().saturating_sub(4)..];
                    format!(
                        "partition {p}: {got} of {} (missing {missing:?}; last commits {last:?})",
                        os.len()
                    )
                })
                .collect();
            panic!(
                "members did not consume everything in time: {}",
                summary.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_group_carries_on_through_members_leaving_dying_and_its_coordinator_killed() {
    const RECORDS: usize = 200_000;
    let dir = temp_dir("groups-cluster");
    let mut nodes = start_cluster_with_args(
        &dir,
        3,
        &[
            "--num-partitions",
            "12",
            "--group-initial-rebalance-delay-ms",
            "500",
        ],
    );
    let bootstrap: String = (nodes.iter())
        .map(|n| n.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let topic = "grouped";
    let acks = Acks::default();
    let producer = producer(&bootstrap, &acks);
    let reports = Arc::new(Mutex::new(Reports::default()));
    let mut members: Vec<Option<Member>> = (0..3)
        .map(|i| Some(Member::start(i, &bootstrap, topic, &reports)))
        .collect();
    let mut killed_node: Option<usize> = None;
    produce(&producer, topic, RECORDS, |sent| {
        if sent == 50_000 {
            members[0].take().unwrap().close();
        }
        if sent == 90_000 {
            members[1].take().unwrap().kill();
        }
        if sent == 120_000 {
            let id = coordinator(&producer);
            let index = (id - 1) as usize;
            nodes[index].kill();
            killed_node = Some(index);
        }
        if sent == 170_000 {
            if let Some(index) = killed_node.take() {
                nodes[index].restart();
            }
        }
    });
    let acknowledged = acks.0.lock().unwrap().clone();
    let total: usize = acknowledged.values().map(|o| o.len()).sum();
    assert!(total >= RECORDS, "only {total} records in the log");
    wait_consumed(&reports, &acknowledged);
    members[2].take().unwrap().close();
    let reports = reports.lock().unwrap();
    check(&reports, &acknowledged);
    println!(
        "{} consumes ({} records), {} commit reports",
        reports.consumed.len(),
        total,
        reports.committed.len()
    );
}

#[test]
fn a_group_on_one_node_shares_partitions_and_resumes_from_its_commits() {
    one_node_group("classic");
}

/// The same with KIP-848's protocol (`group.protocol=consumer`): the coordinator assigns.
#[test]
fn a_consumer_protocol_group_shares_partitions_and_resumes_from_its_commits() {
    one_node_group("consumer");
}

fn one_node_group(protocol: &str) {
    const PARTITIONS: i32 = 4;
    let dir = temp_dir(&format!("groups-one-{protocol}"));
    let broker = Broker::start(
        &dir.join("node"),
        &[
            "--num-partitions",
            "4",
            "--offsets-topic-partitions",
            "5",
            "--group-consumer-heartbeat-interval-ms",
            "500",
        ],
    );
    let topic = "shared";
    let acks = Acks::default();
    let producer = producer(&broker.addr, &acks);
    let reports = Arc::new(Mutex::new(Reports::default()));
    let first = Member::start_with(0, &broker.addr, topic, &reports, protocol);
    let second = Member::start_with(1, &broker.addr, topic, &reports, protocol);
    produce(&producer, topic, 10_000, |_| {});
    let acknowledged = acks.0.lock().unwrap().clone();
    assert_eq!(acknowledged.len() as i32, PARTITIONS);
    wait_consumed(&reports, &acknowledged);
    // The first member may have been given every partition and read them all before the
    // second joined (KIP-848 assigns at once): by now the group has settled on both.
    std::thread::sleep(Duration::from_secs(3));
    produce(&producer, topic, 10_000, |_| {});
    let acknowledged = acks.0.lock().unwrap().clone();
    wait_consumed(&reports, &acknowledged);
    first.close();
    second.close();
    {
        let r = reports.lock().unwrap();
        let members: BTreeSet<usize> = r.consumed.iter().map(|c| c.1).collect();
        assert_eq!(members.len(), 2, "both members were given partitions");
        check(&r, &acknowledged);
    }
    // A new member resumes from the group's commits: nothing is read twice.
    let before = reports.lock().unwrap().consumed.len();
    produce(&producer, topic, 1_000, |_| {});
    let acknowledged = acks.0.lock().unwrap().clone();
    let third = Member::start_with(2, &broker.addr, topic, &reports, protocol);
    wait_consumed(&reports, &acknowledged);
    third.close();
    let r = reports.lock().unwrap();
    let fresh = r.consumed.len() - before;
    assert!(
        (1_000..1_500).contains(&fresh),
        "the new member read {fresh} records, not the 1,000 new ones"
    );
    check(&r, &acknowledged);
}
