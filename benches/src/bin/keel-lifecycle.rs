//! keel-lifecycle: what a long-lived log costs.
//!
//! - `restart`: fills a topic of `--partitions` partitions with `--gigabytes` of records
//!   (each size in turn, on a fresh data directory), SIGKILLs `keel`, drops the page cache
//!   where the machine lets it (root: `/proc/sys/vm/drop_caches`), starts `keel` again and
//!   times the start until a record is acknowledged on every partition.
//! - `soak`: starts `keel` with `--retention-bytes` and `--segment-bytes`, writes `--multiple`
//!   times the retention limit to every partition, and samples the partitions' directories:
//!   disk use must stay within one segment per partition of the limit (plus what arrives
//!   between two retention checks, which it reports).
//!
//! Examples:
//! `target/release/keel-lifecycle --keel target/release/keel restart --gigabytes 1,5`
//! `target/release/keel-lifecycle --keel target/release/keel soak --retention-bytes 268435456`

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

#[derive(Parser)]
#[command(about = "Restart time and retention under load, against a keel binary")]
struct Args {
    /// The `keel` binary to run.
    #[arg(long)]
    keel: PathBuf,
    /// Where data directories go (each run makes a fresh one under it).
    #[arg(long, default_value = "/tmp/keel-lifecycle")]
    work: PathBuf,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value_t = 16_384)]
    record_bytes: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Restart {
        /// Sizes to fill before each restart, in GiB, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,5")]
        gigabytes: Vec<u64>,
    },
    Soak {
        #[arg(long, default_value_t = 256 << 20)]
        retention_bytes: u64,
        #[arg(long, default_value_t = 32 << 20)]
        segment_bytes: u64,
        /// How many times the limit each partition receives.
        #[arg(long, default_value_t = 5)]
        multiple: u64,
        #[arg(long, default_value_t = 250)]
        retention_check_interval_ms: u64,
    },
}

/// Counts acknowledged records, and the partitions that had one.
struct Acks(AtomicU64, std::sync::Mutex<BTreeMap<i32, u64>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(message) = result {
            self.0.fetch_add(1, Ordering::Relaxed);
            *(self.1.lock().unwrap())
                .entry(rdkafka::Message::partition(message))
                .or_default() += 1;
        }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

fn start(keel: &Path, dir: &Path, port: u16, extra: &[String]) -> anyhow::Result<Child> {
    Ok(Command::new(keel)
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

fn wait_listening(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    anyhow::bail!("keel never listened on {port}")
}

fn producer(bootstrap: &str) -> anyhow::Result<BaseProducer<Acks>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "1")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("enable.idempotence", "false")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "50")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(Acks(AtomicU64::new(0), Default::default()))?)
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
    for result in runtime.block_on(admin.create_topics(&topics, &options))? {
        result.map_err(|(name, e)| anyhow::anyhow!("create {name}: {e}"))?;
    }
    Ok(())
}

/// Sends `bytes` of records spread over the partitions, and waits for every acknowledgement.
/// `between` runs every few hundred sends.
fn fill(
    producer: &BaseProducer<Acks>,
    topic: &str,
    partitions: i32,
    record_bytes: usize,
    bytes: u64,
    mut between: impl FnMut(),
) -> anyhow::Result<u64> {
    let payload: Vec<u8> = (0..record_bytes).map(|i| (i % 251) as u8).collect();
    let records = bytes / record_bytes as u64;
    for i in 0..records {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition((i % partitions as u64) as i32)
            .payload(&payload[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    producer.poll(Duration::from_millis(1));
                    record = returned;
                }
            }
        }
        if i % 256 == 0 {
            producer.poll(Duration::ZERO);
            between();
        }
    }
    producer.flush(Duration::from_secs(600))?;
    let acked = producer.context().0.load(Ordering::Relaxed);
    anyhow::ensure!(
        acked >= records,
        "{acked} of {records} records acknowledged"
    );
    Ok(records)
}

