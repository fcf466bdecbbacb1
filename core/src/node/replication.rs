//! The node's side of replication: a Raft group per partition, driven by the node's inputs
//! (peer messages, timers, sync rounds, appends) and performing the engine's commands
//! through [`Replica::apply`]. Messages leave coalesced: every group's messages for one peer
//! in a step travel in one frame.
//!
//! Timers cost nothing for idle groups: each group's next deadline sits in one ordered set,
//! and only groups whose deadline passed are ticked.

use crate::disk::{Disk, DiskError};
use crate::limits;
use crate::log::LogError;
use crate::partition::{leader_change_batch, Effects, Replica};
use crate::raft::wire::{self, GroupId, PeerFrame};
use crate::raft::{Command, FetchReply, Message, NodeId, Persisted, Raft, RaftBug, RaftConfig};
use crate::record::RecordBatch;

use super::links::LinkEvent;
use super::{Durability, Instant, Node, Output, PlantedBug};

/// A follower that hears nothing from its leader for this long (one to two times it)
/// campaigns; a leader not fetched from by a majority for this long resigns.
pub const ELECTION_TIMEOUT_MS: u64 = 1_000;
/// A follower whose fetch's answer it could not act on asks again after this long.
pub const REPLICA_FETCH_RETRY_MS: u64 = 500;
/// A follower whose fetch had no answer for this long sends it again, although its leader's
/// node is in touch: a leader holds a fetch it has nothing for without limit (idle groups
/// are silent), so this only catches a fetch dropped where no gap in the link showed. It is
/// what an idle group costs: one fetch per follower this often.
pub const REPLICA_FETCH_REFRESH_MS: u64 = 10_000;
/// A follower that has not reached its leader's log end for this long leaves the ISR that
/// Metadata reports (Kafka's `replica.lag.time.max.ms`, 30 s since Kafka 2.5).
pub const REPLICA_LAG_TIME_MAX_MS: u64 = 30_000;

impl<D: Disk> Node<D> {
    /// The Raft configuration of a partition's group on this node: its voters are the
    /// partition's replicas (every node, for the metadata quorum and for partitions made
    /// before assignments were recorded).
    fn raft_config(&self, group: &GroupId, replicas: &[i32]) -> RaftConfig {
        let mut seed = self.config.seed ^ u64::from(group.partition as u32);
        for chunk in group.topic_id.chunks(8) {
            seed = seed.rotate_left(17) ^ u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
        }
        RaftConfig {
            id: self.config.node_id,
            voters: if replicas.is_empty() {
                self.brokers().iter().map(|b| b.node_id).collect()
            } else {
                replicas.to_vec()
            },
            election_timeout_ms: ELECTION_TIMEOUT_MS,
            fetch_retry_ms: REPLICA_FETCH_RETRY_MS,
            fetch_refresh_ms: REPLICA_FETCH_REFRESH_MS,
            fetch_max_bytes: limits::REPLICA_FETCH_MAX_BYTES,
            // The metadata log is always fsynced, as KRaft's is: a topic the quorum lost
            // would take its partitions' data along.
            commit_unsynced: self.config.durability == Durability::Replicated
                && group.topic_id != crate::metadata::METADATA_TOPIC_ID.0,
            in_sync_lag_ms: REPLICA_LAG_TIME_MAX_MS,
            seed,
            planted: match self.config.planted_bug {
                Some(PlantedBug::VoteWithoutSync) => Some(RaftBug::VoteWithoutSync),
                Some(PlantedBug::NoTruncate) => Some(RaftBug::NoTruncate),
                Some(PlantedBug::NoReannounce) => Some(RaftBug::NoReannounce),
                _ => None,
            },
        }
    }

    /// Gives every online partition without one its Raft group (after recovery, after a
    /// topic or partitions were created).
    pub(super) fn create_replicas(&mut self, now: Instant) {
        let now_ms = now.as_millis() as u64;
        let down = self.links.down();
        for (log_id, group, replicas) in self.topics.without_replica() {
            let config = self.raft_config(&group, &replicas);
            let persisted = self.votes.get(&group);
            let partition = self.topics.by_log_id(log_id).expect("listed");
            let log = partition.log.as_ref().expect("online");
            partition.replica = Some(Replica::new(group, config, persisted, log, now_ms));
            self.schedule(log_id);
            for &peer in &down {
                self.drive_replica(now, log_id, |raft, ms, out| {
                    raft.handle_peer_down(ms, peer, out)
                });
            }
        }
    }

