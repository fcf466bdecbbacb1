//! The network between nodes (and the one fault of a cluster's machines together, a
//! correlated crash, whose rate is drawn with the network's): what happens to a peer frame on its way, and the partitions
//! that cut links. Frames are datagrams here, not a stream: each one may be lost, delayed
//! (and so overtaken by a later one), duplicated or held by a clogged link, with the rates
//! the seed's [`NetFaults`] chose. Peer frames carry whole Raft messages that tolerate all of
//! this (a frame's CRC, answers that echo what they answer), so a model harsher than TCP
//! covers what TCP can do (reconnects lose and resend) and more.
//!
//! Partitions are directed: a cut from `a` to `b` loses what `a` sends to `b`. A symmetric
//! partition cuts both ways between two sides; an asymmetric one cuts one direction only (a
//! node that hears and is not heard, or the reverse). A heal removes every cut.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::Xoshiro256PlusPlus;
use rand::RngExt;

const MS: u64 = 1_000_000;

/// What a seed decides about the network between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NetFaults {
    /// One-way delay of a frame, drawn uniformly in this range (microseconds).
    pub latency_us: (u64, u64),
    pub loss_probability: f64,
    pub duplicate_probability: f64,
    /// The chance that a frame is held for up to `reorder_delay_ms_max` more, so that later
    /// frames overtake it.
    pub reorder_probability: f64,
    pub reorder_delay_ms_max: u64,
    /// Mean time between two partitions (each healed after a while), if any.
    pub partition_interval_ms: Option<u64>,
    /// Mean time between two clogs of a link (frames held until it clears), if any.
    pub clog_interval_ms: Option<u64>,
    /// Mean time between two crashes of a majority of the machines at once (a power cut of
    /// a rack), if any: what only fsync durability survives.
    pub correlated_crash_interval_ms: Option<u64>,
    /// Mean time between two freezes of a node's process (a long pause, a stopped VM: it
    /// reads nothing, and wakes to what arrived meanwhile), if any.
    pub pause_interval_ms: Option<u64>,
}

impl NetFaults {
    /// Draws the network's faults: each kind on for about half the seeds.
    pub fn draw(rng: &mut Xoshiro256PlusPlus) -> NetFaults {
        let maybe = |rng: &mut Xoshiro256PlusPlus, low: f64, high: f64| {
            if rng.random_bool(0.5) {
                rng.random_range(low..high)
            } else {
                0.0
            }
        };
        let low = rng.random_range(50..=1_000);
        NetFaults {
            latency_us: (low, low + rng.random_range(0..=5_000)),
            loss_probability: maybe(rng, 0.001, 0.1),
            duplicate_probability: maybe(rng, 0.001, 0.05),
            reorder_probability: maybe(rng, 0.01, 0.3),
            reorder_delay_ms_max: rng.random_range(1..=200),
            partition_interval_ms: rng
                .random_bool(0.6)
                .then(|| rng.random_range(1_000..=15_000)),
            clog_interval_ms: rng
                .random_bool(0.4)
                .then(|| rng.random_range(1_000..=10_000)),
            correlated_crash_interval_ms: rng
                .random_bool(0.3)
                .then(|| rng.random_range(3_000..=20_000)),
            // Drawn last: a knob added later, every earlier one keeps its draw.
            pause_interval_ms: rng
                .random_bool(0.4)
                .then(|| rng.random_range(2_000..=15_000)),
        }
    }
}

/// A partition the nemesis chose: which directed links it cuts, for a report line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub kind: &'static str,
    pub cuts: BTreeSet<(usize, usize)>,
}

/// The links between `nodes` nodes (indexes `0..nodes`), their cuts and clogs.
#[derive(Debug)]
pub struct Network {
    nodes: usize,
    faults: NetFaults,
    /// Directed links that lose everything.
    cut: BTreeSet<(usize, usize)>,
    /// Directed links that hold frames until this time.
    clogged_until: BTreeMap<(usize, usize), u64>,
    /// Faults stopped: frames arrive after their latency, nothing more.
    quiet: bool,
}

/// What becomes of one frame: delivered at these times (none: lost; two: duplicated).
pub type Deliveries = Vec<u64>;

impl Network {
    pub fn new(nodes: usize, faults: NetFaults) -> Network {
        Network {
            nodes,
            faults,
            cut: BTreeSet::new(),
            clogged_until: BTreeMap::new(),
            quiet: false,
        }
    }

