//! What the node counts about itself, for operators: requests and how long they took, bytes
//! in and out, elections, sync rounds, and each partition's offsets, replicas and followers.
//!
//! Plain data. The node updates [`NodeCounters`] as it steps and each partition's
//! [`PartitionCounters`] beside its log; [`Node::metrics`] copies them, with what it reads off
//! the partitions and their Raft groups at that moment, into a [`MetricsSnapshot`]. The core
//! knows no exposition format: the adapter turns a snapshot into Prometheus's when it is
//! scraped. A latency is measured on the `now` the node is given, from the step that read a
//! request to the step that sent its answer (time queued in the adapter is not in it).
//! Counters only go up and start from zero at each start, as Prometheus expects.
//!
//! Cardinality is bounded by what the node holds, not by what clients send: one entry per API
//! the node serves ([`super::SERVED_APIS`]), one per partition it holds (at most
//! [`crate::limits::PARTITIONS_MAX`]: a partition's counters live and go with it), and one per
//! follower of a partition it leads (at most [`crate::limits::REPLICATION_FACTOR_MAX`]).

use std::collections::BTreeMap;

use crate::disk::Disk;
use crate::metadata::METADATA_TOPIC;
use crate::protocol::ApiKey;

use super::{Instant, Node};

const MS: u64 = 1_000_000;

/// Request latency buckets (upper bounds, ns): from a quarter of a millisecond (an answer
/// from memory) to 30 s (a Fetch may wait up to its `max_wait_ms`, an acks=all produce for
/// its followers).
pub const REQUEST_DURATION_BOUNDS_NS: [u64; 16] = [
    MS / 4,
    MS / 2,
    MS,
    5 * MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    1_000 * MS,
    2_500 * MS,
    5_000 * MS,
    10_000 * MS,
    30_000 * MS,
];

/// Sync round buckets (upper bounds, ns): an fsync of a few pages on an SSD takes well under
/// a millisecond, a round on a busy spinning disk hundreds.
pub const SYNC_ROUND_DURATION_BOUNDS_NS: [u64; 14] = [
    MS / 10,
    MS / 4,
    MS / 2,
    MS,
    5 * MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    1_000 * MS,
    5_000 * MS,
];

/// Observations in buckets with fixed upper bounds, Prometheus's classic histogram as plain
/// data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    bounds_ns: &'static [u64],
    /// `buckets[i]` counts observations above `bounds_ns[i - 1]` and at most `bounds_ns[i]`;
    /// the last counts those above every bound.
    buckets: Vec<u64>,
    sum_ns: u64,
}

impl Histogram {
    /// `bounds_ns` must increase.
    pub fn new(bounds_ns: &'static [u64]) -> Histogram {
        debug_assert!(bounds_ns.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds_ns,
            buckets: vec![0; bounds_ns.len() + 1],
            sum_ns: 0,
        }
    }

    pub fn observe(&mut self, ns: u64) {
        let index = self.bounds_ns.partition_point(|bound| *bound < ns);
        self.buckets[index] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// The upper bounds, in nanoseconds (the bucket above them all is implied).
    pub fn bounds_ns(&self) -> &'static [u64] {
        self.bounds_ns
    }

    /// Observations per bucket (not cumulative), one more than there are bounds.
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// One API's requests: how many were read, and how long those answered took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCounters {
    pub requests: u64,
    pub duration: Histogram,
}

/// The node's own counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCounters {
    /// Per API served (requests for others close their connection and are not counted).
    pub requests: BTreeMap<ApiKey, RequestCounters>,
    /// Bytes read from and written to client connections.
    pub client_bytes_received: u64,
    pub client_bytes_sent: u64,
    /// Bytes of peer frames received and sent.
    pub peer_bytes_received: u64,
    pub peer_bytes_sent: u64,
    /// Elections this node started (epochs it campaigned in, after a pre-vote) and won, over
    /// every Raft group it holds.
    pub elections_started: u64,
    pub leaderships_won: u64,
    /// Sync rounds, from the step that issued a round's syncs to the one that saw the last
    /// complete.
    pub sync_round_duration: Histogram,
}

impl Default for NodeCounters {
    fn default() -> Self {
        NodeCounters {
            requests: BTreeMap::new(),
            client_bytes_received: 0,
            client_bytes_sent: 0,
            peer_bytes_received: 0,
            peer_bytes_sent: 0,
            elections_started: 0,
            leaderships_won: 0,
            sync_round_duration: Histogram::new(&SYNC_ROUND_DURATION_BOUNDS_NS),
        }
    }
}

impl NodeCounters {
    pub(crate) fn request_read(&mut self, api: ApiKey) {
        self.api(api).requests += 1;
    }

    pub(crate) fn request_answered(&mut self, api: ApiKey, read: Instant, now: Instant) {
        let elapsed = now.0.saturating_sub(read.0);
        self.api(api).duration.observe(elapsed);
    }

    fn api(&mut self, api: ApiKey) -> &mut RequestCounters {
        self.requests.entry(api).or_insert_with(|| RequestCounters {
            requests: 0,
            duration: Histogram::new(&REQUEST_DURATION_BOUNDS_NS),
        })
    }
}

/// A partition's counters, kept beside its log (and gone with it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionCounters {
    /// Record batch bytes this node appended as the partition's leader, from producers.
    pub produce_bytes: u64,
    /// Record batch bytes this node served to Fetch requests from clients.
    pub fetch_bytes: u64,
    /// Times this node's group for the partition became its leader.
    pub leaderships_won: u64,
}