    /// Runs `f` on the Raft engine of partition `log_id` and performs what it commands.
    pub(super) fn drive_replica(
        &mut self,
        now: Instant,
        log_id: u64,
        f: impl FnOnce(&mut Raft, u64, &mut Vec<Command>),
    ) {
        let now_ms = now.as_millis();
        let expiry_ms = self.config.log.producer_id_expiration_ms;
        let Some(partition) = self.topics.by_log_id(log_id) else {
            return;
        };
        let (Ok(log), Some(replica)) = (partition.log.as_mut(), partition.replica.as_mut()) else {
            return;
        };
        let mut commands = Vec::new();
        f(replica.raft_mut(), now_ms as u64, &mut commands);
        let mut effects = Effects::default();
        let mut rebuild = None;
        match replica.apply(
            &mut self.disk,
            log,
            commands,
            now_ms,
            expiry_ms,
            &mut effects,
        ) {
            Ok(()) => {}
            Err(LogError::Disk(DiskError::Full)) => {
                // A full disk passes, and the log is whole (a failed append adds nothing):
                // the group starts again from what the log holds, as it would after a
                // restart, and fetches again. Its high watermark never goes back.
                tracing::warn!(
                    log_id,
                    "replica append failed on a full disk; group restarts"
                );
                rebuild = Some(replica.high_watermark());
                partition.replica = None;
                self.data_version += 1;
            }
            Err(e) => {
                // The log cannot follow its group: the partition goes offline, as a Kafka
                // log directory that failed does.
                tracing::error!(log_id, error = %e, "replica failed; partition offline");
                partition.log = Err(e.to_string());
                partition.replica = None;
                self.data_version += 1;
            }
        }
        for (group, persisted) in effects.votes {
            self.votes.set(group, persisted);
        }
        for (to, group, message) in effects.sends {
            self.peer_outbox
                .entry(to)
                .or_default()
                .push((group, message));
        }
        if effects.changed {
            self.data_version += 1;
        }
        if effects.wrote {
            self.topics.touch(log_id);
        }
        self.schedule(log_id);
        if let Some(high_watermark) = rebuild {
            self.create_replicas(now);
            if let Some(replica) = (self.topics.by_log_id(log_id)).and_then(|p| p.replica.as_mut())
            {
                replica.keep_high_watermark(high_watermark);
            }
        }
        let marker_wanted = (self.topics.by_log_id(log_id))
            .and_then(|p| p.replica.as_ref())
            .is_some_and(|r| r.marker_wanted);
        if effects.campaigned {
            self.counters.elections_started += 1;
        }
        if effects.became_leader {
            self.counters.leaderships_won += 1;
            if let Some(partition) = self.topics.by_log_id(log_id) {
                partition.counters.leaderships_won += 1;
            }
        }
        if effects.became_leader && self.brokers().len() > 1 {
            self.leader_reports.insert(log_id, 0);
        }
        if effects.became_leader || marker_wanted {
            self.append_leader_marker(now, log_id);
        }
    }

    /// A new leader that cannot tell what is committed (its high watermark is below its log's
    /// end) appends a leader-change marker, so that its epoch commits, and with it everything
    /// before, without waiting for a client to write. It serves reads only from then on
    /// (`Replica::serving`).
    fn append_leader_marker(&mut self, now: Instant, log_id: u64) {
        let leader = self.config.node_id;
        let Some(partition) = self.topics.by_log_id(log_id) else {
            return;
        };
        let (Ok(log), Some(replica)) = (partition.log.as_mut(), partition.replica.as_mut()) else {
            return;
        };
        replica.marker_wanted = false;
        // A voter alone commits its whole log once it is synced: it never needs one.
        let alone = replica.raft().voters().len() == 1;
        if alone || !replica.is_leader() || replica.high_watermark() >= log.log_end_offset() {
            return;
        }
        let epoch = replica.leader_epoch();
        let batch = RecordBatch::parse(leader_change_batch(leader, now.as_millis()))
            .expect("the marker parses");
        match log.append(&mut self.disk, &batch, epoch) {
            Ok(appended) => self.replica_appended(now, log_id, &[appended]),
            Err(e) => {
                // A full disk, or a truncation whose round is still out: again at the group's
                // next event (a client's write would commit the epoch as well).
                tracing::debug!(log_id, error = %e, "leader-change marker waits");
                replica.marker_wanted = true;
            }
        }
    }

    /// Files `log_id`'s next deadline (or none) in the timer set.
    fn schedule(&mut self, log_id: u64) {
        if let Some(old) = self.raft_timer_of.remove(&log_id) {
            self.raft_timers.remove(&(old, log_id));
        }
        let deadline = (self.topics.by_log_id(log_id))
            .and_then(|p| p.replica.as_ref())
            .map(|r| r.raft().next_deadline_ms())
            .filter(|d| *d != u64::MAX);
        if let Some(deadline) = deadline {
            self.raft_timers.insert((deadline, log_id));
            self.raft_timer_of.insert(log_id, deadline);
        }
    }

    /// The earliest Raft deadline of any group.
    pub(super) fn next_raft_deadline(&self) -> Option<Instant> {
        let (ms, _) = self.raft_timers.first()?;
        Some(Instant::from_millis(*ms))
    }

    /// Ticks every group whose deadline passed.
    pub(super) fn tick_replicas(&mut self, now: Instant) {
        let now_ms = now.as_millis() as u64;
        // Each group due is ticked once (a tick may file a deadline that is already due).
        let mut due = Vec::new();
        while let Some(&(deadline, log_id)) = self.raft_timers.first() {
            if deadline > now_ms {
                break;
            }
            self.raft_timers.pop_first();
            self.raft_timer_of.remove(&log_id);
            due.push(log_id);
        }
        for log_id in due {
            self.drive_replica(now, log_id, |raft, ms, out| raft.handle_tick(ms, out));
        }
    }

