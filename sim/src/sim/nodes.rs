//! The nodes' side of the harness: a cluster's bootstrap, starts and crashes, every
//! output a node emits (syncs, peer frames through the network, answers to clients), and
//! the checks that read the nodes' own state and disks.

use super::*;

impl Sim {
    // ---- the nodes' side ----

    /// Before clients and faults start, the harness asks each node of a cluster for the
    /// workload topic (auto-created: the controller writes it, a broker forwards it there)
    /// until every node's image names it.
    pub(super) fn bootstrap(&mut self, node: usize) {
        let id = self.next_conn;
        self.next_conn += 1;
        self.links.insert(
            id,
            Link {
                client: BOOTSTRAP,
                node,
                to_node_at_ns: self.now_ns,
                to_client_at_ns: self.now_ns,
                at_node: None,
                slow_reader: false,
            },
        );
        let header = RequestHeader {
            api_key: ApiKey::Metadata as i16,
            api_version: 12,
            correlation_id: 1,
            client_id: Some("sim-bootstrap".into()),
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        encode_request(&mut buf, &header, &self.metadata_request())
            .expect("the simulator's requests encode");
        self.send_to_node(id, ToNode::Open);
        self.send_to_node(id, ToNode::Bytes(buf.freeze()));
    }

    pub(super) fn on_bootstrap_answer(&mut self, conn: ConnId, what: ToClient) {
        let node = self.links[&conn].node;
        self.send_to_node(conn, ToNode::Close);
        let known = match what {
            ToClient::Bytes(bytes) => {
                let mut frames = FrameDecoder::new(CLIENT_MAX_FRAME_BYTES);
                frames.push(&bytes);
                let response = (frames.next_frame().ok().flatten())
                    .and_then(|frame| decode_response(frame, ApiKey::Metadata, 12).ok());
                matches!(response, Some((_, Response::Metadata(m)))
                    if m.topics.iter().all(|t| t.error_code == codes::NONE))
            }
            // Refused (the node was not up yet).
            ToClient::Close => false,
        };
        if known {
            self.machines[node].bootstrapped = true;
            if !self.started && self.machines.iter().all(|m| m.bootstrapped) {
                self.start();
            }
        } else if !self.machines[node].bootstrapped {
            self.schedule(self.now_ns + 100 * MS, Event::Bootstrap { node });
        }
    }

    /// Clients start and faults begin.
    pub(super) fn start(&mut self) {
        self.started = true;
        if self.machines.len() > 1 {
            for m in &self.machines {
                m.disk.0.borrow_mut().set_faults(self.plan.disk);
            }
        }
        for client in 0..self.clients.len() {
            let at = self.now_ns + self.rng.random_range(0..100 * MS);
            self.schedule_wake(client, at);
        }
        if let Some(interval) = self.plan.crash_interval_ms {
            let at = self.exponential_ns(interval);
            self.schedule(at, Event::Crash);
        }
        if let Some(interval) = self.plan.disk_full_interval_ms {
            let at = self.exponential_ns(interval);
            let node = self.random_node();
            self.schedule(at, Event::DiskFull { node, full: true });
        }
        if self.machines.len() > 1 {
            if let Some(interval) = self.plan.net.partition_interval_ms {
                let at = self.exponential_ns(interval);
                self.schedule(at, Event::Partition { heal: false });
            }
            if let Some(interval) = self.plan.net.clog_interval_ms {
                let at = self.exponential_ns(interval);
                self.schedule(at, Event::Clog);
            }
            if let Some(interval) = self.plan.net.correlated_crash_interval_ms {
                let at = self.exponential_ns(interval);
                self.schedule(at, Event::CorrelatedCrash);
            }
            if let Some(interval) = self.plan.net.pause_interval_ms {
                let at = self.exponential_ns(interval);
                self.schedule(at, Event::Pause);
            }
        }
    }

    pub(super) fn restart_node(&mut self, node: usize) {
        let m = &self.machines[node];
        match Node::new(m.config.clone(), m.disk.clone()) {
            Ok((started, events)) => {
                let mut cut = BTreeSet::new();
                for event in events {
                    tracing::debug!(?event, "recovery");
                    if let RecoveryEvent::Recovered {
                        topic,
                        partition,
                        truncated_bytes,
                        ..
                    } = event
                    {
                        if topic == TOPIC && truncated_bytes > 0 {
                            cut.insert(partition);
                        }
                    }
                }
                if self.machines[node].incarnation > 0 {
                    *self.faults.entry("restart").or_default() += 1;
                }
                self.machines[node].high_watermarks.clear();
                self.machines[node].awake_since_ns = self.now_ns;
                self.machines[node].image_checked = None;
                let single = self.machines.len() == 1;
                for p in started
                    .partition_offsets()
                    .into_iter()
                    .filter(|p| p.topic == TOPIC)
                {
                    // A cluster's replica may be short of what was acknowledged (it was not
                    // in the majority); what the cluster holds is checked by reading it.
                    if single {
                        let damage = self.damage(node, p.partition, cut.contains(&p.partition));
                        self.checker
                            .on_restart(self.now_ns, p.partition, p.log_end_offset, damage);
                    }
                    if let Some(hw) = p.high_watermark {
                        self.machines[node].high_watermarks.insert(p.partition, hw);
                    }
                }
                self.machines[node].node = Some(started);
                self.schedule_deadline(node);
            }
            Err(e) => {
                tracing::debug!(node, error = %e, "the node failed to start");
                self.fault("restart-failed");
                self.machines[node].disk.0.borrow_mut().crash();
                let at = self.now_ns + self.rng.random_range(10 * MS..=500 * MS);
                self.schedule(at, Event::Restart { node });
            }
        }
    }

    /// Whether lasting damage struck `partition`'s files, and if so the recovery point the
    /// node found on the disk (read by the simulator itself: 8 bytes of offset, a CRC-32C).
    pub(super) fn damage(&self, node: usize, partition: i32, cut: bool) -> Option<Damage> {
        let dir = format!("{TOPIC}-{partition}/");
        let disk = self.machines[node].disk.0.borrow();
        if !disk.damaged().any(|name| name.starts_with(&dir)) {
            return None;
        }
        let recovery_point = disk
            .contents(&format!("{dir}recovery-point"))
            .and_then(|raw| raw.first_chunk::<12>())
            .and_then(|raw| {
                let offset = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
                let crc = u32::from_be_bytes(raw[8..].try_into().expect("4 bytes"));
                (crc32c::crc32c(&raw[..8]) == crc).then_some(offset)
            });
        // A segment lost whole is cut too, though recovery could not know it existed (the
        // last one, say, with the recovery point lost as well).
        let lost_segment = (disk.damaged()).any(|n| {
            n.starts_with(&dir)
                && n.ends_with(".log")
                && disk.contents(n).is_none_or(<[u8]>::is_empty)
        });
        Some(Damage {
            recovery_point,
            cut: cut || lost_segment,
        })
    }

    /// The process dies: its connections reset, its pending syncs never complete, its disk
    /// keeps only what was synced (or a torn part of the rest).
    pub(super) fn crash_node(&mut self, node: usize) {
        self.stop_node(node, true);
    }

    /// The process dies; with `machine`, the machine too (the page cache is lost).
    pub(super) fn stop_node(&mut self, node: usize, machine: bool) {
        let m = &mut self.machines[node];
        let Some(process) = m.node.take() else {
            return;
        };
        drop(process);
        let incarnation = m.incarnation;
        let open: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| l.node == node && l.at_node == Some(incarnation))
            .map(|(id, _)| *id)
            .collect();
        for conn in open {
            self.links.get_mut(&conn).expect("listed").at_node = None;
            self.send_to_client(conn, ToClient::Close);
        }
        let m = &mut self.machines[node];
        m.incarnation += 1;
        m.deadline_scheduled_ns = None;
        // A frozen process can be killed; the next one starts awake.
        m.paused_until_ns = None;
        if machine {
            m.disk.0.borrow_mut().crash();
        } else {
            m.disk.0.borrow_mut().close_all();
        }
        let at = self.now_ns + self.rng.random_range(1..=self.plan.restart_delay_ms_max) * MS;
        self.schedule(at, Event::Restart { node });
    }

