//! One consumer group under the classic protocol (Kafka's `GroupCoordinator`/`ClassicGroup`).
//!
//! ```text
//!            join (first member)            all members joined, or the join deadline
//!   Empty ─────────────────────▶ Preparing ──────────────────────────▶ Completing
//!     ▲                          Rebalance ◀──── join, leave, expiry ──  Rebalance
//!     │  last member gone           ▲  ▲                                     │ leader's SyncGroup
//!     └─────────────────────────────┘  └──── join (leader or new protocols),─ Stable
//!                                              leave, session expiry
//! ```
//!
//! - A rebalance (PreparingRebalance) waits until every known member has sent JoinGroup, or
//!   the largest rebalance timeout passed (members that did not join are dropped). The first
//!   rebalance of an empty group waits `initial_rebalance_delay_ms` more for others to come.
//! - Completing it starts the next generation: a protocol every member supports (by their
//!   votes), a leader (the previous one if it stayed), and the group's record written; the
//!   JoinGroup answers (the leader's with every member's metadata) wait for that write.
//! - The leader's SyncGroup brings the assignments: written too, then each member waiting in
//!   SyncGroup gets its share. The coordinator never reads assignments, so every client-side
//!   assignor works (range, round-robin, sticky, cooperative-sticky).
//! - A member is kept while it heartbeats within its session timeout, or while it waits in
//!   JoinGroup or SyncGroup. A static member (`group.instance.id`) keeps its place across
//!   restarts: joining again with its instance id takes over its old member id's place, and
//!   the old id is fenced (FENCED_INSTANCE_ID).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::records::{GroupValue, MemberValue};
use super::{Client, GroupConfig, ReplyTo};
use crate::limits;
use crate::protocol::codes;
use crate::protocol::messages::join_group_response::JoinGroupResponseMember;
use crate::protocol::messages::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The state's name, as DescribeGroups and ListGroups spell it.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Debug)]
struct Member {
    id: String,
    instance_id: Option<String>,
    client: Client,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    /// Protocols in the member's order of preference, each with its metadata.
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// Its JoinGroup, held until the join phase completes (with the request's version).
    awaiting_join: Option<(ReplyTo, i16)>,
    /// Its SyncGroup, held until the leader's assignment is written.
    awaiting_sync: Option<ReplyTo>,
    /// When it is dropped unless it heartbeats (ignored while it waits in a join or sync).
    session_deadline_ms: u64,
    /// When it joined: the earliest member leads when the previous leader is gone.
    joined_seq: u64,
}

