//! The Prometheus `/metrics` endpoint (`keel serve --metrics-listen ADDR`).
//!
//! How a scrape flows: the HTTP task asks the owner task for a [`Scraped`] through the
//! owner's bounded inbound channel (`Event::Scrape`, with a oneshot reply); the owner copies
//! the node's plain-data snapshot (`Node::metrics`: requests, bytes, latencies, elections,
//! each partition's offsets, ISR and followers' lag) and adds what only the adapter knows
//! (fsync durations, measured on the fsync thread, and peer links up); the HTTP task turns
//! that into prometheus-client metrics and encodes them, so the owner spends a copy, not an
//! encoding, on each scrape. Nothing here touches the node outside the owner task.
//!
//! HTTP is hyper's (HTTP/1.1, one request per connection). Every wait is bounded: at most
//! [`limits::METRICS_CONNECTIONS_MAX`] connections at once (more are closed at once), a
//! connection's request headers must arrive within [`HEADER_READ_TIMEOUT`], and a connection
//! lives at most [`CONNECTION_TIMEOUT`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use keel_core::limits;
use keel_core::node::metrics::{Histogram as CoreHistogram, MetricsSnapshot, PartitionMetrics};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::server::Event;

/// How long a client may take to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last, request and answer included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a scrape waits for the owner task's answer (it answers between two steps).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// OpenMetrics text, which prometheus-client writes and Prometheus reads.
const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Fsync buckets (upper bounds, seconds): a sync on an SSD's cache takes tens of
/// microseconds, one on a busy spinning disk hundreds of milliseconds.
const FSYNC_BUCKETS_SECONDS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// The fsync thread's histogram: shared with it (prometheus-client's histogram is safe to
/// observe from one thread while another encodes it).
pub fn fsync_histogram() -> Histogram {
    Histogram::new(FSYNC_BUCKETS_SECONDS)
}

/// What the owner task hands a scrape.
pub struct Scraped {
    pub node: MetricsSnapshot,
    /// Every file and directory fsync the fsync thread made (clean files need none).
    pub fsync_seconds: Histogram,
    /// Peers with a TCP link open now (the node's own view, heard from within a second, is
    /// in the snapshot).
    pub peer_links_up: usize,
}