fn drop_page_cache() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn dir_bytes(dir: &Path) -> u64 {
    (std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn restart(args: &Args, gigabytes: &[u64]) -> anyhow::Result<()> {
    for size in gigabytes {
        let dir = args.work.join(format!("restart-{size}g"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let port = free_port();
        let bootstrap = format!("127.0.0.1:{port}");
        let mut keel = start(&args.keel, &dir, port, &[])?;
        wait_listening(port)?;
        let topic = "restart";
        create_topic(&bootstrap, topic, args.partitions)?;
        let started = Instant::now();
        let p = producer(&bootstrap)?;
        let records = fill(
            &p,
            topic,
            args.partitions,
            args.record_bytes,
            size << 30,
            || {},
        )?;
        let secs = started.elapsed().as_secs_f64();
        drop(p);
        keel.kill()?;
        keel.wait()?;
        let cold = drop_page_cache();
        let started = Instant::now();
        let mut keel = start(&args.keel, &dir, port, &[])?;
        wait_listening(port)?;
        let listening = started.elapsed();
        let p = producer(&bootstrap)?;
        for partition in 0..args.partitions {
            p.send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .partition(partition)
                    .payload(b"after"),
            )
            .map_err(|(e, _)| e)?;
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        while p.context().1.lock().unwrap().len() < args.partitions as usize {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no acknowledgement after restart"
            );
            p.poll(Duration::from_millis(1));
        }
        let serving = started.elapsed();
        println!(
            "{size} GiB ({records} records of {} B in {} partitions, written in {secs:.1} s): restart after SIGKILL, page cache {}: listening after {:.3} s, every partition acknowledging after {:.3} s",
            args.record_bytes,
            args.partitions,
            if cold { "dropped (cold)" } else { "kept (warm: cannot drop it here)" },
            listening.as_secs_f64(),
            serving.as_secs_f64()
        );
        drop(p);
        keel.kill()?;
        keel.wait()?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn soak(
    args: &Args,
    retention_bytes: u64,
    segment_bytes: u64,
    multiple: u64,
    interval_ms: u64,
) -> anyhow::Result<()> {
    let dir = args.work.join("soak");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let extra = [
        "--retention-bytes".to_string(),
        retention_bytes.to_string(),
        "--segment-bytes".into(),
        segment_bytes.to_string(),
        "--retention-check-interval-ms".into(),
        interval_ms.to_string(),
    ];
    let mut keel = start(&args.keel, &dir, port, &extra)?;
    wait_listening(port)?;
    let topic = "soak";
    create_topic(&bootstrap, topic, args.partitions)?;
    let p = producer(&bootstrap)?;
    let bound = retention_bytes + segment_bytes;
    let mut max = vec![0u64; args.partitions as usize];
    let mut sampled = Instant::now();
    let sample = |max: &mut Vec<u64>| {
        for (i, m) in max.iter_mut().enumerate() {
            *m = (*m).max(dir_bytes(&dir.join(format!("{topic}-{i}"))));
        }
    };
    let started = Instant::now();
    let total = retention_bytes * multiple * args.partitions as u64;
    fill(&p, topic, args.partitions, args.record_bytes, total, || {
        if sampled.elapsed() >= Duration::from_millis(100) {
            sample(&mut max);
            sampled = Instant::now();
        }
    })?;
    let secs = started.elapsed().as_secs_f64();
    // Two more checks: what is left over the limit goes.
    std::thread::sleep(Duration::from_millis(3 * interval_ms));
    let settled: Vec<u64> = (0..args.partitions)
        .map(|i| dir_bytes(&dir.join(format!("{topic}-{i}"))))
        .collect();
    sample(&mut max);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "soak: {:.0} MiB written to each of {} partitions in {secs:.1} s ({:.0} MiB/s), retention.bytes {:.0} MiB, segment.bytes {:.0} MiB, a check every {interval_ms} ms",
        mib(total / args.partitions as u64),
        args.partitions,
        mib(total) / secs,
        mib(retention_bytes),
        mib(segment_bytes)
    );
    for (i, (m, s)) in max.iter().zip(&settled).enumerate() {
        println!(
            "  partition {i}: at most {:.1} MiB on disk while writing, {:.1} MiB once settled (limit + a segment: {:.0} MiB)",
            mib(*m),
            mib(*s),
            mib(bound)
        );
    }
    keel.kill()?;
    keel.wait()?;
    let _ = std::fs::remove_dir_all(&dir);
    let over: Vec<usize> = (settled.iter().enumerate())
        .filter(|(_, s)| **s > bound)
        .map(|(i, _)| i)
        .collect();
    anyhow::ensure!(
        over.is_empty(),
        "partitions {over:?} hold more than the limit and a segment once settled"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.mode {
        Mode::Restart { gigabytes } => restart(&args, gigabytes),
        Mode::Soak {
            retention_bytes,
            segment_bytes,
            multiple,
            retention_check_interval_ms,
        } => soak(
            &args,
            *retention_bytes,
            *segment_bytes,
            *multiple,
            *retention_check_interval_ms,
        ),
    }
}