impl Member {
    fn metadata(&self, protocol: Option<&str>) -> Bytes {
        (self.protocols.iter())
            .find(|(name, _)| Some(name.as_str()) == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn kept_alive(&self) -> bool {
        self.awaiting_join.is_some() || self.awaiting_sync.is_some()
    }
}

/// What a group's transition asks of its coordinator.
#[derive(Debug, Default)]
pub(super) struct Effects {
    /// Answers to send now.
    pub answers: Vec<(ReplyTo, Response)>,
    /// Write the group's record (its generation, members, assignments).
    pub persist: bool,
    /// Answers to send once that write commits.
    pub persist_answers: Vec<(ReplyTo, Response)>,
    /// The write carries the leader's assignment (later SyncGroups wait for it too).
    pub assignment: bool,
}

pub(super) enum SyncOutcome {
    Now(SyncGroupResponse),
    /// The answer comes when the leader's assignment is written.
    Held,
    /// The answer waits for write `0`, which holds the assignment.
    AfterWrite(u64, SyncGroupResponse),
}

/// A JoinGroup answered with `code` for `member_id`.
fn join_refused(member_id: &str, code: i16) -> Response {
    Response::JoinGroup(JoinGroupResponse {
        error_code: code,
        member_id: member_id.to_string(),
        ..Default::default()
    })
}

/// A SyncGroup answered with `code`.
fn sync_refused(code: i16) -> Response {
    Response::SyncGroup(SyncGroupResponse {
        error_code: code,
        ..Default::default()
    })
}

/// A member as DescribeGroups shows it.
pub struct MemberView<'a> {
    pub member_id: &'a str,
    pub group_instance_id: Option<&'a str>,
    pub client_id: &'a str,
    pub client_host: &'a str,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug)]
pub struct Group {
    id: String,
    state: GroupState,
    state_since_ms: i64,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Static members: instance id to member id.
    instances: BTreeMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until when they may come back.
    pending: BTreeMap<String, u64>,
    /// PreparingRebalance: when the join phase ends whoever has joined.
    join_deadline_ms: Option<u64>,
    /// The first rebalance of an empty group: it waits for the deadline (extended as members
    /// come, never past this) rather than completing as soon as all known members joined.
    initial_until_ms: Option<u64>,
    /// CompletingRebalance: when members that did not sync are dropped.
    sync_deadline_ms: Option<u64>,
    /// The write holding the leader's assignment, until it commits.
    pub(super) assignment_write: Option<u64>,
    /// The latest write of the group's record, until it commits: a JoinGroup answered at
    /// once (a member that joined again with nothing new) waits for it too, since it names
    /// the generation that record holds.
    pub(super) record_write: Option<u64>,
    next_seq: u64,
}

impl Group {
    pub(super) fn new(id: &str, now_ms: u64) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            state_since_ms: now_ms as i64,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            instances: BTreeMap::new(),
            pending: BTreeMap::new(),
            join_deadline_ms: None,
            initial_until_ms: None,
            sync_deadline_ms: None,
            assignment_write: None,
            record_write: None,
            next_seq: 0,
        }
    }

    /// The group as its latest record left it. Members whose assignment was written are a
    /// stable generation; a generation whose assignment never was is completing (its leader
    /// may sync again, or the sync deadline starts another rebalance).
    pub(super) fn load(id: &str, value: GroupValue, now_ms: u64) -> Group {
        let mut group = Group::new(id, now_ms);
        group.state_since_ms = value.state_timestamp_ms;
        group.generation = value.generation;
        group.protocol_type = Some(value.protocol_type).filter(|t| !t.is_empty());
        group.protocol = value.protocol;
        group.leader = value.leader;
        let assigned = value.members.iter().all(|m| !m.assignment.is_empty());
        for m in value.members {
            if let Some(instance) = &m.group_instance_id {
                group
                    .instances
                    .insert(instance.clone(), m.member_id.clone());
            }
            let protocols = match &group.protocol {
                Some(p) => vec![(p.clone(), m.subscription)],
                None => Vec::new(),
            };
            let member = Member {
                id: m.member_id.clone(),
                instance_id: m.group_instance_id,
                client: Client {
                    client_id: m.client_id,
                    client_host: m.client_host,
                },
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                protocols,
                assignment: m.assignment,
                awaiting_join: None,
                awaiting_sync: None,
                session_deadline_ms: 0,
                joined_seq: group.next_seq,
            };
            group.next_seq += 1;
            group.members.insert(m.member_id, member);
        }
        group.state = if group.members.is_empty() {
            GroupState::Empty
        } else if assigned {
            GroupState::Stable
        } else {
            GroupState::CompletingRebalance
        };
        group
    }

    /// After a load: members get a full session from now, a completing generation its sync
    /// deadline.
    pub(super) fn resume(&mut self, now_ms: u64) {
        for member in self.members.values_mut() {
            member.session_deadline_ms = now_ms + member.session_timeout_ms.max(0) as u64;
        }
        if self.state == GroupState::CompletingRebalance {
            self.sync_deadline_ms = Some(now_ms + self.rebalance_timeout_ms());
        }
    }

