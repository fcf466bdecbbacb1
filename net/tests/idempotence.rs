//! Idempotent producers against a real `keel`: librdkafka with `enable.idempotence=true`
//! produces through a proxy that cuts connections in the middle of requests and drops
//! answers, while the broker is SIGKILLed and restarted once. Every record must end up in the
//! log exactly once, in the order it was sent.
//!
//! What this cannot show: a SIGKILL ends the process, not the machine, so the page cache
//! keeps every write and this test would pass without a single fsync. Power loss (unsynced
//! writes lost or torn, unsynced directory entries undone) is the simulator's to test
//! (`sim/`, the `skip-fsync` planted bug).
// Real processes and librdkafka: not built for madsim (`--cfg madsim`).
#![cfg(not(madsim))]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{temp_dir, Broker};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const RECORDS: u64 = 10_000;
const TOPIC: &str = "idempotent";
/// Bound on every wait in this test.
const TIMEOUT: Duration = Duration::from_secs(120);
/// One read in this many is cut short, and its connection with it.
const CUT_ONE_READ_IN: u64 = 40;

/// A TCP proxy that forwards to `target` and cuts connections: a chunk on its way to the
/// broker is forwarded only in part (a request cut mid-way), or a chunk on its way back is
/// dropped (an answer lost), and both sockets are shut.
struct CuttingProxy {
    addr: String,
    cutting: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
}

impl CuttingProxy {
    fn start(listener: TcpListener, target: String) -> CuttingProxy {
        let addr = listener.local_addr().unwrap().to_string();
        let cutting = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        listener.set_nonblocking(true).unwrap();
        let (c, s, n) = (cutting.clone(), stop.clone(), cuts.clone());
        std::thread::spawn(move || {
            let mut chunk_count = 0u64;
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(&target) else {
                    continue; // The broker is down: the client sees a reset.
                };
                chunk_count += 1;
                for (from, to, to_broker) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        true,
                    ),
                    (
                        server.try_clone().unwrap(),
                        client.try_clone().unwrap(),
                        false,
                    ),
                ] {
                    let (c, s, n) = (c.clone(), s.clone(), n.clone());
                    // Each pump draws its own cut points from the connection number.
                    let seed = chunk_count * 2 + u64::from(to_broker);
                    std::thread::spawn(move || pump(from, to, to_broker, seed, &c, &s, &n));
                }
            }
        });
        CuttingProxy {
            addr,
            cutting,
            stop,
            cuts,
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    to_broker: bool,
    seed: u64,
    cutting: &AtomicBool,
    stop: &AtomicBool,
    cuts: &AtomicU64,
) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut buf = vec![0u8; 64 << 10];
    from.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while !stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if cutting.load(Ordering::Relaxed) && next() % CUT_ONE_READ_IN == 0 {
            if to_broker {
                let keep = (next() as usize) % n;
                let _ = to.write_all(&buf[..keep]);
            }
            cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

struct Deliveries {
    ok: Mutex<Vec<(u64, i64)>>,
    failed: Mutex<Vec<String>>,
}

struct Context(Arc<Deliveries>);

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<u64>) {
        match result {
            Ok(message) => self.0.ok.lock().unwrap().push((*index, message.offset())),
            Err((error, _)) => self.0.failed.lock().unwrap().push(error.to_string()),
        }
    }
}

fn value(i: u64) -> String {
    format!("idempotent-{i:08}")
}

#[test]
fn idempotent_records_land_once_in_order_through_cut_connections_and_a_sigkill() {
    let dir = temp_dir("idempotence");
    let proxy_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = proxy_listener.local_addr().unwrap().port().to_string();
    // Clients are told to come back through the proxy.
    let mut broker = Broker::start(&dir.join("data"), &["--advertised-port", &proxy_port]);
    let proxy = CuttingProxy::start(proxy_listener, broker.addr.clone());
    let deliveries = Arc::new(Deliveries {
        ok: Mutex::new(Vec::new()),
        failed: Mutex::new(Vec::new()),
    });
    let producer: BaseProducer<Context> = ClientConfig::new()
        .set("bootstrap.servers", &proxy.addr)
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("batch.num.messages", "200")
        .set("message.timeout.ms", "110000")
        .set("request.timeout.ms", "2000")
        .set("retry.backoff.ms", "20")
        .create_with_context(Context(deliveries.clone()))
        .expect("producer");
    let started = Instant::now();
    let mut killed = false;
    for i in 0..RECORDS {
        let payload = value(i);
        let mut record = BaseRecord::<(), _, _>::with_opaque_to(TOPIC, Box::new(i))
            .partition(0)
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    assert!(started.elapsed() < TIMEOUT, "could not send in time");
                    producer.poll(Duration::from_millis(10));
                    record = returned;
                }
            }
        }
        producer.poll(Duration::ZERO);
        if !killed && i == RECORDS / 2 {
            // Some acknowledged, some in flight, some not yet sent: kill and restart.
            while deliveries.ok.lock().unwrap().is_empty() {
                assert!(started.elapsed() < TIMEOUT, "nothing acknowledged");
                producer.poll(Duration::from_millis(10));
            }
            broker.kill();
            std::thread::sleep(Duration::from_millis(200));
            broker.restart();
            killed = true;
        }
    }
    producer.flush(TIMEOUT).expect("every record delivered");
    let failed = deliveries.failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "failed deliveries: {failed:?}");
    let cuts = proxy.cuts.load(Ordering::Relaxed);
    proxy.cutting.store(false, Ordering::Relaxed);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &proxy.addr)
        .set("group.id", "keel-tests")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut values = Vec::new();
    let read_started = Instant::now();
    while values.len() < RECORDS as usize {
        assert!(
            read_started.elapsed() < TIMEOUT,
            "read {} of {RECORDS} records",
            values.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("no consume error");
            values.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
        }
    }
    // Nothing more behind them: no duplicate at the end either.
    let extra = consumer.poll(Duration::from_millis(1_000));
    assert!(extra.is_none(), "more records than were sent");
    for (i, v) in values.iter().enumerate() {
        assert_eq!(*v, value(i as u64), "record {i} is the {i}th sent, once");
    }
    let acked = deliveries.ok.lock().unwrap().clone();
    for (index, offset) in &acked {
        assert_eq!(
            *offset, *index as i64,
            "record {index} acknowledged at its offset"
        );
    }
    println!(
        "{RECORDS} records, {} proxy cuts, one SIGKILL: each once, in order",
        cuts
    );
    assert!(cuts > 0, "the proxy cut no connection");
}
