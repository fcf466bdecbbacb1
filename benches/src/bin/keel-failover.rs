//! keel-failover: how long acks=all produce stops when a partition's leader is SIGKILLed.
//!
//! Starts three `keel` processes on loopback as one cluster, creates a topic of one partition
//! replicated on all three, and runs an idempotent librdkafka producer (acks=all) that sends
//! a record every few milliseconds. Then, `--kills` times: finds the partition's leader,
//! SIGKILLs it, and measures the time from the kill to the first acknowledgement that
//! follows it (produce succeeds again), restarts the node and waits for the partition's ISR
//! to hold all three again. Reports p50, p99 and the worst, and checks that every record
//! acknowledged was acknowledged once.
//!
//! Example: `cargo run --release -p keel-benches --bin keel-failover -- --keel
//! target/release/keel --kills 20`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

#[derive(Parser)]
#[command(about = "Failover time of a three-node keel cluster under acks=all produce")]
struct Args {
    /// The `keel` binary to run.
    #[arg(long, default_value = "target/release/keel")]
    keel: PathBuf,
    /// Leaders to kill, one after another.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// First of the six ports used (three for clients, three for peers).
    #[arg(long, default_value_t = 19300)]
    base_port: u16,
    /// Where the nodes keep their data (emptied first).
    #[arg(long, default_value = "/tmp/keel-failover")]
    data_dir: PathBuf,
    /// Milliseconds between two records sent.
    #[arg(long, default_value_t = 2)]
    interval_ms: u64,
}

const NODES: [i32; 3] = [1, 2, 3];
const TOPIC: &str = "failover";

/// Acknowledgements as they come.
#[derive(Default)]
struct Acks {
    /// Records numbered from this one on were sent after the last kill...
    sent_after_kill: AtomicU64,
    /// ...and the first of them was acknowledged then (0: not yet).
    first_after_kill_ns: AtomicU64,
    count: AtomicU64,
    offsets: Mutex<Vec<i64>>,
    failures: AtomicU64,
}