/// What a leader knows of one follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerMetrics {
    pub node_id: i32,
    /// The follower's log end as its latest fetch said (`None`: no fetch in this epoch yet).
    pub log_end_offset: Option<i64>,
    /// How many offsets it is behind the leader's log end.
    pub lag_records: Option<i64>,
    /// When it last fetched (a fetch the leader holds counts as one now), ms on the node's
    /// clock.
    pub last_fetch_ms: Option<u64>,
}

/// One partition as this node holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetrics {
    pub topic: String,
    pub partition: i32,
    /// `None` while the partition is offline.
    pub log_end_offset: Option<i64>,
    pub high_watermark: Option<i64>,
    /// The leader this node knows of, and the epoch of its group here.
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub is_leader: bool,
    /// Replicas (its group's voters).
    pub replicas: usize,
    /// Replicas in sync, as its leader counts them (`None` where this node does not lead).
    pub in_sync_replicas: Option<usize>,
    /// Its followers, where this node leads.
    pub followers: Vec<FollowerMetrics>,
    pub counters: PartitionCounters,
}

/// Everything the node reports about itself at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub node_id: i32,
    pub counters: NodeCounters,
    /// Client connections open (as the node counts them).
    pub client_connections: usize,
    /// The other nodes of the cluster, and those heard from within a second.
    pub peers: usize,
    pub peers_in_touch: usize,
    /// The metadata quorum's leader, as this node knows it.
    pub controller: Option<i32>,
    /// In topic and partition order; the metadata log (`__cluster_metadata`) included.
    pub partitions: Vec<PartitionMetrics>,
}

impl<D: Disk> Node<D> {
    /// What the node counted so far, and its partitions as they are at `now`.
    pub fn metrics(&self, now: Instant) -> MetricsSnapshot {
        let now_ms = now.as_millis().max(0) as u64;
        let mut partitions = Vec::new();
        for (topic, t) in &self.topics.by_name {
            for (index, p) in &t.partitions {
                let log = p.log.as_ref().ok();
                let replica = p.replica.as_ref();
                let raft = replica.map(|r| r.raft());
                let is_leader = replica.is_some_and(|r| r.is_leader());
                let log_end_offset = log.map(|l| l.log_end_offset());
                let followers = (raft.into_iter())
                    .flat_map(|raft| raft.followers(now_ms))
                    .map(|f| FollowerMetrics {
                        node_id: f.id,
                        log_end_offset: f.log_end,
                        lag_records: f
                            .log_end
                            .zip(log_end_offset)
                            .map(|(theirs, ours)| (ours - theirs).max(0)),
                        last_fetch_ms: f.last_fetch_ms,
                    })
                    .collect();
                partitions.push(PartitionMetrics {
                    topic: topic.clone(),
                    partition: *index,
                    log_end_offset,
                    high_watermark: log.and(replica).map(|r| r.high_watermark()),
                    leader: replica.and_then(|r| r.leader()),
                    leader_epoch: replica.map_or(-1, |r| r.leader_epoch()),
                    is_leader,
                    replicas: raft.map_or(p.replicas.len(), |r| r.voters().len()),
                    in_sync_replicas: (raft.filter(|_| is_leader)).map(|r| r.in_sync(now_ms).len()),
                    followers,
                    counters: p.counters,
                });
            }
        }
        let controller = (self.topics.by_name.get(METADATA_TOPIC))
            .and_then(|t| t.partitions.get(&0))
            .and_then(|p| p.replica.as_ref())
            .and_then(|r| r.leader());
        let peers = self.links.peers();
        MetricsSnapshot {
            node_id: self.config.node_id,
            counters: self.counters.clone(),
            client_connections: self.conns.len(),
            peers,
            peers_in_touch: peers.saturating_sub(self.links.down().len()),
            controller,
            partitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_the_first_bucket_it_fits() {
        static BOUNDS: [u64; 3] = [10, 100, 1_000];
        let mut h = Histogram::new(&BOUNDS);
        for ns in [0, 10, 11, 100, 999, 1_000, 1_001, u64::MAX] {
            h.observe(ns);
        }
        // `le` is inclusive, as Prometheus's is; the last bucket is +Inf.
        assert_eq!(h.buckets(), &[2, 2, 2, 2]);
        assert_eq!(h.count(), 8);
        assert_eq!(h.sum_ns(), u64::MAX, "the sum saturates rather than wraps");
    }

    #[test]
    fn request_durations_are_measured_on_the_time_the_node_is_given() {
        let mut counters = NodeCounters::default();
        counters.request_read(ApiKey::Produce);
        counters.request_read(ApiKey::Produce);
        counters.request_answered(ApiKey::Produce, Instant(5 * MS), Instant(7 * MS));
        // A clock that went back measures nothing rather than ages.
        counters.request_answered(ApiKey::Produce, Instant(9 * MS), Instant(8 * MS));
        let produce = &counters.requests[&ApiKey::Produce];
        assert_eq!(produce.requests, 2);
        assert_eq!(produce.duration.count(), 2);
        assert_eq!(produce.duration.sum_ns(), 2 * MS);
        // 2 ms falls in the 2.5 ms bucket, 0 in the first.
        assert_eq!(produce.duration.buckets()[0], 1);
        assert_eq!(produce.duration.buckets()[3], 1);
        assert!(!counters.requests.contains_key(&ApiKey::Fetch));
    }
}