    pub(super) fn to_value(&self) -> GroupValue {
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp_ms: self.state_since_ms,
            members: (self.members.values())
                .map(|m| MemberValue {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client.client_id.clone(),
                    client_host: m.client.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(self.protocol.as_deref()),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn state(&self) -> GroupState {
        self.state
    }

    pub fn state_since_ms(&self) -> i64 {
        self.state_since_ms
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn protocol_type(&self) -> &str {
        self.protocol_type.as_deref().unwrap_or("")
    }

    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("")
    }

    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// Its members; metadata and assignments only for a stable group (as Kafka shows them).
    pub fn members(&self) -> impl Iterator<Item = MemberView<'_>> {
        let stable = self.state == GroupState::Stable;
        self.members.values().map(move |m| MemberView {
            member_id: &m.id,
            group_instance_id: m.instance_id.as_deref(),
            client_id: &m.client.client_id,
            client_host: &m.client.client_host,
            metadata: if stable {
                m.metadata(self.protocol.as_deref())
            } else {
                Bytes::new()
            },
            assignment: if stable {
                m.assignment.clone()
            } else {
                Bytes::new()
            },
        })
    }

    /// Whether a member of a consumer group (protocol type `consumer`) subscribes to
    /// `topic`, as its subscription metadata says (Kafka's ConsumerProtocolSubscription: a
    /// version, then the topics). Metadata that does not parse subscribes to nothing.
    pub(super) fn subscribed_to(&self, topic: &str) -> bool {
        if self.protocol_type.as_deref() != Some("consumer") {
            return false;
        }
        (self.members.values()).any(|m| {
            let mut metadata = m.metadata(self.protocol.as_deref());
            let topics = (|| -> Result<Vec<String>, crate::protocol::WireError> {
                crate::protocol::wire::read_i16(&mut metadata)?;
                let count =
                    crate::protocol::wire::read_array_len(&mut metadata, false)?.unwrap_or(0);
                (0..count)
                    .map(|_| crate::protocol::wire::read_string(&mut metadata, false))
                    .collect()
            })();
            topics.is_ok_and(|t| t.iter().any(|t| t == topic))
        })
    }

    fn rebalance_timeout_ms(&self) -> u64 {
        (self.members.values())
            .map(|m| m.rebalance_timeout_ms.max(0) as u64)
            .max()
            .unwrap_or(0)
    }

    /// Whether a member's instance id belongs to another member id now.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id
            .and_then(|i| self.instances.get(i))
            .is_some_and(|current| current != member_id)
    }

    /// Protocols every member supports.
    fn candidates(&self) -> Vec<&str> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let mut names: Vec<&str> = first.protocols.iter().map(|(n, _)| n.as_str()).collect();
        for m in members {
            names.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
        }
        names
    }

    /// The protocol of the next generation: each member votes for its first choice among
    /// those every member supports; the most votes win (ties to the earlier name).
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidates();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((name, _)) =
                (m.protocols.iter()).find(|(n, _)| candidates.contains(&n.as_str()))
            {
                *votes.entry(name).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        votes
            .into_iter()
            .find(|(_, v)| *v == best)
            .map(|(n, _)| n.to_string())
    }

