//! The group coordinator: Kafka's classic consumer-group protocol and committed offsets, as
//! a state machine over one partition of `__consumer_offsets`.
//!
//! A group lives on partition `hash(group) % partitions` of the internal topic, and its
//! coordinator is that partition's leader. One [`Coordinator`] holds the groups of one
//! partition; the node makes one when it leads the partition and everything in its log is
//! committed, by replaying the log ([`Coordinator::replay`]), and drops it when leadership
//! moves (the next leader replays the same log). Meanwhile clients get
//! COORDINATOR_LOAD_IN_PROGRESS, and clients of a node that does not lead the partition get
//! NOT_COORDINATOR and ask FindCoordinator again.
//!
//! What is durable is what the log says, and nothing is answered before the write that says
//! it commits:
//! - an offset commit is answered, and applied to the offsets OffsetFetch reads, once its
//!   records commit (the high watermark passed them);
//! - a group's generation is written before any member hears of it (its JoinGroup answers
//!   wait for that write), so a generation number names one membership for ever, across
//!   failovers: a coordinator that failed over cannot hand out a generation twice;
//! - a leader's assignment is written before any member receives its share (SyncGroup answers
//!   wait for it), so two members never hold assignments of one generation that differ.
//!
//! Membership itself (who has joined, heartbeats, session deadlines) runs ahead in memory,
//! as in Kafka: a member that loses its coordinator joins the new one again.
//!
//! The coordinator never reads a clock or draws randomness: `now_ms` arrives with every call,
//! and new member ids are made by the node. Its outputs are answers to requests held until
//! their writes commit ([`Coordinator::take_answers`]) and records to append
//! ([`Coordinator::take_writes`]).

pub mod consumer;
mod group;
pub mod records;
pub mod txn;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::limits;
use crate::protocol::codes;
use crate::protocol::messages::*;
use records::{Key, OffsetValue};

pub use group::{Group, GroupState};

/// Where an answer goes: a connection and its request's place in the answer queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub conn: u64,
    pub slot: u64,
}