    /// A sync round that carried votes and logs completed: each group hears what is now
    /// durable.
    pub(super) fn replicas_synced(
        &mut self,
        now: Instant,
        votes: &[(GroupId, Persisted)],
        ends: &[super::topics::SyncEnd],
    ) {
        let mut ends = ends.to_vec();
        if self.config.planted_bug == Some(super::PlantedBug::AckWrongRound) {
            // The planted bug: the round credits every log with everything written so far,
            // although it was issued before the latest writes (and perhaps for other logs).
            ends = (self.topics.log_ids().into_iter())
                .filter_map(|log_id| {
                    let p = self.topics.by_log_id(log_id)?;
                    let end = p.log.as_ref().ok()?.log_end_offset();
                    Some((log_id, end, p.replica.as_ref()?.sync_generation()))
                })
                .collect();
        }
        for (log_id, end, generation) in ends {
            self.drive_replica(now, log_id, |raft, ms, out| {
                raft.handle_log_synced(ms, end, generation, out)
            });
        }
        // Votes after logs: a group that becomes leader with this round then counts its log
        // as synced, and knows (alone, or with followers caught up) that all of it commits.
        for (group, persisted) in votes {
            if let Some(log_id) = self.topics.log_id_of(group) {
                let persisted = *persisted;
                self.drive_replica(now, log_id, |raft, ms, out| {
                    raft.handle_vote_synced(ms, persisted, out)
                });
            }
        }
    }

    /// A frame from a peer: each message goes to its group. A frame that does not decode
    /// is dropped (the peer's connection is the adapter's to close).
    pub(super) fn handle_peer_bytes(&mut self, now: Instant, from: NodeId, bytes: &[u8]) {
        let frame = match wire::decode(bytes::Bytes::copy_from_slice(bytes)) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(from, error = %e, "undecodable peer frame dropped");
                return;
            }
        };
        if frame.from != from || frame.to != self.config.node_id {
            tracing::warn!(
                from,
                frame.from,
                frame.to,
                "misaddressed peer frame dropped"
            );
            return;
        }
        let (came_up, reset) = self.link_received(now, from, &frame.link);
        if came_up {
            self.peer_event(now, from, LinkEvent::Up);
        }
        if !frame.proposals.is_empty() {
            self.handle_proposals(now, from, frame.proposals);
        }
        if !frame.calls.is_empty() {
            self.handle_calls(now, from, frame.calls);
        }
        for (group, message) in frame.messages {
            let log_id = (self.topics.log_id_of(&group))
                .filter(|id| (self.topics.by_log_id(*id)).is_some_and(|p| p.replica.is_some()));
            match (log_id, message) {
                (Some(log_id), message) => self.drive_replica(now, log_id, |raft, ms, out| {
                    raft.handle_message(ms, from, message, out)
                }),
                (
                    None,
                    Message::Fetch {
                        epoch,
                        fetch_offset,
                        last_fetched_epoch,
                        ..
                    },
                ) => {
                    // No group here (never made, deleted, or offline): the follower must not
                    // wait for an answer that will never come while this node is in touch.
                    let answer = Message::FetchResponse {
                        epoch,
                        high_watermark: 0,
                        fetch_offset,
                        last_fetched_epoch,
                        reply: FetchReply::NotLeader,
                    };
                    (self.peer_outbox.entry(from).or_default()).push((group, answer));
                }
                (None, _) => {}
            }
        }
        if reset {
            // After the messages: a fetch this frame answered is not sent again.
            self.peer_event(now, from, LinkEvent::Reset);
        }
    }

    /// Sends what groups queued for each peer, one frame per peer.
    pub(super) fn flush_peers(&mut self, out: &mut Vec<Output>) {
        let from = self.config.node_id;
        // Records for the controller ride in the next frame to it (dropped if no other node
        // is known to be the controller: the client asks again, and they are forwarded again).
        let mut forwards = std::mem::take(&mut self.forwards);
        let controller = match forwards.is_empty() {
            true => None,
            false => self.controller_id().filter(|c| *c != from),
        };
        if let Some(controller) = controller {
            self.peer_outbox.entry(controller).or_default();
        }
        let now = self.now;
        for peer in self.heartbeats_due(now) {
            self.peer_outbox.entry(peer).or_default();
        }
        for peer in self.calls.peers() {
            if peer != from {
                self.peer_outbox.entry(peer).or_default();
            }
        }
        for (to, messages) in std::mem::take(&mut self.peer_outbox) {
            let proposals = match controller == Some(to) {
                true => std::mem::take(&mut forwards),
                false => Vec::new(),
            };
            let frame = PeerFrame {
                from,
                to,
                link: self.link_header(now, to),
                messages,
                proposals,
                calls: self.calls.take_for(to),
            };
            let bytes = wire::encode(&frame);
            self.counters.peer_bytes_sent += bytes.len() as u64;
            out.push(Output::PeerSend { to, bytes });
        }
    }
}
