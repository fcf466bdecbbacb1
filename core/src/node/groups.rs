//! The node's side of consumer groups: `__consumer_offsets`, its coordinators, and the group
//! APIs routed to them.
//!
//! - The topic is created through the controller on the first FindCoordinator for a group
//!   (as Kafka does), with `Config::offsets_topic_partitions` partitions.
//! - A coordinator ([`crate::coordinator::Coordinator`]) is made for a partition once this
//!   node leads it and everything in its log is committed (its epoch committed and no write
//!   of an earlier epoch pending), by replaying the log up to the high watermark; it is
//!   dropped, and what it held answered NOT_COORDINATOR, once the node no longer leads that
//!   partition in that epoch (or an append of its failed: the next one replays the log).
//! - Its writes are appended as record batches by the partition's leader like any other and
//!   replicated by its Raft group; they commit when the high watermark passes them.

use super::{Instant, Node, Slot};
use crate::coordinator::{records, Client, Coordinator, ReplyTo};
use crate::disk::Disk;
use crate::protocol::codes;
use crate::protocol::messages::*;
use crate::protocol::ApiKey;
use crate::record::{
    self, BatchOptions, NewRecord, RecordBatch, DECOMPRESSED_BATCH_SIZE_MAX_BYTES,
};

/// The internal topic holding groups and their committed offsets (Kafka's name).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// FindCoordinator's key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// Bytes read at a time while a coordinator loads its partition.
const LOAD_READ_BYTES: usize = 1024 * 1024;

/// A coordinator and the leadership it was loaded under.
#[derive(Debug)]
pub(super) struct Loaded {
    log_id: u64,
    epoch: i32,
    coordinator: Coordinator,
}

/// Where a group request goes: this node's coordinator of the group's partition, or an error.
enum Route {
    Here(i32),
    Refused(i16),
}

impl<D: Disk> Node<D> {
    /// How many partitions `__consumer_offsets` has, if it exists.
    fn offsets_partitions(&self) -> Option<i32> {
        (self.image.topic(OFFSETS_TOPIC)).map(|t| t.replicas.len() as i32)
    }

    fn route(&self, group: &str) -> Route {
        let Some(count) = self.offsets_partitions() else {
            return Route::Refused(codes::COORDINATOR_NOT_AVAILABLE);
        };
        let partition = records::partition_for(group, count);
        if self.coordinators.contains_key(&partition) {
            return Route::Here(partition);
        }
        let leads = (self.topics.peek(OFFSETS_TOPIC, partition))
            .and_then(|p| p.replica.as_ref())
            .is_some_and(|r| r.is_leader());
        if leads && !self.shutting_down {
            Route::Refused(codes::COORDINATOR_LOAD_IN_PROGRESS)
        } else {
            Route::Refused(codes::NOT_COORDINATOR)
        }
    }

    /// Asks the controller for an internal topic (`__consumer_offsets`,
    /// `__transaction_state`) with Kafka's settings for it: compacted (the last record of each
    /// key is what counts), in smaller segments than a data topic's. It is being created:
    /// clients ask again.
    pub(super) fn create_internal_topic(
        &mut self,
        now: Instant,
        name: &str,
        partitions: i32,
        factor: i16,
    ) {
        if self.image.topic(name).is_some() || self.proposed.contains_key(name) {
            return;
        }
        let factor = factor.min(self.brokers().len() as i16).max(1);
        match self.new_topic(name, partitions, factor, Vec::new()) {
            Ok(record) => {
                let crate::metadata::MetadataRecord::Topic { id, .. } = &record else {
                    unreachable!("new_topic makes topics")
                };
                let configs = [
                    ("cleanup.policy", "compact"),
                    ("segment.bytes", "104857600"),
                ]
                .map(|(key, value)| crate::metadata::MetadataRecord::Config {
                    id: *id,
                    key: key.into(),
                    value: Some(value.into()),
                });
                let records = [vec![record], configs.to_vec()].concat();
                if self.check_controller().is_ok() {
                    if let Err((code, message)) = self.propose(now, &records) {
                        tracing::warn!(topic = name, code, %message, "internal topic not written");
                    }
                } else {
                    for record in &records {
                        self.forward(record);
                    }
                }
            }
            Err((code, message)) if code != codes::TOPIC_ALREADY_EXISTS => {
                tracing::warn!(topic = name, code, %message, "internal topic refused")
            }
            Err(_) => {}
        }
    }

