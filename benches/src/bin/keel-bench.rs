//! keel-bench: produce and consume throughput against any Kafka bootstrap address, with
//! librdkafka (the `rdkafka` crate). Reports records/s, MB/s and produce latency (send to
//! acknowledgement) at p50/p99/p99.9 from an HDR histogram.
//!
//! Example: `cargo run --release -p keel-benches --bin keel-bench -- --bootstrap 127.0.0.1:9092
//! --partitions 8 --record-bytes 1024 --records 1000000 --acks 1`

use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Parser)]
#[command(about = "Produce and consume throughput and latency against a Kafka-compatible broker")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic to create and use [default: a fresh name].
    #[arg(long)]
    topic: Option<String>,
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Replicas of each partition (a cluster's nodes).
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    #[arg(long, default_value = "1")]
    acks: String,
    #[arg(long, default_value = "none")]
    compression: String,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
}

struct Latencies(Mutex<Histogram<u64>>, Mutex<u64>);

impl ClientContext for Latencies {}

impl ProducerContext for Latencies {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent_at: Box<Instant>) {
        match result {
            Ok(_) => {
                let micros = sent_at.elapsed().as_micros() as u64;
                self.0.lock().unwrap().saturating_record(micros.max(1));
            }
            Err(_) => *self.1.lock().unwrap() += 1,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("keel-bench-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .create()?;
    let created = runtime.block_on(admin.create_topics(
        &[NewTopic::new(
            &topic,
            args.partitions,
            TopicReplication::Fixed(args.replication_factor),
        )],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))?;
    for result in created {
        if let Err((name, error)) = result {
            eprintln!("create topic {name}: {error} (using it as it is)");
        }
    }

    let context = Latencies(
        Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        Mutex::new(0),
    );
    let producer: BaseProducer<Latencies> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("acks", &args.acks)
        .set("linger.ms", args.linger_ms.to_string())
        .set("compression.codec", &args.compression)
        .set("enable.idempotence", "false")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(context)?;
    let payload: Vec<u8> = (0..args.record_bytes).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    for i in 0..args.records {
        let partition = (i % args.partitions as u64) as i32;
        let mut record =
            BaseRecord::<(), [u8], Box<Instant>>::with_opaque_to(&topic, Box::new(Instant::now()))
                .partition(partition)
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
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(300))?;
    let produce_seconds = started.elapsed().as_secs_f64();
    let failed = *producer.context().1.lock().unwrap();
    let histogram = producer.context().0.lock().unwrap().clone();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", "keel-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..args.partitions {
        assignment.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let mut consumed = 0u64;
    let mut consumed_bytes = 0u64;
    let wanted = args.records - failed;
    while consumed < wanted {
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("consumed only {consumed} of {wanted} records in 600 s");
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            consumed_bytes += message?.payload_len() as u64;
            consumed += 1;
        }
    }
    let consume_seconds = started.elapsed().as_secs_f64();

    let mb = |bytes: f64| bytes / 1_000_000.0;
    let total_bytes = (args.records * args.record_bytes as u64) as f64;
    println!(
        "topic {topic}: {} partitions, {} records of {} bytes, acks={}, compression={}",
        args.partitions, args.records, args.record_bytes, args.acks, args.compression
    );
    println!(
        "produce: {:.0} records/s, {:.1} MB/s, latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, {failed} failed",
        args.records as f64 / produce_seconds,
        mb(total_bytes) / produce_seconds,
        histogram.value_at_quantile(0.50) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.value_at_quantile(0.999) as f64 / 1000.0,
    );
    println!(
        "consume: {:.0} records/s, {:.1} MB/s",
        consumed as f64 / consume_seconds,
        mb(consumed_bytes as f64) / consume_seconds
    );
    Ok(())
}
