//! The group workload: members of one consumer group that find their coordinator, join,
//! assign (the leader, by ranges), sync, fetch their offsets, consume through a fetcher of
//! their own (a consumer client whose positions they set), commit what they read, heartbeat,
//! and rebalance as the classic protocol says. On top of the cluster's faults they crash
//! (forgetting everything), stall past their session timeout, leave, and, as zombies, send
//! a commit of an earlier generation once they are in a later one.

use super::*;
use keel_core::protocol::messages::consumer_group_heartbeat_request::TopicPartitions as ConsumerTopicPartitions;
use keel_core::protocol::messages::join_group_request::JoinGroupRequestProtocol;
use keel_core::protocol::messages::offset_commit_request::*;
use keel_core::protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use keel_core::protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use keel_core::protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, FindCoordinatorRequest,
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest,
    SyncGroupRequest,
};

/// The workload's group.
pub(super) const GROUP: &str = "sim-group";
/// What members ask for: the broker's smallest.
const SESSION_TIMEOUT_MS: i32 = 6_000;
const REBALANCE_TIMEOUT_MS: i32 = 10_000;
const HEARTBEAT_INTERVAL_NS: u64 = 1_000 * MS;

/// Where a member is in the protocol.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Phase {
    Join,
    /// Joined generation `generation`: the leader sends these assignments.
    Sync(Vec<(String, Vec<i32>)>),
    /// Assigned: its committed offsets are fetched before it consumes.
    FetchOffsets,
    Stable,
    /// Left the group; joins again at `next_at_ns`.
    Left,
}

/// A group request in flight.
#[derive(Debug)]
pub(super) enum GroupCall {
    FindCoordinator,
    Join,
    Sync,
    OffsetFetch {
        sent_ns: u64,
    },
    Heartbeat,
    Commit {
        offsets: Vec<(i32, i64)>,
        stale: bool,
    },
    Leave,
    /// KIP-848's heartbeat (joining at epoch 0, or in the group).
    ConsumerHeartbeat,
}

/// A commit kept to be sent later: its generation, member id and (partition, offset)s.
type StaleCommit = (i32, String, Vec<(i32, i64)>);

pub(super) struct Member {
    /// The consumer client that fetches the member's partitions.
    pub fetcher: usize,
    member_id: String,
    generation: i32,
    /// The coordinator's machine, once FindCoordinator named it.
    pub coordinator: Option<usize>,
    phase: Phase,
    owned: Vec<i32>,
    pub in_flight: bool,
    /// When the next step (other than heartbeats and commits in the stable phase) is due.
    pub next_at_ns: u64,
    next_heartbeat_ns: u64,
    next_commit_ns: u64,
    commit_interval_ns: u64,
    /// Frozen (a long GC pause): nothing is sent until then.
    stalled_until_ns: Option<u64>,
    /// A commit of an earlier generation, to send once in a later one (a zombie's).
    stale: Option<StaleCommit>,
    /// What to commit before joining again (eager revocation).
    revoking: Option<StaleCommit>,
    /// Its fetcher's positions while it is frozen.
    frozen_positions: Option<BTreeMap<i32, i64>>,
    /// KIP-848's protocol (ConsumerGroupHeartbeat, at this version) instead of the classic.
    kip848: Option<i16>,
    /// Partitions whose committed offsets are fetched next (newly assigned).
    pending_offsets: Vec<i32>,
    /// Member ids made so far (KIP-848 v1 members name themselves).
    names: u64,
    /// The workload topic's id, as assignments name it (KIP-848).
    topic_id: keel_core::protocol::wire::Uuid,
}

impl Member {
    pub(super) fn new(fetcher: usize, commit_interval_ns: u64, kip848: Option<i16>) -> Member {
        Member {
            fetcher,
            member_id: String::new(),
            generation: -1,
            coordinator: None,
            phase: Phase::Join,
            owned: Vec::new(),
            in_flight: false,
            next_at_ns: 0,
            next_heartbeat_ns: 0,
            next_commit_ns: 0,
            commit_interval_ns,
            stalled_until_ns: None,
            stale: None,
            revoking: None,
            frozen_positions: None,
            kip848,
            pending_offsets: Vec::new(),
            names: 0,
            topic_id: Default::default(),
        }
    }