    pub(super) fn step_node(&mut self, node: usize, input: Input<'_>) {
        let m = &mut self.machines[node];
        let Some(process) = m.node.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        {
            let _span =
                tracing::debug_span!("node", id = m.config.node_id, t = %format_ns(self.now_ns))
                    .entered();
            process.step(Instant(EPOCH_NS + self.now_ns), input, &mut out);
            process.check_invariants();
        }
        let mut halted = false;
        for output in out {
            match output {
                Output::ConnSend { conn, bytes } => {
                    self.note_admin_answer(node, conn, &bytes);
                    self.hasher.write_u64(conn);
                    // CRC-32C is fast and enough: the hash must see every byte, not resist attacks.
                    self.hasher.write_u32(crc32c::crc32c(&bytes));
                    self.send_to_client(conn, ToClient::Bytes(bytes));
                }
                Output::ConnClose { conn, reason } => {
                    tracing::debug!(conn, %reason, "node closes");
                    if let Some(link) = self.links.get_mut(&conn) {
                        link.at_node = None;
                    }
                    self.send_to_client(conn, ToClient::Close);
                }
                Output::Sync { token, file } => {
                    let (low, high) = self.plan.sync_latency_us;
                    let mut delay_ns = self.rng.random_range(low..=high) * 1_000;
                    if self.faulty() && self.rng.random_bool(self.plan.slow_sync_probability) {
                        self.fault("slow-sync");
                        delay_ns += self.rng.random_range(100 * MS..=2_000 * MS);
                    }
                    let m = &self.machines[node];
                    let incarnation = m.incarnation;
                    let sync = m.disk.0.borrow_mut().begin_sync(file);
                    self.schedule(
                        self.now_ns + delay_ns,
                        Event::Synced {
                            node,
                            incarnation,
                            token,
                            sync,
                        },
                    );
                }
                Output::Halt { reason } => {
                    tracing::debug!(%reason, "node halts");
                    halted = true;
                }
                Output::PeerSend { to, bytes } => {
                    let Some(to) = (self.machines.iter())
                        .position(|m| m.config.node_id == to)
                        .filter(|to| *to != node)
                    else {
                        self.checker.violate(
                            ViolationKind::Protocol,
                            self.now_ns,
                            format!("node {} sent a frame to node {to}", node + 1),
                        );
                        continue;
                    };
                    self.hasher.write_u64(to as u64);
                    self.hasher.write_u32(crc32c::crc32c(&bytes));
                    self.check_votes_durable(node, to, &bytes);
                    let deliveries =
                        (self.network).send(&mut self.rng, self.now_ns, node, to, &mut self.faults);
                    for at in deliveries {
                        let bytes = bytes.clone();
                        self.schedule(
                            at,
                            Event::Peer {
                                from: node,
                                to,
                                bytes,
                            },
                        );
                    }
                }
            }
        }
        if halted {
            // The process exits; whatever supervises it starts it again. The machine may stay
            // up, and its page cache with it.
            let same_kernel = self.plan.same_kernel_restart_probability > 0.0
                && self
                    .rng
                    .random_bool(self.plan.same_kernel_restart_probability);
            if same_kernel {
                self.fault("process-restart");
            }
            self.stop_node(node, !same_kernel);
        } else {
            self.schedule_deadline(node);
            if self.machines.len() > 1 {
                self.check_leaders(node);
                self.check_image(node);
            } else {
                self.check_found_damage(node);
            }
        }
    }

