//! The real adapter (`keel_net::server`: sockets, framing, peer links and their hellos,
//! reconnects, timers, the fsync worker, graceful shutdown) as a three-node cluster under
//! madsim's deterministic runtime: simulated TCP, clock, tasks and randomness, real files.
//! The core's own simulator (`keel-sim`) never runs this glue; here it meets node kills and
//! restarts, graceful shutdowns (ctrl-c), network partitions and heals, while a client on a
//! fourth node produces with acks=all and reads everything back at the end. Every
//! acknowledged record must be read back at its offset, and a seed must give the same run
//! twice.
//!
//! Built only with `--cfg madsim`:
//! `RUSTFLAGS="--cfg madsim" cargo test -p keel-net --test madsim --target-dir target/madsim`
//! (`tests/tests/madsim.rs` does this from `cargo test`). It runs every seed in
//! `madsim-regressions.txt`, then fresh ones: `KEEL_MADSIM_SEEDS=N` from `KEEL_MADSIM_FIRST=F`;
//! `KEEL_MADSIM_SEED=N` runs that seed alone; `KEEL_MADSIM_BUDGET_SECS=S` starts no seed after
//! S wall seconds (CI's time box). `KEEL_TEST_LOG=info` shows the nodes' logs.
#![cfg(madsim)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use keel_core::protocol::codec::{decode_response, encode_request};
use keel_core::protocol::messages::create_topics_request::CreatableTopic;
use keel_core::protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use keel_core::protocol::messages::metadata_request::MetadataRequestTopic;
use keel_core::protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use keel_core::protocol::messages::*;
use keel_core::protocol::{codes, Request, RequestHeader, Response};
use keel_core::record::{self, BatchOptions, NewRecord, RecordBatch};
use keel_net::config::ServeConfig;
use madsim::net::NetSim;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::{Handle, NodeHandle, Runtime};
use madsim::time::{sleep, timeout, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NODES: [i32; 3] = [1, 2, 3];
const TOPIC: &str = "t";
const PARTITIONS: i32 = 3;
const CLIENT_PORT: u16 = 9092;
const PEER_PORT: u16 = 9093;
/// How long the nemesis acts, then how long everything runs healed.
const FAULTS: Duration = Duration::from_secs(60);
const QUIET: Duration = Duration::from_secs(30);
/// A client gives up on one request after this long (and asks for leaders again).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);
/// The largest response frame the client accepts.
const RESPONSE_FRAME_MAX_BYTES: usize = 64 << 20;

fn node_ip(id: i32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))
}

fn client_address(id: i32) -> SocketAddr {
    SocketAddr::new(node_ip(id), CLIENT_PORT)
}

/// What one run produced: compared across two runs of a seed.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Every acknowledged record: (partition, offset, value).
    acked: Vec<(i32, i64, u64)>,
    /// Each partition's log as read back at the end (offset -> value).
    logs: BTreeMap<i32, BTreeMap<i64, u64>>,
    /// The faults the nemesis injected, in order.
    faults: Vec<String>,
    /// Simulated time at the end.
    elapsed: Duration,
}

fn data_root(seed: u64, run: u32) -> PathBuf {
    // tmpfs when there is one: the fsyncs are real, and the simulated clock does not wait.
    let base = match Path::new("/dev/shm").is_dir() {
        true => PathBuf::from("/dev/shm"),
        false => std::env::temp_dir(),
    };
    base.join(format!("keel-madsim-{}-{seed}-{run}", std::process::id()))
}

fn serve_config(id: i32, root: &Path, seed: u64) -> ServeConfig {
    ServeConfig {
        node_id: id,
        listen: client_address(id).to_string(),
        data_dir: root.join(format!("n{id}")),
        cluster_id: "madsim".into(),
        voters: NODES
            .iter()
            .map(|v| format!("{v}@{}:{PEER_PORT}", node_ip(*v)))
            .collect(),
        seed: Some(seed.wrapping_mul(31).wrapping_add(id as u64)),
        ..ServeConfig::default()
    }
}