/// Serves `/metrics` on `listener` until the task is aborted or the owner is gone.
pub(crate) async fn serve(listener: TcpListener, inbound: mpsc::Sender<Event>) {
    let slots = Arc::new(Semaphore::new(limits::METRICS_CONNECTIONS_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics connection refused: too many open");
            continue;
        };
        let inbound = inbound.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| answer(request, inbound.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    inbound: mpsc::Sender<Event>,
) -> Result<Response<String>, Infallible> {
    let reply = |status: StatusCode, body: &str| {
        let mut response = Response::new(body.to_string());
        *response.status_mut() = status;
        Ok(response)
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    let (ask, answered) = oneshot::channel();
    if inbound.send(Event::Scrape { reply: ask }).await.is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is shutting down\n",
        );
    }
    let scraped = match tokio::time::timeout(SCRAPE_TIMEOUT, answered).await {
        Ok(Ok(scraped)) => scraped,
        _ => return reply(StatusCode::SERVICE_UNAVAILABLE, "the node did not answer\n"),
    };
    match encode(scraped) {
        Ok(text) => {
            let mut response = Response::new(text);
            let value = hyper::header::HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS);
            response.headers_mut().insert(CONTENT_TYPE, value);
            Ok(response)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            reply(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
        }
    }
}

/// The OpenMetrics text of a scrape.
pub fn encode(scraped: Scraped) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register(
        "keel_fsync_duration_seconds",
        "Time each fsync of a file or directory took, on the fsync thread",
        scraped.fsync_seconds,
    );
    registry.register(
        "keel_peer_links_up",
        "Other nodes with a TCP peer link open",
        ConstGauge::new(scraped.peer_links_up as i64),
    );
    registry.register_collector(Box::new(NodeCollector(scraped.node)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// A per-partition metric: its name, help, type, and its value for a partition (none: no
/// series for it).
type PerPartition = (
    &'static str,
    &'static str,
    MetricType,
    fn(&PartitionMetrics) -> Option<i64>,
);

/// The node's snapshot, turned into metrics when encoded.
#[derive(Debug)]
struct NodeCollector(MetricsSnapshot);

type Labels = Vec<(&'static str, String)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One labelled series per item; items for which `value` is `None` have none.
fn family<'a, T: 'a>(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    items: impl IntoIterator<Item = &'a T>,
    labels: impl Fn(&T) -> Labels,
    value: impl Fn(&T) -> Option<i64>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for item in items {
        let Some(v) = value(item) else { continue };
        let labels = labels(item);
        let series = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v.max(0) as u64).encode(series)?,
            _ => ConstGauge::new(v).encode(series)?,
        }
    }
    Ok(())
}

/// A core histogram in seconds: its buckets as they are (the encoder accumulates them) and
/// the bucket above every bound as +Inf.
fn histogram_buckets(h: &CoreHistogram) -> Vec<(f64, u64)> {
    let bounds = (h.bounds_ns().iter()).map(|ns| *ns as f64 / 1e9);
    (bounds.chain(std::iter::once(f64::INFINITY)))
        .zip(h.buckets().iter().copied())
        .collect()
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let c = &s.counters;
        let e = &mut encoder;
        gauge(e, "keel_node_id", "This node's id.", i64::from(s.node_id))?;

        let mut requests = e.encode_descriptor(
            "keel_requests",
            "Requests read from clients, by API.",
            None,
            MetricType::Counter,
        )?;
        for (api, r) in &c.requests {
            let labels: Labels = vec![("api", api_name(*api))];
            ConstCounter::new(r.requests).encode(requests.encode_family(&labels)?)?;
        }
        let mut durations = e.encode_descriptor(
            "keel_request_duration_seconds",
            "Time from reading a request to sending its answer, on the node's clock, by API.",
            None,
            MetricType::Histogram,
        )?;
        for (api, r) in &c.requests {
            let labels: Labels = vec![("api", api_name(*api))];
            durations
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    seconds(r.duration.sum_ns()),
                    r.duration.count(),
                    &histogram_buckets(&r.duration),
                    None,
                )?;
        }
        let rounds = &c.sync_round_duration;
        e.encode_descriptor(
            "keel_sync_round_duration_seconds",
            "Time a sync round (every file written since the last, synced together) took.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            seconds(rounds.sum_ns()),
            rounds.count(),
            &histogram_buckets(rounds),
            None,
        )?;

        let totals = [
            (
                "keel_client_received_bytes",
                "Bytes read from client connections.",
                c.client_bytes_received,
            ),
            (
                "keel_client_sent_bytes",
                "Bytes written to client connections.",
                c.client_bytes_sent,
            ),
            (
                "keel_peer_received_bytes",
                "Bytes of peer frames received from other nodes.",
                c.peer_bytes_received,
            ),
            (
                "keel_peer_sent_bytes",
                "Bytes of peer frames sent to other nodes.",
                c.peer_bytes_sent,
            ),
            (
                "keel_elections_started",
                "Elections this node started (epochs it campaigned in), over all its Raft groups.",
                c.elections_started,
            ),
            (
                "keel_leaderships_won",
                "Elections this node won, over all its Raft groups.",
                c.leaderships_won,
            ),
        ];
        for (name, help, value) in totals {
            counter(e, name, help, value)?;
        }
        let gauges = [
            (
                "keel_client_connections",
                "Client connections open.",
                s.client_connections,
            ),
            ("keel_peers", "Other nodes of the cluster.", s.peers),
            (
                "keel_peers_in_touch",
                "Other nodes heard from within the last second.",
                s.peers_in_touch,
            ),
        ];
        for (name, help, value) in gauges {
            gauge(e, name, help, value as i64)?;
        }
        gauge(
            e,
            "keel_controller_id",
            "The metadata quorum's leader as this node knows it (-1: none).",
            i64::from(s.controller.unwrap_or(-1)),
        )?;

        let partitions = &s.partitions;
        let labels = |p: &PartitionMetrics| -> Labels {
            vec![
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ]
        };
        let per_partition: [PerPartition; 10] = [
            (
                "keel_partition_log_end_offset",
                "The offset after the last batch in this node's log of the partition.",
                MetricType::Gauge,
                |p| p.log_end_offset,
            ),
            (
                "keel_partition_high_watermark",
                "The partition's high watermark (committed offsets) on this node.",
                MetricType::Gauge,
                |p| p.high_watermark,
            ),
            (
                "keel_partition_offline",
                "1 if this node took the partition offline (damaged on disk).",
                MetricType::Gauge,
                |p| Some(i64::from(p.log_end_offset.is_none())),
            ),
            (
                "keel_partition_leader_epoch",
                "The epoch of the partition's Raft group on this node.",
                MetricType::Gauge,
                |p| Some(i64::from(p.leader_epoch)),
            ),
            (
                "keel_partition_is_leader",
                "1 if this node leads the partition.",
                MetricType::Gauge,
                |p| Some(i64::from(p.is_leader)),
            ),
            (
                "keel_partition_replicas",
                "Replicas of the partition (its Raft group's voters).",
                MetricType::Gauge,
                |p| Some(p.replicas as i64),
            ),
            (
                "keel_partition_in_sync_replicas",
                "Replicas in sync (ISR), where this node leads the partition.",
                MetricType::Gauge,
                |p| p.in_sync_replicas.map(|n| n as i64),
            ),
            (
                "keel_partition_produce_bytes",
                "Record batch bytes this node appended from producers as the partition's leader.",
                MetricType::Counter,
                |p| Some(p.counters.produce_bytes as i64),
            ),
            (
                "keel_partition_fetch_bytes",
                "Record batch bytes this node served to clients' fetches.",
                MetricType::Counter,
                |p| Some(p.counters.fetch_bytes as i64),
            ),
            (
                "keel_partition_leaderships_won",
                "Times this node became the partition's leader.",
                MetricType::Counter,
                |p| Some(p.counters.leaderships_won as i64),
            ),
        ];
        for (name, help, kind, value) in per_partition {
            family(e, (name, help, kind), partitions, labels, value)?;
        }

        let followers: Vec<_> = (partitions.iter())
            .flat_map(|p| p.followers.iter().map(move |f| (p, f)))
            .collect();
        family(
            e,
            (
                "keel_partition_follower_lag_records",
                "Offsets a follower's log is behind this leader's log end, as its last fetch said.",
                MetricType::Gauge,
            ),
            &followers,
            |(p, f)| {
                let mut l = labels(p);
                l.push(("follower", f.node_id.to_string()));
                l
            },
            |(_, f)| f.lag_records,
        )?;
        Ok(())
    }
}

/// An API's name as a label value (`"Produce"`).
fn api_name(api: keel_core::protocol::ApiKey) -> String {
    api.name().to_string()
}