    /// FindCoordinator: the leader of the group's partition (v0-3 one key, v4+ a batch).
    pub(super) fn find_coordinator(
        &mut self,
        now: Instant,
        request: &FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        use crate::protocol::messages::find_coordinator_response::Coordinator as Found;
        let keys: Vec<String> = if version >= 4 {
            request.coordinator_keys.clone()
        } else {
            vec![request.key.clone()]
        };
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            let (error_code, message, node) = if request.key_type == KEY_TYPE_TRANSACTION {
                if key.is_empty() {
                    (
                        codes::INVALID_REQUEST,
                        Some("empty transactional id".into()),
                        None,
                    )
                } else {
                    match self.txn_coordinator_node(now, &key) {
                        Some(node) => (codes::NONE, None, Some(node)),
                        None => (codes::COORDINATOR_NOT_AVAILABLE, None, None),
                    }
                }
            } else if request.key_type != KEY_TYPE_GROUP {
                (
                    codes::INVALID_REQUEST,
                    Some(format!("key type {} is not served", request.key_type)),
                    None,
                )
            } else if key.is_empty() {
                (codes::INVALID_REQUEST, Some("empty group id".into()), None)
            } else {
                match self.coordinator_node(now, &key) {
                    Some(node) => (codes::NONE, None, Some(node)),
                    None => (codes::COORDINATOR_NOT_AVAILABLE, None, None),
                }
            };
            let (node_id, host, port) = match node {
                Some(b) => (b.node_id, b.host, b.port),
                None => (-1, String::new(), -1),
            };
            found.push(Found {
                key,
                node_id,
                host,
                port,
                error_code,
                error_message: message,
                ..Default::default()
            });
        }
        if version >= 4 {
            return FindCoordinatorResponse {
                coordinators: found,
                ..Default::default()
            };
        }
        let one = found.pop().unwrap_or_default();
        FindCoordinatorResponse {
            error_code: one.error_code,
            error_message: one.error_message,
            node_id: one.node_id,
            host: one.host,
            port: one.port,
            ..Default::default()
        }
    }

    /// The broker leading the group's partition, if one is known and clients can reach it.
    fn coordinator_node(&mut self, now: Instant, group: &str) -> Option<super::Broker> {
        let Some(count) = self.offsets_partitions() else {
            let (partitions, factor) = (
                self.config.offsets_topic_partitions,
                self.config.offsets_topic_replication_factor,
            );
            self.create_internal_topic(now, OFFSETS_TOPIC, partitions, factor);
            return None;
        };
        let partition = records::partition_for(group, count);
        let topic = self.image.topic(OFFSETS_TOPIC)?;
        let local = (self.topics.get(OFFSETS_TOPIC, partition))
            .filter(|p| p.topic_id == topic.id)
            .and_then(|p| p.replica.as_ref());
        let leader = match local {
            Some(replica) => replica.leader()?,
            None => match topic.leaders.get(partition as usize) {
                Some((leader, _)) if *leader >= 0 => *leader,
                _ => return None,
            },
        };
        self.listed_brokers()
            .into_iter()
            .find(|b| b.node_id == leader)
    }

    /// The `__consumer_offsets` partition of `group` if this node's coordinator of it serves.
    pub(super) fn coordinates_group(&self, group: &str) -> Option<i32> {
        match self.route(group) {
            Route::Here(partition) => Some(partition),
            Route::Refused(_) => None,
        }
    }

    /// A TxnOffsetCommit its transaction's coordinator answered for (`code`): served by the
    /// group's coordinator if the offsets partition is in the transaction, refused if not.
    pub(super) fn offsets_verified(
        &mut self,
        now: Instant,
        (conn, slot, correlation_id, version): (u64, u64, i32, i16),
        request: TxnOffsetCommitRequest,
        code: i16,
        client_id: Option<String>,
    ) -> Slot {
        let api = ApiKey::TxnOffsetCommit;
        let request = Request::TxnOffsetCommit(request);
        let response = if code == codes::NONE {
            match self.group_request(now, conn, slot, client_id.as_deref(), version, &request) {
                Some(response) => response,
                None => return self.group_slot(correlation_id, version, api, 1, None),
            }
        } else {
            let Request::TxnOffsetCommit(r) = &request else {
                unreachable!("made above")
            };
            let mut response = Response::TxnOffsetCommit(txn_commit_refused(r));
            crate::coordinator::refuse(&mut response, code);
            response
        };
        match super::frame_response(correlation_id, api, version, &response) {
            Ok(bytes) => Slot::Ready(Some(bytes)),
            Err(reason) => Slot::Close(reason),
        }
    }

    /// A group request this node's coordinators serve. `Ok(None)`: the answer is held.
    pub(super) fn group_request(
        &mut self,
        now: Instant,
        conn: u64,
        slot: u64,
        client_id: Option<&str>,
        version: i16,
        request: &Request,
    ) -> Option<Response> {
        let now_ms = now.as_millis() as u64;
        let to = ReplyTo { conn, slot };
        let refused = |code: i16| -> Option<Response> {
            let mut response = match request {
                Request::JoinGroup(r) => Response::JoinGroup(JoinGroupResponse {
                    member_id: r.member_id.clone(),
                    ..Default::default()
                }),
                Request::SyncGroup(_) => Response::SyncGroup(Default::default()),
                Request::Heartbeat(_) => Response::Heartbeat(Default::default()),
                Request::LeaveGroup(_) => Response::LeaveGroup(Default::default()),
                Request::OffsetCommit(r) => Response::OffsetCommit(commit_refused(r)),
                Request::TxnOffsetCommit(r) => Response::TxnOffsetCommit(txn_commit_refused(r)),
                Request::OffsetDelete(_) => Response::OffsetDelete(Default::default()),
                Request::ConsumerGroupHeartbeat(r) => {
                    Response::ConsumerGroupHeartbeat(ConsumerGroupHeartbeatResponse {
                        member_id: Some(r.member_id.clone()),
                        member_epoch: r.member_epoch,
                        ..Default::default()
                    })
                }
                _ => return None,
            };
            crate::coordinator::refuse(&mut response, code);
            Some(response)
        };
        let group_id = match request {
            Request::JoinGroup(r) => &r.group_id,
            Request::SyncGroup(r) => &r.group_id,
            Request::Heartbeat(r) => &r.group_id,
            Request::LeaveGroup(r) => &r.group_id,
            Request::OffsetCommit(r) => &r.group_id,
            Request::TxnOffsetCommit(r) => &r.group_id,
            Request::ConsumerGroupHeartbeat(r) => &r.group_id,
            Request::OffsetDelete(r) => &r.group_id,
            _ => return None,
        };
        let partition = match self.route(group_id) {
            Route::Here(p) => p,
            Route::Refused(code) => return refused(code),
        };
        let new_member_id = match request {
            Request::JoinGroup(r) if r.member_id.is_empty() => {
                let uuid = self.random_uuid();
                format!("{}-{uuid:?}", client_id.unwrap_or(""))
            }
            // KIP-848 v0: the coordinator names the member (v1 clients name themselves).
            Request::ConsumerGroupHeartbeat(r) if r.member_id.is_empty() => {
                format!("{:?}", self.random_uuid())
            }
            _ => String::new(),
        };
        let image = &self.image;
        let coordinator = &mut self.coordinators.get_mut(&partition)?.coordinator;
        let answer = match request {
            Request::JoinGroup(r) => {
                let client = Client {
                    client_id: client_id.unwrap_or("").to_string(),
                    client_host: String::new(),
                };
                (coordinator.join(now_ms, to, version, &client, r, new_member_id))
                    .map(Response::JoinGroup)
            }
            Request::SyncGroup(r) => coordinator.sync(now_ms, to, r).map(Response::SyncGroup),
            Request::OffsetDelete(r) => coordinator
                .delete_offsets(to, r)
                .map(Response::OffsetDelete),
            Request::ConsumerGroupHeartbeat(r) => {
                let topics =
                    |name: &str| (image.topic(name)).map(|t| (t.id, t.replicas.len() as i32));
                (coordinator.consumer_heartbeat(now_ms, to, r, &topics, new_member_id))
                    .map(Response::ConsumerGroupHeartbeat)
            }
            Request::Heartbeat(r) => Some(Response::Heartbeat(coordinator.heartbeat(now_ms, r))),
            Request::LeaveGroup(r) => Some(Response::LeaveGroup(coordinator.leave(now_ms, r))),
            Request::OffsetCommit(r) => {
                let known = |topic: &str, partition: i32| {
                    (image.topic(topic))
                        .is_some_and(|t| partition >= 0 && (partition as usize) < t.replicas.len())
                };
                coordinator
                    .commit(now_ms, to, r, known)
                    .map(Response::OffsetCommit)
            }
            Request::TxnOffsetCommit(r) => {
                let known = |topic: &str, partition: i32| {
                    (image.topic(topic))
                        .is_some_and(|t| partition >= 0 && (partition as usize) < t.replicas.len())
                };
                coordinator
                    .txn_commit(now_ms, to, r, known)
                    .map(Response::TxnOffsetCommit)
            }
            _ => None,
        };
        answer
    }

    /// OffsetFetch, from the coordinators of this node (v8+ for several groups at once).
    pub(super) fn offset_fetch(
        &self,
        request: &OffsetFetchRequest,
        version: i16,
    ) -> OffsetFetchResponse {
        use crate::protocol::messages::offset_fetch_response::*;
        if version >= 8 {
            let groups = (request.groups.iter())
                .map(|g| {
                    let asked = g.topics.as_ref().map(|topics| {
                        (topics.iter())
                            .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                            .collect::<Vec<_>>()
                    });
                    let (error_code, found) = self.fetch_group_offsets(
                        &g.group_id,
                        asked.as_deref(),
                        request.require_stable,
                    );
                    OffsetFetchResponseGroup {
                        group_id: g.group_id.clone(),
                        error_code,
                        topics: (found.into_iter())
                            .map(|(name, partitions)| OffsetFetchResponseTopics {
                                name,
                                partitions: (partitions.into_iter())
                                    .map(|(partition_index, offset, epoch, metadata, code)| {
                                        OffsetFetchResponsePartitions {
                                            partition_index,
                                            committed_offset: offset,
                                            committed_leader_epoch: epoch,
                                            metadata: Some(metadata),
                                            error_code: code,
                                            ..Default::default()
                                        }
                                    })
                                    .collect(),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }
                })
                .collect();
            return OffsetFetchResponse {
                groups,
                ..Default::default()
            };
        }
        let asked = request.topics.as_ref().map(|topics| {
            (topics.iter())
                .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                .collect::<Vec<_>>()
        });
        let (error_code, found) = self.fetch_group_offsets(
            &request.group_id,
            asked.as_deref(),
            version >= 7 && request.require_stable,
        );
        // v1 has no request-level error: it goes on every partition asked for.
        let partition_code = if version < 2 { error_code } else { codes::NONE };
        let topics = match (&asked, error_code) {
            (Some(asked), code) if code != codes::NONE => (asked.iter())
                .map(|(name, partitions)| {
                    (
                        name.clone(),
                        partitions
                            .iter()
                            .map(|p| (*p, -1, -1, String::new(), 0))
                            .collect(),
                    )
                })
                .collect(),
            _ => found,
        };
        OffsetFetchResponse {
            error_code,
            topics: (topics.into_iter())
                .map(|(name, partitions)| OffsetFetchResponseTopic {
                    name,
                    partitions: (partitions.into_iter())
                        .map(|(partition_index, offset, epoch, metadata, code)| {
                            OffsetFetchResponsePartition {
                                partition_index,
                                committed_offset: offset,
                                committed_leader_epoch: epoch,
                                metadata: Some(metadata),
                                error_code: if code != codes::NONE {
                                    code
                                } else {
                                    partition_code
                                },
                                ..Default::default()
                            }
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// A group's committed offsets: (topic, [(partition, offset, leader epoch, metadata)]),
    /// -1 for partitions with none.
    #[allow(clippy::type_complexity)]
    fn fetch_group_offsets(
        &self,
        group: &str,
        asked: Option<&[(String, Vec<i32>)]>,
        require_stable: bool,
    ) -> (i16, Vec<(String, Vec<(i32, i64, i32, String, i16)>)>) {
        let partition = match self.route(group) {
            Route::Here(p) => p,
            Route::Refused(code) => return (code, Vec::new()),
        };
        let coordinator = &self.coordinators[&partition].coordinator;
        let found = (coordinator.fetch_offsets(group, asked).into_iter())
            .map(|(topic, partitions)| {
                let partitions = (partitions.into_iter())
                    .map(|(p, value)| {
                        if require_stable && coordinator.unstable_offset(group, &topic, p) {
                            // A transaction still open holds an offset of it: the consumer
                            // asks again once it ends (KIP-447).
                            return (p, -1, -1, String::new(), codes::UNSTABLE_OFFSET_COMMIT);
                        }
                        match value {
                            Some(v) => (p, v.offset, v.leader_epoch, v.metadata.clone(), 0),
                            None => (p, -1, -1, String::new(), 0),
                        }
                    })
                    .collect();
                (topic, partitions)
            })
            .collect();
        (codes::NONE, found)
    }

    /// DescribeGroups: each group from its coordinator here (an unknown group is "Dead", as
    /// Kafka answers).
    pub(super) fn describe_groups(
        &self,
        request: &DescribeGroupsRequest,
    ) -> DescribeGroupsResponse {
        use crate::protocol::messages::describe_groups_response::*;
        let groups = (request.groups.iter())
            .map(|id| {
                let partition = match self.route(id) {
                    Route::Here(p) => p,
                    Route::Refused(code) => {
                        return DescribedGroup {
                            error_code: code,
                            group_id: id.clone(),
                            ..Default::default()
                        }
                    }
                };
                let coordinator = &self.coordinators[&partition].coordinator;
                if let Some((_, group)) = coordinator.consumer_groups().find(|(g, _)| *g == id) {
                    return DescribedGroup {
                        group_id: id.clone(),
                        group_state: group.state_name().into(),
                        protocol_type: "consumer".into(),
                        members: (group.members())
                            .map(|m| DescribedGroupMember {
                                member_id: m.id().into(),
                                group_instance_id: m.instance_id().map(str::to_string),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    };
                }
                let Some(group) = coordinator.group(id) else {
                    return DescribedGroup {
                        group_id: id.clone(),
                        group_state: "Dead".into(),
                        ..Default::default()
                    };
                };
                DescribedGroup {
                    group_id: id.clone(),
                    group_state: group.state().name().into(),
                    protocol_type: group.protocol_type().into(),
                    protocol_data: group.protocol().into(),
                    members: (group.members())
                        .map(|m| DescribedGroupMember {
                            member_id: m.member_id.into(),
                            group_instance_id: m.group_instance_id.map(str::to_string),
                            client_id: m.client_id.into(),
                            client_host: m.client_host.into(),
                            member_metadata: m.metadata,
                            member_assignment: m.assignment,
                            ..Default::default()
                        })
                        .collect(),
                    // No authorizer: every operation is allowed (Kafka answers the same).
                    authorized_operations: if request.include_authorized_operations {
                        GROUP_OPERATIONS_ALL
                    } else {
                        i32::MIN
                    },
                    ..Default::default()
                }
            })
            .collect();
        DescribeGroupsResponse {
            groups,
            ..Default::default()
        }
    }

    /// ListGroups: the groups this node coordinates (clients ask every broker).
    pub(super) fn list_groups(&self, request: &ListGroupsRequest) -> ListGroupsResponse {
        use crate::protocol::messages::list_groups_response::ListedGroup;
        let wanted_state = |state: &str| {
            request.states_filter.is_empty()
                || (request.states_filter.iter()).any(|s| s.eq_ignore_ascii_case(state))
        };
        let wanted_type = request.types_filter.is_empty()
            || (request.types_filter.iter()).any(|t| t.eq_ignore_ascii_case("classic"));
        let wanted_consumer = request.types_filter.is_empty()
            || (request.types_filter.iter()).any(|t| t.eq_ignore_ascii_case("consumer"));
        let mut groups: Vec<ListedGroup> = (self.coordinators.values())
            .flat_map(|l| l.coordinator.groups())
            .filter(|g| wanted_type && wanted_state(g.state().name()))
            .map(|g| ListedGroup {
                group_id: g.id().into(),
                protocol_type: g.protocol_type().into(),
                group_state: g.state().name().into(),
                group_type: "classic".into(),
                ..Default::default()
            })
            .collect();
        groups.extend(
            (self.coordinators.values())
                .flat_map(|l| l.coordinator.consumer_groups())
                .filter(|(_, g)| wanted_consumer && wanted_state(g.state_name()))
                .map(|(id, g)| ListedGroup {
                    group_id: id.clone(),
                    protocol_type: "consumer".into(),
                    group_state: g.state_name().into(),
                    group_type: "consumer".into(),
                    ..Default::default()
                }),
        );
        ListGroupsResponse {
            groups,
            ..Default::default()
        }
    }

    /// DeleteGroups: groups without members lose their record and offsets. Returns the
    /// answer now, or how many coordinators' writes it waits for (their results are gathered
    /// into it).
    pub(super) fn delete_groups(
        &mut self,
        conn: u64,
        slot: u64,
        request: &DeleteGroupsRequest,
    ) -> (DeleteGroupsResponse, usize) {
        use crate::protocol::messages::delete_groups_response::DeletableGroupResult;
        let mut results = Vec::new();
        let mut by_partition: std::collections::BTreeMap<i32, Vec<String>> = Default::default();
        for id in &request.groups_names {
            match self.route(id) {
                Route::Here(p) => by_partition.entry(p).or_default().push(id.clone()),
                Route::Refused(code) => results.push(DeletableGroupResult {
                    group_id: id.clone(),
                    error_code: code,
                    ..Default::default()
                }),
            }
        }
        let mut waiting = 0;
        for (partition, groups) in by_partition {
            let coordinator = &mut self
                .coordinators
                .get_mut(&partition)
                .expect("routed")
                .coordinator;
            match coordinator.delete(ReplyTo { conn, slot }, &groups) {
                Some(now) => results.extend(now),
                None => waiting += 1,
            }
        }
        (
            DeleteGroupsResponse {
                results,
                ..Default::default()
            },
            waiting,
        )
    }

    /// Coordinators follow leadership of `__consumer_offsets`: made once a led partition's
    /// log is all committed, dropped once its leadership (in the epoch it loaded in) is gone;
    /// their timers run, their writes are appended, and their answers go out.
    pub(super) fn settle_groups(&mut self, now: Instant) {
        let Some(count) = self.offsets_partitions() else {
            if !self.coordinators.is_empty() {
                self.drop_coordinators(codes::NOT_COORDINATOR);
            }
            return;
        };
        let now_ms = now.as_millis() as u64;
        // Drop those whose leadership is gone.
        let stale: Vec<i32> = (self.coordinators.iter())
            .filter(|(partition, loaded)| {
                let current = (self.topics.get(OFFSETS_TOPIC, **partition))
                    .filter(|p| p.log_id == loaded.log_id)
                    .and_then(|p| p.replica.as_ref())
                    .filter(|r| r.is_leader() && r.leader_epoch() == loaded.epoch);
                current.is_none() || self.shutting_down
            })
            .map(|(p, _)| *p)
            .collect();
        for partition in stale {
            self.drop_coordinator(partition, codes::NOT_COORDINATOR);
        }
        // Load those newly led.
        if !self.shutting_down && self.serving {
            for partition in 0..count {
                if !self.coordinators.contains_key(&partition) {
                    self.maybe_load(now, partition);
                }
            }
        }
        if self.coordinators.is_empty() {
            return;
        }
        // Timers, writes, commits, answers.
        let partitions: Vec<i32> = self.coordinators.keys().copied().collect();
        for partition in partitions {
            let Some(loaded) = self.coordinators.get_mut(&partition) else {
                continue;
            };
            if loaded
                .coordinator
                .next_deadline_ms()
                .is_some_and(|d| d <= now_ms)
            {
                loaded.coordinator.tick(now_ms);
            }
            if !self.append_group_writes(now, partition) {
                continue;
            }
            let high_watermark = (self.topics.get(OFFSETS_TOPIC, partition))
                .and_then(|p| p.replica.as_ref())
                .map(|r| r.high_watermark());
            let Some(loaded) = self.coordinators.get_mut(&partition) else {
                continue;
            };
            if let Some(hw) = high_watermark {
                loaded.coordinator.committed(now_ms, hw);
            }
            let answers = loaded.coordinator.take_answers();
            self.deliver_group_answers(answers);
        }
    }

    /// Makes the coordinator of `partition` if this node leads it and its log is all
    /// committed: the log is replayed up to the high watermark.
    fn maybe_load(&mut self, now: Instant, partition: i32) {
        let Some(p) = self.topics.get(OFFSETS_TOPIC, partition) else {
            return;
        };
        let log_id = p.log_id;
        let (Some(replica), Ok(log)) = (p.replica.as_ref(), p.log.as_ref()) else {
            return;
        };
        if !replica.is_leader() || !replica.serving() {
            return;
        }
        let high_watermark = replica.high_watermark();
        if log.log_end_offset() != high_watermark {
            // Entries of an earlier epoch are not committed yet: what they say is not known.
            return;
        }
        let epoch = replica.leader_epoch();
        let start = log.log_start_offset();
        let mut coordinator = Coordinator::new(partition, self.config.groups);
        let now_ms = now.as_millis() as u64;
        let mut offset = start;
        let p = self.topics.get(OFFSETS_TOPIC, partition).expect("found");
        let Ok(log) = p.log.as_mut() else { return };
        while offset < high_watermark {
            let bytes = match log.read(
                &mut self.disk,
                offset,
                high_watermark,
                LOAD_READ_BYTES,
                true,
            ) {
                Ok(bytes) if !bytes.is_empty() => bytes,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(partition, %e, "cannot load the group coordinator");
                    return;
                }
            };
            for batch in record::split_batches(bytes) {
                let Ok(batch) = batch.and_then(RecordBatch::parse) else {
                    tracing::warn!(partition, offset, "unreadable batch while loading groups");
                    return;
                };
                let header = *batch.header();
                offset = header.last_offset() + 1;
                if header.is_control() {
                    if let Some(marker) = crate::producers::txn_marker_of(&batch) {
                        coordinator.apply_marker(now_ms, header.producer_id, marker.commit);
                    }
                    continue;
                }
                let Ok(batch_records) = batch.records(DECOMPRESSED_BATCH_SIZE_MAX_BYTES) else {
                    continue;
                };
                for r in batch_records {
                    match (header.is_transactional(), r.key.clone()) {
                        (true, Some(key)) => {
                            coordinator.replay_txn(header.producer_id, key, r.value.clone())
                        }
                        _ => coordinator.replay(now_ms, r.key.clone(), r.value.clone(), false),
                    }
                }
            }
        }
        coordinator.loaded(now_ms);
        tracing::info!(
            partition,
            epoch,
            groups = coordinator.groups().count(),
            "group coordinator loaded"
        );
        self.coordinators.insert(
            partition,
            Loaded {
                log_id,
                epoch,
                coordinator,
            },
        );
    }

    /// Appends what the coordinator of `partition` wrote. False if it was dropped (an append
    /// failed: the next coordinator replays what the log holds).
    fn append_group_writes(&mut self, now: Instant, partition: i32) -> bool {
        let Some(loaded) = self.coordinators.get_mut(&partition) else {
            return false;
        };
        let writes = loaded.coordinator.take_writes();
        if writes.is_empty() {
            return true;
        }
        let (log_id, epoch) = (loaded.log_id, loaded.epoch);
        let expiry_ms = self.config.log.producer_id_expiration_ms;
        for (id, recs, txn) in writes {
            let news: Vec<NewRecord> = (recs.iter())
                .map(|(key, value)| NewRecord {
                    key: Some(key.clone()),
                    value: value.clone(),
                    ..Default::default()
                })
                .collect();
            let mut options = BatchOptions {
                base_timestamp: now.as_millis(),
                ..Default::default()
            };
            if let Some((producer_id, producer_epoch)) = txn {
                // Offsets in a transaction: the producer's epoch is checked as its data's is
                // (a zombie's commit is fenced), and its marker decides whether they count.
                options.producer_id = producer_id;
                options.producer_epoch = producer_epoch;
                // A coordinator's batch carries no client sequence (Kafka writes 0 too).
                options.base_sequence = 0;
                options.transactional = true;
                let fenced = (self.topics.get(OFFSETS_TOPIC, partition))
                    .filter(|p| p.log_id == log_id)
                    .and_then(|p| p.log.as_ref().ok())
                    .and_then(|log| {
                        log.producers()
                            .check_epoch(producer_id, producer_epoch)
                            .err()
                    });
                if let Some((code, message)) = fenced {
                    tracing::info!(partition, producer_id, code, %message, "a transactional offset commit refused");
                    if let Some(loaded) = self.coordinators.get_mut(&partition) {
                        loaded.coordinator.refuse_write(id, code);
                    }
                    continue;
                }
            }
            let appended = record::build(&news, &options)
                .map_err(|e| e.to_string())
                .and_then(|bytes| RecordBatch::parse(bytes).map_err(|e| e.to_string()))
                .and_then(|batch| {
                    let p = (self.topics.get(OFFSETS_TOPIC, partition))
                        .filter(|p| p.log_id == log_id)
                        .ok_or_else(|| "partition gone".to_string())?;
                    let log = p.log.as_mut().map_err(|e| e.to_string())?;
                    let (base, last) = log
                        .append(&mut self.disk, &batch, epoch)
                        .map_err(|e| e.to_string())?;
                    let mut header = *batch.header();
                    header.base_offset = base;
                    log.producers_mut()
                        .record(&header, now.as_millis(), expiry_ms);
                    Ok((base, last))
                });
            match appended {
                Ok((base, last)) => {
                    self.replica_appended(now, log_id, &[(base, last)]);
                    if let Some(loaded) = self.coordinators.get_mut(&partition) {
                        loaded.coordinator.appended(id, last + 1, recs);
                    }
                }
                Err(reason) => {
                    tracing::warn!(partition, %reason, "group write failed; the coordinator reloads");
                    self.drop_coordinator(partition, codes::COORDINATOR_NOT_AVAILABLE);
                    return false;
                }
            }
        }
        true
    }

    fn drop_coordinator(&mut self, partition: i32, code: i16) {
        if let Some(loaded) = self.coordinators.remove(&partition) {
            tracing::info!(partition, "group coordinator dropped");
            let answers = loaded.coordinator.abandon(code);
            self.deliver_group_answers(answers);
        }
    }

    pub(super) fn drop_coordinators(&mut self, code: i16) {
        let partitions: Vec<i32> = self.coordinators.keys().copied().collect();
        for partition in partitions {
            self.drop_coordinator(partition, code);
        }
    }

    /// Fills the slots of held group requests with their answers.
    pub(super) fn deliver_group_answers(&mut self, answers: Vec<(ReplyTo, Response)>) {
        for (to, response) in answers {
            let Some(conn) = self.conns.get_mut(&to.conn) else {
                continue;
            };
            let Some((_, slot)) = conn.slots.iter_mut().find(|(id, _)| *id == to.slot) else {
                continue;
            };
            let Slot::AwaitGroup {
                correlation_id,
                version,
                api,
                parts_left,
                gathered,
            } = slot
            else {
                continue;
            };
            match (gathered.as_mut(), response) {
                (Some(Response::DeleteGroups(all)), Response::DeleteGroups(part)) => {
                    all.results.extend(part.results)
                }
                (_, response) => *gathered = Some(response),
            }
            *parts_left = parts_left.saturating_sub(1);
            if *parts_left == 0 {
                let response = gathered.take().expect("an answer came");
                *slot = match super::frame_response(*correlation_id, *api, *version, &response) {
                    Ok(bytes) => Slot::Ready(Some(bytes)),
                    Err(reason) => Slot::Close(reason),
                };
            }
        }
    }

    /// The next coordinator deadline.
    pub(super) fn next_group_deadline(&self) -> Option<Instant> {
        (self.coordinators.values())
            .filter_map(|l| l.coordinator.next_deadline_ms())
            .min()
            .map(Instant::from_millis)
    }

    /// Checks that every coordinator sits on a partition this node leads in its epoch.
    pub(super) fn check_coordinators(&self) {
        for (partition, loaded) in &self.coordinators {
            let replica = (self.topics.peek(OFFSETS_TOPIC, *partition))
                .filter(|p| p.log_id == loaded.log_id)
                .and_then(|p| p.replica.as_ref());
            assert!(
                replica.is_some_and(|r| r.is_leader() && r.leader_epoch() == loaded.epoch),
                "a coordinator serves only while its node leads its partition in its epoch"
            );
            loaded.coordinator.check_invariants();
        }
    }

    /// Produces to the internal topic are refused (only coordinators write it).
    pub(super) fn internal_topic(topic: &str) -> bool {
        topic == OFFSETS_TOPIC || topic == crate::coordinator::txn::TXN_TOPIC
    }

    pub(super) fn group_slot(
        &self,
        correlation_id: i32,
        version: i16,
        api: ApiKey,
        parts_left: usize,
        gathered: Option<Response>,
    ) -> Slot {
        Slot::AwaitGroup {
            correlation_id,
            version,
            api,
            parts_left,
            gathered,
        }
    }
}

/// Every group operation Kafka's ACLs name (read, delete, describe), as a bit set: what a
/// broker without an authorizer reports.
const GROUP_OPERATIONS_ALL: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// A transaction marker was appended to offsets partition `partition`: its coordinator
/// applies it when it commits.
impl<D: Disk> Node<D> {
    pub(super) fn group_marker_appended(
        &mut self,
        partition: i32,
        producer_id: i64,
        commit: bool,
        end_offset: i64,
    ) {
        if let Some(loaded) = self.coordinators.get_mut(&partition) {
            loaded
                .coordinator
                .marker_appended(producer_id, commit, end_offset);
        }
    }
}

fn txn_commit_refused(request: &TxnOffsetCommitRequest) -> TxnOffsetCommitResponse {
    use crate::protocol::messages::txn_offset_commit_response::*;
    TxnOffsetCommitResponse {
        topics: (request.topics.iter())
            .map(|t| TxnOffsetCommitResponseTopic {
                name: t.name.clone(),
                partitions: (t.partitions.iter())
                    .map(|p| TxnOffsetCommitResponsePartition {
                        partition_index: p.partition_index,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn commit_refused(request: &OffsetCommitRequest) -> OffsetCommitResponse {
    use crate::protocol::messages::offset_commit_response::*;
    OffsetCommitResponse {
        topics: (request.topics.iter())
            .map(|t| OffsetCommitResponseTopic {
                name: t.name.clone(),
                partitions: (t.partitions.iter())
                    .map(|p| OffsetCommitResponsePartition {
                        partition_index: p.partition_index,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