/// Runs `seed` on a thread of its own: madsim seeds std's hash keys (and with them tokio's
/// `select!` choices) only on a thread that has not drawn them yet.
fn run(seed: u64, run: u32) -> Outcome {
    std::thread::spawn(move || run_here(seed, run))
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn run_here(seed: u64, run: u32) -> Outcome {
    let root = data_root(seed, run);
    let _ = std::fs::remove_dir_all(&root);
    let mut runtime = Runtime::with_seed_and_config(seed, madsim::Config::default());
    // A bound on simulated time: a run that never finishes fails instead of hanging.
    runtime.set_time_limit(FAULTS + QUIET + Duration::from_secs(300));
    let outcome = runtime.block_on(scenario(root.clone(), seed));
    drop(runtime);
    let _ = std::fs::remove_dir_all(&root);
    outcome
}

async fn scenario(root: PathBuf, seed: u64) -> Outcome {
    let handle = Handle::current();
    let start = Instant::now();
    let nodes: BTreeMap<i32, NodeHandle> = NODES
        .iter()
        .map(|&id| {
            let root = root.clone();
            let node = handle
                .create_node()
                .name(format!("n{id}"))
                .ip(node_ip(id))
                .init(move || {
                    let config = serve_config(id, &root, seed);
                    async move {
                        let shutdown = async {
                            let _ = tokio::signal::ctrl_c().await;
                            "ctrl-c"
                        };
                        if let Err(e) = keel_net::server::serve_until(config, shutdown).await {
                            tracing::error!(node = id, error = %e, "node stopped");
                        }
                    }
                })
                .build();
            (id, node)
        })
        .collect();
    let client = handle
        .create_node()
        .name("client")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)))
        .build();

    let created = client.spawn(create_topic()).await.expect("the client runs");
    assert!(created, "seed {seed}: the cluster never created the topic");

    let produce_until = Instant::now() + FAULTS + QUIET;
    let producer = client.spawn(produce(produce_until));
    let faults = nemesis(&handle, &nodes, FAULTS).await;
    let (acked, last_ack) = producer.await.expect("the producer runs");
    assert!(
        last_ack.is_some_and(|at| at + QUIET / 2 > produce_until),
        "seed {seed}: no produce succeeded late in the quiet phase (last at {:?}; faults {faults:?})",
        last_ack.map(|at| at - start)
    );

    let logs = client.spawn(read_back()).await.expect("the reader runs");
    for &(partition, offset, value) in &acked {
        let found = logs.get(&partition).and_then(|log| log.get(&offset));
        assert_eq!(
            found,
            Some(&value),
            "seed {seed}: record {value} acknowledged at {TOPIC}-{partition}@{offset} reads back as {found:?} (faults {faults:?})"
        );
    }
    let elapsed = start.elapsed();
    // Kill every node and let the executor drop their tasks: a task waiting on a channel
    // whose waker it holds itself is never dropped with the runtime, and its files (the
    // broker's disk) would stay open in this process after the run.
    for node in nodes.values() {
        handle.kill(node.id());
    }
    handle.kill(client.id());
    sleep(Duration::from_secs(1)).await;
    Outcome {
        acked,
        logs,
        faults,
        elapsed,
    }
}