    /// JoinGroup, checked and filed. `None`: the answer comes when the join phase completes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn join(
        &mut self,
        now_ms: u64,
        config: &GroupConfig,
        to: ReplyTo,
        version: i16,
        client: &Client,
        request: &JoinGroupRequest,
        new_member_id: String,
        effects: &mut Effects,
    ) -> Option<JoinGroupResponse> {
        let refuse = |code: i16| {
            Some(JoinGroupResponse {
                error_code: code,
                member_id: request.member_id.clone(),
                ..Default::default()
            })
        };
        let protocols: Vec<(String, Bytes)> = (request.protocols.iter())
            .map(|p| (p.name.clone(), p.metadata.clone()))
            .collect();
        if !self.members.is_empty() {
            let same_type = self.protocol_type.as_deref() == Some(request.protocol_type.as_str());
            let candidates = self.candidates();
            let shared = protocols
                .iter()
                .any(|(n, _)| candidates.contains(&n.as_str()));
            if !same_type || !shared {
                return refuse(codes::INCONSISTENT_GROUP_PROTOCOL);
            }
        }
        let instance = request.group_instance_id.as_deref();
        let rebalance_timeout_ms = if request.rebalance_timeout_ms < 0 {
            // v0 has none: the session timeout serves for both, as in Kafka.
            request.session_timeout_ms
        } else {
            request.rebalance_timeout_ms
        };
        let joining = Joining {
            client,
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms,
            protocol_type: &request.protocol_type,
            protocols,
            to,
            version,
        };
        if request.member_id.is_empty() {
            if self.members.len() + self.pending.len() >= limits::GROUP_MEMBERS_MAX {
                return refuse(codes::GROUP_MAX_SIZE_REACHED);
            }
            if let Some(instance) = instance {
                if let Some(old) = self.instances.get(instance).cloned() {
                    return self.replace_static(now_ms, &old, new_member_id, joining, effects);
                }
                self.add_member(
                    now_ms,
                    config,
                    new_member_id,
                    Some(instance),
                    joining,
                    effects,
                );
                return None;
            }
            if version >= 4 {
                // KIP-394: the member comes back with this id, so that a join whose answer was
                // lost does not leave a member behind.
                let deadline = now_ms + request.session_timeout_ms.max(0) as u64;
                self.pending.insert(new_member_id.clone(), deadline);
                return Some(JoinGroupResponse {
                    error_code: codes::MEMBER_ID_REQUIRED,
                    member_id: new_member_id,
                    ..Default::default()
                });
            }
            self.add_member(now_ms, config, new_member_id, None, joining, effects);
            return None;
        }
        let member_id = request.member_id.clone();
        if self.pending.remove(&member_id).is_some() {
            self.add_member(now_ms, config, member_id, instance, joining, effects);
            return None;
        }
        if self.fenced(&member_id, instance) {
            return refuse(codes::FENCED_INSTANCE_ID);
        }
        let Some(member) = self.members.get_mut(&member_id) else {
            return refuse(codes::UNKNOWN_MEMBER_ID);
        };
        let unchanged = member.protocols == joining.protocols;
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        member.session_timeout_ms = joining.session_timeout_ms;
        member.rebalance_timeout_ms = joining.rebalance_timeout_ms;
        member.session_deadline_ms = now_ms + joining.session_timeout_ms.max(0) as u64;
        match self.state {
            GroupState::PreparingRebalance => {
                member.protocols = joining.protocols;
                if let Some((old, _)) = member.awaiting_join.replace((to, version)) {
                    // A second join of the same member: the first is answered as superseded.
                    effects
                        .answers
                        .push((old, join_refused(&member_id, codes::UNKNOWN_MEMBER_ID)));
                }
                self.try_complete_join(now_ms, effects);
                None
            }
            GroupState::CompletingRebalance | GroupState::Stable
                if unchanged && !(is_leader && self.state == GroupState::Stable) =>
            {
                // A member joining again with nothing new (its answer was lost): it hears of
                // the current generation.
                Some(self.join_answer(&member_id))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                member.protocols = joining.protocols;
                member.awaiting_join = Some((to, version));
                self.prepare_rebalance(now_ms, config, effects);
                None
            }
            GroupState::Empty => refuse(codes::UNKNOWN_MEMBER_ID),
        }
    }

    /// A static member joins again under a new member id: it takes its old id's place.
    fn replace_static(
        &mut self,
        now_ms: u64,
        old_id: &str,
        new_id: String,
        joining: Joining<'_>,
        effects: &mut Effects,
    ) -> Option<JoinGroupResponse> {
        let mut member = self.members.remove(old_id)?;
        let fenced = |to: ReplyTo| (to, join_refused(old_id, codes::FENCED_INSTANCE_ID));
        if let Some((to, _)) = member.awaiting_join.take() {
            effects.answers.push(fenced(to));
        }
        if let Some(to) = member.awaiting_sync.take() {
            effects
                .answers
                .push((to, sync_refused(codes::FENCED_INSTANCE_ID)));
        }
        member.id = new_id.clone();
        member.client = joining.client.clone();
        member.session_timeout_ms = joining.session_timeout_ms;
        member.rebalance_timeout_ms = joining.rebalance_timeout_ms;
        member.session_deadline_ms = now_ms + joining.session_timeout_ms.max(0) as u64;
        member.protocols = joining.protocols;
        if let Some(instance) = &member.instance_id {
            self.instances.insert(instance.clone(), new_id.clone());
        }
        let was_leader = self.leader.as_deref() == Some(old_id);
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        self.members.insert(new_id.clone(), member);
        if self.state == GroupState::Stable && self.select_protocol() == self.protocol {
            // Nothing changes but the id (the group would choose the same protocol): written
            // (so the old id stays fenced after a failover), then answered with the current
            // generation, no rebalance (KIP-345, as Kafka does for the leader too).
            let answer = self.join_answer(&new_id);
            effects.persist = true;
            effects
                .persist_answers
                .push((joining.to, Response::JoinGroup(answer)));
            return None;
        }
        let member = self.members.get_mut(&new_id).expect("inserted");
        member.awaiting_join = Some((joining.to, joining.version));
        if self.state == GroupState::PreparingRebalance {
            self.try_complete_join(now_ms, effects);
        } else {
            self.prepare_rebalance_with(now_ms, 0, effects);
        }
        None
    }

    fn add_member(
        &mut self,
        now_ms: u64,
        config: &GroupConfig,
        id: String,
        instance: Option<&str>,
        joining: Joining<'_>,
        effects: &mut Effects,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(joining.protocol_type.to_string());
        }
        if let Some(instance) = instance {
            self.instances.insert(instance.to_string(), id.clone());
        }
        let member = Member {
            id: id.clone(),
            instance_id: instance.map(str::to_string),
            client: joining.client.clone(),
            session_timeout_ms: joining.session_timeout_ms,
            rebalance_timeout_ms: joining.rebalance_timeout_ms,
            protocols: joining.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some((joining.to, joining.version)),
            awaiting_sync: None,
            session_deadline_ms: now_ms + joining.session_timeout_ms.max(0) as u64,
            joined_seq: self.next_seq,
        };
        self.next_seq += 1;
        self.members.insert(id, member);
        match self.state {
            GroupState::PreparingRebalance => {
                if let (Some(until), Some(deadline)) =
                    (self.initial_until_ms, self.join_deadline_ms)
                {
                    // The first rebalance waits a little longer for each member that comes.
                    let extended = now_ms + config.initial_rebalance_delay_ms.max(0) as u64;
                    self.join_deadline_ms = Some(deadline.max(extended.min(until)));
                }
                self.try_complete_join(now_ms, effects);
            }
            _ => self.prepare_rebalance(now_ms, config, effects),
        }
    }

    fn prepare_rebalance(&mut self, now_ms: u64, config: &GroupConfig, effects: &mut Effects) {
        self.prepare_rebalance_with(now_ms, config.initial_rebalance_delay_ms, effects);
    }

    fn prepare_rebalance_with(
        &mut self,
        now_ms: u64,
        initial_delay_ms: i32,
        effects: &mut Effects,
    ) {
        if self.state == GroupState::CompletingRebalance {
            for member in self.members.values_mut() {
                if let Some(to) = member.awaiting_sync.take() {
                    effects
                        .answers
                        .push((to, sync_refused(codes::REBALANCE_IN_PROGRESS)));
                }
            }
        }
        let initial = self.state == GroupState::Empty;
        self.state = GroupState::PreparingRebalance;
        self.state_since_ms = now_ms as i64;
        self.sync_deadline_ms = None;
        let timeout = self.rebalance_timeout_ms();
        if initial && initial_delay_ms > 0 {
            let delay = (initial_delay_ms as u64).min(timeout);
            self.join_deadline_ms = Some(now_ms + delay);
            self.initial_until_ms = Some(now_ms + timeout);
        } else {
            self.join_deadline_ms = Some(now_ms + timeout);
            self.initial_until_ms = None;
            self.try_complete_join(now_ms, effects);
        }
    }

    fn try_complete_join(&mut self, now_ms: u64, effects: &mut Effects) {
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some());
        if self.state == GroupState::PreparingRebalance
            && self.initial_until_ms.is_none()
            && all_joined
            && self.pending.is_empty()
        {
            self.complete_join(now_ms, effects);
        }
    }

    /// The join phase ends: members that did not join are dropped and the next generation
    /// begins (written before anyone hears of it).
    fn complete_join(&mut self, now_ms: u64, effects: &mut Effects) {
        let gone: Vec<String> = (self.members.values())
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id, effects);
        }
        self.generation += 1;
        self.state_since_ms = now_ms as i64;
        self.join_deadline_ms = None;
        self.initial_until_ms = None;
        self.assignment_write = None;
        effects.persist = true;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.select_protocol();
        let leader_stays = (self.leader.as_ref()).is_some_and(|l| self.members.contains_key(l));
        if !leader_stays {
            self.leader = (self.members.values())
                .min_by_key(|m| m.joined_seq)
                .map(|m| m.id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        self.sync_deadline_ms = Some(now_ms + self.rebalance_timeout_ms());
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let member = self.members.get_mut(&id).expect("listed");
            member.assignment = Bytes::new();
            member.session_deadline_ms = now_ms + member.session_timeout_ms.max(0) as u64;
            let Some((to, _)) = member.awaiting_join.take() else {
                continue;
            };
            let answer = self.join_answer(&id);
            effects
                .persist_answers
                .push((to, Response::JoinGroup(answer)));
        }
    }

    /// The current generation, as a JoinGroup answer to `member_id` (the leader's lists every
    /// member with its metadata for the chosen protocol).
    fn join_answer(&self, member_id: &str) -> JoinGroupResponse {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let members = if is_leader {
            (self.members.values())
                .map(|m| JoinGroupResponseMember {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    metadata: m.metadata(self.protocol.as_deref()),
                    ..Default::default()
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinGroupResponse {
            error_code: codes::NONE,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: Some(self.protocol.clone().unwrap_or_default()),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members,
            ..Default::default()
        }
    }

    fn remove_member(&mut self, id: &str, effects: &mut Effects) {
        let Some(mut member) = self.members.remove(id) else {
            return;
        };
        if let Some(instance) = &member.instance_id {
            if self.instances.get(instance).map(String::as_str) == Some(id) {
                self.instances.remove(instance);
            }
        }
        if let Some((to, _)) = member.awaiting_join.take() {
            effects
                .answers
                .push((to, join_refused(id, codes::UNKNOWN_MEMBER_ID)));
        }
        if let Some(to) = member.awaiting_sync.take() {
            effects
                .answers
                .push((to, sync_refused(codes::UNKNOWN_MEMBER_ID)));
        }
    }

    /// A member is gone (left, or its session expired): the others rebalance.
    fn member_gone(&mut self, now_ms: u64, id: &str, effects: &mut Effects) {
        self.remove_member(id, effects);
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance_with(now_ms, 0, effects)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now_ms, effects),
            GroupState::Empty => {}
        }
    }

    pub(super) fn sync(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        request: &SyncGroupRequest,
        effects: &mut Effects,
    ) -> SyncOutcome {
        let refuse = |code: i16| {
            SyncOutcome::Now(SyncGroupResponse {
                error_code: code,
                ..Default::default()
            })
        };
        let member_id = request.member_id.as_str();
        if self.fenced(member_id, request.group_instance_id.as_deref()) {
            return refuse(codes::FENCED_INSTANCE_ID);
        }
        if !self.members.contains_key(member_id) {
            return refuse(codes::UNKNOWN_MEMBER_ID);
        }
        if request.generation_id != self.generation {
            return refuse(codes::ILLEGAL_GENERATION);
        }
        let type_differs = (request.protocol_type.as_ref())
            .is_some_and(|t| Some(t) != self.protocol_type.as_ref());
        let name_differs =
            (request.protocol_name.as_ref()).is_some_and(|n| Some(n) != self.protocol.as_ref());
        if type_differs || name_differs {
            return refuse(codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        let answer = |group: &Group, member_id: &str| SyncGroupResponse {
            error_code: codes::NONE,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol.clone(),
            assignment: (group.members.get(member_id))
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
            ..Default::default()
        };
        match self.state {
            GroupState::Empty => refuse(codes::UNKNOWN_MEMBER_ID),
            GroupState::PreparingRebalance => refuse(codes::REBALANCE_IN_PROGRESS),
            GroupState::Stable => match self.assignment_write {
                Some(write) => SyncOutcome::AfterWrite(write, answer(self, member_id)),
                None => SyncOutcome::Now(answer(self, member_id)),
            },
            GroupState::CompletingRebalance => {
                let member = self.members.get_mut(member_id).expect("checked");
                member.session_deadline_ms = now_ms + member.session_timeout_ms.max(0) as u64;
                if let Some(old) = member.awaiting_sync.replace(to) {
                    effects
                        .answers
                        .push((old, sync_refused(codes::REBALANCE_IN_PROGRESS)));
                }
                if self.leader.as_deref() != Some(member_id) {
                    return SyncOutcome::Held;
                }
                for member in self.members.values_mut() {
                    member.assignment = (request.assignments.iter())
                        .find(|a| a.member_id == member.id)
                        .map(|a| a.assignment.clone())
                        .unwrap_or_default();
                }
                self.state = GroupState::Stable;
                self.state_since_ms = now_ms as i64;
                self.sync_deadline_ms = None;
                effects.persist = true;
                effects.assignment = true;
                let ids: Vec<String> = self.members.keys().cloned().collect();
                for id in ids {
                    let to = self
                        .members
                        .get_mut(&id)
                        .and_then(|m| m.awaiting_sync.take());
                    if let Some(to) = to {
                        let response = answer(self, &id);
                        effects
                            .persist_answers
                            .push((to, Response::SyncGroup(response)));
                    }
                }
                SyncOutcome::Held
            }
        }
    }

    pub(super) fn heartbeat(&mut self, now_ms: u64, request: &HeartbeatRequest) -> i16 {
        let member_id = request.member_id.as_str();
        if self.fenced(member_id, request.group_instance_id.as_deref()) {
            return codes::FENCED_INSTANCE_ID;
        }
        let state = self.state;
        let generation = self.generation;
        let Some(member) = self.members.get_mut(member_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if request.generation_id != generation {
            return codes::ILLEGAL_GENERATION;
        }
        member.session_deadline_ms = now_ms + member.session_timeout_ms.max(0) as u64;
        match state {
            GroupState::PreparingRebalance => codes::REBALANCE_IN_PROGRESS,
            GroupState::Empty => codes::UNKNOWN_MEMBER_ID,
            GroupState::CompletingRebalance | GroupState::Stable => codes::NONE,
        }
    }

    pub(super) fn leave(
        &mut self,
        now_ms: u64,
        member_id: &str,
        instance_id: Option<&str>,
        effects: &mut Effects,
    ) -> i16 {
        let id = match instance_id {
            Some(instance) => match self.instances.get(instance) {
                None => return codes::UNKNOWN_MEMBER_ID,
                Some(current) if !member_id.is_empty() && current != member_id => {
                    return codes::FENCED_INSTANCE_ID
                }
                Some(current) => current.clone(),
            },
            None => member_id.to_string(),
        };
        if self.pending.remove(&id).is_some() {
            self.try_complete_join(now_ms, effects);
            return codes::NONE;
        }
        if !self.members.contains_key(&id) {
            return codes::UNKNOWN_MEMBER_ID;
        }
        self.member_gone(now_ms, &id, effects);
        codes::NONE
    }

    /// Whether a commit (Kafka's checks for the classic protocol) may go in.
    pub(super) fn commit_allowed(
        &mut self,
        now_ms: u64,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        stale_ok: bool,
    ) -> i16 {
        if self.fenced(member_id, instance_id) {
            return codes::FENCED_INSTANCE_ID;
        }
        if generation < 0 && self.state == GroupState::Empty {
            // A client outside the group's membership (`assign()`), committing for itself.
            return codes::NONE;
        }
        if self.state == GroupState::CompletingRebalance {
            return codes::REBALANCE_IN_PROGRESS;
        }
        let current = self.generation;
        let Some(member) = self.members.get_mut(member_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if generation != current && !stale_ok {
            return codes::ILLEGAL_GENERATION;
        }
        member.session_deadline_ms = now_ms + member.session_timeout_ms.max(0) as u64;
        codes::NONE
    }

    pub(super) fn next_deadline_ms(&self) -> Option<u64> {
        let sessions = (self.members.values())
            .filter(|m| !m.kept_alive())
            .map(|m| m.session_deadline_ms)
            .min();
        let pending = self.pending.values().copied().min();
        [
            sessions,
            pending,
            self.join_deadline_ms,
            self.sync_deadline_ms,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) fn tick(&mut self, now_ms: u64, effects: &mut Effects) {
        let before = self.pending.len();
        self.pending.retain(|_, deadline| *deadline > now_ms);
        if self.pending.len() < before {
            self.try_complete_join(now_ms, effects);
        }
        let expired: Vec<String> = (self.members.values())
            .filter(|m| !m.kept_alive() && m.session_deadline_ms <= now_ms)
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::debug!(group = %self.id, member = %id, "session expired");
            self.member_gone(now_ms, &id, effects);
        }
        if self.state == GroupState::PreparingRebalance
            && self.join_deadline_ms.is_some_and(|d| d <= now_ms)
        {
            self.pending.clear();
            self.complete_join(now_ms, effects);
        }
        if self.state == GroupState::CompletingRebalance
            && self.sync_deadline_ms.is_some_and(|d| d <= now_ms)
        {
            // The leader never sent its assignment (or members never came for theirs).
            let late: Vec<String> = (self.members.values())
                .filter(|m| m.awaiting_sync.is_none())
                .map(|m| m.id.clone())
                .collect();
            for id in late {
                self.remove_member(&id, effects);
                if self.leader.as_deref() == Some(id.as_str()) {
                    self.leader = None;
                }
            }
            self.prepare_rebalance_with(now_ms, 0, effects);
        }
    }

    /// Every request the group holds, refused with `code` (its coordinator is going away).
    pub(super) fn abandon(&mut self, code: i16) -> Vec<(ReplyTo, Response)> {
        let mut answers = Vec::new();
        for member in self.members.values_mut() {
            if let Some((to, _)) = member.awaiting_join.take() {
                answers.push((to, join_refused(&member.id, code)));
            }
            if let Some(to) = member.awaiting_sync.take() {
                answers.push((to, sync_refused(code)));
            }
        }
        answers
    }
}

/// A JoinGroup's particulars, passed along while it is filed.
struct Joining<'a> {
    client: &'a Client,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocol_type: &'a str,
    protocols: Vec<(String, Bytes)>,
    to: ReplyTo,
    version: i16,
}
