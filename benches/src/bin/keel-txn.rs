//! keel-txn: what a transaction costs: the latency of `commit_transaction` for transactions
//! spanning 1 and 10 partitions.
//!
//! Starts `keel` (one node, or three on loopback with `--nodes 3`), creates a topic of 10
//! partitions, and runs one librdkafka transactional producer: `--transactions` times for
//! each width, begin, send one 1 KiB record to each of the transaction's partitions, flush
//! (so that the commit's time is the commit's own: the coordinator's prepare record, every
//! partition's marker committed, the completion), then time `commit_transaction`. Reports
//! p50, p99 and the worst for each width.
//!
//! Example: `cargo run --release -p keel-benches --bin keel-txn -- --keel target/release/keel
//! --transactions 500`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[derive(Parser)]
#[command(about = "Commit latency of librdkafka transactions on keel")]
struct Args {
    /// The `keel` binary to run.
    #[arg(long, default_value = "target/release/keel")]
    keel: PathBuf,
    /// Transactions timed for each width.
    #[arg(long, default_value_t = 500)]
    transactions: usize,
    /// Nodes: 1, or 3 (a cluster on loopback, every partition on all three).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// First of the ports used (one per node for clients, one per node for peers).
    #[arg(long, default_value_t = 19600)]
    base_port: u16,
    /// Where the nodes keep their data (emptied first).
    #[arg(long, default_value = "/tmp/keel-txn")]
    data_dir: PathBuf,
}

const TOPIC: &str = "txn-bench";
const PARTITIONS: i32 = 10;
const WAIT: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.nodes == 1 || args.nodes == 3, "--nodes is 1 or 3");
    let _ = std::fs::remove_dir_all(&args.data_dir);
    std::fs::create_dir_all(&args.data_dir)?;
    let client_port = |i: usize| args.base_port + i as u16;
    let peer_port = |i: usize| args.base_port + 10 + i as u16;
    let voters: Vec<String> = (0..args.nodes)
        .map(|i| format!("{}@127.0.0.1:{}", i + 1, peer_port(i)))
        .collect();
    let mut children: Vec<Child> = Vec::new();
    for i in 0..args.nodes {
        let mut command = Command::new(&args.keel);
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", client_port(i)),
            ])
            .arg("--data-dir")
            .arg(args.data_dir.join(format!("node-{}", i + 1)))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if args.nodes > 1 {
            command.args([
                "--node-id",
                &(i + 1).to_string(),
                "--voters",
                &voters.join(","),
            ]);
        }
        children.push(command.spawn()?);
    }
    let bootstrap: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", client_port(i)))
        .collect();
    let bootstrap = bootstrap.join(",");
    let result = run(&args, &bootstrap);
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

fn run(args: &Args, bootstrap: &str) -> anyhow::Result<()> {
    create_topic(bootstrap, args.nodes as i32)?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", "keel-txn-bench")
        .set("linger.ms", "0")
        .create()?;
    let started = Instant::now();
    while let Err(e) = producer.init_transactions(Duration::from_secs(30)) {
        anyhow::ensure!(started.elapsed() < WAIT, "init_transactions: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let payload = vec![b'x'; 1024];
    println!(
        "{} node(s), {} transactions per width, one 1 KiB record per partition",
        args.nodes, args.transactions
    );
    let widths: Vec<i32> = std::env::var("KEEL_TXN_WIDTHS")
        .ok()
        .map(|w| w.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![1, 10]);
    for width in widths {
        let mut histogram = Histogram::<u64>::new(3)?;
        // A few untimed transactions first: connections to every leader are open.
        for round in 0..args.transactions + 20 {
            producer.begin_transaction()?;
            for p in 0..width {
                let record = BaseRecord::<(), [u8]>::to(TOPIC)
                    .partition(p)
                    .payload(&payload);
                producer
                    .send(record)
                    .map_err(|(e, _)| anyhow::anyhow!("send: {e}"))?;
            }
            producer.flush(Duration::from_secs(30))?;
            let t = Instant::now();
            producer.commit_transaction(Duration::from_secs(30))?;
            if round >= 20 {
                histogram.record(t.elapsed().as_micros() as u64)?;
            }
        }
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{width:>2} partition(s): commit p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(0.5),
            ms(0.99),
            histogram.max() as f64 / 1000.0
        );
    }
    Ok(())
}

fn create_topic(bootstrap: &str, replication: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    loop {
        let new = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(replication));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let result = runtime
            .block_on(admin.create_topics([&new], &options))
            .map(|mut r| r.remove(0));
        match result {
            Ok(Ok(_)) | Ok(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => {
                return Ok(())
            }
            other => {
                anyhow::ensure!(started.elapsed() < WAIT, "create topic: {other:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}
