//! The node's side of the metadata quorum: the controller's writes, the image every node
//! applies, and the node's disk made to agree with it.
//!
//! The quorum's log is the partition `__cluster_metadata-0`, a Raft group over every node of
//! the cluster, kept among the node's partitions (so it is synced, replicated, recovered and
//! checked as they are) but hidden from clients. Its leader is the controller. The controller
//! writes a request's records in one batch, once its own epoch committed (so its image holds
//! everything committed before); the request is answered from the image once the batch is
//! applied there. Other nodes answer CreateTopics, DeleteTopics and CreatePartitions with
//! NOT_CONTROLLER (clients send them to the controller Metadata names), and forward the topics
//! a Metadata request auto-creates to the controller in their peer frames.
//!
//! Every node applies the batches below the group's high watermark to its image, in order,
//! and then creates the partition directories the image assigns to it and deletes those of
//! topics it removed. A restart applies the whole log again from its start.

use bytes::Bytes;

use crate::disk::Disk;
use crate::limits;
use crate::metadata::{
    place_replicas, ImageChanges, MetadataImage, MetadataRecord, METADATA_TOPIC, METADATA_TOPIC_ID,
};
use crate::protocol::codes;
use crate::protocol::wire::Uuid;
use crate::record::{self, split_batches, BatchOptions, NewRecord, RecordBatch};

use super::topics::valid_topic_name;
use super::{Instant, Node};

/// Bytes of the metadata log one read takes while applying (it loops until it is done).
const APPLY_READ_BYTES: usize = 1024 * 1024;

/// What a refused metadata change answers: a Kafka error code and a message.
pub(crate) type Refusal = (i16, String);

impl<D: Disk> Node<D> {
    /// Makes sure the metadata log exists (a new node, or one from before the quorum).
    pub(super) fn ensure_metadata_log(&mut self) -> Result<(), crate::log::LogError> {
        if self.topics.get(METADATA_TOPIC, 0).is_some() {
            return Ok(());
        }
        let voters: Vec<i32> = self.brokers().iter().map(|b| b.node_id).collect();
        let files = self.topics.create_partitions(
            &mut self.disk,
            METADATA_TOPIC,
            METADATA_TOPIC_ID,
            &[(0, voters)],
            self.config.log,
        )?;
        self.extra_dirty_files.extend(files);
        self.extra_dirty_files.push(self.root_dir);
        Ok(())
    }

    /// The controller (the metadata quorum's leader) as this node knows it.
    pub(crate) fn controller_id(&mut self) -> Option<i32> {
        let p = self.topics.get(METADATA_TOPIC, 0)?;
        p.replica.as_ref()?.leader()
    }

    /// This node's metadata group, if it is the controller and ready to write: its epoch
    /// committed, so its image holds everything committed before it. (log id, epoch)
    fn active_controller(&mut self) -> Option<(u64, i32)> {
        let p = self.topics.get(METADATA_TOPIC, 0)?;
        let replica = p.replica.as_ref()?;
        let caught_up = self.image.applied_end() >= replica.high_watermark();
        (replica.is_leader() && replica.serving() && caught_up)
            .then(|| (p.log_id, replica.leader_epoch()))
    }

    /// Refuses a change unless this node is the active controller.
    pub(super) fn check_controller(&mut self) -> Result<(), Refusal> {
        match self.active_controller() {
            Some(_) => Ok(()),
            None => Err((
                codes::NOT_CONTROLLER,
                match self.controller_id() {
                    Some(id) => format!("node {id} is the controller"),
                    None => "no controller is elected yet".into(),
                },
            )),
        }
    }

