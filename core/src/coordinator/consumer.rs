//! KIP-848's consumer protocol: groups whose members only heartbeat
//! (ConsumerGroupHeartbeat) and the coordinator assigns.
//!
//! - The group has an epoch, bumped whenever what the assignment depends on changes: a
//!   member joins, leaves or is dropped, a subscription changes, a subscribed topic gains
//!   partitions. The target assignment is computed for the group epoch by the server-side
//!   assignor the members ask for (`uniform`, the default: every partition of the
//!   subscribed topics spread evenly, each kept by its owner where it can; or `range`: each
//!   topic's partitions in contiguous ranges over its subscribers).
//! - Each member reconciles towards its target on its own: it is first asked to give up
//!   what is no longer its own (its assignment shrinks, its epoch stays); once its heartbeat
//!   shows it did, it moves to the group's epoch and is given its target, less any partition
//!   another member still holds (those come in a later heartbeat, once released). So no
//!   partition is ever held by two members, and members that lose nothing keep consuming
//!   through a rebalance.
//! - A member that stops heartbeating past its session timeout, or does not give up what it
//!   was asked to within its rebalance timeout, is dropped (FENCED_MEMBER_EPOCH,
//!   UNKNOWN_MEMBER_ID: it joins again at epoch 0).
//! - The group's epoch is written (Kafka's ConsumerGroupMetadata record) before any member
//!   hears of it, so an epoch names one assignment for ever. Members and assignments are not
//!   written: after a failover the members join the new coordinator again.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::codes;
use crate::protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use crate::protocol::messages::*;
use crate::protocol::wire::Uuid;

/// A partition by topic id.
pub type Partition = (Uuid, i32);

/// What the coordinator needs of a subscribed topic: its id and partition count.
pub type TopicInfo<'a> = &'a dyn Fn(&str) -> Option<(Uuid, i32)>;

#[derive(Debug)]
pub struct ConsumerMember {
    id: String,
    instance_id: Option<String>,
    rebalance_timeout_ms: i32,
    subscribed: Vec<String>,
    assignor: Option<String>,
    epoch: i32,
    /// What the assignor gave it for the group's epoch.
    target: BTreeSet<Partition>,
    /// What it holds, as it last said (or as it was last given, if it did not say).
    owned: BTreeSet<Partition>,
    /// What it was last told it has (`None` until told, or after it joined again).
    given: Option<BTreeSet<Partition>>,
    session_deadline_ms: u64,
    /// When it must have given up what it was asked to, if anything.
    revoke_deadline_ms: Option<u64>,
}

impl ConsumerMember {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn epoch(&self) -> i32 {
        self.epoch
    }

    pub fn instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }

    pub fn subscribed_to(&self, topic: &str) -> bool {
        self.subscribed.iter().any(|t| t == topic)
    }

    /// Partitions it holds or was given: nobody else may be given them.
    fn holds(&self) -> impl Iterator<Item = &Partition> {
        self.owned.iter().chain(self.given.iter().flatten())
    }
}

#[derive(Debug, Default)]
pub struct ConsumerGroup {
    epoch: i32,
    /// The group epoch the target assignment was computed for.
    assignment_epoch: i32,
    /// The highest epoch the log holds committed: members hear of no higher one before then.
    pub(super) committed_epoch: i32,
    /// The epoch being written, and the write (answers naming epochs up to it wait for it).
    pub(super) epoch_write: Option<(i32, u64)>,
    members: BTreeMap<String, ConsumerMember>,
    /// The subscribed topics' ids and partition counts, as the assignment last saw them.
    topics_seen: BTreeMap<String, (Uuid, i32)>,
    /// What the assignment depends on changed in this heartbeat: the epoch moves (once).
    changed: bool,
}

/// What the coordinator's settings say of consumer groups.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings {
    pub session_timeout_ms: i32,
    pub heartbeat_interval_ms: i32,
}

impl ConsumerGroup {
    /// A group as the log left it: its epoch, no members (they join again).
    pub fn loaded(epoch: i32) -> ConsumerGroup {
        ConsumerGroup {
            epoch,
            assignment_epoch: epoch,
            committed_epoch: epoch,
            ..Default::default()
        }
    }