    /// A partition of a node alone that went offline while it ran, with lasting damage in
    /// its files: a read found the damage that recovery left to reads (segments its
    /// summaries vouched for). The node refused it, as it must: the check retires it.
    fn check_found_damage(&mut self, node: usize) {
        let dir_of = |p: i32| format!("{TOPIC}-{p}/");
        let damaged: Vec<i32> = {
            let disk = self.machines[node].disk.0.borrow();
            let Some(process) = self.machines[node].node.as_ref() else {
                return;
            };
            if disk.damaged().next().is_none() {
                return;
            }
            (process.partition_offsets().into_iter())
                .filter(|p| p.topic == TOPIC && p.log_end_offset.is_none())
                .map(|p| p.partition)
                .filter(|p| disk.damaged().any(|name| name.starts_with(&dir_of(*p))))
                .collect()
        };
        for partition in damaged {
            self.checker.on_found_damaged(partition);
        }
    }

    pub(super) fn schedule_deadline(&mut self, node: usize) {
        let m = &mut self.machines[node];
        let Some(deadline) = m.node.as_ref().and_then(|n| n.next_deadline()) else {
            return;
        };
        let at = deadline.0.saturating_sub(EPOCH_NS).max(self.now_ns);
        if m.deadline_scheduled_ns.is_some_and(|s| s <= at) {
            return;
        }
        m.deadline_scheduled_ns = Some(at);
        let incarnation = m.incarnation;
        self.schedule(at, Event::NodeTimeout { node, incarnation });
    }