/// Kills, restarts, stops gracefully and cuts off nodes for `period`, then heals
/// everything; returns what it did.
async fn nemesis(
    handle: &Handle,
    nodes: &BTreeMap<i32, NodeHandle>,
    period: Duration,
) -> Vec<String> {
    let net = NetSim::current();
    let end = Instant::now() + period;
    let mut faults = Vec::new();
    let pick = || NODES[thread_rng().gen_range(0..NODES.len())];
    while Instant::now() < end {
        sleep(Duration::from_millis(thread_rng().gen_range(500..4_000))).await;
        let held = Duration::from_millis(thread_rng().gen_range(300..6_000));
        let id = pick();
        let node = nodes[&id].id();
        match thread_rng().gen_range(0..6) {
            0 => {
                fault(&mut faults, format!("kill n{id} for {held:?}"));
                handle.kill(node);
                sleep(held).await;
                restart(handle, node);
            }
            1 => {
                fault(&mut faults, format!("ctrl-c n{id}, restart after {held:?}"));
                handle.send_ctrl_c(node);
                sleep(held).await;
                restart(handle, node);
            }
            2 => {
                fault(&mut faults, format!("isolate n{id} for {held:?}"));
                net.clog_node(node);
                sleep(held).await;
                net.unclog_node(node);
            }
            3 => {
                let other = NODES[(NODES.iter().position(|&n| n == id).unwrap() + 1) % 3];
                fault(&mut faults, format!("kill n{id} and n{other} for {held:?}"));
                handle.kill(node);
                handle.kill(nodes[&other].id());
                sleep(held).await;
                restart(handle, node);
                restart(handle, nodes[&other].id());
            }
            4 => {
                // A frozen process (a long pause, a stopped VM): its connections stay open
                // and silent, and it wakes to a world that moved on.
                fault(&mut faults, format!("pause n{id} for {held:?}"));
                handle.pause(node);
                sleep(held * 2).await;
                handle.resume(node);
            }
            _ => {
                let other = NODES[(NODES.iter().position(|&n| n == id).unwrap() + 1) % 3];
                fault(&mut faults, format!("cut n{id} -> n{other} for {held:?}"));
                net.clog_link(node, nodes[&other].id());
                sleep(held).await;
                net.unclog_link(node, nodes[&other].id());
            }
        }
    }
    faults
}

fn fault(faults: &mut Vec<String>, what: String) {
    tracing::warn!(fault = %what, "nemesis");
    faults.push(what);
}

/// Starts a node again, as a new process would: `kill` first, which also frees whatever the
/// old process still had bound (madsim's `restart` alone does not, and the new process could
/// find its ports taken by the old one's tasks not yet dropped).
fn restart(handle: &Handle, node: madsim::task::NodeId) {
    handle.kill(node);
    handle.restart(node);
}

/// A client connection speaking Kafka through the core's codec.
struct Connection {
    stream: TcpStream,
    correlation_id: i32,
}

impl Connection {
    async fn open(node: i32) -> Option<Connection> {
        let stream = timeout(
            Duration::from_secs(2),
            TcpStream::connect(client_address(node)),
        )
        .await
        .ok()?
        .ok()?;
        Some(Connection {
            stream,
            correlation_id: 0,
        })
    }

    /// Sends `request` and waits for its answer; `None` on any failure (the connection is
    /// then not to be used again).
    async fn call(&mut self, version: i16, request: &Request) -> Option<Response> {
        self.correlation_id += 1;
        let header = RequestHeader {
            api_key: request.api_key() as i16,
            api_version: version,
            correlation_id: self.correlation_id,
            client_id: Some("madsim".into()),
            ..Default::default()
        };
        let mut frame = BytesMut::new();
        encode_request(&mut frame, &header, request).expect("encodable");
        let exchange = async {
            self.stream.write_all(&frame).await.ok()?;
            self.stream.flush().await.ok()?;
            let mut size = [0u8; 4];
            self.stream.read_exact(&mut size).await.ok()?;
            let size = usize::try_from(i32::from_be_bytes(size)).ok()?;
            if size > RESPONSE_FRAME_MAX_BYTES {
                return None;
            }
            let mut body = vec![0u8; size];
            self.stream.read_exact(&mut body).await.ok()?;
            let body = Bytes::from(body);
            if body.len() < 4 || (&body[..4]).get_i32() != self.correlation_id {
                return None;
            }
            decode_response(body, request.api_key(), version)
                .ok()
                .map(|(_, response)| response)
        };
        timeout(REQUEST_TIMEOUT, exchange).await.ok().flatten()
    }
}