    pub fn faults(&self) -> &NetFaults {
        &self.faults
    }

    /// Stops every fault and heals every cut and clog.
    pub fn quiet(&mut self) {
        self.quiet = true;
        self.heal();
        self.clogged_until.clear();
    }

    /// When a frame sent now from `from` to `to` arrives, with the faults that struck it
    /// counted in `faults`.
    pub fn send(
        &mut self,
        rng: &mut Xoshiro256PlusPlus,
        now_ns: u64,
        from: usize,
        to: usize,
        faults: &mut BTreeMap<&'static str, u64>,
    ) -> Deliveries {
        let mut count = |kind| *faults.entry(kind).or_default() += 1;
        let (low, high) = self.faults.latency_us;
        let mut at = now_ns + rng.random_range(low..=high) * 1_000;
        if self.quiet {
            return vec![at];
        }
        if self.cut.contains(&(from, to)) {
            count("peer-frame-cut");
            return Vec::new();
        }
        if self.faults.loss_probability > 0.0 && rng.random_bool(self.faults.loss_probability) {
            count("peer-frame-lost");
            return Vec::new();
        }
        if self.faults.reorder_probability > 0.0 && rng.random_bool(self.faults.reorder_probability)
        {
            count("peer-frame-delayed");
            at += rng.random_range(0..=self.faults.reorder_delay_ms_max) * MS;
        }
        if let Some(until) = self.clogged_until.get(&(from, to)) {
            at = at.max(*until);
        }
        let mut deliveries = vec![at];
        if self.faults.duplicate_probability > 0.0
            && rng.random_bool(self.faults.duplicate_probability)
        {
            count("peer-frame-duplicated");
            let (low, high) = self.faults.latency_us;
            deliveries.push(at + rng.random_range(low..=high) * 1_000);
        }
        deliveries
    }

    /// Whether a frame from `from` may reach `to` now (a cut made after it was sent loses it
    /// too: the link is down when it arrives).
    pub fn delivers(&self, from: usize, to: usize) -> bool {
        self.quiet || !self.cut.contains(&(from, to))
    }

    /// Cuts the network in a way drawn at random: two sides cut both ways, one node isolated,
    /// or one direction only.
    pub fn partition(&mut self, rng: &mut Xoshiro256PlusPlus) -> Partition {
        let n = self.nodes;
        let (kind, cuts) = match rng.random_range(0..3) {
            0 => {
                // Two sides, each non-empty.
                let mut side: Vec<bool> = (0..n).map(|_| rng.random_bool(0.5)).collect();
                if side.iter().all(|s| *s) || side.iter().all(|s| !*s) {
                    side[rng.random_range(0..n)] ^= true;
                }
                let cuts = (0..n)
                    .flat_map(|a| (0..n).map(move |b| (a, b)))
                    .filter(|(a, b)| side[*a] != side[*b])
                    .collect();
                ("partition-halves", cuts)
            }
            1 => {
                let alone = rng.random_range(0..n);
                let cuts = (0..n)
                    .filter(|b| *b != alone)
                    .flat_map(|b| [(alone, b), (b, alone)])
                    .collect();
                ("partition-isolate", cuts)
            }
            _ => {
                // One node's frames out are lost, or its frames in: it hears and is not
                // heard, or is heard and does not hear.
                let node = rng.random_range(0..n);
                let outgoing = rng.random_bool(0.5);
                let cuts = (0..n)
                    .filter(|b| *b != node)
                    .map(|b| if outgoing { (node, b) } else { (b, node) })
                    .collect();
                ("partition-one-way", cuts)
            }
        };
        self.cut = cuts;
        Partition {
            kind,
            cuts: self.cut.clone(),
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Holds frames on a link drawn at random until `until_ns`.
    pub fn clog(&mut self, rng: &mut Xoshiro256PlusPlus, until_ns: u64) -> (usize, usize) {
        let from = rng.random_range(0..self.nodes);
        let mut to = rng.random_range(0..self.nodes - 1);
        if to >= from {
            to += 1;
        }
        self.clogged_until.insert((from, to), until_ns);
        (from, to)
    }

    pub fn is_cut(&self) -> bool {
        !self.cut.is_empty()
    }
}
