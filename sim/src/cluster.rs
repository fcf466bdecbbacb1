//! A static cluster of real nodes, each on its own simulated disk, wired peer to peer: every
//! partition a Raft group over all of them (`Config::cluster`). Peer frames are delivered in
//! order unless a node is cut off; a sync completes [`SYNC_MS`] after it is asked for (frames
//! and appends that arrive meanwhile are not in it); time jumps to the next event.
//! Topics are created on each node by the same request with the same seed, so they get the
//! same ids (until the metadata quorum names them once for all).
//!
//! The cluster tests (`sim/tests/cluster.rs`) and `keel-sim scale` drive it. It has no faults
//! of its own beyond crashes and cuts the caller asks for: the fault-injecting multi-node
//! simulator is still to come.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use keel_core::node::{Broker, Config, Input, Instant, Node, Output};
use keel_core::protocol::codec::{decode_response, encode_request};
use keel_core::protocol::{FrameDecoder, Request, RequestHeader, Response};

use crate::SimDisk;

/// The one client connection each node has.
const CONN: u64 = 1;
/// How long a sync takes: long enough that a sync round is in flight while frames arrive (as
/// on a real disk), short enough not to slow the tests.
pub const SYNC_MS: u64 = 1;

/// What the cluster did, for reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterCounts {
    pub peer_frames: u64,
    pub peer_bytes: u64,
    pub node_steps: u64,
    pub syncs: u64,
}

pub struct Cluster {
    pub now: Instant,
    ids: Vec<i32>,
    seed: u64,
    pub nodes: BTreeMap<i32, Node<SimDisk>>,
    /// Disks of crashed nodes, until they restart.
    pub down: BTreeMap<i32, SimDisk>,
    /// Peer frames in flight: (from, to, bytes).
    net: VecDeque<(i32, i32, Bytes)>,
    /// Syncs asked for and not yet done: (when they complete, node, token, file).
    syncing: VecDeque<(
        Instant,
        i32,
        keel_core::node::SyncToken,
        keel_core::disk::FileId,
    )>,
    /// Nodes cut off from the others (their frames, both ways, are lost).
    pub cut: BTreeSet<i32>,
    frames: BTreeMap<i32, FrameDecoder>,
    responses: BTreeMap<i32, VecDeque<Bytes>>,
    /// Nodes that closed the client's connection: it opens again with the next request.
    closed: BTreeSet<i32>,
    correlation_id: i32,
    pub counts: ClusterCounts,
    /// Check every node's invariants after each of its steps (on by default; a measurement
    /// of the node's own cost turns it off: the check walks every partition).
    pub check_invariants: bool,
}

impl Cluster {
    /// `nodes` nodes (ids 1..=nodes) on fresh disks, all with `seed`.
    pub fn new(nodes: i32, seed: u64) -> Cluster {
        let mut cluster = Cluster {
            now: Instant::from_millis(1_700_000_000_000),
            ids: (1..=nodes).collect(),
            seed,
            nodes: BTreeMap::new(),
            down: BTreeMap::new(),
            net: VecDeque::new(),
            syncing: VecDeque::new(),
            cut: BTreeSet::new(),
            frames: BTreeMap::new(),
            responses: BTreeMap::new(),
            closed: BTreeSet::new(),
            correlation_id: 0,
            counts: ClusterCounts::default(),
            check_invariants: true,
        };
        for id in cluster.ids.clone() {
            cluster.start(id, SimDisk::new());
        }
        cluster
    }

    pub fn ids(&self) -> &[i32] {
        &self.ids
    }

    pub fn config(&self, id: i32) -> Config {
        Config {
            node_id: id,
            seed: self.seed,
            advertised_host: format!("node{id}"),
            cluster: (self.ids.iter())
                .map(|n| Broker {
                    node_id: *n,
                    // What the operator configured; each node registers its own advertised
                    // host with the metadata quorum, and clients are told that one.
                    host: format!("configured-node{n}"),
                    port: 9092,
                    rack: None,
                })
                .collect(),
            ..Config::default()
        }
    }

    fn start(&mut self, id: i32, disk: SimDisk) {
        let (node, _) = Node::new(self.config(id), disk).expect("node starts");
        self.nodes.insert(id, node);
        self.frames.remove(&id);
        self.responses.remove(&id);
        self.step(id, Input::ConnOpened { conn: CONN });
    }

    /// The machine of `id` goes down: unsynced writes are lost.
    pub fn crash(&mut self, id: i32) {
        let node = self.nodes.remove(&id).expect("up");
        let mut disk = node.into_disk();
        disk.crash();
        self.down.insert(id, disk);
        self.net.retain(|(from, to, _)| *from != id && *to != id);
        self.syncing.retain(|(_, node, _, _)| *node != id);
    }

    pub fn restart(&mut self, id: i32) {
        let disk = self.down.remove(&id).expect("down");
        self.start(id, disk);
    }

