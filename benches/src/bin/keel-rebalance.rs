//! keel-rebalance: how long a consumer group takes to rebalance when a member leaves, and
//! when one joins.
//!
//! Starts three `keel` processes on loopback as one cluster, creates a topic of 12
//! partitions, and runs three librdkafka consumers (their defaults: range assignor, 3 s
//! heartbeats, eager rebalancing) in one group. Then, `--rounds` times: closes one member
//! (LeaveGroup) and measures the time until the two left hold all 12 partitions again; then
//! starts a member again and measures the time until the three hold them, each change made
//! at a different phase of the members' heartbeats. Reports p50, p99 and the worst of each.
//!
//! Example: `cargo run --release -p keel-benches --bin keel-rebalance -- --keel
//! target/release/keel --rounds 10`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

#[derive(Parser)]
#[command(about = "Rebalance time of a three-member group on a three-node keel cluster")]
struct Args {
    /// The `keel` binary to run.
    #[arg(long, default_value = "target/release/keel")]
    keel: PathBuf,
    /// Leaves and joins to time.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// First of the six ports used (three for clients, three for peers).
    #[arg(long, default_value_t = 19400)]
    base_port: u16,
    /// Where the nodes keep their data (emptied first).
    #[arg(long, default_value = "/tmp/keel-rebalance")]
    data_dir: PathBuf,
}

const NODES: [i32; 3] = [1, 2, 3];
const TOPIC: &str = "rebalance";
const PARTITIONS: i32 = 12;
const GROUP: &str = "rebalance-bench";
/// Bound on any wait.
const WAIT: Duration = Duration::from_secs(120);

/// Each member's partitions, as its last rebalance left them.
type Held = Arc<Mutex<Vec<usize>>>;

struct Member {
    index: usize,
    held: Held,
}

impl ClientContext for Member {}

impl ConsumerContext for Member {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let count = match rebalance {
            Rebalance::Assign(list) => list.count(),
            _ => 0,
        };
        self.held.lock().unwrap()[self.index] = count;
    }
}

/// A member polling on a thread of its own until told to stop (then it closes: LeaveGroup).
fn start_member(bootstrap: &str, index: usize, held: &Held) -> (Arc<AtomicBool>, JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let consumer: BaseConsumer<Member> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("auto.offset.reset", "earliest")
        .create_with_context(Member {
            index,
            held: held.clone(),
        })
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            let _ = consumer.poll(Duration::from_millis(20));
        }
        drop(consumer);
    });
    (stop, handle)
}

/// Waits until `members` members hold every partition between them (and no other holds
/// any); returns when that was first seen.
fn wait_settled(held: &Held, members: &[usize]) -> Instant {
    let started = Instant::now();
    loop {
        {
            let h = held.lock().unwrap();
            let total: usize = members.iter().map(|m| h[*m]).sum();
            let all_hold = members.iter().all(|m| h[*m] > 0);
            if total == PARTITIONS as usize && all_hold {
                return Instant::now();
            }
        }
        assert!(started.elapsed() < WAIT, "the group did not settle in time");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.data_dir);
    let voters = (NODES.iter())
        .map(|v| format!("{v}@127.0.0.1:{}", args.base_port + 2 + *v as u16))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Child> = Vec::new();
    for id in NODES {
        nodes.push(
            Command::new(&args.keel)
                .args(["serve", "--node-id", &id.to_string(), "--voters", &voters])
                .args([
                    "--listen",
                    &format!("127.0.0.1:{}", args.base_port + id as u16 - 1),
                ])
                .arg("--data-dir")
                .arg(args.data_dir.join(format!("n{id}")))
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    let bootstrap = (NODES.iter())
        .map(|id| format!("127.0.0.1:{}", args.base_port + *id as u16 - 1))
        .collect::<Vec<_>>()
        .join(",");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    loop {
        let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3));
        let created = runtime.block_on(admin.create_topics([&topic], &AdminOptions::new()));
        if matches!(created.as_deref(), Ok([Ok(_)])) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < WAIT,
            "could not create the topic: {created:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let held: Held = Arc::new(Mutex::new(vec![0; 3]));
    let mut members: Vec<Option<(Arc<AtomicBool>, JoinHandle<()>)>> = (0..3)
        .map(|i| Some(start_member(&bootstrap, i, &held)))
        .collect();
    wait_settled(&held, &[0, 1, 2]);
    let mut leave = Histogram::<u64>::new(3)?;
    let mut join = Histogram::<u64>::new(3)?;
    for round in 0..args.rounds {
        let leaving = round % 3;
        let stayers: Vec<usize> = (0..3).filter(|m| *m != leaving).collect();
        // Members heartbeat every 3 s from the end of the last rebalance, and hear of the
        // next one at their next heartbeat: the change comes at phases spread over that
        // interval, as it would by chance.
        std::thread::sleep(Duration::from_millis((round as u64 * 1_297) % 3_000));
        let (stop, handle) = members[leaving].take().expect("running");
        let left_at = Instant::now();
        stop.store(true, Ordering::SeqCst);
        handle.join().expect("member thread");
        held.lock().unwrap()[leaving] = 0;
        let settled = wait_settled(&held, &stayers);
        leave.record(settled.duration_since(left_at).as_millis() as u64)?;
        std::thread::sleep(Duration::from_millis((round as u64 * 1_811 + 700) % 3_000));
        let joined_at = Instant::now();
        members[leaving] = Some(start_member(&bootstrap, leaving, &held));
        let settled = wait_settled(&held, &[0, 1, 2]);
        join.record(settled.duration_since(joined_at).as_millis() as u64)?;
        println!("round {round}: done");
    }
    for (stop, handle) in members.into_iter().flatten() {
        stop.store(true, Ordering::SeqCst);
        let _ = handle.join();
    }
    for mut node in nodes {
        let _ = node.kill();
        let _ = node.wait();
    }
    for (what, h) in [("a member leaves", &leave), ("a member joins", &join)] {
        println!(
            "{what}: p50 {} ms, p99 {} ms, max {} ms over {} rebalances",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
            h.len()
        );
    }
    Ok(())
}