    pub fn epoch(&self) -> i32 {
        self.epoch
    }

    pub fn members(&self) -> impl Iterator<Item = &ConsumerMember> {
        self.members.values()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// KIP-848's group states, as ListGroups names them.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.epoch {
            "Assigning"
        } else if self.members.values().any(|m| m.epoch != self.epoch) {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// Whether `member_id` may commit offsets at `epoch` (OffsetCommit v9's member epoch).
    pub fn commit_allowed(&self, member_id: &str, epoch: i32) -> i16 {
        if member_id.is_empty() && epoch < 0 && self.members.is_empty() {
            // A client outside the group (an admin, or `assign()`), on an empty group.
            return codes::NONE;
        }
        match self.members.get(member_id) {
            None => codes::UNKNOWN_MEMBER_ID,
            Some(m) if m.epoch != epoch => codes::STALE_MEMBER_EPOCH,
            Some(_) => codes::NONE,
        }
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        (self.members.values())
            .flat_map(|m| [Some(m.session_deadline_ms), m.revoke_deadline_ms])
            .flatten()
            .min()
    }

    /// Members past their session, or slow to give up partitions, are dropped.
    pub fn tick(&mut self, now_ms: u64) {
        let gone: Vec<String> = (self.members.values())
            .filter(|m| {
                m.session_deadline_ms <= now_ms || m.revoke_deadline_ms.is_some_and(|d| d <= now_ms)
            })
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            tracing::debug!(member = %id, "consumer group member dropped");
            self.members.remove(&id);
            self.epoch += 1;
        }
    }

    /// A ConsumerGroupHeartbeat. `new_member_id` is for a v0 member joining without one.
    pub fn heartbeat(
        &mut self,
        now_ms: u64,
        settings: ConsumerSettings,
        request: &ConsumerGroupHeartbeatRequest,
        topics: TopicInfo<'_>,
        new_member_id: String,
    ) -> ConsumerGroupHeartbeatResponse {
        let refuse = |code: i16, message: &str| ConsumerGroupHeartbeatResponse {
            error_code: code,
            error_message: Some(message.to_string()),
            member_id: Some(request.member_id.clone()),
            member_epoch: request.member_epoch,
            heartbeat_interval_ms: settings.heartbeat_interval_ms,
            ..Default::default()
        };
        let epoch = request.member_epoch;
        if epoch == -1 || epoch == -2 {
            // Leaving (-2: a static member that will be back; it leaves all the same).
            if self.members.remove(&request.member_id).is_some() {
                self.epoch += 1;
            }
            return ConsumerGroupHeartbeatResponse {
                member_id: Some(request.member_id.clone()),
                member_epoch: epoch,
                heartbeat_interval_ms: settings.heartbeat_interval_ms,
                ..Default::default()
            };
        }
        if epoch == 0 {
            let Some(subscribed) = request.subscribed_topic_names.clone() else {
                return refuse(codes::INVALID_REQUEST, "a joining member names its topics");
            };
            if subscribed.len() > crate::limits::GROUP_SUBSCRIBED_TOPICS_MAX {
                return refuse(codes::INVALID_REQUEST, "too many subscribed topics");
            }
            if request
                .subscribed_topic_regex
                .as_deref()
                .is_some_and(|r| !r.is_empty())
            {
                return refuse(
                    codes::INVALID_REQUEST,
                    "topic regexes are not supported yet",
                );
            }
            if let Some(assignor) = request.server_assignor.as_deref() {
                if !matches!(assignor, "uniform" | "range") {
                    return refuse(codes::UNSUPPORTED_ASSIGNOR, "assignors: uniform, range");
                }
            }
            if self.members.len() >= crate::limits::GROUP_MEMBERS_MAX
                && !self.members.contains_key(&request.member_id)
            {
                return refuse(codes::GROUP_MAX_SIZE_REACHED, "the group is full");
            }
            let id = if request.member_id.is_empty() {
                new_member_id
            } else {
                request.member_id.clone()
            };
            if let Some(instance) = &request.instance_id {
                // The same instance joining again replaces its former member.
                let former: Vec<String> = (self.members.values())
                    .filter(|m| m.instance_id.as_ref() == Some(instance) && m.id != id)
                    .map(|m| m.id.clone())
                    .collect();
                for f in former {
                    self.members.remove(&f);
                }
            }
            self.members.insert(
                id.clone(),
                ConsumerMember {
                    id: id.clone(),
                    instance_id: request.instance_id.clone(),
                    rebalance_timeout_ms: request.rebalance_timeout_ms.max(0),
                    subscribed,
                    assignor: request.server_assignor.clone(),
                    epoch: 0,
                    target: BTreeSet::new(),
                    owned: BTreeSet::new(),
                    given: None,
                    session_deadline_ms: 0,
                    revoke_deadline_ms: None,
                },
            );
            self.changed = true;
            return self.reconcile(now_ms, settings, &id, None, topics);
        }
        let Some(member) = self.members.get_mut(&request.member_id) else {
            return refuse(codes::UNKNOWN_MEMBER_ID, "no such member: join again");
        };
        if member.epoch != epoch {
            return refuse(
                codes::FENCED_MEMBER_EPOCH,
                "the member epoch moved on: join again",
            );
        }
        if let Some(subscribed) = &request.subscribed_topic_names {
            if subscribed.len() > crate::limits::GROUP_SUBSCRIBED_TOPICS_MAX {
                return refuse(codes::INVALID_REQUEST, "too many subscribed topics");
            }
            if *subscribed != member.subscribed {
                member.subscribed = subscribed.clone();
                self.changed = true;
            }
        }
        if request.rebalance_timeout_ms >= 0 {
            member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        }
        let owned = request.topic_partitions.as_ref().map(|tps| {
            (tps.iter())
                .flat_map(|t| t.partitions.iter().map(move |p| (t.topic_id, *p)))
                .collect::<BTreeSet<Partition>>()
        });
        let id = request.member_id.clone();
        self.reconcile(now_ms, settings, &id, owned, topics)
    }