/// The group settings a broker is configured with (Kafka's names in the comments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group
    /// waits for more members (each join extends it, up to the rebalance timeout).
    pub initial_rebalance_delay_ms: i32,
    /// `offsets.retention.ms`: how long an empty group's offsets are kept.
    pub offsets_retention_ms: i64,
    /// `group.consumer.session.timeout.ms`: a KIP-848 member silent this long is dropped.
    pub consumer_session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms`: how often KIP-848 members heartbeat.
    pub consumer_heartbeat_interval_ms: i32,
    /// The planted bug `stale-commit`: offset commits from any generation are accepted.
    pub planted_stale_commit: bool,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            offsets_retention_ms: 7 * 24 * 3_600 * 1_000,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
            planted_stale_commit: false,
        }
    }
}

/// Records as keys and values (`None`: a tombstone).
pub type Records = Vec<(Bytes, Option<Bytes>)>;

/// A group's committed offsets by topic: each partition asked for, with its offset if any.
pub type FoundOffsets<'a> = Vec<(String, Vec<(i32, Option<&'a OffsetValue>)>)>;

/// Records to append, and what waits for them to commit.
#[derive(Debug)]
struct Write {
    id: u64,
    records: Vec<(Bytes, Option<Bytes>)>,
    /// The log end once appended (the high watermark must reach it).
    end_offset: Option<i64>,
    answers: Vec<(ReplyTo, Response)>,
    /// The producer (id, epoch) of a transactional offset commit: its records go in a
    /// transactional batch and count only once a commit marker follows them.
    txn: Option<(i64, i16)>,
    /// A transaction marker the partition's leader appended: (producer id, commit), applied
    /// when it commits.
    marker: Option<(i64, bool)>,
}

/// A write to append: its id, records, and the producer of a transactional one.
pub type WriteOut = (u64, Records, Option<(i64, i16)>);

/// The client a request came from, as Kafka records it for members.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub client_id: String,
    pub client_host: String,
}

/// One partition's groups and committed offsets.
#[derive(Debug)]
pub struct Coordinator {
    partition: i32,
    config: GroupConfig,
    groups: BTreeMap<String, Group>,
    /// Groups of KIP-848's consumer protocol (a group id is in one map or the other).
    consumer_groups: BTreeMap<String, consumer::ConsumerGroup>,
    /// Committed offsets: group, then (topic, partition).
    offsets: BTreeMap<String, BTreeMap<(String, i32), OffsetValue>>,
    /// Writes in log order: not yet appended ones (no end offset) after appended ones.
    writes: VecDeque<Write>,
    next_write_id: u64,
    /// Answers ready to go.
    answers: Vec<(ReplyTo, Response)>,
    /// When empty groups' offsets are next checked for expiry.
    next_expiry_ms: u64,
    /// Offsets committed in transactions still open, by producer id: they count once the
    /// producer's commit marker commits, and go with its abort marker.
    pending_txn: BTreeMap<i64, Records>,
}

/// How often empty groups are looked at for expired offsets
/// (Kafka's `offsets.retention.check.interval.ms`).
const OFFSETS_RETENTION_CHECK_INTERVAL_MS: u64 = 600_000;

impl Coordinator {
    /// An empty coordinator for `partition`; [`Coordinator::replay`] fills it from the log.
    pub fn new(partition: i32, config: GroupConfig) -> Coordinator {
        Coordinator {
            partition,
            config,
            groups: BTreeMap::new(),
            consumer_groups: BTreeMap::new(),
            offsets: BTreeMap::new(),
            writes: VecDeque::new(),
            next_write_id: 0,
            answers: Vec::new(),
            next_expiry_ms: 0,
            pending_txn: BTreeMap::new(),
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    /// Applies one committed record of the log (the load, or a write of ours that committed).
    /// `live`: the coordinator is serving, and its groups' membership in memory is newer than
    /// any group record it wrote. A record it cannot read is skipped (nothing but the
    /// coordinator writes this topic; clients are refused).
    pub fn replay(&mut self, now_ms: u64, key: Option<Bytes>, value: Option<Bytes>, live: bool) {
        let Some(key) = key else {
            return;
        };
        let key = match records::decode_key(key) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(partition = self.partition, %e, "unreadable group record skipped");
                return;
            }
        };
        match key {
            Key::Offset {
                group,
                topic,
                partition,
            } => match value.map(records::decode_offset) {
                None => {
                    if let Some(offsets) = self.offsets.get_mut(&group) {
                        offsets.remove(&(topic, partition));
                        if offsets.is_empty() {
                            self.offsets.remove(&group);
                        }
                    }
                }
                Some(Ok(value)) => {
                    self.offsets
                        .entry(group)
                        .or_default()
                        .insert((topic, partition), value);
                }
                Some(Err(e)) => {
                    tracing::warn!(partition = self.partition, %e, "unreadable offset skipped")
                }
            },
            Key::ConsumerGroup { group } if live => {
                // Ours, committed now: members may hear of epochs up to it.
                if let (Some(g), Some(Ok(epoch))) = (
                    self.consumer_groups.get_mut(&group),
                    value.map(records::decode_consumer_group),
                ) {
                    g.committed_epoch = g.committed_epoch.max(epoch);
                    if g.epoch_write.is_some_and(|(e, _)| e <= epoch) {
                        g.epoch_write = None;
                    }
                }
            }
            Key::ConsumerGroup { group } => match value.map(records::decode_consumer_group) {
                None => {
                    self.consumer_groups.remove(&group);
                }
                Some(Ok(epoch)) => {
                    self.consumer_groups
                        .insert(group, consumer::ConsumerGroup::loaded(epoch));
                }
                Some(Err(e)) => {
                    tracing::warn!(partition = self.partition, %e, "unreadable consumer group skipped")
                }
            },
            Key::Group { group } if live => {
                // Ours, committed now: memory already holds it (or something newer).
                let _ = group;
            }
            Key::Group { group } => match value.map(records::decode_group) {
                None => {
                    self.groups.remove(&group);
                }
                Some(Ok(value)) => {
                    let loaded = Group::load(&group, value, now_ms);
                    self.groups.insert(group, loaded);
                }
                Some(Err(e)) => {
                    tracing::warn!(partition = self.partition, %e, "unreadable group skipped")
                }
            },
        }
    }

    /// The load is over: groups take up their timers from now.
    pub fn loaded(&mut self, now_ms: u64) {
        for group in self.groups.values_mut() {
            group.resume(now_ms);
        }
        self.next_expiry_ms = now_ms + OFFSETS_RETENTION_CHECK_INTERVAL_MS;
    }

    /// Records waiting to be appended, each with its write id, in the order they must go.
    pub fn take_writes(&mut self) -> Vec<WriteOut> {
        (self.writes.iter_mut())
            .filter(|w| w.end_offset.is_none() && !w.records.is_empty())
            .map(|w| (w.id, std::mem::take(&mut w.records), w.txn))
            .collect()
    }

    /// A write could not be appended for a reason of its own (a fenced producer's
    /// transactional commit): its answers carry `code`, and nothing of it applies.
    pub fn refuse_write(&mut self, id: u64, code: i16) {
        if let Some(at) = self.writes.iter().position(|w| w.id == id) {
            let write = self.writes.remove(at).expect("found");
            for (to, mut response) in write.answers {
                refuse(&mut response, code);
                self.answers.push((to, response));
            }
        }
    }

    /// The partition's leader appended a transaction marker for producer `producer_id`,
    /// ending at `end_offset`: the producer's pending offsets apply (commit) or go (abort)
    /// when it commits, in log order with this coordinator's own writes.
    pub fn marker_appended(&mut self, producer_id: i64, commit: bool, end_offset: i64) {
        let at = (self.writes.iter())
            .position(|w| w.end_offset.is_none())
            .unwrap_or(self.writes.len());
        let id = self.next_write_id;
        self.next_write_id += 1;
        self.writes.insert(
            at,
            Write {
                id,
                records: Vec::new(),
                end_offset: Some(end_offset),
                answers: Vec::new(),
                txn: None,
                marker: Some((producer_id, commit)),
            },
        );
    }

    /// A transactional offset commit of `producer_id` in the log (the load, or a write of
    /// ours that committed): pending until its marker.
    pub fn replay_txn(&mut self, producer_id: i64, key: Bytes, value: Option<Bytes>) {
        self.pending_txn
            .entry(producer_id)
            .or_default()
            .push((key, value));
    }

    /// A transaction marker of `producer_id` in the committed log: its pending offsets apply
    /// or go.
    pub fn apply_marker(&mut self, now_ms: u64, producer_id: i64, commit: bool) {
        let Some(records) = self.pending_txn.remove(&producer_id) else {
            return;
        };
        if commit {
            for (key, value) in records {
                self.replay(now_ms, Some(key), value, false);
            }
        }
    }

    /// Whether a transaction still open holds an offset of `group` for (`topic`,
    /// `partition`): a consumer that asks for stable offsets waits (UNSTABLE_OFFSET_COMMIT).
    pub fn unstable_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        (self.pending_txn.values().flatten()).any(|(key, _)| {
            matches!(records::decode_key(key.clone()),
                Ok(Key::Offset { group: g, topic: t, partition: p })
                    if g == group && t == topic && p == partition)
        })
    }

    /// A write was appended: it commits once the high watermark reaches `end_offset`.
    pub fn appended(&mut self, id: u64, end_offset: i64, records: Records) {
        if let Some(write) = self.writes.iter_mut().find(|w| w.id == id) {
            write.end_offset = Some(end_offset);
            write.records = records;
        }
    }

    /// Writes the high watermark passed have committed: their records apply and their
    /// answers go.
    pub fn committed(&mut self, now_ms: u64, high_watermark: i64) {
        while let Some(write) = self.writes.front() {
            match write.end_offset {
                Some(end) if end <= high_watermark => {}
                _ => break,
            }
            let write = self.writes.pop_front().expect("looked at");
            if let Some((producer_id, commit)) = write.marker {
                self.apply_marker(now_ms, producer_id, commit);
            }
            for (key, value) in write.records {
                match write.txn {
                    Some((producer_id, _)) => self.replay_txn(producer_id, key, value),
                    None => self.replay(now_ms, Some(key), value, true),
                }
            }
            for group in self.groups.values_mut() {
                if group.assignment_write == Some(write.id) {
                    group.assignment_write = None;
                }
                if group.record_write == Some(write.id) {
                    group.record_write = None;
                }
            }
            self.answers.extend(write.answers);
        }
    }

    /// Answers ready to be sent.
    pub fn take_answers(&mut self) -> Vec<(ReplyTo, Response)> {
        std::mem::take(&mut self.answers)
    }

    /// Whether writes are appended and not committed, or not appended yet.
    pub fn writing(&self) -> bool {
        !self.writes.is_empty()
    }

    /// The coordinator is dropped (leadership moved, or a write could not be appended): every
    /// request it holds is answered with `code` (NOT_COORDINATOR: clients find the next one).
    pub fn abandon(mut self, code: i16) -> Vec<(ReplyTo, Response)> {
        let mut answers = std::mem::take(&mut self.answers);
        for write in std::mem::take(&mut self.writes) {
            for (to, mut response) in write.answers {
                refuse(&mut response, code);
                answers.push((to, response));
            }
        }
        for group in self.groups.values_mut() {
            answers.extend(group.abandon(code));
        }
        answers
    }

    /// Checks what must hold after every step: no partition given to two members of a
    /// consumer-protocol group.
    pub fn check_invariants(&self) {
        for group in self.consumer_groups.values() {
            group.check_invariants();
        }
    }

    /// When the coordinator next needs [`Coordinator::tick`].
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let groups = (self.groups.values())
            .filter_map(Group::next_deadline_ms)
            .min();
        let consumers = (self.consumer_groups.values())
            .filter_map(consumer::ConsumerGroup::next_deadline_ms)
            .min();
        [groups, consumers, Some(self.next_expiry_ms)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Session and rebalance timeouts, and expired offsets.
    pub fn tick(&mut self, now_ms: u64) {
        let due: Vec<String> = (self.groups.iter())
            .filter(|(_, g)| g.next_deadline_ms().is_some_and(|d| d <= now_ms))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.with_group(&id, |group, effects| group.tick(now_ms, effects));
        }
        for group in self.consumer_groups.values_mut() {
            if group.next_deadline_ms().is_some_and(|d| d <= now_ms) {
                group.tick(now_ms);
            }
        }
        if now_ms >= self.next_expiry_ms {
            self.next_expiry_ms = now_ms + OFFSETS_RETENTION_CHECK_INTERVAL_MS;
            self.expire_offsets(now_ms);
        }
    }

    /// Offsets of groups with no members, committed longer ago than the retention, are
    /// removed (Kafka 2.1's rule: a group's offsets expire once it is empty).
    fn expire_offsets(&mut self, now_ms: u64) {
        let retention_ms = self.config.offsets_retention_ms;
        // An offset still being written is fresh: its older value must not take it along.
        let pending = self.pending_offset_keys();
        let mut records = Vec::new();
        for (group, offsets) in &self.offsets {
            if self
                .consumer_groups
                .get(group)
                .is_some_and(|g| !g.is_empty())
            {
                continue;
            }
            let empty_since = match self.groups.get(group) {
                Some(g) if g.state() != GroupState::Empty => continue,
                Some(g) => g.state_since_ms(),
                None => i64::MIN,
            };
            for ((topic, partition), value) in offsets {
                let since = value.commit_timestamp_ms.max(empty_since);
                let writing = pending.contains(&(group.clone(), topic.clone(), *partition));
                if !writing && since.saturating_add(retention_ms) <= now_ms as i64 {
                    let key = Key::Offset {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                    };
                    records.push((records::encode_key(&key), None));
                }
            }
        }
        if !records.is_empty() {
            self.write(records, Vec::new());
        }
    }

    /// The offsets (group, topic, partition) that writes not yet committed hold.
    fn pending_offset_keys(&self) -> std::collections::BTreeSet<(String, String, i32)> {
        (self.writes.iter())
            .flat_map(|w| w.records.iter())
            .filter_map(|(key, _)| match records::decode_key(key.clone()) {
                Ok(Key::Offset {
                    group,
                    topic,
                    partition,
                }) => Some((group, topic, partition)),
                _ => None,
            })
            .collect()
    }

    /// Queues records to append, with the answers that wait for them; returns the write's id.
    fn write(
        &mut self,
        records: Vec<(Bytes, Option<Bytes>)>,
        answers: Vec<(ReplyTo, Response)>,
    ) -> u64 {
        let id = self.next_write_id;
        self.next_write_id += 1;
        self.writes.push_back(Write {
            id,
            records,
            end_offset: None,
            answers,
            txn: None,
            marker: None,
        });
        id
    }

    /// Runs `f` on a group (if it exists) and carries out what it asks: writes and answers.
    fn with_group<T>(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut Group, &mut group::Effects) -> T,
    ) -> Option<T> {
        let group = self.groups.get_mut(id)?;
        let mut effects = group::Effects::default();
        let result = f(group, &mut effects);
        self.carry_out(id, effects);
        Some(result)
    }

    fn carry_out(&mut self, id: &str, effects: group::Effects) {
        let group::Effects {
            answers,
            persist,
            persist_answers,
            assignment,
        } = effects;
        self.answers.extend(answers);
        if persist {
            let Some(group) = self.groups.get(id) else {
                return;
            };
            let key = records::encode_key(&Key::Group { group: id.into() });
            let value = records::encode_group(&group.to_value());
            let write = self.write(vec![(key, Some(value))], persist_answers);
            if let Some(group) = self.groups.get_mut(id) {
                group.record_write = Some(write);
                if assignment {
                    group.assignment_write = Some(write);
                }
            }
        } else {
            debug_assert!(persist_answers.is_empty(), "answers wait for a write");
            self.answers.extend(persist_answers);
        }
    }

    /// Adds an answer to the write a group's assignment waits for (a member's SyncGroup that
    /// came after its leader's).
    fn attach(&mut self, write: u64, answer: (ReplyTo, Response)) {
        match self.writes.iter_mut().find(|w| w.id == write) {
            Some(w) => w.answers.push(answer),
            None => self.answers.push(answer),
        }
    }

    /// JoinGroup. `new_member_id` is what a member joining without one is given. The answer
    /// comes now, or later through [`Coordinator::take_answers`] (`None`).
    pub fn join(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        version: i16,
        client: &Client,
        request: &JoinGroupRequest,
        new_member_id: String,
    ) -> Option<JoinGroupResponse> {
        let refuse = |code: i16| {
            Some(JoinGroupResponse {
                error_code: code,
                member_id: request.member_id.clone(),
                ..Default::default()
            })
        };
        if request.group_id.is_empty() {
            return refuse(codes::INVALID_GROUP_ID);
        }
        let timeout = request.session_timeout_ms;
        if timeout < self.config.min_session_timeout_ms
            || timeout > self.config.max_session_timeout_ms
        {
            return refuse(codes::INVALID_SESSION_TIMEOUT);
        }
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return refuse(codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        if request.protocols.len() > limits::GROUP_PROTOCOLS_MAX {
            return refuse(codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        if self.consumer_groups.contains_key(&request.group_id) {
            // A group of the consumer protocol: classic members may not join it.
            return refuse(codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        if !self.groups.contains_key(&request.group_id) {
            if !request.member_id.is_empty() {
                return refuse(codes::UNKNOWN_MEMBER_ID);
            }
            if self.groups.len() >= limits::GROUPS_PER_OFFSETS_PARTITION_MAX {
                return refuse(codes::COORDINATOR_NOT_AVAILABLE);
            }
            self.groups.insert(
                request.group_id.clone(),
                Group::new(&request.group_id, now_ms),
            );
        }
        let config = self.config;
        let answer = self
            .with_group(&request.group_id, |group, effects| {
                group.join(
                    now_ms,
                    &config,
                    to,
                    version,
                    client,
                    request,
                    new_member_id,
                    effects,
                )
            })
            .flatten()?;
        let pending = (self.groups.get(&request.group_id)).and_then(|g| g.record_write);
        match pending {
            // It names the generation a record not yet committed holds: it waits for it.
            Some(write) if answer.error_code == codes::NONE => {
                self.attach(write, (to, Response::JoinGroup(answer)));
                None
            }
            _ => Some(answer),
        }
    }

    /// The consumer-protocol groups (KIP-848).
    pub fn consumer_groups(&self) -> impl Iterator<Item = (&String, &consumer::ConsumerGroup)> {
        self.consumer_groups.iter()
    }

    /// ConsumerGroupHeartbeat (KIP-848). The answer comes now, or (`None`) once a record of
    /// the epoch it names is committed.
    pub fn consumer_heartbeat(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        request: &ConsumerGroupHeartbeatRequest,
        topics: consumer::TopicInfo<'_>,
        new_member_id: String,
    ) -> Option<ConsumerGroupHeartbeatResponse> {
        let refuse = |code: i16, message: &str| {
            Some(ConsumerGroupHeartbeatResponse {
                error_code: code,
                error_message: Some(message.into()),
                member_epoch: request.member_epoch,
                ..Default::default()
            })
        };
        if request.group_id.is_empty() {
            return refuse(codes::INVALID_GROUP_ID, "empty group id");
        }
        if let Some(classic) = self.groups.get(&request.group_id) {
            if classic.state() != GroupState::Empty {
                return refuse(
                    codes::INCONSISTENT_GROUP_PROTOCOL,
                    "a classic group with members: its members use JoinGroup",
                );
            }
        }
        if !self.consumer_groups.contains_key(&request.group_id) {
            if request.member_epoch != 0 {
                return refuse(codes::UNKNOWN_MEMBER_ID, "no such group: join again");
            }
            if self.groups.len() + self.consumer_groups.len()
                >= limits::GROUPS_PER_OFFSETS_PARTITION_MAX
            {
                return refuse(codes::COORDINATOR_NOT_AVAILABLE, "too many groups here");
            }
            if self.groups.remove(&request.group_id).is_some() {
                // An empty classic group becomes a consumer group: its record goes.
                let key = Key::Group {
                    group: request.group_id.clone(),
                };
                self.write(vec![(records::encode_key(&key), None)], Vec::new());
            }
            self.consumer_groups
                .insert(request.group_id.clone(), Default::default());
        }
        let settings = consumer::ConsumerSettings {
            session_timeout_ms: self.config.consumer_session_timeout_ms,
            heartbeat_interval_ms: self.config.consumer_heartbeat_interval_ms,
        };
        let group = self
            .consumer_groups
            .get_mut(&request.group_id)
            .expect("made above");
        let response = group.heartbeat(now_ms, settings, request, topics, new_member_id);
        if response.error_code != codes::NONE || response.member_epoch <= group.committed_epoch {
            return Some(response);
        }
        // An epoch not committed yet: the answer waits for the record that writes it (one
        // already on its way, or a new one), so no member hears of an epoch a failover could
        // hand out again.
        let answer = (to, Response::ConsumerGroupHeartbeat(response));
        let epoch = group.epoch();
        match group.epoch_write {
            Some((written, write)) if written >= answer_epoch(&answer.1) => {
                self.attach(write, answer);
            }
            _ => {
                let key = Key::ConsumerGroup {
                    group: request.group_id.clone(),
                };
                let value = records::encode_consumer_group(epoch);
                let write =
                    self.write(vec![(records::encode_key(&key), Some(value))], vec![answer]);
                let group = (self.consumer_groups.get_mut(&request.group_id)).expect("found above");
                group.epoch_write = Some((epoch, write));
            }
        }
        None
    }

    /// SyncGroup: the leader's assignments, or a member's wait for its share.
    pub fn sync(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        request: &SyncGroupRequest,
    ) -> Option<SyncGroupResponse> {
        let refuse = |code: i16| {
            Some(SyncGroupResponse {
                error_code: code,
                ..Default::default()
            })
        };
        if !self.groups.contains_key(&request.group_id) {
            return refuse(codes::UNKNOWN_MEMBER_ID);
        }
        let outcome = self
            .with_group(&request.group_id, |group, effects| {
                group.sync(now_ms, to, request, effects)
            })
            .expect("the group exists");
        match outcome {
            group::SyncOutcome::Now(response) => Some(response),
            group::SyncOutcome::Held => None,
            group::SyncOutcome::AfterWrite(write, response) => {
                self.attach(write, (to, Response::SyncGroup(response)));
                None
            }
        }
    }

    pub fn heartbeat(&mut self, now_ms: u64, request: &HeartbeatRequest) -> HeartbeatResponse {
        let error_code = self
            .with_group(&request.group_id, |group, _| {
                group.heartbeat(now_ms, request)
            })
            .unwrap_or(codes::UNKNOWN_MEMBER_ID);
        HeartbeatResponse {
            error_code,
            ..Default::default()
        }
    }

    /// LeaveGroup, for each member named (v3+) or the one member (v0-2).
    pub fn leave(&mut self, now_ms: u64, request: &LeaveGroupRequest) -> LeaveGroupResponse {
        use crate::protocol::messages::leave_group_response::MemberResponse;
        let leaving: Vec<(String, Option<String>)> = if request.members.is_empty() {
            vec![(request.member_id.clone(), None)]
        } else {
            (request.members.iter())
                .map(|m| (m.member_id.clone(), m.group_instance_id.clone()))
                .collect()
        };
        let mut members = Vec::new();
        for (member_id, instance_id) in leaving {
            let error_code = self
                .with_group(&request.group_id, |group, effects| {
                    group.leave(now_ms, &member_id, instance_id.as_deref(), effects)
                })
                .unwrap_or(codes::UNKNOWN_MEMBER_ID);
            members.push(MemberResponse {
                member_id,
                group_instance_id: instance_id,
                error_code,
                ..Default::default()
            });
        }
        // v0-2 carry one member, whose error is the request's; v3+ report per member.
        let error_code = if request.members.is_empty() {
            members.first().map_or(codes::NONE, |m| m.error_code)
        } else {
            codes::NONE
        };
        LeaveGroupResponse {
            error_code,
            members,
            ..Default::default()
        }
    }

    /// OffsetCommit, with Kafka's generation and member checks. The answer comes once the
    /// commit's records commit (`None`), or now if nothing is written. `known` says whether
    /// a topic partition exists (commits for partitions that do not are refused).
    pub fn commit(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        request: &OffsetCommitRequest,
        known: impl Fn(&str, i32) -> bool,
    ) -> Option<OffsetCommitResponse> {
        use crate::protocol::messages::offset_commit_response::*;
        let group_code = self.commit_allowed(now_ms, request);
        let mut records = Vec::new();
        let mut topics = Vec::new();
        for topic in &request.topics {
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                let metadata = p.committed_metadata.clone().unwrap_or_default();
                let error_code = if group_code != codes::NONE {
                    group_code
                } else if !known(&topic.name, p.partition_index) {
                    codes::UNKNOWN_TOPIC_OR_PARTITION
                } else if metadata.len() > limits::OFFSET_METADATA_MAX_BYTES {
                    codes::OFFSET_METADATA_TOO_LARGE
                } else {
                    let key = Key::Offset {
                        group: request.group_id.clone(),
                        topic: topic.name.clone(),
                        partition: p.partition_index,
                    };
                    let value = OffsetValue {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                        commit_timestamp_ms: now_ms as i64,
                    };
                    records.push((
                        records::encode_key(&key),
                        Some(records::encode_offset(&value)),
                    ));
                    codes::NONE
                };
                partitions.push(OffsetCommitResponsePartition {
                    partition_index: p.partition_index,
                    error_code,
                    ..Default::default()
                });
            }
            topics.push(OffsetCommitResponseTopic {
                name: topic.name.clone(),
                partitions,
                ..Default::default()
            });
        }
        let response = OffsetCommitResponse {
            topics,
            ..Default::default()
        };
        if records.is_empty() {
            return Some(response);
        }
        let size: usize = (records.iter())
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum();
        if size > limits::GROUP_WRITE_MAX_BYTES {
            // One batch must cross a peer link and load whole: Kafka's answer to a commit
            // past its segment's size.
            let mut response = response;
            for p in response
                .topics
                .iter_mut()
                .flat_map(|t| t.partitions.iter_mut())
            {
                if p.error_code == codes::NONE {
                    p.error_code = codes::INVALID_COMMIT_OFFSET_SIZE;
                }
            }
            return Some(response);
        }
        if !self.groups.contains_key(&request.group_id)
            && !self.consumer_groups.contains_key(&request.group_id)
        {
            // A group that only commits (generation -1: `assign()` and commit): it exists,
            // empty, so that it is listed and its offsets can expire.
            self.groups.insert(
                request.group_id.clone(),
                Group::new(&request.group_id, now_ms),
            );
        }
        self.write(records, vec![(to, Response::OffsetCommit(response))]);
        None
    }

    /// TxnOffsetCommit: offsets committed in producer `producer_id`'s transaction, written in
    /// a transactional batch (the partition's producer state fences an older epoch) and
    /// counted only once the transaction's commit marker commits. `None`: answered once the
    /// write commits.
    pub fn txn_commit(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        request: &TxnOffsetCommitRequest,
        known: impl Fn(&str, i32) -> bool,
    ) -> Option<TxnOffsetCommitResponse> {
        use crate::protocol::messages::txn_offset_commit_response::*;
        let as_commit = OffsetCommitRequest {
            group_id: request.group_id.clone(),
            generation_id_or_member_epoch: request.generation_id,
            member_id: request.member_id.clone(),
            group_instance_id: request.group_instance_id.clone(),
            ..Default::default()
        };
        let group_code = self.commit_allowed(now_ms, &as_commit);
        let mut records = Vec::new();
        let mut topics = Vec::new();
        for topic in &request.topics {
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                let metadata = p.committed_metadata.clone().unwrap_or_default();
                let error_code = if group_code != codes::NONE {
                    group_code
                } else if !known(&topic.name, p.partition_index) {
                    codes::UNKNOWN_TOPIC_OR_PARTITION
                } else if metadata.len() > limits::OFFSET_METADATA_MAX_BYTES {
                    codes::OFFSET_METADATA_TOO_LARGE
                } else {
                    let key = Key::Offset {
                        group: request.group_id.clone(),
                        topic: topic.name.clone(),
                        partition: p.partition_index,
                    };
                    let value = OffsetValue {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                        commit_timestamp_ms: now_ms as i64,
                    };
                    records.push((
                        records::encode_key(&key),
                        Some(records::encode_offset(&value)),
                    ));
                    codes::NONE
                };
                partitions.push(TxnOffsetCommitResponsePartition {
                    partition_index: p.partition_index,
                    error_code,
                    ..Default::default()
                });
            }
            topics.push(TxnOffsetCommitResponseTopic {
                name: topic.name.clone(),
                partitions,
                ..Default::default()
            });
        }
        let mut response = TxnOffsetCommitResponse {
            topics,
            ..Default::default()
        };
        if records.is_empty() {
            return Some(response);
        }
        let size: usize = (records.iter())
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum();
        if size > limits::GROUP_WRITE_MAX_BYTES {
            for p in (response.topics.iter_mut()).flat_map(|t| t.partitions.iter_mut()) {
                if p.error_code == codes::NONE {
                    p.error_code = codes::INVALID_COMMIT_OFFSET_SIZE;
                }
            }
            return Some(response);
        }
        if !self.groups.contains_key(&request.group_id)
            && !self.consumer_groups.contains_key(&request.group_id)
        {
            self.groups.insert(
                request.group_id.clone(),
                Group::new(&request.group_id, now_ms),
            );
        }
        let id = self.write(records, vec![(to, Response::TxnOffsetCommit(response))]);
        if let Some(write) = self.writes.iter_mut().find(|w| w.id == id) {
            write.txn = Some((request.producer_id, request.producer_epoch));
        }
        None
    }

    /// Whether a commit may go in: Kafka's checks, in Kafka's order.
    fn commit_allowed(&mut self, now_ms: u64, request: &OffsetCommitRequest) -> i16 {
        if request.group_id.is_empty() {
            return codes::INVALID_GROUP_ID;
        }
        let generation = request.generation_id_or_member_epoch;
        let stale_ok = self.config.planted_stale_commit;
        if let Some(group) = self.consumer_groups.get(&request.group_id) {
            return group.commit_allowed(&request.member_id, generation);
        }
        match self.groups.get_mut(&request.group_id) {
            None if generation < 0 => {
                if self.groups.len() >= limits::GROUPS_PER_OFFSETS_PARTITION_MAX {
                    codes::COORDINATOR_NOT_AVAILABLE
                } else {
                    codes::NONE
                }
            }
            None => codes::ILLEGAL_GENERATION,
            Some(group) => group.commit_allowed(
                now_ms,
                generation,
                &request.member_id,
                request.group_instance_id.as_deref(),
                stale_ok,
            ),
        }
    }

    /// The committed offsets of `group`: of the partitions asked for, or all (`None`).
    pub fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> FoundOffsets<'_> {
        let offsets = self.offsets.get(group);
        match topics {
            Some(topics) => (topics.iter())
                .map(|(topic, partitions)| {
                    let found = (partitions.iter())
                        .map(|p| {
                            let value = offsets.and_then(|o| o.get(&(topic.clone(), *p)));
                            (*p, value)
                        })
                        .collect();
                    (topic.clone(), found)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<&str, Vec<(i32, Option<&OffsetValue>)>> =
                    BTreeMap::new();
                for ((topic, partition), value) in offsets.into_iter().flatten() {
                    by_topic
                        .entry(topic)
                        .or_default()
                        .push((*partition, Some(value)));
                }
                (by_topic.into_iter())
                    .map(|(t, p)| (t.to_string(), p))
                    .collect()
            }
        }
    }

    /// DeleteGroups for the groups of this partition: each must have no members. The
    /// answer's results come once the tombstones commit (`None`), or now.
    pub fn delete(
        &mut self,
        to: ReplyTo,
        groups: &[String],
    ) -> Option<Vec<delete_groups_response::DeletableGroupResult>> {
        use crate::protocol::messages::delete_groups_response::DeletableGroupResult;
        let mut results = Vec::new();
        let mut records = Vec::new();
        for id in groups {
            let mut was_consumer_group = false;
            if let Some(group) = self.consumer_groups.get(id) {
                if !group.is_empty() {
                    results.push(DeletableGroupResult {
                        group_id: id.clone(),
                        error_code: codes::NON_EMPTY_GROUP,
                        ..Default::default()
                    });
                    continue;
                }
                self.consumer_groups.remove(id);
                let key = Key::ConsumerGroup { group: id.clone() };
                records.push((records::encode_key(&key), None));
                was_consumer_group = true;
            }
            let error_code = match self.groups.get(id) {
                None if !self.offsets.contains_key(id) && !was_consumer_group => {
                    codes::GROUP_ID_NOT_FOUND
                }
                Some(g) if g.state() != GroupState::Empty => codes::NON_EMPTY_GROUP,
                _ => {
                    self.groups.remove(id);
                    // Offsets still being written go too (their tombstones come after them).
                    let pending = self.pending_offset_keys();
                    for (_, topic, partition) in pending.iter().filter(|(g, _, _)| g == id) {
                        let key = Key::Offset {
                            group: id.clone(),
                            topic: topic.clone(),
                            partition: *partition,
                        };
                        records.push((records::encode_key(&key), None));
                    }
                    for (topic, partition) in
                        self.offsets.get(id).into_iter().flatten().map(|e| e.0)
                    {
                        let key = Key::Offset {
                            group: id.clone(),
                            topic: topic.clone(),
                            partition: *partition,
                        };
                        records.push((records::encode_key(&key), None));
                    }
                    let key = Key::Group { group: id.clone() };
                    records.push((records::encode_key(&key), None));
                    codes::NONE
                }
            };
            results.push(DeletableGroupResult {
                group_id: id.clone(),
                error_code,
                ..Default::default()
            });
        }
        if records.is_empty() {
            return Some(results);
        }
        let response = DeleteGroupsResponse {
            results,
            ..Default::default()
        };
        self.write(records, vec![(to, Response::DeleteGroups(response))]);
        None
    }
}

impl Coordinator {
    /// OffsetDelete (KIP-496): a group's committed offsets go, except for topics a member
    /// of it is subscribed to (GROUP_SUBSCRIBED_TO_TOPIC). Answered once the tombstones
    /// commit (`None`), or now.
    pub fn delete_offsets(
        &mut self,
        to: ReplyTo,
        request: &OffsetDeleteRequest,
    ) -> Option<OffsetDeleteResponse> {
        use crate::protocol::messages::offset_delete_response::*;
        let id = &request.group_id;
        let known = self.groups.contains_key(id)
            || self.consumer_groups.contains_key(id)
            || self.offsets.contains_key(id);
        if !known {
            return Some(OffsetDeleteResponse {
                error_code: codes::GROUP_ID_NOT_FOUND,
                ..Default::default()
            });
        }
        let subscribed = |topic: &str| {
            self.groups.get(id).is_some_and(|g| g.subscribed_to(topic))
                || (self.consumer_groups.get(id))
                    .is_some_and(|g| g.members().any(|m| m.subscribed_to(topic)))
        };
        let mut records = Vec::new();
        let topics = (request.topics.iter())
            .map(|t| {
                let busy = subscribed(&t.name);
                let partitions = (t.partitions.iter())
                    .map(|p| {
                        let error_code = if busy {
                            codes::GROUP_SUBSCRIBED_TO_TOPIC
                        } else {
                            let key = Key::Offset {
                                group: id.clone(),
                                topic: t.name.clone(),
                                partition: p.partition_index,
                            };
                            records.push((records::encode_key(&key), None));
                            codes::NONE
                        };
                        OffsetDeleteResponsePartition {
                            partition_index: p.partition_index,
                            error_code,
                        }
                    })
                    .collect();
                OffsetDeleteResponseTopic {
                    name: t.name.clone(),
                    partitions,
                }
            })
            .collect();
        let response = OffsetDeleteResponse {
            topics,
            ..Default::default()
        };
        if records.is_empty() {
            return Some(response);
        }
        self.write(records, vec![(to, Response::OffsetDelete(response))]);
        None
    }
}

/// The member epoch a held ConsumerGroupHeartbeat answer names.
fn answer_epoch(response: &Response) -> i32 {
    match response {
        Response::ConsumerGroupHeartbeat(r) => r.member_epoch,
        _ => i32::MAX,
    }
}

/// Sets the error of a response the coordinator held, for a coordinator that gave up.
pub fn refuse(response: &mut Response, code: i16) {
    match response {
        Response::JoinGroup(r) => r.error_code = code,
        Response::SyncGroup(r) => {
            r.error_code = code;
            r.assignment = Bytes::new();
        }
        Response::Heartbeat(r) => r.error_code = code,
        Response::ConsumerGroupHeartbeat(r) => {
            r.error_code = code;
            r.assignment = None;
        }
        Response::LeaveGroup(r) => r.error_code = code,
        Response::OffsetCommit(r) => {
            for p in r.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                if p.error_code == codes::NONE {
                    p.error_code = code;
                }
            }
        }
        Response::TxnOffsetCommit(r) => {
            for p in r.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                if p.error_code == codes::NONE {
                    p.error_code = code;
                }
            }
        }
        Response::OffsetDelete(r) => r.error_code = code,
        Response::DeleteGroups(r) => {
            for g in r.results.iter_mut() {
                if g.error_code == codes::NONE {
                    g.error_code = code;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