    /// Writes `records` to the metadata log in one batch, as the active controller. Returns
    /// the offset the image must reach, and the epoch the batch was written in.
    pub(super) fn propose(
        &mut self,
        now: Instant,
        records: &[MetadataRecord],
    ) -> Result<(i64, i32), Refusal> {
        self.check_controller()?;
        let (log_id, epoch) = self.active_controller().expect("checked");
        let new: Vec<NewRecord> = (records.iter())
            .map(|r| NewRecord {
                value: Some(r.encode()),
                ..Default::default()
            })
            .collect();
        let options = BatchOptions {
            base_timestamp: now.as_millis(),
            ..Default::default()
        };
        let bytes = record::build(&new, &options)
            .map_err(|e| (codes::UNKNOWN_SERVER_ERROR, format!("metadata batch: {e}")))?;
        let batch = RecordBatch::parse(bytes).expect("a built batch parses");
        let partition = self.topics.by_log_id(log_id).expect("the controller's log");
        let log = partition.log.as_mut().expect("online: it leads");
        let appended = log.append(&mut self.disk, &batch, epoch).map_err(|e| {
            (
                codes::KAFKA_STORAGE_ERROR,
                format!("cannot write the metadata log: {e}"),
            )
        })?;
        for record in records {
            if let MetadataRecord::Topic { name, .. } = record {
                self.proposed.insert(name.clone(), appended.1 + 1);
            }
        }
        self.replica_appended(now, log_id, &[appended]);
        Ok((appended.1 + 1, epoch))
    }

    /// A topic record for `name`, its replicas placed evenly, or as `assignments` says.
    pub(super) fn new_topic(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        assignments: Vec<Vec<i32>>,
    ) -> Result<MetadataRecord, Refusal> {
        let brokers: Vec<i32> = self.brokers().iter().map(|b| b.node_id).collect();
        let replicas = if assignments.is_empty() {
            let factor = if replication_factor == -1 {
                self.default_replication_factor()
            } else {
                replication_factor
            };
            if factor < 1 || factor as usize > brokers.len() {
                return Err((
                    codes::INVALID_REPLICATION_FACTOR,
                    format!(
                        "replication factor {factor}: must be 1 to the {} broker(s) of the cluster",
                        brokers.len()
                    ),
                ));
            }
            if partitions < 1 {
                return Err((
                    codes::INVALID_PARTITIONS,
                    "the number of partitions must be positive".into(),
                ));
            }
            let start = (super::node_rng(&mut self.rng_state) % brokers.len() as u64) as usize;
            place_replicas(
                &self.placement_order(),
                0,
                partitions,
                factor as usize,
                start,
            )
        } else {
            assignments
        };
        let id = self.random_uuid();
        let record = MetadataRecord::Topic {
            name: name.to_string(),
            id,
            replicas,
        };
        self.check_record(&record)?;
        Ok(record)
    }

    /// The brokers in the order placement walks them (alternating racks, if known).
    pub(super) fn placement_order(&self) -> Vec<i32> {
        let brokers: Vec<(i32, Option<String>)> = (self.brokers().into_iter())
            .map(|b| (b.node_id, b.rack))
            .collect();
        crate::metadata::rack_alternated(&brokers)
    }

    /// Replication factor of a topic created without one: three, or every broker of a
    /// smaller cluster (Kafka's default is one; a record kept on one disk is lost with it).
    pub(super) fn default_replication_factor(&self) -> i16 {
        (self.brokers().len() as i16).min(3)
    }