    pub fn step(&mut self, id: i32, input: Input<'_>) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let mut out = Vec::new();
        node.step(self.now, input, &mut out);
        if self.check_invariants {
            node.check_invariants();
        }
        self.counts.node_steps += 1;
        for output in out {
            match output {
                Output::ConnSend { bytes, .. } => {
                    let decoder =
                        (self.frames.entry(id)).or_insert_with(|| FrameDecoder::new(1 << 30));
                    decoder.push(&bytes);
                    while let Some(frame) = decoder.next_frame().expect("whole frames") {
                        self.responses.entry(id).or_default().push_back(frame);
                    }
                }
                Output::ConnClose { reason, .. } => {
                    // A node with no metadata quorum in reach closes a Metadata request's
                    // connection: the client's next request opens it again.
                    tracing::debug!(id, %reason, "the node closed the client's connection");
                    self.frames.remove(&id);
                    self.closed.insert(id);
                }
                Output::Sync { token, file } => {
                    let done = self.now.plus_millis(SYNC_MS);
                    self.syncing.push_back((done, id, token, file));
                }
                Output::Halt { reason } => panic!("n{id} halted: {reason}"),
                Output::PeerSend { to, bytes } => {
                    self.counts.peer_frames += 1;
                    self.counts.peer_bytes += bytes.len() as u64;
                    self.net.push_back((id, to, bytes));
                }
            }
        }
    }

    /// Completes the syncs due by now, in the order they were asked for.
    fn complete_syncs(&mut self) {
        while let Some(&(done, id, token, file)) = self.syncing.front() {
            if done > self.now {
                return;
            }
            self.syncing.pop_front();
            self.counts.syncs += 1;
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let result = node.disk_mut().sync(file);
            self.step(id, Input::Synced { token, result });
        }
    }

    /// Runs for `ms` of simulated time: frames delivered in order, timers fired.
    pub fn run(&mut self, ms: u64) {
        let until = self.now.plus_millis(ms);
        loop {
            while let Some((from, to, bytes)) = self.net.pop_front() {
                if self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                self.step(
                    to,
                    Input::PeerMessage {
                        from,
                        bytes: &bytes,
                    },
                );
            }
            self.complete_syncs();
            if !self.net.is_empty() {
                continue;
            }
            let next = (self.nodes.values())
                .filter_map(|n| n.next_deadline())
                .chain(self.syncing.front().map(|(done, ..)| *done))
                .min()
                .unwrap_or(until)
                .max(self.now);
            if next > until {
                self.now = until;
                return;
            }
            self.now = next;
            // Only nodes whose deadline came wake (as a process sleeping until its next
            // deadline does): work a node left for a later step shows as the wait it is.
            for id in self.ids.clone() {
                let due = (self.nodes.get(&id))
                    .and_then(|n| n.next_deadline())
                    .is_some_and(|d| d <= next);
                if due {
                    self.step(id, Input::Timeout);
                }
            }
        }
    }

    /// Sends `request` to node `id` without waiting; returns its correlation id.
    pub fn send(&mut self, id: i32, version: i16, request: &Request) -> i32 {
        self.correlation_id += 1;
        let header = RequestHeader {
            api_key: request.api_key() as i16,
            api_version: version,
            correlation_id: self.correlation_id,
            client_id: Some("cluster".into()),
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        encode_request(&mut buf, &header, request).expect("encodable");
        if self.closed.remove(&id) {
            self.step(id, Input::ConnOpened { conn: CONN });
        }
        self.step(
            id,
            Input::ConnBytes {
                conn: CONN,
                bytes: &buf,
            },
        );
        self.correlation_id
    }

    /// The answer with `correlation_id` from node `id`, if it came (earlier answers, to
    /// requests given up on, are dropped on the way).
    pub fn take_answer(
        &mut self,
        id: i32,
        correlation_id: i32,
        request: &Request,
        version: i16,
    ) -> Option<Response> {
        while let Some(frame) = self.responses.get_mut(&id).and_then(|r| r.pop_front()) {
            if frame[..4] != correlation_id.to_be_bytes() {
                continue;
            }
            let (_, response) =
                decode_response(frame, request.api_key(), version).expect("decodable");
            return Some(response);
        }
        None
    }

    /// Whether node `id` has answers waiting to be taken.
    pub fn has_answers(&self, id: i32) -> bool {
        self.responses.get(&id).is_some_and(|r| !r.is_empty())
    }

    /// Sends `request` to node `id`; runs the cluster until it answers (or `ms` passed).
    pub fn call(&mut self, id: i32, version: i16, request: Request, ms: u64) -> Option<Response> {
        let correlation_id = self.send(id, version, &request);
        for _ in 0..ms {
            if let Some(response) = self.take_answer(id, correlation_id, &request, version) {
                return Some(response);
            }
            self.run(1);
        }
        None
    }
}
