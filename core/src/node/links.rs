//! The node's links to its peers: heartbeats, and what the frames' link headers say.
//!
//! Idle Raft groups send nothing (see the `raft` module): a follower's fetch waits at its
//! leader for as long as the two nodes are in touch. Whether they are is known here, once
//! per node pair rather than once per group. Every frame carries a link header
//! ([`LinkHeader`]), and a node sends each peer an empty frame, a heartbeat, when it has sent
//! it nothing for [`HEARTBEAT_INTERVAL_MS`]. Then:
//!
//! - a peer not heard from for [`PEER_TIMEOUT_MS`] is *down*: every group hears of it
//!   (followers of it campaign, leaders stop counting its parked fetches), and hears when it
//!   is *up* again;
//! - a frame that skips a number, comes from a new process of the peer, or reports a new gap
//!   in this node's own frames means messages between the two may have been lost: every
//!   group hears of a *reset* (a follower of that peer sends its fetch again).
//!
//! So an idle cluster sends a heartbeat per node pair per interval, and an idle group costs
//! nothing per tick. A frame that arrives late or twice is a number already seen: its
//! messages are delivered (Raft copes with both), and nothing is reset.

use std::collections::BTreeMap;

use crate::disk::Disk;
use crate::raft::wire::LinkHeader;
use crate::raft::NodeId;

use super::replication::ELECTION_TIMEOUT_MS;
use super::{Instant, Node};

/// A node sends each peer at least one frame this often (an empty one if it has nothing
/// else): ten per peer timeout, so that a few lost frames do not make a peer look down.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;

/// A peer not heard from for this long is down: the followers of the groups it leads
/// campaign (after a random part of an election timeout, so that they do not all at once).
pub const PEER_TIMEOUT_MS: u64 = ELECTION_TIMEOUT_MS;

/// What changed in the node's view of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkEvent {
    Up,
    Down,
    Reset,
}

#[derive(Debug, Default)]
struct PeerLink {
    last_heard_ms: u64,
    up: bool,
    last_sent_ms: Option<u64>,
    /// The number of the last frame sent to the peer.
    seq_out: u64,
    /// The peer's process heard from last, and the number its next frame should have.
    their_session: Option<u64>,
    next_seq_in: u64,
    /// Gaps seen in the numbers of the frames of `their_session` (reported back to it).
    gaps_in: u64,
    /// The most gaps in this node's frames the peer has reported (in this session).
    gaps_reported: u64,
}

/// Every peer's link, and this process's session.
#[derive(Debug, Default)]
pub(super) struct Links {
    /// Drawn at the first step (zero until then).
    session: u64,
    started: bool,
    peers: BTreeMap<NodeId, PeerLink>,
}

impl<D: crate::disk::Disk> super::Node<D> {
    /// This process's link session (drawn at the first step; zero before).
    pub(super) fn links_session(&self) -> u64 {
        self.links.session
    }
}

impl Links {
    pub(super) fn new(peers: impl IntoIterator<Item = NodeId>) -> Links {
        Links {
            session: 0,
            started: false,
            // Every peer counts as in touch until it has been silent for a timeout from the
            // first step: groups made before then must not take them for down.
            peers: peers
                .into_iter()
                .map(|id| {
                    let link = PeerLink {
                        up: true,
                        ..PeerLink::default()
                    };
                    (id, link)
                })
                .collect(),
        }
    }

    /// The peers now down.
    /// How many peers the node has links to.
    pub(super) fn peers(&self) -> usize {
        self.peers.len()
    }

    pub(super) fn down(&self) -> Vec<NodeId> {
        (self.peers.iter())
            .filter(|(_, l)| !l.up)
            .map(|(id, _)| *id)
            .collect()
    }

    /// When a heartbeat is next due or a peer would next be found down.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let ms = (self.peers.values())
            .flat_map(|l| {
                let heartbeat = l.last_sent_ms.map_or(0, |at| at + HEARTBEAT_INTERVAL_MS);
                let down = l.up.then_some(l.last_heard_ms + PEER_TIMEOUT_MS);
                [Some(heartbeat), down]
            })
            .flatten()
            .min()?;
        Some(Instant::from_millis(ms))
    }
}