    /// Brings the target assignment up to the group's epoch, then moves `id` towards its
    /// target, and answers it.
    fn reconcile(
        &mut self,
        now_ms: u64,
        settings: ConsumerSettings,
        id: &str,
        owned: Option<BTreeSet<Partition>>,
        topics: TopicInfo<'_>,
    ) -> ConsumerGroupHeartbeatResponse {
        // Topics' partition counts are part of what the assignment depends on.
        let subscribed: BTreeSet<String> = (self.members.values())
            .flat_map(|m| m.subscribed.iter().cloned())
            .collect();
        let seen: BTreeMap<String, (Uuid, i32)> = (subscribed.into_iter())
            .filter_map(|t| topics(&t).map(|info| (t, info)))
            .collect();
        if seen != self.topics_seen {
            self.topics_seen = seen;
            self.changed = true;
        }
        if std::mem::take(&mut self.changed) {
            self.epoch += 1;
        }
        if self.assignment_epoch < self.epoch {
            self.assign();
            self.assignment_epoch = self.epoch;
        }
        let held_by_others: BTreeSet<Partition> = (self.members.values())
            .filter(|m| m.id != id)
            .flat_map(|m| m.holds().copied())
            .collect();
        let group_epoch = self.epoch;
        let member = self.members.get_mut(id).expect("reconciled members exist");
        member.session_deadline_ms = now_ms + settings.session_timeout_ms.max(0) as u64;
        let reported = owned.is_some();
        if let Some(owned) = owned {
            member.owned = owned;
        }
        let must_release: BTreeSet<Partition> =
            member.owned.difference(&member.target).copied().collect();
        let next: BTreeSet<Partition> = if must_release.is_empty() {
            // Nothing to give up: on to the group's epoch, with whatever of its target
            // nobody else holds any more.
            member.epoch = group_epoch;
            member.revoke_deadline_ms = None;
            (member.target.iter())
                .filter(|p| !held_by_others.contains(p))
                .copied()
                .collect()
        } else {
            // First it gives those up, at its current epoch.
            member
                .revoke_deadline_ms
                .get_or_insert(now_ms + member.rebalance_timeout_ms.max(0) as u64);
            member.owned.intersection(&member.target).copied().collect()
        };
        // Told again what it lacks of its assignment, by its own word: an answer lost with
        // its connection must not leave partitions with nobody.
        let lacks = reported && !next.is_subset(&member.owned);
        let changed = member.given.as_ref() != Some(&next) || lacks;
        tracing::debug!(
            member = %member.id,
            epoch = member.epoch,
            group_epoch,
            target = ?member.target,
            owned = ?member.owned,
            ?next,
            held = ?held_by_others,
            "consumer group member reconciled"
        );
        let assignment = changed.then(|| {
            let mut by_topic: BTreeMap<Uuid, Vec<i32>> = BTreeMap::new();
            for (topic, p) in &next {
                by_topic.entry(*topic).or_default().push(*p);
            }
            Assignment {
                topic_partitions: (by_topic.into_iter())
                    .map(|(topic_id, partitions)| TopicPartitions {
                        topic_id,
                        partitions,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        });
        if changed {
            // What it is told it has counts as held by it from now (`holds`); what it is told
            // to give up stays held until its heartbeat shows it gone.
            member.given = Some(next);
        }
        ConsumerGroupHeartbeatResponse {
            member_id: Some(member.id.clone()),
            member_epoch: member.epoch,
            heartbeat_interval_ms: settings.heartbeat_interval_ms,
            assignment,
            ..Default::default()
        }
    }

    /// The target assignment for the group's epoch: the assignor most members ask for.
    fn assign(&mut self) {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            *votes
                .entry(m.assignor.as_deref().unwrap_or("uniform"))
                .or_default() += 1;
        }
        let assignor = (votes.iter())
            .max_by_key(|(name, count)| (**count, std::cmp::Reverse(**name)))
            .map(|(name, _)| name.to_string())
            .unwrap_or_else(|| "uniform".into());
        let mut targets: BTreeMap<String, BTreeSet<Partition>> = self
            .members
            .keys()
            .map(|id| (id.clone(), BTreeSet::new()))
            .collect();
        if assignor == "range" {
            for (topic, (topic_id, count)) in &self.topics_seen {
                let subscribers: Vec<&String> = (self.members.values())
                    .filter(|m| m.subscribed.contains(topic))
                    .map(|m| &m.id)
                    .collect();
                let n = subscribers.len() as i32;
                if n == 0 {
                    continue;
                }
                let (each, extra) = (count / n, count % n);
                let mut next = 0;
                for (i, m) in subscribers.iter().enumerate() {
                    let take = each + i32::from((i as i32) < extra);
                    for p in next..next + take {
                        targets
                            .get_mut(*m)
                            .expect("a member")
                            .insert((*topic_id, p));
                    }
                    next += take;
                }
            }
        } else {
            // Uniform: each partition stays with its current target owner while that owner is
            // subscribed and under its share; the rest go to the subscriber holding fewest.
            let all: Vec<(String, Partition)> = (self.topics_seen.iter())
                .flat_map(|(t, (id, count))| (0..*count).map(move |p| (t.clone(), (*id, p))))
                .collect();
            let members = self.members.len().max(1);
            let share = all.len().div_ceil(members);
            let mut free = Vec::new();
            for (topic, partition) in &all {
                let keeper = (self.members.values())
                    .find(|m| m.target.contains(partition) && m.subscribed.contains(topic));
                match keeper {
                    Some(m) if targets[&m.id].len() < share => {
                        targets.get_mut(&m.id).expect("a member").insert(*partition);
                    }
                    _ => free.push((topic.clone(), *partition)),
                }
            }
            for (topic, partition) in free {
                let fewest = (self.members.values())
                    .filter(|m| m.subscribed.contains(&topic))
                    .min_by_key(|m| (targets[&m.id].len(), m.id.clone()));
                if let Some(m) = fewest {
                    targets.get_mut(&m.id).expect("a member").insert(partition);
                }
            }
        }
        for (id, target) in targets {
            if let Some(m) = self.members.get_mut(&id) {
                m.target = target;
            }
        }
    }

    /// Checks that no partition is given to two members.
    pub fn check_invariants(&self) {
        let mut given = BTreeSet::new();
        for m in self.members.values() {
            for p in m.given.iter().flatten() {
                assert!(
                    given.insert(*p),
                    "a partition given to two consumer group members"
                );
            }
        }
    }
}