    /// When it next wants to act (if nothing is in flight).
    pub(super) fn due_ns(&self) -> u64 {
        if let Some(until) = self.stalled_until_ns {
            return until;
        }
        match self.phase {
            Phase::Stable
                if self.coordinator.is_some()
                    && self.revoking.is_none()
                    && self.stale.is_none() =>
            {
                self.next_heartbeat_ns.min(self.next_commit_ns)
            }
            _ => self.next_at_ns,
        }
    }
}

fn member(role: &mut Role) -> &mut Member {
    match role {
        Role::Member(m) => m,
        _ => unreachable!("a group member"),
    }
}

/// The leader's ranges: partitions split in order over members sorted by id.
fn ranges(members: &[String], partitions: i32) -> Vec<(String, Vec<i32>)> {
    let mut sorted = members.to_vec();
    sorted.sort();
    let n = sorted.len().max(1) as i32;
    (sorted.into_iter().enumerate())
        .map(|(i, m)| {
            let i = i as i32;
            let owned = (0..partitions).filter(|p| p % n == i).collect();
            (m, owned)
        })
        .collect()
}

fn encode_assignment(partitions: &[i32]) -> Bytes {
    let mut bytes = Vec::with_capacity(partitions.len() * 4);
    for p in partitions {
        bytes.extend_from_slice(&p.to_be_bytes());
    }
    Bytes::from(bytes)
}

fn decode_assignment(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_be_bytes(c.try_into().expect("four bytes")))
        .collect()
}