    /// Whether the controller may write `record` now: a topic's name free and valid, its id
    /// new, its replicas real brokers, each partition on distinct brokers, and every broker
    /// within its partition budget.
    pub(super) fn check_record(&self, record: &MetadataRecord) -> Result<(), Refusal> {
        let brokers: Vec<i32> = self.brokers().iter().map(|b| b.node_id).collect();
        let (name, replicas, existing) = match record {
            MetadataRecord::Topic { name, id, replicas } => {
                if !valid_topic_name(name) || name == METADATA_TOPIC {
                    return Err((
                        codes::INVALID_TOPIC_EXCEPTION,
                        format!("invalid topic name {name:?}"),
                    ));
                }
                if self.image.topic(name).is_some() || self.proposed.contains_key(name) {
                    return Err((
                        codes::TOPIC_ALREADY_EXISTS,
                        format!("topic {name} already exists"),
                    ));
                }
                if self.image.topic_by_id(id).is_some()
                    || *id == Uuid::default()
                    || *id == METADATA_TOPIC_ID
                {
                    return Err((codes::INVALID_REQUEST, format!("topic id {id:?} is taken")));
                }
                if self.image.topics().count() >= limits::TOPICS_MAX {
                    return Err((
                        codes::INVALID_REQUEST,
                        format!(
                            "the cluster holds {} topics, its maximum",
                            limits::TOPICS_MAX
                        ),
                    ));
                }
                (name.clone(), replicas, 0)
            }
            MetadataRecord::Partitions { id, replicas } => {
                let Some(topic) = self.image.topic_by_id(id) else {
                    return Err((codes::UNKNOWN_TOPIC_ID, format!("no topic {id:?}")));
                };
                (topic.name.clone(), replicas, topic.replicas.len())
            }
            MetadataRecord::RemoveTopic { .. } => return Ok(()),
            MetadataRecord::Leader {
                id,
                partition,
                leader,
                epoch,
            } => {
                let known = (self.image.topic_by_id(id)).and_then(|t| {
                    Some((
                        t.replicas.get(*partition as usize)?,
                        t.leaders[*partition as usize],
                    ))
                });
                return match known {
                    Some((replicas, (_, known_epoch)))
                        if *partition >= 0 && replicas.contains(leader) && *epoch > known_epoch =>
                    {
                        Ok(())
                    }
                    _ => Err((codes::INVALID_REQUEST, "a stale or unknown leader".into())),
                };
            }
            MetadataRecord::Config { id, key, value } => {
                // A topic written in the same batch is checked by its request's handler.
                let Some(topic) = self.image.topic_by_id(id) else {
                    return Ok(());
                };
                let factor = topic.replicas.first().map_or(1, Vec::len);
                return match value {
                    Some(value) => crate::metadata::configs::check(key, value, factor)
                        .map_err(|message| (codes::INVALID_CONFIG, message)),
                    None => Ok(()),
                };
            }
            MetadataRecord::Broker { id, .. } => {
                // Any change is taken, an older start's included: a node that lost its disk
                // counts its starts from one again, and must still be able to register (it
                // serves no client until it has). A registration of a start that has since
                // ended, forwarded late, may overwrite the current one for a moment: the
                // current start registers again until its image holds its own.
                let member = brokers.contains(id);
                let changed = self.image.registration(*id).as_ref() != Some(record);
                return match member && changed {
                    true => Ok(()),
                    false => Err((
                        codes::INVALID_REQUEST,
                        format!("broker {id}: not a member, or a known registration"),
                    )),
                };
            }
        };
        if replicas.is_empty() {
            return Err((
                codes::INVALID_PARTITIONS,
                "the number of partitions must be positive".into(),
            ));
        }
        let count = existing + replicas.len();
        if count > limits::PARTITIONS_PER_TOPIC_MAX as usize {
            return Err((
                codes::INVALID_PARTITIONS,
                format!(
                    "topic {name}: {count} partitions, more than the {} a topic may have",
                    limits::PARTITIONS_PER_TOPIC_MAX
                ),
            ));
        }
        let factor = replicas[0].len();
        for nodes in replicas {
            let mut sorted = nodes.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if nodes.is_empty() || sorted.len() != nodes.len() || nodes.len() != factor {
                return Err((
                    codes::INVALID_REPLICA_ASSIGNMENT,
                    format!("topic {name}: every partition needs {factor} distinct replicas"),
                ));
            }
            if let Some(unknown) = nodes.iter().find(|n| !brokers.contains(n)) {
                return Err((
                    codes::INVALID_REPLICA_ASSIGNMENT,
                    format!("topic {name}: broker {unknown} is not in the cluster"),
                ));
            }
        }
        // Each broker's partition budget (the controller's, taken for all: nodes of one
        // cluster run one configuration).
        let max = self.config.partitions_max.min(limits::PARTITIONS_MAX);
        for broker in &brokers {
            let held = (self.image.topics())
                .flat_map(|t| &t.replicas)
                .filter(|r| r.contains(broker))
                .count()
                + 1; // the metadata log
            let adding = replicas.iter().filter(|r| r.contains(broker)).count();
            if held + adding > max {
                return Err((
                    codes::INVALID_PARTITIONS,
                    format!(
                        "topic {name}: {adding} more partitions would pass the {max} broker {broker} may hold ({held} now; the limit follows the process's open-file limit)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Records forwarded by a peer (topics its Metadata requests auto-created): written if
    /// this node is the active controller and each still makes sense; dropped otherwise (the
    /// client asks again, and its broker forwards again).
    pub(super) fn handle_proposals(&mut self, now: Instant, from: i32, proposals: Vec<Bytes>) {
        if self.active_controller().is_none() {
            return;
        }
        let mut records = Vec::new();
        for bytes in proposals {
            match MetadataRecord::decode(bytes) {
                Ok(
                    record @ (MetadataRecord::Leader { .. }
                    | MetadataRecord::Broker { .. }
                    | MetadataRecord::Config { .. }),
                ) => {
                    if self.check_record(&record).is_ok() && !records.contains(&record) {
                        records.push(record);
                    }
                }
                Ok(record @ MetadataRecord::Topic { .. }) => {
                    if self.check_record(&record).is_ok()
                        && !records
                            .iter()
                            .any(|r: &MetadataRecord| same_name(r, &record))
                    {
                        records.push(record);
                    }
                }
                Ok(other) => {
                    tracing::warn!(
                        from,
                        ?other,
                        "forwarded record refused: only topics, leaders, registrations and configs are"
                    );
                }
                Err(e) => tracing::warn!(from, error = %e, "undecodable forwarded record"),
            }
        }
        if records.is_empty() {
            return;
        }
        if let Err((code, message)) = self.propose(now, &records) {
            tracing::warn!(from, code, %message, "forwarded records not written");
        }
    }

    /// Sends `record` to the controller in the next frame to it (if one is known).
    pub(super) fn forward(&mut self, record: &MetadataRecord) {
        if self.forwards.len() < limits::PEER_PROPOSALS_PER_FRAME_MAX {
            self.forwards.push(record.encode());
        }
    }

    /// This start's registration: where clients reach the node, its rack, the start.
    fn own_registration(&self) -> MetadataRecord {
        MetadataRecord::Broker {
            id: self.config.node_id,
            host: self.config.advertised_host.clone(),
            port: self.config.advertised_port,
            rack: self.config.rack.clone(),
            incarnation: self.incarnation,
        }
    }

    /// Whether a node of a cluster has joined it since it started: its image holds this
    /// start's registration and names a controller clients can reach. Until then it reads no
    /// client request (as a Kafka broker serves none before it has registered and caught
    /// up): a client told of no controller, or of brokers it cannot reach, may wait a long
    /// time before it asks again (librdkafka's admin client waits out its request timeout).
    /// Once joined, a node stays so for the rest of its run. A cluster of one has joined.
    pub(super) fn joined(&mut self) -> bool {
        if self.joined || self.brokers().len() <= 1 {
            return true;
        }
        let record = self.own_registration();
        let registered = self.image.registration(self.config.node_id).as_ref() == Some(&record);
        self.joined = registered && self.listed_controller_id() >= 0;
        if self.joined {
            tracing::info!("joined the cluster: serving clients");
        }
        self.joined
    }

    /// The node registers itself (where clients reach it, its rack, this start) with the
    /// quorum until its image has that registration: written by the controller itself, or
    /// forwarded, again every election timeout.
    pub(super) fn register(&mut self, now: Instant) {
        let now_ms = now.as_millis() as u64;
        if now_ms < self.registration_due_ms {
            return;
        }
        let record = self.own_registration();
        let registered = self.image.registration(self.config.node_id).as_ref() == Some(&record);
        if registered || self.check_record(&record).is_err() {
            return;
        }
        if self.send_to_controller(now, vec![record]) {
            self.registration_due_ms = now_ms + super::replication::ELECTION_TIMEOUT_MS;
        }
    }

    /// Writes `records` if this node is the active controller, or forwards them to the
    /// controller it knows of. Returns whether they went anywhere (nowhere while no
    /// controller is known: the caller tries again at its next chance).
    pub(super) fn send_to_controller(
        &mut self,
        now: Instant,
        mut records: Vec<MetadataRecord>,
    ) -> bool {
        if self.active_controller().is_some() {
            records.retain(|r| self.check_record(r).is_ok());
            if !records.is_empty() {
                if let Err((code, message)) = self.propose(now, &records) {
                    tracing::warn!(code, %message, "records not written");
                    return false;
                }
            }
            return true;
        }
        match self.controller_id() {
            Some(controller) if controller != self.config.node_id => {
                for record in &records {
                    self.forward(record);
                }
                true
            }
            _ => false,
        }
    }

    /// Partitions this node leads and has not yet seen named as led by it in the image
    /// report their leadership: to the controller (forwarded, again every election timeout
    /// until the image has it), or written at once by the controller itself. Only partitions
    /// some broker holds no replica of: every replica knows its own group's leader.
    pub(super) fn report_leaders(&mut self, now: Instant) {
        if self.leader_reports.is_empty() {
            return;
        }
        let now_ms = now.as_millis() as u64;
        let brokers = self.brokers().len();
        let mut records = Vec::new();
        let mut sent = Vec::new();
        for (log_id, next_ms) in std::mem::take(&mut self.leader_reports) {
            let Some((name, index)) = self.topics.name_index_of(log_id) else {
                continue;
            };
            if name == METADATA_TOPIC {
                continue;
            }
            let Some(topic) = self.image.topic(&name) else {
                // Not in the image yet (a restart catching up): asked again later.
                self.leader_reports.insert(log_id, next_ms);
                continue;
            };
            let (id, replicas, known) = (
                topic.id,
                topic.replicas.get(index as usize).map_or(0, Vec::len),
                topic
                    .leaders
                    .get(index as usize)
                    .copied()
                    .unwrap_or((-1, -1)),
            );
            let Some(replica) = (self.topics.by_log_id(log_id)).and_then(|p| p.replica.as_ref())
            else {
                continue;
            };
            if !replica.is_leader() || replicas >= brokers || known.1 >= replica.leader_epoch() {
                continue;
            }
            if !replica.serving() || now_ms < next_ms {
                self.leader_reports.insert(log_id, next_ms);
                continue;
            }
            records.push(MetadataRecord::Leader {
                id,
                partition: index,
                leader: self.config.node_id,
                epoch: replica.leader_epoch(),
            });
            sent.push(log_id);
        }
        if records.is_empty() {
            return;
        }
        // Not sent (no controller known): due again at once.
        let next_ms = match self.send_to_controller(now, records) {
            true => now_ms + super::replication::ELECTION_TIMEOUT_MS,
            false => 0,
        };
        for log_id in sent {
            self.leader_reports.insert(log_id, next_ms);
        }
    }

    /// Applies what the quorum committed since the last call, then makes the node's
    /// partitions agree with the image. Returns whether anything changed.
    pub(super) fn apply_metadata(&mut self, now: Instant) -> bool {
        let Some(p) = self.topics.get(METADATA_TOPIC, 0) else {
            return false;
        };
        let Some(high_watermark) = p.replica.as_ref().map(|r| r.high_watermark()) else {
            return false;
        };
        let Ok(log) = p.log.as_mut() else {
            return false;
        };
        let mut changes = ImageChanges::default();
        let mut applied_any = false;
        while self.image.applied_end() < high_watermark {
            let from = self.image.applied_end().max(log.log_start_offset());
            let bytes = match log.read(&mut self.disk, from, high_watermark, APPLY_READ_BYTES, true)
            {
                Ok(bytes) if !bytes.is_empty() => bytes,
                Ok(_) => break,
                Err(e) => {
                    // Tried again at the next step; the image waits.
                    tracing::warn!(error = %e, "cannot read the metadata log");
                    break;
                }
            };
            for raw in split_batches(bytes) {
                let Ok(batch) = raw.and_then(RecordBatch::parse) else {
                    tracing::error!("a metadata batch that read back whole does not parse");
                    break;
                };
                let end = batch.header().last_offset() + 1;
                if end > high_watermark {
                    break;
                }
                if !batch.header().is_control() {
                    match batch.records(limits::DECOMPRESSED_BATCH_SIZE_MAX_BYTES) {
                        Ok(records) => {
                            for r in records {
                                let Some(value) = r.value else { continue };
                                match MetadataRecord::decode(value) {
                                    Ok(record) => self.image.apply(&record, &mut changes),
                                    Err(e) => tracing::error!(
                                        offset = batch.header().base_offset,
                                        error = %e,
                                        "metadata record skipped"
                                    ),
                                }
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "metadata batch skipped"),
                    }
                }
                self.image.applied_to(end);
                applied_any = true;
            }
        }
        if !applied_any {
            return false;
        }
        let applied = self.image.applied_end();
        self.proposed.retain(|_, end| *end > applied);
        self.data_version += 1;
        self.reconcile(now, &changes);
        true
    }

    /// Makes the node's partitions agree with the image after `changes`: topics removed go
    /// from the disk; partitions assigned to this node are created.
    fn reconcile(&mut self, _now: Instant, changes: &ImageChanges) {
        let me = self.config.node_id;
        self.reconcile_disk(changes, me);
        // Logs take their topic's settings (new ones, and those whose configs changed).
        for id in changes.grown.iter().chain(&changes.configured) {
            if let Some(topic) = self.image.topic_by_id(id) {
                let name = topic.name.clone();
                let config = self.topic_config(&name);
                self.topics.set_policy(&name, &config);
            }
        }
    }

    fn reconcile_disk(&mut self, changes: &ImageChanges, me: i32) {
        for id in &changes.removed {
            match self.topics.delete_id(&mut self.disk, *id) {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(topic = ?id, "deleted topic");
                    self.deleted_local();
                }
                Err(e) => tracing::error!(topic = ?id, error = %e, "cannot delete topic"),
            }
        }
        for id in &changes.grown {
            let Some(topic) = self.image.topic_by_id(id).cloned() else {
                continue;
            };
            // A directory of the name that holds another topic's partition stays, and this
            // one is not made there: that topic is not in the image yet (a removal would have
            // deleted it), so the image is behind the disk (a restart replaying the log, a
            // follower catching up) and this topic is an earlier one, removed further on.
            // Only a removal ever deletes a partition: an image passing through its history
            // must never delete what a later record keeps.
            let wanted: Vec<(i32, Vec<i32>)> = (topic.replicas.iter().enumerate())
                .filter(|(_, nodes)| nodes.contains(&me))
                .map(|(index, nodes)| (index as i32, nodes.clone()))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            self.extra_dirty_files.push(self.root_dir);
            match self.topics.create_partitions(
                &mut self.disk,
                &topic.name,
                topic.id,
                &wanted,
                self.config.log,
            ) {
                Ok(files) => {
                    self.extra_dirty_files.extend(files);
                    self.replicas_missing = true;
                    tracing::info!(topic = %topic.name, partitions = wanted.len(), "holding partitions");
                }
                Err(e) => {
                    tracing::error!(topic = %topic.name, error = %e, "cannot create partitions")
                }
            }
        }
    }

    /// Partitions were removed from this node's disk: the data directory is synced, and
    /// fetches parked on them look again.
    fn deleted_local(&mut self) {
        self.extra_dirty_files.push(self.root_dir);
        self.data_version += 1;
    }

    /// On a cluster of one, once the controller is ready: topics on disk that the image
    /// does not name (written before the metadata quorum existed) are recorded, with their
    /// ids, so they stay. A cluster of several leaves them alone (another node may have
    /// deleted them).
    pub(super) fn adopt_orphans(&mut self, now: Instant) {
        if self.orphans_adopted || self.brokers().len() != 1 || self.active_controller().is_none() {
            return;
        }
        self.orphans_adopted = true;
        let me = self.config.node_id;
        let mut records = Vec::new();
        for (name, topic) in &self.topics.by_name {
            if name == METADATA_TOPIC || self.image.topic(name).is_some() {
                continue;
            }
            let count = topic.partitions.keys().max().map_or(0, |m| m + 1);
            if count as usize != topic.partitions.len() {
                continue;
            }
            records.push(MetadataRecord::Topic {
                name: name.clone(),
                id: topic.id,
                replicas: vec![vec![me]; count as usize],
            });
        }
        records.retain(|r| self.check_record(r).is_ok());
        if records.is_empty() {
            return;
        }
        tracing::info!(topics = records.len(), "recording topics found on disk");
        if let Err((code, message)) = self.propose(now, &records) {
            tracing::warn!(code, %message, "cannot record the topics found on disk");
            self.orphans_adopted = false;
        }
    }

    /// The image's applied end and fingerprint, for the simulator's check that images agree.
    pub fn metadata_image(&self) -> &MetadataImage {
        &self.image
    }
}

fn same_name(a: &MetadataRecord, b: &MetadataRecord) -> bool {
    match (a, b) {
        (MetadataRecord::Topic { name: x, .. }, MetadataRecord::Topic { name: y, .. }) => x == y,
        _ => false,
    }
}