struct Context {
    started: Instant,
    acks: Arc<Acks>,
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                let now = self.started.elapsed().as_nanos() as u64;
                let n = (rdkafka::Message::payload(message))
                    .and_then(|p| p.try_into().ok())
                    .map_or(0, u64::from_be_bytes);
                if n >= self.acks.sent_after_kill.load(Ordering::SeqCst) {
                    let _ = self.acks.first_after_kill_ns.compare_exchange(
                        0,
                        now,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                }
                self.acks.count.fetch_add(1, Ordering::SeqCst);
                self.acks
                    .offsets
                    .lock()
                    .expect("not poisoned")
                    .push(rdkafka::Message::offset(message));
            }
            Err(_) => {
                self.acks.failures.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

struct Cluster {
    args: Args,
    nodes: Vec<Option<Child>>,
}

impl Cluster {
    fn client_port(&self, id: i32) -> u16 {
        self.args.base_port + id as u16 - 1
    }

    fn bootstrap(&self) -> String {
        (NODES.iter())
            .map(|id| format!("127.0.0.1:{}", self.client_port(*id)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start(&mut self, id: i32) -> anyhow::Result<()> {
        let voters = (NODES.iter())
            .map(|v| format!("{v}@127.0.0.1:{}", self.args.base_port + 2 + *v as u16))
            .collect::<Vec<_>>()
            .join(",");
        let child = Command::new(&self.args.keel)
            .args(["serve", "--node-id", &id.to_string(), "--voters", &voters])
            .args(["--listen", &format!("127.0.0.1:{}", self.client_port(id))])
            .arg("--data-dir")
            .arg(self.args.data_dir.join(format!("n{id}")))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.nodes[id as usize - 1] = Some(child);
        Ok(())
    }

    fn kill(&mut self, id: i32) {
        if let Some(mut child) = self.nodes[id as usize - 1].take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in NODES {
            self.kill(id);
        }
    }
}

/// The partition's leader and ISR, as the cluster's metadata says.
fn leader_and_isr(producer: &BaseProducer<Context>) -> Option<(i32, usize)> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(TOPIC), Duration::from_secs(2))
        .ok()?;
    let partition = metadata.topics().first()?.partitions().first()?;
    (partition.leader() > 0).then(|| (partition.leader(), partition.isr().len()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.data_dir);
    std::fs::create_dir_all(&args.data_dir)?;
    let kills = args.kills;
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let mut cluster = Cluster {
        args,
        nodes: vec![None, None, None],
    };
    for id in NODES {
        cluster.start(id)?;
    }
    let bootstrap = cluster.bootstrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let created = runtime.block_on(admin.create_topics(
            &[NewTopic::new(TOPIC, 1, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ));
        if matches!(&created, Ok(results) if results.iter().all(Result::is_ok)) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no topic: {created:?}");
        std::thread::sleep(Duration::from_millis(500));
    }

    let started = Instant::now();
    let acks = Arc::new(Acks::default());
    let producer: Arc<BaseProducer<Context>> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "300000")
            .set("reconnect.backoff.ms", "20")
            .set("reconnect.backoff.max.ms", "200")
            .set("retry.backoff.ms", "20")
            .set("retry.backoff.max.ms", "200")
            .set("topic.metadata.refresh.fast.interval.ms", "50")
            .create_with_context(Context {
                started,
                acks: acks.clone(),
            })?,
    );
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let sent = sent.clone();
        let stop = stop.clone();
        let producer = producer.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let n = sent.fetch_add(1, Ordering::SeqCst);
                let value = n.to_be_bytes();
                let record = BaseRecord::<(), [u8]>::to(TOPIC).payload(&value[..]);
                if producer.send(record).is_err() {
                    // A full queue: wait for acknowledgements to make room.
                    sent.fetch_sub(1, Ordering::SeqCst);
                }
                producer.poll(Duration::ZERO);
                std::thread::sleep(interval);
            }
        })
    };
    let now_ns = || started.elapsed().as_nanos() as u64;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    // Wait for the cluster to serve writes with all three in sync.
    while !(acks.count.load(Ordering::SeqCst) > 100
        && leader_and_isr(&producer).is_some_and(|(_, isr)| isr == 3))
    {
        anyhow::ensure!(
            Instant::now() < settle_deadline,
            "the cluster never settled"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for kill in 1..=kills {
        let Some((leader, _)) = leader_and_isr(&producer) else {
            anyhow::bail!("no leader before kill {kill}");
        };
        // Measured to the acknowledgement of the first record sent after the kill (the
        // producer keeps order, so every earlier one was acknowledged by then too).
        acks.first_after_kill_ns.store(0, Ordering::SeqCst);
        acks.sent_after_kill.store(u64::MAX, Ordering::SeqCst);
        cluster.kill(leader);
        let killed_at = now_ns();
        acks.sent_after_kill
            .store(sent.load(Ordering::SeqCst), Ordering::SeqCst);
        let wait_until = Instant::now() + Duration::from_secs(120);
        while acks.first_after_kill_ns.load(Ordering::SeqCst) == 0 {
            anyhow::ensure!(
                Instant::now() < wait_until,
                "produce never resumed after kill {kill}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let failover_ms = acks
            .first_after_kill_ns
            .load(Ordering::SeqCst)
            .saturating_sub(killed_at)
            / 1_000_000;
        histogram.record(failover_ms.max(1))?;
        let new_leader = leader_and_isr(&producer).map_or(-1, |(l, _)| l);
        println!("kill {kill}: node {leader} SIGKILLed, acks=all produce resumed after {failover_ms} ms (leader now node {new_leader})");
        cluster.start(leader)?;
        // The restarted node catches up before the next kill.
        let rejoin_until = Instant::now() + Duration::from_secs(120);
        while leader_and_isr(&producer).is_none_or(|(_, isr)| isr < 3) {
            anyhow::ensure!(
                Instant::now() < rejoin_until,
                "node {leader} never caught up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::SeqCst);
    sender.join().expect("the sender ran");
    producer.flush(Duration::from_secs(60))?;
    let mut offsets = acks.offsets.lock().expect("not poisoned").clone();
    let acked = offsets.len();
    offsets.sort_unstable();
    offsets.dedup();
    println!(
        "{kills} kills: failover p50 {} ms, p99 {} ms, max {} ms; {} records sent, {acked} acknowledged at {} distinct offsets, {} failed",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.max(),
        sent.load(Ordering::SeqCst),
        offsets.len(),
        acks.failures.load(Ordering::SeqCst),
    );
    anyhow::ensure!(offsets.len() == acked, "an offset was acknowledged twice");
    Ok(())
}