impl Sim {
    /// The member's next step: whatever is due, or nothing (it sleeps until `due_ns`).
    pub(super) fn group_act(&mut self, client: usize) {
        let now = self.now_ns;
        let quiet = self.quiet;
        let m = member(&mut self.clients[client].role);
        if m.stalled_until_ns.is_some_and(|until| until > now) {
            return;
        }
        if m.stalled_until_ns.take().is_some() {
            // It goes on where it stopped: the next heartbeat or commit says whether the
            // group moved on without it.
            let positions = m.frozen_positions.take().unwrap_or_default();
            self.count("member:wakes");
            self.set_fetcher_positions(client, positions);
        }
        let m = member(&mut self.clients[client].role);
        if m.phase == Phase::Left {
            if m.next_at_ns > now {
                return;
            }
            m.phase = Phase::Join;
        }
        if m.coordinator.is_none() {
            if m.next_at_ns > now {
                return;
            }
            let request = Request::FindCoordinator(FindCoordinatorRequest {
                key: GROUP.into(),
                key_type: 0,
                coordinator_keys: vec![GROUP.into()],
                ..Default::default()
            });
            let version = if self.rng.random_bool(0.5) { 3 } else { 4 };
            self.group_send(client, version, request, GroupCall::FindCoordinator);
            return;
        }
        if !quiet && m.phase == Phase::Stable {
            // The member's own faults.
            let roll: f64 = self.rng.random();
            let (crash, stall, leave) = (
                self.plan.group.crash_probability,
                self.plan.group.stall_probability,
                self.plan.group.leave_probability,
            );
            if roll < crash {
                return self.member_crash(client);
            } else if roll < crash + stall {
                return self.member_stall(client);
            } else if roll < crash + stall + leave
                && member(&mut self.clients[client].role).kip848.is_some()
            {
                let m = member(&mut self.clients[client].role);
                let version = m.kip848.expect("checked");
                let request = Request::ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest {
                    group_id: GROUP.into(),
                    member_id: m.member_id.clone(),
                    member_epoch: -1,
                    ..Default::default()
                });
                self.count("member:leave");
                self.group_send(client, version, request, GroupCall::Leave);
                return;
            } else if roll < crash + stall + leave {
                let m = member(&mut self.clients[client].role);
                let request = Request::LeaveGroup(LeaveGroupRequest {
                    group_id: GROUP.into(),
                    member_id: m.member_id.clone(),
                    members: vec![
                        keel_core::protocol::messages::leave_group_request::MemberIdentity {
                            member_id: m.member_id.clone(),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                });
                self.count("member:leave");
                let version = if self.rng.random_bool(0.5) { 2 } else { 4 };
                self.group_send(client, version, request, GroupCall::Leave);
                return;
            }
        }
        let m = member(&mut self.clients[client].role);
        let generation = m.generation;
        let member_id = m.member_id.clone();
        if let Some((held_in, held_by, offsets)) = m.revoking.clone() {
            // Under the generation and member id it read them in, whatever it is now.
            self.send_commit(client, held_in, &held_by, offsets, false);
            return;
        }
        match m.phase.clone() {
            Phase::Left => {}
            Phase::Join if m.kip848.is_some() => {
                if m.next_at_ns > now {
                    return;
                }
                let version = m.kip848.expect("checked");
                if m.member_id.is_empty() && version >= 1 {
                    // KIP-1082: the member names itself, once for its whole life.
                    m.names += 1;
                    m.member_id = format!("sim-{client}-{}", m.names);
                }
                let request = Request::ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest {
                    group_id: GROUP.into(),
                    member_id: m.member_id.clone(),
                    member_epoch: 0,
                    rebalance_timeout_ms: REBALANCE_TIMEOUT_MS,
                    subscribed_topic_names: Some(vec![TOPIC.into()]),
                    topic_partitions: Some(Vec::new()),
                    ..Default::default()
                });
                self.group_send(client, version, request, GroupCall::ConsumerHeartbeat);
            }
            Phase::Join => {
                if m.next_at_ns > now {
                    return;
                }
                let request = Request::JoinGroup(JoinGroupRequest {
                    group_id: GROUP.into(),
                    session_timeout_ms: SESSION_TIMEOUT_MS,
                    rebalance_timeout_ms: REBALANCE_TIMEOUT_MS,
                    member_id,
                    protocol_type: "consumer".into(),
                    protocols: vec![JoinGroupRequestProtocol {
                        name: "range".into(),
                        metadata: Bytes::from_static(b"sim"),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                let version = [1, 4, 5, 7][self.rng.random_range(0..4)];
                self.group_send(client, version, request, GroupCall::Join);
            }
            Phase::Sync(assignments) => {
                let request = Request::SyncGroup(SyncGroupRequest {
                    group_id: GROUP.into(),
                    generation_id: generation,
                    member_id,
                    assignments: (assignments.iter())
                        .map(|(m, ps)| SyncGroupRequestAssignment {
                            member_id: m.clone(),
                            assignment: encode_assignment(ps),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                });
                let version = if self.rng.random_bool(0.5) { 3 } else { 5 };
                self.group_send(client, version, request, GroupCall::Sync);
            }
            Phase::FetchOffsets => {
                let request = Request::OffsetFetch(OffsetFetchRequest {
                    group_id: GROUP.into(),
                    topics: Some(vec![OffsetFetchRequestTopic {
                        name: TOPIC.into(),
                        partition_indexes: m.pending_offsets.clone(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                });
                let sent_ns = now;
                self.group_send(client, 7, request, GroupCall::OffsetFetch { sent_ns });
            }
            Phase::Stable => {
                if let Some((stale_generation, member_id, offsets)) = m.stale.take() {
                    if stale_generation < generation {
                        self.count("member:stale-commit");
                        self.send_commit(client, stale_generation, &member_id, offsets, true);
                    } else {
                        // The group kept its generation (a follower that joined again with
                        // nothing new hears of the current one): nothing stale to send.
                        self.count("member:stale-dropped");
                    }
                } else if let (true, Some(version)) = (m.next_heartbeat_ns <= now, m.kip848) {
                    let request = Request::ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest {
                        group_id: GROUP.into(),
                        member_id,
                        member_epoch: generation,
                        topic_partitions: Some(vec![ConsumerTopicPartitions {
                            topic_id: m.topic_id,
                            partitions: m.owned.clone(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    });
                    self.group_send(client, version, request, GroupCall::ConsumerHeartbeat);
                } else if m.next_heartbeat_ns <= now {
                    let request = Request::Heartbeat(HeartbeatRequest {
                        group_id: GROUP.into(),
                        generation_id: generation,
                        member_id,
                        ..Default::default()
                    });
                    self.group_send(client, 3, request, GroupCall::Heartbeat);
                } else if m.next_commit_ns <= now {
                    m.next_commit_ns = now + m.commit_interval_ns;
                    let offsets = self.member_positions(client);
                    if !offsets.is_empty() {
                        self.send_commit(client, generation, &member_id, offsets, false);
                    }
                }
            }
        }
    }

    /// What the member read so far of each partition it owns (its fetcher's positions).
    fn member_positions(&self, client: usize) -> Vec<(i32, i64)> {
        let Role::Member(m) = &self.clients[client].role else {
            return Vec::new();
        };
        let Role::Consumer { positions, .. } = &self.clients[m.fetcher].role else {
            return Vec::new();
        };
        positions.iter().map(|(p, o)| (*p, *o)).collect()
    }

    /// Seeks the member's fetcher. A fetch it has in flight was for the old positions: its
    /// connection is dropped with it, as a consumer discards what it fetched before a seek.
    fn set_fetcher_positions(&mut self, client: usize, set: BTreeMap<i32, i64>) {
        let fetcher = member(&mut self.clients[client].role).fetcher;
        let in_flight = matches!(
            self.clients[fetcher].role,
            Role::Consumer { fetching: true, .. }
        );
        if in_flight {
            self.client_close(fetcher);
        }
        if let Role::Consumer { positions, .. } = &mut self.clients[fetcher].role {
            *positions = set;
        }
        self.schedule_wake(fetcher, self.now_ns);
    }

    fn send_commit(
        &mut self,
        client: usize,
        generation: i32,
        member_id: &str,
        offsets: Vec<(i32, i64)>,
        stale: bool,
    ) {
        let request = Request::OffsetCommit(OffsetCommitRequest {
            group_id: GROUP.into(),
            generation_id_or_member_epoch: generation,
            member_id: member_id.into(),
            topics: vec![OffsetCommitRequestTopic {
                name: TOPIC.into(),
                partitions: (offsets.iter())
                    .map(|(p, o)| OffsetCommitRequestPartition {
                        partition_index: *p,
                        committed_offset: *o,
                        committed_metadata: Some(String::new()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let version = [2, 5, 8][self.rng.random_range(0..3)];
        self.group_send(
            client,
            version,
            request,
            GroupCall::Commit { offsets, stale },
        );
    }

    fn group_send(&mut self, client: usize, version: i16, request: Request, call: GroupCall) {
        let m = member(&mut self.clients[client].role);
        tracing::debug!(client, member = %m.member_id, generation = m.generation, ?call, "group request");
        m.in_flight = true;
        self.send_request(client, version, request, PendingKind::Group(call));
    }

    /// Gives up its partitions: what it read is committed first (eager revocation), unless
    /// it keeps that commit to send as a zombie later.
    fn revoke(&mut self, client: usize, commit: bool) {
        let offsets = self.member_positions(client);
        self.set_fetcher_positions(client, BTreeMap::new());
        let zombie = !self.quiet
            && self
                .rng
                .random_bool(self.plan.group.stale_commit_probability);
        let m = member(&mut self.clients[client].role);
        m.owned.clear();
        if offsets.is_empty() {
            return;
        }
        if zombie {
            m.stale = Some((m.generation, m.member_id.clone(), offsets));
        } else if commit {
            m.revoking = Some((m.generation, m.member_id.clone(), offsets));
        }
    }

    fn rejoin(&mut self, client: usize, forget_id: bool, delay_ns: u64) {
        let now = self.now_ns;
        let m = member(&mut self.clients[client].role);
        m.phase = Phase::Join;
        if forget_id {
            m.member_id.clear();
            m.generation = -1;
        }
        m.next_at_ns = now + delay_ns;
    }

    /// The member's process dies: a new one starts with nothing (the old member id stays in
    /// the group until its session expires).
    fn member_crash(&mut self, client: usize) {
        self.count("member:crash");
        self.set_fetcher_positions(client, BTreeMap::new());
        let delay = self.rng.random_range(0..2_000 * MS);
        let m = member(&mut self.clients[client].role);
        let fetcher = m.fetcher;
        let commit_interval_ns = m.commit_interval_ns;
        let kip848 = m.kip848;
        *m = Member::new(fetcher, commit_interval_ns, kip848);
        m.next_at_ns = self.now_ns + delay;
        self.client_close(client);
    }

    /// The member freezes (a long pause), mostly past its session timeout, keeping its
    /// generation, its partitions and what it read: on waking it commits that (refused if the
    /// group moved on without it, as it must be) before it learns whether it was dropped.
    fn member_stall(&mut self, client: usize) {
        self.count("member:stall");
        let positions: BTreeMap<i32, i64> = self.member_positions(client).into_iter().collect();
        self.set_fetcher_positions(client, BTreeMap::new());
        let stall = self.rng.random_range(
            (SESSION_TIMEOUT_MS as u64 - 2_000) * MS..=(SESSION_TIMEOUT_MS as u64 + 4_000) * MS,
        );
        let now = self.now_ns;
        let m = member(&mut self.clients[client].role);
        m.stalled_until_ns = Some(now + stall);
        m.frozen_positions = Some(positions);
        m.next_commit_ns = now + stall;
        self.schedule_wake(client, now + stall);
    }

    /// The coordinator is gone or moved: find it again (the member keeps its place).
    fn lost_coordinator(&mut self, client: usize) {
        let m = member(&mut self.clients[client].role);
        m.coordinator = None;
        m.next_at_ns = self.now_ns + 100 * MS;
    }

    pub(super) fn on_group_response(&mut self, client: usize, call: GroupCall, response: Response) {
        member(&mut self.clients[client].role).in_flight = false;
        tracing::debug!(client, ?call, ?response, "group answer");
        let now = self.now_ns;
        let coordinator_gone = |code: i16| {
            matches!(
                code,
                codes::NOT_COORDINATOR
                    | codes::COORDINATOR_NOT_AVAILABLE
                    | codes::COORDINATOR_LOAD_IN_PROGRESS
            )
        };
        match (call, response) {
            (GroupCall::FindCoordinator, Response::FindCoordinator(r)) => {
                let (code, node_id) = match r.coordinators.first() {
                    Some(c) => (c.error_code, c.node_id),
                    None => (r.error_code, r.node_id),
                };
                let nodes = self.machines.len() as i32;
                let m = member(&mut self.clients[client].role);
                if code == codes::NONE && (1..=nodes).contains(&node_id) {
                    m.coordinator = Some(node_id as usize - 1);
                    self.count("group:find:ok");
                } else {
                    m.next_at_ns = now + 100 * MS;
                    self.count("group:find:retry");
                }
            }
            (GroupCall::Join, Response::JoinGroup(r)) => {
                let partitions = self.plan.partitions;
                let m = member(&mut self.clients[client].role);
                match r.error_code {
                    codes::NONE => {
                        m.generation = r.generation_id;
                        m.member_id = r.member_id.clone();
                        let assignments = if r.leader == r.member_id {
                            let ids: Vec<String> =
                                r.members.iter().map(|x| x.member_id.clone()).collect();
                            ranges(&ids, partitions)
                        } else {
                            Vec::new()
                        };
                        m.phase = Phase::Sync(assignments);
                        self.count("group:join:ok");
                    }
                    codes::MEMBER_ID_REQUIRED => {
                        m.member_id = r.member_id.clone();
                        m.next_at_ns = now;
                    }
                    code if coordinator_gone(code) => self.lost_coordinator(client),
                    codes::UNKNOWN_MEMBER_ID | codes::FENCED_INSTANCE_ID => {
                        self.count("group:join:unknown-member");
                        self.rejoin(client, true, 50 * MS);
                    }
                    _ => {
                        self.count("group:join:retry");
                        self.rejoin(client, false, 100 * MS);
                    }
                }
            }
            (GroupCall::Sync, Response::SyncGroup(r)) => match r.error_code {
                codes::NONE => {
                    let owned = decode_assignment(&r.assignment);
                    let m = member(&mut self.clients[client].role);
                    let (generation, id) = (m.generation, m.member_id.clone());
                    m.owned = owned.clone();
                    m.pending_offsets = owned.clone();
                    m.phase = Phase::FetchOffsets;
                    self.count("group:sync:ok");
                    self.checker.on_assignment(now, generation, &id, &owned);
                }
                code if coordinator_gone(code) => self.lost_coordinator(client),
                codes::UNKNOWN_MEMBER_ID => self.rejoin(client, true, 50 * MS),
                _ => {
                    self.count("group:sync:rebalance");
                    self.rejoin(client, false, 0);
                }
            },
            (GroupCall::OffsetFetch { sent_ns }, Response::OffsetFetch(r)) => {
                if coordinator_gone(r.error_code) {
                    return self.lost_coordinator(client);
                }
                if r.error_code != codes::NONE {
                    self.count("group:offset-fetch:error");
                    member(&mut self.clients[client].role).next_at_ns = now + 100 * MS;
                    return;
                }
                let m = member(&mut self.clients[client].role);
                let pending = std::mem::take(&mut m.pending_offsets);
                let owned = m.owned.clone();
                // Partitions it kept go on from where it is; new ones from their commits.
                let mut positions: BTreeMap<i32, i64> = (self.member_positions(client).into_iter())
                    .filter(|(p, _)| owned.contains(p))
                    .collect();
                for p in pending.into_iter().filter(|p| owned.contains(p)) {
                    let found = (r.topics.iter())
                        .filter(|t| t.name == TOPIC)
                        .flat_map(|t| &t.partitions)
                        .find(|x| x.partition_index == p);
                    let offset = found.map_or(-1, |x| x.committed_offset);
                    self.checker.on_offset_fetched(now, sent_ns, p, offset);
                    positions.insert(p, offset.max(0));
                }
                let interval = self.plan.group.commit_interval_ms * MS;
                let m = member(&mut self.clients[client].role);
                m.phase = Phase::Stable;
                m.next_heartbeat_ns = now + HEARTBEAT_INTERVAL_NS;
                m.next_commit_ns = now + interval;
                self.set_fetcher_positions(client, positions);
            }
            (GroupCall::Heartbeat, Response::Heartbeat(r)) => match r.error_code {
                codes::NONE => {
                    member(&mut self.clients[client].role).next_heartbeat_ns =
                        now + HEARTBEAT_INTERVAL_NS;
                }
                code if coordinator_gone(code) => self.lost_coordinator(client),
                codes::REBALANCE_IN_PROGRESS => {
                    self.count("group:heartbeat:rebalance");
                    self.revoke(client, true);
                    self.rejoin(client, false, 0);
                }
                codes::ILLEGAL_GENERATION => {
                    self.revoke(client, false);
                    self.rejoin(client, false, 0);
                }
                _ => {
                    self.count("group:heartbeat:unknown-member");
                    self.revoke(client, false);
                    self.rejoin(client, true, 0);
                }
            },
            (GroupCall::Commit { offsets, stale }, Response::OffsetCommit(r)) => {
                let codes_seen: Vec<(i32, i16)> = (r.topics.iter())
                    .filter(|t| t.name == TOPIC)
                    .flat_map(|t| &t.partitions)
                    .map(|p| (p.partition_index, p.error_code))
                    .collect();
                let all_ok =
                    !codes_seen.is_empty() && codes_seen.iter().all(|(_, c)| *c == codes::NONE);
                let m = member(&mut self.clients[client].role);
                let was_revoking = m.revoking.take().is_some();
                if all_ok {
                    self.count(if stale {
                        "group:commit:stale-accepted"
                    } else {
                        "group:commit:ok"
                    });
                    let durable = self.options.durability == Durability::Fsync;
                    for (p, o) in offsets {
                        self.checker.on_commit_acked(now, p, o, durable);
                    }
                    return;
                }
                let code = codes_seen
                    .iter()
                    .map(|(_, c)| *c)
                    .find(|c| *c != codes::NONE)
                    .unwrap_or(codes::NONE);
                self.count(if stale {
                    "group:commit:stale-refused"
                } else {
                    "group:commit:refused"
                });
                if stale || was_revoking {
                    return;
                }
                if coordinator_gone(code) {
                    self.lost_coordinator(client);
                } else if code == codes::STALE_MEMBER_EPOCH {
                    // KIP-848: its next heartbeat brings its new epoch.
                } else if matches!(
                    code,
                    codes::REBALANCE_IN_PROGRESS | codes::ILLEGAL_GENERATION
                ) {
                    self.revoke(client, false);
                    self.rejoin(client, false, 0);
                } else if code == codes::UNKNOWN_MEMBER_ID {
                    self.revoke(client, false);
                    self.rejoin(client, true, 0);
                }
            }
            (GroupCall::Leave, Response::LeaveGroup(_) | Response::ConsumerGroupHeartbeat(_)) => {
                self.revoke(client, false);
                let delay = self.rng.random_range(500 * MS..3_000 * MS);
                let m = member(&mut self.clients[client].role);
                m.phase = Phase::Left;
                m.member_id.clear();
                m.generation = -1;
                m.next_at_ns = now + delay;
            }
            (GroupCall::ConsumerHeartbeat, Response::ConsumerGroupHeartbeat(r)) => {
                self.on_consumer_heartbeat(client, r)
            }
            (call, response) => self.protocol_violation(
                client,
                format!("{call:?} answered by {}", response.api_key().name()),
            ),
        }
    }

    /// KIP-848: the heartbeat's answer brings the member's epoch and, when it changed, its
    /// assignment: it gives up what left it (committing what it read there first) and
    /// fetches the committed offsets of what it gained.
    fn on_consumer_heartbeat(&mut self, client: usize, r: ConsumerGroupHeartbeatResponse) {
        let now = self.now_ns;
        let coordinator_gone = matches!(
            r.error_code,
            codes::NOT_COORDINATOR
                | codes::COORDINATOR_NOT_AVAILABLE
                | codes::COORDINATOR_LOAD_IN_PROGRESS
        );
        if coordinator_gone {
            return self.lost_coordinator(client);
        }
        if matches!(
            r.error_code,
            codes::UNKNOWN_MEMBER_ID | codes::FENCED_MEMBER_EPOCH
        ) {
            // Dropped by the group: what it held is lost (not committed), and it joins
            // again at epoch 0 (under the same id, as KIP-1082 members do).
            self.count("group:consumer:fenced");
            self.revoke(client, false);
            let m = member(&mut self.clients[client].role);
            m.phase = Phase::Join;
            m.generation = -1;
            m.next_at_ns = now + 50 * MS;
            return;
        }
        if r.error_code != codes::NONE {
            self.count("group:consumer:retry");
            member(&mut self.clients[client].role).next_at_ns = now + 100 * MS;
            return;
        }
        let interval_ns = (r.heartbeat_interval_ms.max(100) as u64) * MS;
        let m = member(&mut self.clients[client].role);
        if let Some(id) = r.member_id.clone().filter(|id| !id.is_empty()) {
            m.member_id = id;
        }
        m.generation = r.member_epoch;
        m.next_heartbeat_ns = now + interval_ns;
        if m.phase == Phase::Join {
            m.phase = Phase::Stable;
            m.next_commit_ns = now + m.commit_interval_ns;
            self.count("group:consumer:joined");
        }
        let Some(assignment) = r.assignment else {
            return;
        };
        let m = member(&mut self.clients[client].role);
        if let Some(t) = assignment.topic_partitions.first() {
            m.topic_id = t.topic_id;
        }
        let mut next: Vec<i32> = (assignment.topic_partitions.iter())
            .flat_map(|t| t.partitions.iter().copied())
            .collect();
        next.sort_unstable();
        next.dedup();
        let (epoch, id) = (m.generation, m.member_id.clone());
        let owned = m.owned.clone();
        let revoked: Vec<i32> = owned
            .iter()
            .copied()
            .filter(|p| !next.contains(p))
            .collect();
        let added: Vec<i32> = next
            .iter()
            .copied()
            .filter(|p| !owned.contains(p))
            .collect();
        self.checker.on_assignment(now, epoch, &id, &next);
        if !revoked.is_empty() {
            let positions = self.member_positions(client);
            type Positions = Vec<(i32, i64)>;
            let (gone, kept): (Positions, Positions) = positions
                .into_iter()
                .partition(|(p, _)| revoked.contains(p));
            self.set_fetcher_positions(client, kept.into_iter().collect());
            if !gone.is_empty() {
                let m = member(&mut self.clients[client].role);
                m.revoking = Some((m.generation, m.member_id.clone(), gone));
            }
        }
        let m = member(&mut self.clients[client].role);
        m.owned = next;
        if !added.is_empty() {
            m.pending_offsets = added;
            m.phase = Phase::FetchOffsets;
        }
    }

    /// A member's connection broke: what it had in flight is unknown (a commit may or may
    /// not have gone in; the member goes on).
    pub(super) fn group_conn_lost(&mut self, client: usize, call: GroupCall) {
        let m = member(&mut self.clients[client].role);
        m.in_flight = false;
        if matches!(call, GroupCall::Commit { .. }) {
            m.revoking = None;
        }
        if matches!(call, GroupCall::Leave) {
            m.phase = Phase::Left;
            m.member_id.clear();
            m.generation = -1;
            m.owned.clear();
            m.next_at_ns = self.now_ns + 500 * MS;
            self.set_fetcher_positions(client, BTreeMap::new());
        }
        // A node that cannot be reached may no longer coordinate.
        member(&mut self.clients[client].role).coordinator = None;
    }
}