/// Asks each node in turn until one creates the topic (or says it exists).
async fn create_topic() -> bool {
    let request = Request::CreateTopics(CreateTopicsRequest {
        topics: vec![CreatableTopic {
            name: TOPIC.into(),
            num_partitions: PARTITIONS,
            replication_factor: 3,
            ..Default::default()
        }],
        timeout_ms: 5_000,
        ..Default::default()
    });
    for attempt in 0..100 {
        let node = NODES[attempt % NODES.len()];
        if let Some(mut connection) = Connection::open(node).await {
            if let Some(Response::CreateTopics(r)) = connection.call(5, &request).await {
                let code = r.topics[0].error_code;
                if code == codes::NONE || code == codes::TOPIC_ALREADY_EXISTS {
                    return true;
                }
            }
        }
        sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Each partition's leader, as some node sees it (partitions without one left out).
async fn leaders() -> BTreeMap<i32, i32> {
    let request = Request::Metadata(MetadataRequest {
        topics: Some(vec![MetadataRequestTopic {
            name: Some(TOPIC.into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let first = thread_rng().gen_range(0..NODES.len());
    for i in 0..NODES.len() {
        let node = NODES[(first + i) % NODES.len()];
        let Some(mut connection) = Connection::open(node).await else {
            continue;
        };
        let Some(Response::Metadata(m)) = connection.call(12, &request).await else {
            continue;
        };
        let leaders: BTreeMap<i32, i32> = (m.topics.iter())
            .filter(|t| t.error_code == codes::NONE)
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.error_code == codes::NONE && NODES.contains(&p.leader_id))
            .map(|p| (p.partition_index, p.leader_id))
            .collect();
        if !leaders.is_empty() {
            return leaders;
        }
    }
    BTreeMap::new()
}

/// Produces records 0, 1, 2, ... (record n to partition n % 3, one per request, acks=all)
/// until `until`, each retried until acknowledged; returns every acknowledgement and when
/// the last came.
async fn produce(until: Instant) -> (Vec<(i32, i64, u64)>, Option<Instant>) {
    let mut acked = Vec::new();
    let mut last_ack = None;
    let mut leaders = BTreeMap::new();
    let mut connections: BTreeMap<i32, Connection> = BTreeMap::new();
    let mut next: u64 = 0;
    while Instant::now() < until {
        let partition = (next % PARTITIONS as u64) as i32;
        let Some(&leader) = leaders.get(&partition) else {
            leaders = self::leaders().await;
            if leaders.is_empty() {
                sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        if !connections.contains_key(&leader) {
            match Connection::open(leader).await {
                Some(c) => connections.insert(leader, c),
                None => {
                    leaders.clear();
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
        }
        let connection = connections.get_mut(&leader).expect("opened above");
        let records = [NewRecord {
            value: Some(Bytes::copy_from_slice(&next.to_be_bytes())),
            ..NewRecord::default()
        }];
        let batch = record::build(&records, &BatchOptions::default()).expect("a batch");
        let request = Request::Produce(ProduceRequest {
            acks: -1,
            timeout_ms: 5_000,
            topic_data: vec![TopicProduceData {
                name: TOPIC.into(),
                partition_data: vec![PartitionProduceData {
                    index: partition,
                    records: Some(batch),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        match connection.call(9, &request).await {
            Some(Response::Produce(r)) => {
                let p = &r.responses[0].partition_responses[0];
                if p.error_code == codes::NONE {
                    tracing::info!(
                        partition,
                        offset = p.base_offset,
                        value = next,
                        leader,
                        "acknowledged"
                    );
                    acked.push((partition, p.base_offset, next));
                    last_ack = Some(Instant::now());
                    next += 1;
                } else {
                    // Not the leader any more, or no quorum: ask again, after a moment.
                    leaders.clear();
                    sleep(Duration::from_millis(100)).await;
                }
            }
            _ => {
                connections.remove(&leader);
                leaders.clear();
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
    (acked, last_ack)
}

/// Every partition's log up to its high watermark, read from its leader.
async fn read_back() -> BTreeMap<i32, BTreeMap<i64, u64>> {
    let mut logs = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let mut log = BTreeMap::new();
        let mut fetch_offset = 0i64;
        let mut done = false;
        for _ in 0..10_000 {
            let leaders = leaders().await;
            let Some(&leader) = leaders.get(&partition) else {
                sleep(Duration::from_millis(200)).await;
                continue;
            };
            let Some(mut connection) = Connection::open(leader).await else {
                continue;
            };
            let request = Request::Fetch(FetchRequest {
                max_wait_ms: 0,
                max_bytes: 1 << 20,
                topics: vec![FetchTopic {
                    topic: TOPIC.into(),
                    partitions: vec![FetchPartition {
                        partition,
                        fetch_offset,
                        partition_max_bytes: 1 << 20,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            });
            let Some(Response::Fetch(f)) = connection.call(11, &request).await else {
                continue;
            };
            let p = &f.responses[0].partitions[0];
            if p.error_code != codes::NONE {
                sleep(Duration::from_millis(200)).await;
                continue;
            }
            for batch in record::split_batches(p.records.clone().unwrap_or_default()) {
                let batch = RecordBatch::parse(batch.expect("whole batches")).expect("valid");
                let base = batch.header().base_offset;
                for r in batch.records(1 << 20).expect("records") {
                    let value = r.value.expect("a value");
                    let value = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
                    log.insert(base + i64::from(r.offset_delta), value);
                }
                fetch_offset = base + i64::from(batch.header().last_offset_delta) + 1;
            }
            if fetch_offset >= p.high_watermark {
                done = true;
                break;
            }
        }
        assert!(done, "partition {partition} could not be read to its end");
        logs.insert(partition, log);
    }
    logs
}

/// Every seed that ever failed, then fresh ones: `KEEL_MADSIM_SEEDS` of them (2 unless
/// told) from `KEEL_MADSIM_FIRST` (1 unless told); or `KEEL_MADSIM_SEED` alone.
fn seeds() -> Vec<u64> {
    let number = |name: &str| {
        std::env::var(name).ok().map(|n| {
            n.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name} is a number"))
        })
    };
    if let Some(seed) = number("KEEL_MADSIM_SEED") {
        return vec![seed];
    }
    let regressions = include_str!("madsim-regressions.txt")
        .lines()
        .filter_map(|line| line.split('#').next())
        .filter_map(|seed| seed.trim().parse::<u64>().ok());
    let first = number("KEEL_MADSIM_FIRST").unwrap_or(1);
    let count = number("KEEL_MADSIM_SEEDS").unwrap_or(2);
    regressions.chain(first..first + count).collect()
}

#[test]
fn a_cluster_of_real_adapters_keeps_every_acknowledged_record_through_kills_and_partitions() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEEL_TEST_LOG")
                .unwrap_or_else(|_| "error".into()),
        )
        .with_test_writer()
        .try_init();
    let budget = std::env::var("KEEL_MADSIM_BUDGET_SECS")
        .ok()
        .map(|s| Duration::from_secs(s.parse().expect("KEEL_MADSIM_BUDGET_SECS is a number")));
    let started = std::time::Instant::now();
    let descriptors_open = || std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    let descriptors_before = descriptors_open();
    let mut ran = 0;
    for seed in seeds() {
        if budget.is_some_and(|b| ran > 0 && started.elapsed() > b) {
            break;
        }
        let outcome = run(seed, 0);
        println!(
            "seed {seed}: {} records acknowledged, {} read back, {} faults, {:?} simulated, faults {:?}",
            outcome.acked.len(),
            outcome.logs.values().map(BTreeMap::len).sum::<usize>(),
            outcome.faults.len(),
            outcome.elapsed,
            outcome.faults,
        );
        ran += 1;
        // A run that leaves files open would, over a batch, run out of descriptors.
        let leaked = descriptors_open().saturating_sub(descriptors_before);
        assert!(leaked < 16, "seed {seed} left {leaked} descriptors open");
        // The first seed runs twice: the same seed must give the same run.
        if ran == 1 {
            let again = run(seed, 1);
            assert!(
                outcome == again,
                "seed {seed} gave two different runs: {} vs {} acknowledgements, {:?} vs {:?}",
                outcome.acked.len(),
                again.acked.len(),
                outcome.elapsed,
                again.elapsed
            );
        }
    }
    println!("{ran} seeds in {:.0?} wall time", started.elapsed());
}