    /// The high watermark never goes back within one incarnation of a node.
    pub(super) fn check_high_watermarks(&mut self, node: usize) {
        let m = &mut self.machines[node];
        let Some(process) = m.node.as_ref() else {
            return;
        };
        let mut back = Vec::new();
        for p in process
            .partition_offsets()
            .into_iter()
            .filter(|p| p.topic == TOPIC)
        {
            let Some(hw) = p.high_watermark else { continue };
            let before = m.high_watermarks.insert(p.partition, hw);
            if let Some(before) = before.filter(|b| *b > hw) {
                back.push(format!(
                    "node {} partition {} high watermark went back from {before} to {hw}",
                    node + 1,
                    p.partition,
                ));
            }
        }
        for detail in back {
            self.checker
                .violate(ViolationKind::LostWrite, self.now_ns, detail);
        }
    }

    /// A granted vote, or a leader's announcement of its epoch, leaves only once the vote is
    /// durable: the sender's durable vote table (the newest whole copy a crash would keep)
    /// holds that vote, or a later epoch.
    pub(super) fn check_votes_durable(&mut self, node: usize, to: usize, bytes: &Bytes) {
        let Ok(frame) = keel_core::raft::wire::decode(bytes.clone()) else {
            self.checker.violate(
                ViolationKind::Protocol,
                self.now_ns,
                format!("node {} sent an undecodable peer frame", node + 1),
            );
            return;
        };
        let (me, them) = (node as i32 + 1, to as i32 + 1);
        let needs: Vec<_> = (frame.messages.iter())
            .filter_map(|(group, message)| match message {
                Message::VoteResponse {
                    epoch,
                    granted: true,
                } => Some((*group, *epoch, them, "granted a vote")),
                Message::BeginEpoch { epoch } => Some((*group, *epoch, me, "announced it leads")),
                _ => None,
            })
            .collect();
        if needs.is_empty() {
            return;
        }
        let durable = durable_votes(&self.machines[node].disk.0.borrow());
        for (group, epoch, voted_for, what) in needs {
            let held = durable.get(&group).copied().unwrap_or_default();
            if held.epoch > epoch || (held.epoch == epoch && held.voted_for == Some(voted_for)) {
                continue;
            }
            self.checker.violate(
                ViolationKind::UndurableVote,
                self.now_ns,
                format!(
                    "node {me} {what} in epoch {epoch} of partition {} (vote for node {voted_for}) with {held:?} durable",
                    group.partition
                ),
            );
        }
    }

    /// An acks=all acknowledgement in a cluster: a majority of the nodes hold the batch where
    /// the answer put it, durably (a crash of every machine now would keep it).
    pub(super) fn check_replicated(&mut self, op: usize, base_offset: i64) {
        // Replicated durability promises memory, not disks: its losses show as lost writes.
        if self.machines.len() == 1 || self.options.durability == Durability::Replicated {
            return;
        }
        let Some(crc) = replicas::batch_crc(&self.ops[op].batch) else {
            return;
        };
        let partition = self.ops[op].write.partition;
        let last_offset = base_offset + self.ops[op].write.values.len() as i64 - 1;
        let dir = format!("{TOPIC}-{partition}/");
        // The cleaner rewrites batches (same offsets, fewer records, a new CRC).
        let compacted = self.plan.lifecycle.compaction.is_some();
        let holders: Vec<usize> = (self.machines.iter().enumerate())
            .filter(|(_, m)| {
                let disk = m.disk.0.borrow();
                // Or durably past it: retention or DeleteRecords took it, as they may (a
                // retried batch keeps its first send's timestamp, and can be old at once).
                replicas::durable_batch_at(&disk, &dir, base_offset)
                    .is_some_and(|b| b.crc == crc || (compacted && b.last_offset == last_offset))
                    || replicas::durable_log_start(&disk, &dir).is_some_and(|s| s > last_offset)
            })
            .map(|(i, _)| i + 1)
            .collect();
        let majority = self.replica_count(partition) / 2 + 1;
        if holders.len() < majority {
            self.checker.violate(
                ViolationKind::UnreplicatedAck,
                self.now_ns,
                format!(
                    "partition {partition} offset {base_offset} acknowledged (acks=all) while durable on nodes {holders:?} only"
                ),
            );
        }
    }

