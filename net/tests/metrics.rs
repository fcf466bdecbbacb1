//! `/metrics` of a real `keel serve` while a producer writes: the counters move between two
//! scrapes, and the text is Prometheus's exposition format.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, temp_dir, Broker};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const TOPIC: &str = "metered";
/// Bound on every wait in this test.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 GET; the status code and the body. (The server is hyper's; this reads one
/// answer to a closed connection, which is all a test needs.)
fn get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = (head.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// The metrics text, once the endpoint answers.
fn scrape(address: &str) -> String {
    let started = Instant::now();
    loop {
        match get(address, "/metrics") {
            Ok((200, body)) => return body,
            other => {
                assert!(started.elapsed() < TIMEOUT, "no metrics: {other:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The value of the series `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|l| l == format!("{k}=\"{v}\""))
            });
            (series_name == name && wanted).then(|| value.parse().ok())?
        })
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
}

#[test]
fn counters_move_between_two_scrapes_under_produce_load() {
    let dir = temp_dir("metrics");
    let metrics = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start(&dir, &["--metrics-listen", &metrics]);

    // A producer writes until told to stop (at most for the test's bound).
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, bootstrap) = (stop.clone(), broker.addr.clone());
        std::thread::spawn(move || {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("acks", "all")
                .set("linger.ms", "5")
                .create()
                .expect("producer");
            let started = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::SeqCst) && started.elapsed() < TIMEOUT {
                let value = format!("record-{sent}");
                let record = BaseRecord::<(), _>::to(TOPIC).partition(0).payload(&value);
                if producer.send(record).is_ok() {
                    sent += 1;
                }
                producer.poll(Duration::from_millis(1));
            }
            let _ = producer.flush(Duration::from_secs(10));
            sent
        })
    };

    let partition = [("topic", TOPIC), ("partition", "0")];
    let started = Instant::now();
    let first = loop {
        let text = scrape(&metrics);
        if sample(&text, "keel_partition_log_end_offset", &partition).is_some_and(|o| o > 0.0) {
            break text;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "nothing produced yet:\n{text}\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(1_000));
    let second = scrape(&metrics);
    stop.store(true, Ordering::SeqCst);
    let sent = load.join().expect("the producer thread");
    assert!(sent > 0);

    let produce = [("api", "Produce")];
    for (name, labels) in [
        ("keel_requests_total", &produce[..]),
        ("keel_request_duration_seconds_count", &produce[..]),
        ("keel_client_received_bytes_total", &[][..]),
        ("keel_client_sent_bytes_total", &[][..]),
        ("keel_partition_produce_bytes_total", &partition[..]),
        ("keel_partition_log_end_offset", &partition[..]),
        ("keel_partition_high_watermark", &partition[..]),
        ("keel_fsync_duration_seconds_count", &[][..]),
        ("keel_sync_round_duration_seconds_count", &[][..]),
    ] {
        let (before, after) = (value(&first, name, labels), value(&second, name, labels));
        assert!(
            after > before,
            "{name} {labels:?} did not move: {before} then {after}"
        );
    }
    assert!(value(&second, "keel_fsync_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(value(&second, "keel_partition_is_leader", &partition), 1.0);
    assert_eq!(value(&second, "keel_partition_replicas", &partition), 1.0);
    assert_eq!(
        value(&second, "keel_partition_in_sync_replicas", &partition),
        1.0
    );
    assert_eq!(value(&second, "keel_node_id", &[]), 1.0);
    assert!(value(&second, "keel_client_connections", &[]) >= 1.0);
    assert!(
        value(&second, "keel_leaderships_won_total", &[]) >= 2.0,
        "the metadata log's and the topic's"
    );
    // A histogram's +Inf bucket holds every observation.
    assert_eq!(
        value(
            &second,
            "keel_request_duration_seconds_bucket",
            &[("api", "Produce"), ("le", "+Inf")]
        ),
        value(&second, "keel_request_duration_seconds_count", &produce)
    );
    assert!(
        second.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );

    let (status, _) = get(&metrics, "/other").expect("an answer");
    assert_eq!(status, 404);
}