impl<D: Disk> Node<D> {
    /// At the first step: this process's session (from the node's PRNG and the time, so
    /// that a node that lost its disk, and with it its count of starts, still draws a new
    /// one), and every peer counted as heard from now.
    pub(super) fn start_links(&mut self, now: Instant) {
        if self.links.started {
            return;
        }
        self.links.started = true;
        self.links.session = super::node_rng(&mut self.rng_state) ^ now.0.rotate_left(32);
        let now_ms = now.as_millis() as u64;
        for link in self.links.peers.values_mut() {
            link.last_heard_ms = now_ms;
        }
    }

    /// The link header of the next frame to `to` (which is now sent).
    pub(super) fn link_header(&mut self, now: Instant, to: NodeId) -> LinkHeader {
        let session = self.links.session;
        let Some(link) = self.links.peers.get_mut(&to) else {
            return LinkHeader {
                session,
                ..LinkHeader::default()
            };
        };
        link.seq_out += 1;
        link.last_sent_ms = Some(now.as_millis() as u64);
        LinkHeader {
            session,
            seq: link.seq_out,
            peer_session: link.their_session.unwrap_or(0),
            gaps: link.gaps_in,
        }
    }

    /// Peers owed a heartbeat: nothing sent to them for [`HEARTBEAT_INTERVAL_MS`].
    pub(super) fn heartbeats_due(&self, now: Instant) -> Vec<NodeId> {
        let now_ms = now.as_millis() as u64;
        (self.links.peers.iter())
            .filter(|(_, l)| {
                l.last_sent_ms
                    .is_none_or(|at| now_ms >= at + HEARTBEAT_INTERVAL_MS)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// A frame with `header` arrived from `from`: whether the peer just came up, and whether
    /// messages between the two may have been lost.
    pub(super) fn link_received(
        &mut self,
        now: Instant,
        from: NodeId,
        header: &LinkHeader,
    ) -> (bool, bool) {
        let session = self.links.session;
        let Some(link) = self.links.peers.get_mut(&from) else {
            return (false, false);
        };
        link.last_heard_ms = now.as_millis() as u64;
        let came_up = !link.up;
        link.up = true;
        let mut reset = false;
        if link.their_session != Some(header.session) {
            // A new process of the peer (or a late frame of an older one): whatever it held
            // of this node's (parked fetches, answers on their way) is gone. Its first
            // frame is where numbering starts. The first frame this process hears from the
            // peer is a reset too: what was sent before it (a new leader's `BeginEpoch`
            // while the peer was cut off or frozen) may never have arrived.
            reset = true;
            link.their_session = Some(header.session);
            link.next_seq_in = header.seq + 1;
            link.gaps_in = 0;
            link.gaps_reported = 0;
        } else if header.seq > link.next_seq_in {
            link.gaps_in += 1;
            link.next_seq_in = header.seq + 1;
            reset = true;
        } else if header.seq == link.next_seq_in {
            link.next_seq_in += 1;
        }
        if header.peer_session == session && header.gaps > link.gaps_reported {
            // The peer missed frames of this node's.
            link.gaps_reported = header.gaps;
            reset = true;
        }
        (came_up, reset)
    }

    /// Peers not heard from for [`PEER_TIMEOUT_MS`] are down: every group hears of it.
    pub(super) fn check_links(&mut self, now: Instant) {
        let now_ms = now.as_millis() as u64;
        let mut gone = Vec::new();
        for (id, link) in &mut self.links.peers {
            if link.up && now_ms >= link.last_heard_ms + PEER_TIMEOUT_MS {
                link.up = false;
                gone.push(*id);
            }
        }
        for peer in gone {
            tracing::info!(peer, "peer not heard from; its groups look for leaders");
            self.peer_event(now, peer, LinkEvent::Down);
        }
    }

    /// Every group hears what changed of `peer`.
    pub(super) fn peer_event(&mut self, now: Instant, peer: NodeId, event: LinkEvent) {
        for log_id in self.topics.log_ids() {
            self.drive_replica(now, log_id, |raft, ms, out| match event {
                LinkEvent::Up => raft.handle_peer_up(ms, peer, out),
                LinkEvent::Down => raft.handle_peer_down(ms, peer, out),
                LinkEvent::Reset => raft.handle_peer_reset(ms, peer, out),
            });
        }
    }
}