    /// How many replicas a partition of the workload topic has, as the nodes' metadata images
    /// said (assignments never change; remembered, since a node restarting does not name the
    /// topic until its image catches up).
    fn replica_count(&self, partition: i32) -> usize {
        (self.replica_counts.get(&partition).copied()).unwrap_or(self.machines.len())
    }

    /// Replicas agree below their high watermarks: every pair of running nodes holds the same
    /// batches (offsets, leader epochs, CRCs) below the lower of their two high watermarks.
    pub(super) fn check_replicas(&mut self) {
        // Under replicated durability a replica may hold, below its high watermark, what a
        // crashed majority lost, until it next fetches from the leader that lacks it: the
        // mode promises no more (its losses show as lost writes).
        if self.machines.len() == 1 || self.options.durability == Durability::Replicated {
            return;
        }
        // Each replica cleans its own log (as in Kafka): a compacted topic's replicas agree on
        // batches' offsets and epochs, not their records.
        let compacted = self.plan.lifecycle.compaction.is_some();
        for partition in 0..self.plan.partitions {
            let dir = format!("{TOPIC}-{partition}/");
            type View = (usize, i64, i64, Vec<replicas::StoredBatch>);
            let views: Vec<View> = (self.machines.iter())
                .enumerate()
                .filter_map(|(i, m)| {
                    let node = m.node.as_ref()?;
                    let offsets = (node.partition_offsets().into_iter())
                        .find(|p| p.topic == TOPIC && p.partition == partition)?;
                    let (start, hw) = (offsets.log_start_offset?, offsets.high_watermark?);
                    Some((
                        i,
                        start,
                        hw,
                        replicas::cached_batches(&m.disk.0.borrow(), &dir),
                    ))
                })
                .collect();
            for (a, (node_a, start_a, hw_a, batches_a)) in views.iter().enumerate() {
                for (node_b, start_b, hw_b, batches_b) in &views[a + 1..] {
                    // Between both logs' starts (retention runs on each replica alone; what
                    // lies below a start, removed or not yet, is no longer the log's) and
                    // both high watermarks.
                    let bound = (*hw_a).min(*hw_b);
                    let start = (*start_a).max(*start_b);
                    let below = |batches: &[replicas::StoredBatch]| {
                        batches
                            .iter()
                            .filter(|b| b.last_offset < bound && b.last_offset >= start)
                            .map(|b| replicas::StoredBatch {
                                crc: if compacted { 0 } else { b.crc },
                                ..*b
                            })
                            .collect::<Vec<_>>()
                    };
                    let (left, right) = (below(batches_a), below(batches_b));
                    if left != right {
                        let first = left.iter().zip(&right).find(|(l, r)| l != r);
                        self.checker.violate(
                            ViolationKind::ReplicasDiverge,
                            self.now_ns,
                            format!(
                                "partition {partition} below offset {bound}: node {} and node {} differ ({} and {} batches; first difference {first:?})",
                                node_a + 1,
                                node_b + 1,
                                left.len(),
                                right.len()
                            ),
                        );
                    }
                }
            }
        }
    }

    /// At most one leader per partition per epoch: every node that says it leads a partition
    /// in an epoch must be the only one that ever did.
    pub(super) fn check_leaders(&mut self, node: usize) {
        let Some(process) = self.machines[node].node.as_ref() else {
            return;
        };
        // The metadata quorum's group counts as partition -1.
        let metadata = (process.leaderships(METADATA_TOPIC).into_iter()).map(|(_, e)| (-1, e));
        for (partition, epoch) in process.leaderships(TOPIC).into_iter().chain(metadata) {
            let first = *self
                .leader_of_epoch
                .entry((partition, epoch))
                .or_insert(node);
            if first != node {
                self.checker.violate(
                    ViolationKind::TwoLeaders,
                    self.now_ns,
                    format!(
                        "nodes {} and {} both led partition {partition} in epoch {epoch}",
                        first + 1,
                        node + 1
                    ),
                );
            }
        }
    }

    /// An answer to the admin client in a cluster, as it leaves `node`: if the node's image
    /// does not name the admin's current topic (it has not applied that name's deletion, or
    /// its creation), a by-name answer in it concerned another topic (Kafka's brokers answer
    /// by name from what they know too). Kept by (connection, correlation id): the answer
    /// may arrive after the image moved on.
    pub(super) fn note_admin_answer(&mut self, node: usize, conn: ConnId, bytes: &Bytes) {
        if self.machines.len() == 1 || bytes.len() < 8 {
            return;
        }
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        let Some(Role::Admin(admin)) = self.clients.get(link.client).map(|c| &c.role) else {
            return;
        };
        let current = (self.machines[node].node.as_ref())
            .and_then(|n| n.metadata_image().topic(&admin.name).map(|t| t.id));
        if current.is_none() || current != admin.id {
            let correlation_id = i32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes"));
            self.stale_answers.insert((conn, correlation_id));
        }
    }

    /// Metadata images agree on their committed prefix: two nodes whose images applied the
    /// metadata log up to the same offset hold the same image (the first one seen there is
    /// kept; the metadata log is fsynced whatever the durability, so nothing committed there
    /// is ever lost).
    pub(super) fn check_image(&mut self, node: usize) {
        let Some(process) = self.machines[node].node.as_ref() else {
            return;
        };
        let image = process.metadata_image();
        if self.replica_counts.is_empty() {
            if let Some(topic) = image.topic(TOPIC) {
                for (partition, replicas) in topic.replicas.iter().enumerate() {
                    self.replica_counts.insert(partition as i32, replicas.len());
                }
            }
        }
        // Only when it moved: the fingerprint encodes the whole image.
        if self.machines[node].image_checked == Some(image.applied_end()) {
            return;
        }
        let (end, fingerprint) = (image.applied_end(), image.fingerprint());
        self.machines[node].image_checked = Some(end);
        let (first_node, first) = *self.image_at.entry(end).or_insert((node, fingerprint));
        if first != fingerprint {
            self.checker.violate(
                ViolationKind::ImagesDiverge,
                self.now_ns,
                format!(
                    "metadata images differ at offset {end}: node {} has {first:08x}, node {} {fingerprint:08x}",
                    first_node + 1,
                    node + 1
                ),
            );
        }
    }

    pub(super) fn deliver_to_node(&mut self, conn: ConnId, what: ToNode) {
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        let node = link.node;
        let incarnation = self.machines[node].incarnation;
        let node_up = self.machines[node].node.is_some();
        let link = self.links.get_mut(&conn).expect("checked");
        let open_here = node_up && link.at_node == Some(incarnation);
        match what {
            ToNode::Open if node_up => {
                link.at_node = Some(incarnation);
                self.step_node(node, Input::ConnOpened { conn });
            }
            // Connection refused.
            ToNode::Open => self.send_to_client(conn, ToClient::Close),
            ToNode::Bytes(bytes) if open_here => self.step_node(
                node,
                Input::ConnBytes {
                    conn,
                    bytes: &bytes,
                },
            ),
            ToNode::Close if open_here => {
                link.at_node = None;
                self.step_node(node, Input::ConnClosed { conn });
            }
            ToNode::Bytes(_) | ToNode::Close => {}
        }
    }

    pub(super) fn send_to_client(&mut self, conn: ConnId, what: ToClient) {
        let mut delay_ns = self.latency_ns();
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        if link.slow_reader && !self.quiet {
            delay_ns += self.rng.random_range(10 * MS..=300 * MS);
        }
        let link = self.links.get_mut(&conn).expect("checked");
        let at = (self.now_ns + delay_ns).max(link.to_client_at_ns);
        link.to_client_at_ns = at;
        self.schedule(at, Event::ToClient { conn, what });
    }

    pub(super) fn send_to_node(&mut self, conn: ConnId, what: ToNode) {
        let delay_ns = self.latency_ns();
        let link = self.links.get_mut(&conn).expect("a client's connection");
        let at = (self.now_ns + delay_ns).max(link.to_node_at_ns);
        link.to_node_at_ns = at;
        self.schedule(at, Event::ToNode { conn, what });
    }
}

/// The vote table a crash of the machine now would leave: the newest durable copy that is
/// whole.
fn durable_votes(disk: &SimDisk) -> BTreeMap<GroupId, Persisted> {
    let mut newest: Option<(u64, BTreeMap<GroupId, Persisted>)> = None;
    for name in disk.files_under(votes::FILE_PREFIX) {
        let Some(table) = disk.durable_contents(name).and_then(votes::decode_table) else {
            continue;
        };
        if newest
            .as_ref()
            .is_none_or(|(generation, _)| table.0 > *generation)
        {
            newest = Some(table);
        }
    }
    newest.map(|(_, table)| table).unwrap_or_default()
}
