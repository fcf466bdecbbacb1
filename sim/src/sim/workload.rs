//! The workload: clients that speak Kafka through Keel's codec over simulated connections
//! (producers, idempotent or not; consumers; the admin client of `admin.rs`), follow leaders
//! as real clients do, and report what they saw to the checker.

use super::*;

/// How long a cluster's producer waits before sending again a write a node refused because
/// leadership moved (Kafka's `retry.backoff.ms`).
const RETRY_BACKOFF_NS: u64 = 100 * MS;
/// A cluster's client moves to another node at most this often.
const MOVE_BACKOFF_NS: u64 = 50 * MS;

impl Sim {
    // ---- the clients' side ----

    pub(super) fn schedule_wake(&mut self, client: usize, at_ns: u64) {
        let at_ns = at_ns.max(self.now_ns);
        let c = &mut self.clients[client];
        if c.wake_at_ns.is_some_and(|w| w <= at_ns) {
            return;
        }
        c.wake_at_ns = Some(at_ns);
        self.schedule(at_ns, Event::ClientWake { client });
    }

    /// Whatever the client can do now: reconnect, time out, send; then sleep until the next
    /// thing it waits for.
    pub(super) fn client_act(&mut self, client: usize) {
        enum Action {
            Connect,
            TimeOut,
            Metadata,
            InitProducerId,
            Retry,
            Produce,
            Fetch,
            Admin,
            Group,
            Txn,
            Move(usize),
            Sleep(Option<u64>),
        }
        loop {
            let now = self.now_ns;
            let c = &self.clients[client];
            let action = match &c.conn {
                None if self.quiet
                    && !has_retries(&c.role)
                    && matches!(c.role, Role::Producer { .. }) =>
                {
                    return
                }
                None if now >= c.reconnect_at_ns => Action::Connect,
                None => Action::Sleep(Some(c.reconnect_at_ns)),
                Some(conn) => {
                    let deadline = conn.pending.front().map(|p| p.deadline_ns);
                    let mut next = deadline;
                    let mut soonest = |at: u64| next = Some(next.map_or(at, |n: u64| n.min(at)));
                    if deadline.is_some_and(|d| d <= now) {
                        Action::TimeOut
                    } else if conn.metadata_at_ns.is_some_and(|at| at <= now) {
                        Action::Metadata
                    } else if let Some(target) = self.move_target(client) {
                        Action::Move(target)
                    } else {
                        if let Some(at) = conn.metadata_at_ns {
                            soonest(at);
                        }
                        match &c.role {
                            Role::Producer {
                                idempotence: Some(idem),
                                ..
                            } if conn.ready
                                && (idem.producer_id < 0 || idem.init_at_ns.is_some()) =>
                            {
                                match idem.init_at_ns {
                                    _ if idem.initializing => Action::Sleep(next),
                                    Some(at) if at > now => {
                                        soonest(at);
                                        Action::Sleep(next)
                                    }
                                    _ => Action::InitProducerId,
                                }
                            }
                            Role::Producer {
                                idempotence: Some(idem),
                                ..
                            } if conn.ready
                                && !idem.retries.is_empty()
                                && conn.pending.len() < self.plan.max_in_flight =>
                            {
                                if idem.retry_at_ns <= now {
                                    Action::Retry
                                } else {
                                    soonest(idem.retry_at_ns);
                                    Action::Sleep(next)
                                }
                            }
                            Role::Producer {
                                next_send_at_ns, ..
                            } if conn.ready
                                && !self.quiet
                                && conn.pending.len() < self.plan.max_in_flight =>
                            {
                                if *next_send_at_ns <= now {
                                    Action::Produce
                                } else {
                                    soonest(*next_send_at_ns);
                                    Action::Sleep(next)
                                }
                            }
                            Role::Admin(admin)
                                if conn.ready && !self.quiet && admin.in_flight == 0 =>
                            {
                                if admin.next_at_ns <= now {
                                    Action::Admin
                                } else {
                                    soonest(admin.next_at_ns);
                                    Action::Sleep(next)
                                }
                            }
                            Role::Member(m) if conn.ready && !m.in_flight => {
                                let due = m.due_ns();
                                if due <= now {
                                    Action::Group
                                } else {
                                    soonest(due);
                                    Action::Sleep(next)
                                }
                            }
                            Role::Txn(t) if conn.ready && !t.in_flight => {
                                let due = t.due_ns();
                                if due <= now {
                                    Action::Txn
                                } else {
                                    if due != u64::MAX {
                                        soonest(due);
                                    }
                                    Action::Sleep(next)
                                }
                            }
                            Role::Consumer {
                                next_poll_at_ns,
                                fetching: false,
                                ..
                            } if conn.ready => {
                                if *next_poll_at_ns <= now {
                                    Action::Fetch
                                } else {
                                    soonest(*next_poll_at_ns);
                                    Action::Sleep(next)
                                }
                            }
                            _ => Action::Sleep(next),
                        }
                    }
                }
            };
            match action {
                Action::Connect => self.connect(client),
                Action::TimeOut => {
                    self.count("request-timeout");
                    self.client_close(client);
                }
                Action::Metadata => {
                    if let Some(conn) = self.clients[client].conn.as_mut() {
                        conn.metadata_at_ns = None;
                    }
                    self.send_metadata(client);
                }
                Action::InitProducerId => self.init_producer_id(client),
                Action::Retry => self.retry(client),
                Action::Produce => {
                    self.produce(client);
                    let mut at = self.exponential_ns(self.plan.produce_interval_ms);
                    if self.plan.producer_idle_probability > 0.0
                        && self.rng.random_bool(self.plan.producer_idle_probability)
                    {
                        // Idle for longer than the node remembers producers.
                        self.count("producer:idle");
                        let expiry_ms = self.plan.producer_id_expiration_ms.unwrap_or(10_000);
                        at += (expiry_ms as u64 + self.rng.random_range(0..=expiry_ms as u64)) * MS;
                    }
                    if let Role::Producer {
                        next_send_at_ns, ..
                    } = &mut self.clients[client].role
                    {
                        *next_send_at_ns = at;
                    }
                }
                Action::Fetch => {
                    if let Role::Consumer {
                        fetching,
                        fetch_sent_ns,
                        ..
                    } = &mut self.clients[client].role
                    {
                        *fetching = true;
                        *fetch_sent_ns = now;
                    }
                    self.fetch(client);
                }
                Action::Admin => self.admin_act(client),
                Action::Txn => {
                    self.txn_act(client);
                    let Role::Txn(t) = &self.clients[client].role else {
                        // It crashed and came back as itself: the next wake acts.
                        return;
                    };
                    if !t.in_flight {
                        if self.clients[client].conn.is_none() {
                            // It crashed: it reconnects when due.
                            continue;
                        }
                        if self.move_target(client).is_some() {
                            continue;
                        }
                        let at = t.due_ns().max(self.now_ns + MS);
                        if at != u64::MAX {
                            self.schedule_wake(client, at);
                        }
                        return;
                    }
                }
                Action::Group => {
                    self.group_act(client);
                    let Role::Member(m) = &self.clients[client].role else {
                        unreachable!("a member acted")
                    };
                    if !m.in_flight {
                        // Nothing was due after all: sleep until something is.
                        let at = m.due_ns().max(self.now_ns + MS);
                        self.schedule_wake(client, at);
                        return;
                    }
                }
                Action::Move(target) => {
                    tracing::debug!(client, to = target + 1, "client moves");
                    self.count("client:move");
                    self.client_close(client);
                    let c = &mut self.clients[client];
                    c.node = target;
                    c.rotate = false;
                    if let Role::Admin(admin) = &mut c.role {
                        admin.misdirected = false;
                    }
                    c.reconnect_at_ns = self.now_ns;
                    c.move_after_ns = self.now_ns + MOVE_BACKOFF_NS;
                }
                Action::Sleep(at) => {
                    if let Some(at) = at {
                        self.schedule_wake(client, at);
                    }
                    return;
                }
            }
        }
    }

    /// The node a cluster's client should talk to instead of its own, with nothing in flight:
    /// the leader of the partition its next retry is for, a leader of something if its node
    /// leads nothing, or (a consumer that read) the next leader in turn.
    pub(super) fn move_target(&self, client: usize) -> Option<usize> {
        if self.machines.len() == 1 {
            return None;
        }
        let c = &self.clients[client];
        let conn = c.conn.as_ref()?;
        if !conn.ready || !conn.pending.is_empty() || self.now_ns < c.move_after_ns {
            return None;
        }
        let here = c.node;
        let elsewhere: BTreeSet<usize> =
            c.leaders.values().copied().filter(|n| *n != here).collect();
        let leads_here = c.leaders.values().any(|n| *n == here);
        let unknown = c.leaders.len() < self.plan.partitions as usize;
        let next = (here + 1) % self.machines.len();
        let pick = || {
            let i = (self.now_ns / 1_000) as usize % elsewhere.len().max(1);
            elsewhere.iter().nth(i).copied()
        };
        match &c.role {
            Role::Producer { idempotence, .. } => {
                if let Some(idem) = idempotence {
                    if idem.producer_id < 0 || idem.init_at_ns.is_some() || idem.initializing {
                        // Any node hands out ids.
                        return None;
                    }
                    if let Some(op) = idem.retries.front() {
                        let p = self.ops[*op].write.partition;
                        return c.leaders.get(&p).copied().filter(|n| *n != here);
                    }
                }
                if leads_here {
                    None
                } else {
                    pick().or(unknown.then_some(next))
                }
            }
            // A node that does not know every partition's leader (its replica is offline, or
            // cut off): ask the next one, as clients ask another broker for metadata.
            Role::Consumer { .. } if unknown => Some(next),
            Role::Consumer { .. } if c.rotate || !leads_here => pick(),
            // The admin client sent its step to a node that is not the controller or not the
            // leader: the next node in turn (as a client walks its bootstrap list).
            Role::Admin(admin) if admin.misdirected => Some(next),
            // A member talks to its coordinator.
            Role::Member(m) => m.coordinator.filter(|c| *c != here),
            // A transactional producer goes where its next step goes.
            Role::Txn(_) => self.txn_target(client).filter(|n| *n != here),
            Role::Consumer { .. } | Role::Admin(_) => None,
        }
    }

    /// A cluster's client asks for Metadata again soon: leadership moved.
    pub(super) fn refresh_metadata(&mut self, client: usize) {
        let at = self.now_ns + 50 * MS;
        if let Some(conn) = self.clients[client].conn.as_mut() {
            conn.metadata_at_ns.get_or_insert(at);
        }
    }

    pub(super) fn connect(&mut self, client: usize) {
        let id = self.next_conn;
        self.next_conn += 1;
        let slow_reader = !self.quiet && self.rng.random_bool(self.plan.slow_reader_probability);
        if slow_reader {
            self.fault("slow-reader");
        }
        self.links.insert(
            id,
            Link {
                client,
                node: self.clients[client].node,
                to_node_at_ns: self.now_ns,
                to_client_at_ns: self.now_ns,
                at_node: None,
                slow_reader,
            },
        );
        self.clients[client].conn = Some(ClientConn {
            id,
            frames: FrameDecoder::new(CLIENT_MAX_FRAME_BYTES),
            pending: VecDeque::new(),
            ready: false,
            metadata_at_ns: None,
        });
        self.send_to_node(id, ToNode::Open);
        self.send_metadata(client);
    }

    /// The client drops its connection (a timeout, or a reset it injected itself).
    pub(super) fn client_close(&mut self, client: usize) {
        let Some(conn) = self.clients[client].conn.as_ref() else {
            return;
        };
        let id = conn.id;
        self.send_to_node(id, ToNode::Close);
        self.conn_lost(client);
    }

    /// The connection is gone: whatever was in flight has an unknown outcome.
    pub(super) fn conn_lost(&mut self, client: usize) {
        let Some(conn) = self.clients[client].conn.take() else {
            return;
        };
        for pending in conn.pending {
            match pending.kind {
                PendingKind::Produce { op } => {
                    self.ops[op].outcome = Outcome::Unknown;
                    self.ops[op].attempted_unknown = true;
                    if let Some(idem) = idempotence(&mut self.clients[client].role) {
                        if (self.ops[op].producer_id, self.ops[op].epoch)
                            == (idem.producer_id, idem.epoch)
                        {
                            idem.retries.push_back(op);
                        }
                    }
                }
                PendingKind::InitProducerId => {
                    if let Some(idem) = idempotence(&mut self.clients[client].role) {
                        idem.initializing = false;
                    }
                }
                PendingKind::Fetch => {
                    self.count("fetch:unknown");
                    if let Role::Consumer { fetching, .. } = &mut self.clients[client].role {
                        *fetching = false;
                    }
                }
                PendingKind::Metadata => {}
                PendingKind::Group(call) => self.group_conn_lost(client, call),
                PendingKind::Txn(call) => self.txn_conn_lost(client, call),
                PendingKind::Admin(request) => {
                    let Role::Admin(admin) = &mut self.clients[client].role else {
                        continue;
                    };
                    admin.in_flight = 0;
                    if matches!(request, AdminRequest::Delete) {
                        // Whether the topic is gone is unknown: on to the other name.
                        admin.next_cycle();
                    }
                }
            }
        }
        if let Some(idem) = idempotence(&mut self.clients[client].role) {
            // Sent again in the order they were first sent.
            let ops = &self.ops;
            idem.retries
                .make_contiguous()
                .sort_by_key(|op| ops[*op].write.send_seq);
        }
        let backoff = self.rng.random_range(10 * MS..=500 * MS);
        self.clients[client].reconnect_at_ns = self.now_ns + backoff;
        let at = self.clients[client].reconnect_at_ns;
        self.schedule_wake(client, at);
    }

    pub(super) fn send_request(
        &mut self,
        client: usize,
        version: i16,
        request: Request,
        kind: PendingKind,
    ) {
        let c = &mut self.clients[client];
        let Some(conn) = c.conn.as_mut() else {
            return;
        };
        c.next_correlation_id += 1;
        let correlation_id = c.next_correlation_id;
        let api_key = request.api_key();
        let header = RequestHeader {
            api_key: api_key as i16,
            api_version: version,
            correlation_id,
            client_id: Some(format!("sim-{client}")),
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        encode_request(&mut buf, &header, &request).expect("the simulator's requests encode");
        let bytes = buf.freeze();
        conn.pending.push_back(Pending {
            correlation_id,
            api_key,
            version,
            deadline_ns: self.now_ns + self.plan.request_timeout_ms * MS,
            kind,
        });
        let id = conn.id;
        if !self.quiet && self.rng.random_bool(self.plan.conn_reset_probability) {
            // The connection breaks partway through the request.
            self.fault("conn-reset");
            let cut = self.rng.random_range(0..bytes.len());
            if cut > 0 {
                self.send_to_node(id, ToNode::Bytes(bytes.slice(..cut)));
            }
            self.client_close(client);
            return;
        }
        if !self.quiet && self.rng.random_bool(self.plan.cut_request_probability) {
            // The request arrives in pieces cut at random bytes.
            self.fault("cut-request");
            let mut start = 0;
            while start < bytes.len() {
                let end = self.rng.random_range(start + 1..=bytes.len());
                self.send_to_node(id, ToNode::Bytes(bytes.slice(start..end)));
                start = end;
            }
        } else {
            self.send_to_node(id, ToNode::Bytes(bytes));
        }
    }

    pub(super) fn metadata_request(&self) -> Request {
        Request::Metadata(MetadataRequest {
            topics: Some(vec![MetadataRequestTopic {
                name: Some(TOPIC.into()),
                ..Default::default()
            }]),
            allow_auto_topic_creation: true,
            ..Default::default()
        })
    }

    pub(super) fn send_metadata(&mut self, client: usize) {
        let request = self.metadata_request();
        let version = self.plan.metadata_version;
        self.send_request(client, version, request, PendingKind::Metadata);
    }

    pub(super) fn produce(&mut self, client: usize) {
        let partition = if self.machines.len() == 1 {
            self.rng.random_range(0..self.plan.partitions)
        } else {
            let c = &self.clients[client];
            let led: Vec<i32> = (c.leaders.iter())
                .filter(|(_, n)| **n == c.node)
                .map(|(p, _)| *p)
                .collect();
            if led.is_empty() {
                self.count("produce:no-leader");
                self.refresh_metadata(client);
                return;
            }
            led[self.rng.random_range(0..led.len())]
        };
        let count = self.rng.random_range(1..=self.plan.records_per_batch_max);
        let padding = self.rng.random_range(0..=self.plan.value_padding_bytes_max);
        let Role::Producer {
            idempotence,
            acks,
            next_value,
            next_send_seq,
            ..
        } = &mut self.clients[client].role
        else {
            unreachable!("only producers produce");
        };
        let acks = *acks;
        let mut options = BatchOptions {
            base_timestamp: ((EPOCH_NS + self.now_ns) / MS) as i64,
            ..Default::default()
        };
        if let Some(idem) = idempotence {
            let sequence = idem.next_sequence.entry(partition).or_insert(0);
            options.producer_id = idem.producer_id;
            options.producer_epoch = idem.epoch;
            options.base_sequence = *sequence;
            *sequence = keel_core::producers::last_sequence(*sequence, count as i32 - 1)
                .wrapping_add(1)
                .max(0);
        }
        let generation = idempotence.as_ref().map_or(0, |idem| idem.generation);
        let values: Vec<u64> = (0..count)
            .map(|_| {
                *next_value += 1;
                ((client as u64) << 40) | *next_value
            })
            .collect();
        let send_seq = *next_send_seq;
        *next_send_seq += 1;
        let write = Write {
            producer: client,
            partition,
            send_seq,
            values,
            timestamp_ms: options.base_timestamp,
        };
        self.checker.on_send(self.now_ns, &write);
        let op = self.new_op(write, padding, &options, generation);
        self.send_produce(client, op, acks);
    }

    /// Records a write (its batch built from its values, each padded by `padding` bytes) and
    /// returns its index.
    pub(super) fn new_op(
        &mut self,
        write: Write,
        padding: usize,
        options: &BatchOptions,
        generation: u64,
    ) -> usize {
        let batch = record::build(
            &batch_records(
                &write.values,
                padding,
                self.plan.lifecycle.compaction_keys(),
            ),
            options,
        )
        .expect("the simulator's batches build");
        self.ops.push(Op {
            write,
            batch,
            outcome: Outcome::Pending,
            producer_id: options.producer_id,
            epoch: options.producer_epoch,
            attempted_unknown: false,
            generation,
            first_sent_ns: self.now_ns,
        });
        self.ops.len() - 1
    }

    /// One more batch from a producer's previous epoch, sent after it moved to a new one (a
    /// zombie instance still running): the node must refuse it, so it must never be read.
    pub(super) fn send_zombie(&mut self, client: usize, epoch: i16, sequences: BTreeMap<i32, i32>) {
        let Some((partition, sequence)) = sequences.into_iter().next() else {
            return;
        };
        self.count("producer:zombie");
        let Role::Producer {
            idempotence: Some(idem),
            acks,
            next_value,
            next_send_seq,
            ..
        } = &mut self.clients[client].role
        else {
            return;
        };
        let acks = *acks;
        *next_value += 1;
        let value = ((client as u64) << 40) | *next_value;
        let send_seq = *next_send_seq;
        *next_send_seq += 1;
        let options = BatchOptions {
            base_timestamp: ((EPOCH_NS + self.now_ns) / MS) as i64,
            producer_id: idem.producer_id,
            producer_epoch: epoch,
            base_sequence: sequence,
            ..Default::default()
        };
        let write = Write {
            producer: client,
            partition,
            send_seq,
            values: vec![value],
            timestamp_ms: options.base_timestamp,
        };
        let op = self.new_op(write, 0, &options, u64::MAX);
        self.send_produce(client, op, acks);
    }

    /// Sends the oldest write whose outcome is unknown again, unchanged.
    pub(super) fn retry(&mut self, client: usize) {
        let Role::Producer {
            idempotence: Some(idem),
            acks,
            ..
        } = &mut self.clients[client].role
        else {
            return;
        };
        let acks = *acks;
        let Some(op) = idem.retries.pop_front() else {
            return;
        };
        // Kafka's delivery.timeout.ms: a client gives up on a write well before the node may
        // forget its producer (producer.id.expiration.ms), or a retry could land twice.
        let delivery_timeout_ns = self
            .plan
            .producer_id_expiration_ms
            .map_or(u64::MAX, |ms| ms as u64 / 2 * MS);
        if self.now_ns - self.ops[op].first_sent_ns > delivery_timeout_ns {
            self.count("produce:delivery-timeout");
            return;
        }
        self.count("produce:retry");
        self.ops[op].outcome = Outcome::Pending;
        self.send_produce(client, op, acks);
    }

    pub(super) fn send_produce(&mut self, client: usize, op: usize, acks: i16) {
        let partition = self.ops[op].write.partition;
        let batch = self.ops[op].batch.clone();
        let request = produce_request(TOPIC, partition, batch, acks);
        let version = self.plan.produce_version;
        self.send_request(client, version, request, PendingKind::Produce { op });
    }

    pub(super) fn init_producer_id(&mut self, client: usize) {
        let Some(idem) = idempotence(&mut self.clients[client].role) else {
            return;
        };
        idem.initializing = true;
        idem.init_at_ns = None;
        // With an id already, ask for the next epoch (KIP-360; v3 and later).
        let request = Request::InitProducerId(InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: 60_000,
            producer_id: idem.producer_id,
            producer_epoch: idem.epoch,
            ..Default::default()
        });
        let version = self.plan.init_producer_id_version;
        self.send_request(client, version, request, PendingKind::InitProducerId);
    }

    /// A sequence or epoch error: whatever waits to be sent again stays unknown forever (its
    /// outcome already says so), and the producer starts a new epoch with sequences from 0.
    pub(super) fn reset_producer(&mut self, client: usize) {
        let Some(idem) = idempotence(&mut self.clients[client].role) else {
            return;
        };
        if idem.init_at_ns.is_some() || idem.initializing {
            return;
        }
        idem.retries.clear();
        idem.init_at_ns = Some(self.now_ns);
        self.count("producer:reset");
    }

    pub(super) fn fetch(&mut self, client: usize) {
        let c = &self.clients[client];
        let Role::Consumer {
            positions,
            read_committed,
            ..
        } = &c.role
        else {
            unreachable!("only consumers fetch");
        };
        let isolation_level = i8::from(*read_committed);
        if positions.is_empty() {
            // A group member's fetcher with nothing assigned.
            let at = self.now_ns + 50 * MS;
            if let Role::Consumer {
                fetching,
                next_poll_at_ns,
                ..
            } = &mut self.clients[client].role
            {
                *fetching = false;
                *next_poll_at_ns = at;
            }
            return;
        }
        let cluster = self.machines.len() > 1;
        let partitions: Vec<FetchPartition> = positions
            .iter()
            .filter(|(p, _)| !cluster || c.leaders.get(p) == Some(&c.node))
            .map(|(p, pos)| FetchPartition {
                partition: *p,
                fetch_offset: *pos,
                partition_max_bytes: FETCH_PARTITION_MAX_BYTES,
                // Fenced by the leader epoch (KIP-320): a node that still thinks it leads an
                // older epoch answers UNKNOWN_LEADER_EPOCH instead of an older high watermark.
                current_leader_epoch: c.leader_epochs.get(p).copied().unwrap_or(-1),
                log_start_offset: -1,
                ..Default::default()
            })
            .collect();
        if partitions.is_empty() {
            // This node leads none of them (as far as the client knows): elsewhere.
            let at = self.now_ns + 20 * MS;
            let c = &mut self.clients[client];
            c.rotate = true;
            if let Role::Consumer {
                fetching,
                next_poll_at_ns,
                ..
            } = &mut c.role
            {
                *fetching = false;
                *next_poll_at_ns = at;
            }
            self.refresh_metadata(client);
            return;
        }
        let request = Request::Fetch(FetchRequest {
            replica_id: -1,
            isolation_level,
            max_wait_ms: self.plan.fetch_max_wait_ms,
            min_bytes: 1,
            max_bytes: FETCH_MAX_BYTES,
            session_epoch: -1,
            topics: vec![FetchTopic {
                topic: TOPIC.into(),
                partitions,
                ..Default::default()
            }],
            ..Default::default()
        });
        let version = self.plan.fetch_version;
        self.send_request(client, version, request, PendingKind::Fetch);
    }

    pub(super) fn deliver_to_client(&mut self, conn_id: ConnId, what: ToClient) {
        let Some(link) = self.links.get(&conn_id) else {
            return;
        };
        let client = link.client;
        if client == BOOTSTRAP {
            self.on_bootstrap_answer(conn_id, what);
            return;
        }
        if self.clients[client].conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return;
        }
        let bytes = match what {
            ToClient::Close => {
                // The node closed the connection (one that has no metadata quorum in reach
                // does, for a Metadata request): a client reconnects to the next broker of
                // its bootstrap list, as librdkafka marks that broker down and uses another.
                if self.machines.len() > 1 {
                    let c = &mut self.clients[client];
                    c.node = (c.node + 1) % self.machines.len();
                }
                self.conn_lost(client);
                return;
            }
            ToClient::Bytes(bytes) => bytes,
        };
        let conn = self.clients[client].conn.as_mut().expect("checked");
        conn.frames.push(&bytes);
        loop {
            let Some(conn) = self.clients[client].conn.as_mut() else {
                return;
            };
            let frame = match conn.frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.protocol_violation(client, format!("bad response frame: {e}"));
                    return;
                }
            };
            let Some(pending) = conn.pending.pop_front() else {
                self.protocol_violation(client, "a response to no request".into());
                return;
            };
            match decode_response(frame, pending.api_key, pending.version) {
                Ok((header, response)) if header.correlation_id == pending.correlation_id => {
                    self.on_response(client, pending, response)
                }
                Ok((header, _)) => {
                    self.protocol_violation(
                        client,
                        format!(
                            "response {} to request {} ({})",
                            header.correlation_id,
                            pending.correlation_id,
                            pending.api_key.name()
                        ),
                    );
                    return;
                }
                Err(e) => {
                    self.protocol_violation(client, format!("undecodable response: {e}"));
                    return;
                }
            }
        }
        self.client_act(client);
    }

    pub(super) fn protocol_violation(&mut self, client: usize, detail: String) {
        self.checker
            .violate(ViolationKind::Protocol, self.now_ns, detail);
        self.client_close(client);
    }

    pub(super) fn on_response(&mut self, client: usize, pending: Pending, response: Response) {
        match (pending.kind, response) {
            (PendingKind::Metadata, Response::Metadata(m)) => {
                let ok = m.topics.iter().any(|t| {
                    t.name.as_deref() == Some(TOPIC)
                        && t.error_code == codes::NONE
                        && t.partitions.len() == self.plan.partitions as usize
                });
                let retry_at = self.now_ns + 100 * MS;
                let mut leaderless = false;
                if self.machines.len() > 1 {
                    // As clients since KIP-320: an answer naming an older leader epoch than
                    // one already known (a node that has not heard of the election yet) is
                    // not believed.
                    let nodes = self.machines.len();
                    let c = &mut self.clients[client];
                    for t in m.topics.iter().filter(|t| t.name.as_deref() == Some(TOPIC)) {
                        for p in &t.partitions {
                            // A node that knows no leader says nothing new.
                            if p.leader_id < 1 || p.leader_id as usize > nodes {
                                continue;
                            }
                            let known = c.leader_epochs.get(&p.partition_index).copied();
                            if known.is_some_and(|e| p.leader_epoch < e) {
                                continue;
                            }
                            c.leader_epochs.insert(p.partition_index, p.leader_epoch);
                            c.leaders
                                .insert(p.partition_index, p.leader_id as usize - 1);
                        }
                    }
                    leaderless = c.leaders.len() < self.plan.partitions as usize;
                }
                if let Some(conn) = self.clients[client].conn.as_mut() {
                    if ok {
                        conn.ready = true;
                    }
                    if !ok || leaderless {
                        conn.metadata_at_ns = Some(retry_at);
                    }
                }
            }
            (PendingKind::Produce { op }, Response::Produce(p)) => {
                let partition = self.ops[op].write.partition;
                let answer = p
                    .responses
                    .iter()
                    .filter(|t| t.name == TOPIC)
                    .flat_map(|t| &t.partition_responses)
                    .find(|r| r.index == partition);
                let Some(answer) = answer else {
                    self.protocol_violation(
                        client,
                        "a produce response without the partition".into(),
                    );
                    return;
                };
                let sequence_error = matches!(
                    answer.error_code,
                    codes::OUT_OF_ORDER_SEQUENCE_NUMBER
                        | codes::UNKNOWN_PRODUCER_ID
                        | codes::INVALID_PRODUCER_EPOCH
                );
                let (producer_id, epoch, generation) = (
                    self.ops[op].producer_id,
                    self.ops[op].epoch,
                    self.ops[op].generation,
                );
                let current_epoch =
                    idempotence(&mut self.clients[client].role).is_some_and(|idem| {
                        (idem.producer_id, idem.epoch, idem.generation)
                            == (producer_id, epoch, generation)
                    });
                if sequence_error && current_epoch {
                    self.count("produce:sequence-error");
                    // Starting over at 0 in the same epoch is safe only with nothing else of
                    // this partition's old sequence still on its way or waiting to be sent.
                    let ops = &self.ops;
                    let quiet_partition = self.clients[client].conn.as_ref().is_none_or(|c| {
                        c.pending.iter().all(|p| {
                            !matches!(p.kind, PendingKind::Produce { op } if ops[op].write.partition == partition)
                        })
                    }) && self.clients[client].role_retries_none(ops, partition);
                    if answer.error_code == codes::UNKNOWN_PRODUCER_ID
                        && self.plan.restart_sequence_on_unknown
                        && quiet_partition
                    {
                        // As clients before KIP-360: the partition forgot us, start it over.
                        self.count("producer:restart-sequence");
                        if let Some(idem) = idempotence(&mut self.clients[client].role) {
                            idem.next_sequence.insert(partition, 0);
                            idem.generation += 1;
                        }
                    } else {
                        self.reset_producer(client);
                    }
                } else if sequence_error {
                    self.count("produce:fenced");
                }
                tracing::debug!(
                    client,
                    partition,
                    op,
                    error_code = answer.error_code,
                    base_offset = answer.base_offset,
                    first_value = format_args!("{:#x}", self.ops[op].write.values[0]),
                    "produce answered"
                );
                let leadership_moved = self.machines.len() > 1
                    && matches!(
                        answer.error_code,
                        codes::NOT_LEADER_OR_FOLLOWER
                            | codes::LEADER_NOT_AVAILABLE
                            | codes::FENCED_LEADER_EPOCH
                            | codes::UNKNOWN_LEADER_EPOCH
                            | codes::KAFKA_STORAGE_ERROR
                    );
                if leadership_moved {
                    // The batch may sit in a log that a new leader keeps, or in none: unknown.
                    // An idempotent producer sends it again, to the new leader.
                    self.count("produce:not-leader");
                    self.ops[op].outcome = Outcome::Unknown;
                    self.ops[op].attempted_unknown = true;
                    let generation = self.ops[op].generation;
                    let retry_at = self.now_ns + RETRY_BACKOFF_NS;
                    if let Some(idem) = idempotence(&mut self.clients[client].role) {
                        if (idem.producer_id, idem.epoch, idem.generation)
                            == (producer_id, epoch, generation)
                        {
                            // Kafka's retry.backoff.ms: not at once to a node that just said no.
                            idem.retry_at_ns = retry_at;
                            idem.retries.push_back(op);
                            let ops = &self.ops;
                            idem.retries
                                .make_contiguous()
                                .sort_by_key(|op| ops[*op].write.send_seq);
                        }
                    }
                    self.refresh_metadata(client);
                } else if answer.error_code == codes::NONE
                    && self.machines.len() > 1
                    && matches!(self.clients[client].role, Role::Producer { acks: 1, .. })
                {
                    // acks=1 in a cluster: the leader has it, and a leader that fails before
                    // its followers fetch it takes it along (Kafka's promise, no more). The
                    // write may survive or not, as an unknown one.
                    self.count("produce:ok-leader-only");
                    self.ops[op].outcome = Outcome::Unknown;
                } else if answer.error_code == codes::NONE {
                    self.ops[op].outcome = Outcome::Ok;
                    let base_offset = answer.base_offset;
                    self.check_replicated(op, base_offset);
                    let write = self.ops[op].write.clone();
                    self.checker.on_ack(self.now_ns, &write, base_offset);
                } else if self.ops[op].attempted_unknown {
                    // An earlier attempt of this same batch may have landed: refusing the
                    // retry says nothing about it, so the write stays unknown.
                    tracing::debug!(error_code = answer.error_code, "produce retry failed");
                    self.ops[op].outcome = Outcome::Unknown;
                } else {
                    tracing::debug!(error_code = answer.error_code, "produce failed");
                    self.ops[op].outcome = Outcome::Fail;
                    let write = self.ops[op].write.clone();
                    self.checker.on_fail(self.now_ns, &write);
                }
            }
            (PendingKind::Fetch, Response::Fetch(f)) => self.on_fetch(client, f),
            (PendingKind::Group(call), response) => self.on_group_response(client, call, response),
            (PendingKind::Txn(call), response) => self.on_txn_response(client, call, response),
            (PendingKind::Admin(request), response) => {
                let conn = self.clients[client].conn.as_ref().map_or(0, |c| c.id);
                let stale = self.stale_answers.remove(&(conn, pending.correlation_id));
                self.on_admin_response(client, request, response, stale)
            }
            (PendingKind::InitProducerId, Response::InitProducerId(r)) => {
                tracing::debug!(
                    client,
                    error_code = r.error_code,
                    producer_id = r.producer_id,
                    epoch = r.producer_epoch,
                    "producer id"
                );
                let now = self.now_ns;
                let Some(idem) = idempotence(&mut self.clients[client].role) else {
                    return;
                };
                idem.initializing = false;
                if r.error_code != codes::NONE || r.producer_id < 0 {
                    idem.init_at_ns = Some(now + 100 * MS);
                    return;
                }
                let zombie = (idem.producer_id == r.producer_id && idem.epoch >= 0)
                    .then(|| (idem.epoch, idem.next_sequence.clone()));
                idem.producer_id = r.producer_id;
                idem.epoch = r.producer_epoch;
                idem.next_sequence.clear();
                // Writes still waiting to be sent again belong to the old epoch: they stay
                // unknown.
                idem.retries.clear();
                if let Some((old_epoch, old_sequences)) = zombie {
                    if self.plan.zombie_probability > 0.0
                        && self.rng.random_bool(self.plan.zombie_probability)
                    {
                        self.send_zombie(client, old_epoch, old_sequences);
                    }
                }
            }
            (kind, response) => self.protocol_violation(
                client,
                format!("{kind:?} answered by {}", response.api_key().name()),
            ),
        }
    }

    /// The values of the records a read_committed fetch's answer serves from `position` on
    /// (what a client hands its application: aborted transactions' records and control
    /// batches dropped), and the position after them.
    pub(super) fn committed_values(
        data: &keel_core::protocol::messages::fetch_response::PartitionData,
        mut position: i64,
    ) -> (Vec<u64>, i64) {
        let mut values = Vec::new();
        let mut aborted = AbortedFilter::new(data);
        let records = data.records.clone().unwrap_or_default();
        for batch in record::split_batches(records) {
            let Some(batch) = batch.ok().and_then(|b| RecordBatch::parse(b).ok()) else {
                break;
            };
            let header = *batch.header();
            if aborted.drops(&batch) || header.is_control() {
                position = position.max(header.last_offset() + 1);
                continue;
            }
            let Ok(records) = batch.records(CLIENT_MAX_FRAME_BYTES) else {
                break;
            };
            for r in records {
                let offset = header.base_offset + i64::from(r.offset_delta);
                if offset < position {
                    continue;
                }
                position = offset + 1;
                let value = (r.value.as_ref()).filter(|v| v.len() >= 8);
                values
                    .extend(value.map(|v| u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))));
            }
        }
        (values, position)
    }

    pub(super) fn on_fetch(
        &mut self,
        client: usize,
        response: keel_core::protocol::messages::FetchResponse,
    ) {
        let mut read_any = false;
        let mut stale = false;
        let single_node = self.machines.len() == 1;
        let mut markers = Vec::new();
        let mut reads = Vec::new();
        let mut jumps = Vec::new();
        let mut gaps = Vec::new();
        let mut key_errors = Vec::new();
        let mut stable_offsets = Vec::new();
        let compaction_keys = self.plan.lifecycle.compaction_keys();
        let mut outcome = "fetch:ok";
        for topic in response.responses.iter().filter(|t| t.topic == TOPIC) {
            for data in topic
                .partitions
                .iter()
                .filter(|d| d.error_code == codes::NONE)
            {
                self.checker.on_high_watermark(
                    self.now_ns,
                    client,
                    data.partition_index,
                    data.high_watermark,
                );
            }
        }
        let read_committed = matches!(
            self.clients[client].role,
            Role::Consumer {
                read_committed: true,
                ..
            }
        );
        {
            let Role::Consumer {
                positions,
                fetch_sent_ns,
                ..
            } = &mut self.clients[client].role
            else {
                unreachable!("only consumers fetch");
            };
            let sent_ns = *fetch_sent_ns;
            for topic in response.responses.iter().filter(|t| t.topic == TOPIC) {
                for data in &topic.partitions {
                    let Some(position) = positions.get_mut(&data.partition_index) else {
                        continue;
                    };
                    if data.error_code == codes::OFFSET_OUT_OF_RANGE
                        && data.log_start_offset > *position
                    {
                        // Below the log start (retention, DeleteRecords): on from the start,
                        // as auto.offset.reset=earliest does.
                        outcome = "fetch:below-start";
                        jumps.push((data.partition_index, *position, data.log_start_offset));
                        *position = data.log_start_offset;
                        read_any = true;
                        continue;
                    }
                    if data.error_code != codes::NONE {
                        outcome = "fetch:partition-error";
                        tracing::debug!(
                            client,
                            partition = data.partition_index,
                            code = data.error_code,
                            position = *position,
                            start = data.log_start_offset,
                            "fetch error"
                        );
                        stale = true;
                        continue;
                    }
                    let Some(records) = &data.records else {
                        continue;
                    };
                    if read_committed {
                        stable_offsets.push((
                            data.partition_index,
                            data.last_stable_offset,
                            data.high_watermark,
                        ));
                    }
                    let mut aborted = AbortedFilter::new(data);
                    for batch in record::split_batches(records.clone()) {
                        // A batch cut by the size limit ends the response.
                        let Ok(batch) = batch else { break };
                        // A corrupt batch (a bit flipped on the node's read) is refetched, as
                        // clients that check CRCs do.
                        let Ok(batch) = RecordBatch::parse(batch) else {
                            outcome = "fetch:corrupt";
                            break;
                        };
                        let header = *batch.header();
                        let txn_marker = keel_core::producers::txn_marker_of(&batch);
                        if aborted.drops(&batch) && read_committed {
                            // An aborted transaction's batch: dropped, read on after it.
                            let next = header.last_offset() + 1;
                            if next > *position {
                                *position = next;
                                read_any = true;
                            }
                            continue;
                        }
                        if batch.header().is_control() {
                            // A leader's marker: clients skip it, and read on after it. A node
                            // alone knows what is committed and never needs one (a
                            // DeleteRecords marker, or a transaction's, is another matter).
                            if single_node
                                && keel_core::log::log_start_of(&batch).is_none()
                                && txn_marker.is_none()
                            {
                                markers.push(batch.header().base_offset);
                            }
                            let next = batch.header().last_offset() + 1;
                            if next > *position {
                                *position = next;
                                read_any = true;
                            }
                            continue;
                        }
                        let Ok(records) = batch.records(CLIENT_MAX_FRAME_BYTES) else {
                            outcome = "fetch:corrupt";
                            break;
                        };
                        let base = batch.header().base_offset;
                        for r in records {
                            let offset = base + i64::from(r.offset_delta);
                            if offset < *position {
                                continue;
                            }
                            let value =
                                r.value.as_ref().filter(|v| v.len() >= 8).map(|v| {
                                    u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))
                                });
                            if let (Some(keys), Some(value)) = (compaction_keys, value) {
                                let written = crate::plan::key_bytes(crate::plan::compaction_key(
                                    value, keys,
                                ));
                                if r.key.as_ref() != Some(&written) {
                                    let detail = format!("partition {} offset {offset} holds {value:#x} with key {:?}, written with {written:?}", data.partition_index, r.key);
                                    key_errors.push(detail);
                                }
                            }
                            if offset > *position && compaction_keys.is_some() {
                                // Records the cleaner removed: only where a newer one of their
                                // key was committed (checked at the end, when every such
                                // record is known).
                                gaps.push((
                                    data.partition_index,
                                    *position,
                                    offset,
                                    data.high_watermark,
                                ));
                                *position = offset;
                            }
                            reads.push((
                                data.partition_index,
                                *position,
                                offset,
                                value,
                                sent_ns,
                                read_committed,
                            ));
                            *position = offset + 1;
                            read_any = true;
                        }
                        // A batch whose last records (or all) the cleaner removed: the
                        // consumer goes on after it, as clients do.
                        let next = batch.header().last_offset() + 1;
                        if next > *position && compaction_keys.is_some() {
                            gaps.push((data.partition_index, *position, next, data.high_watermark));
                            *position = next;
                            read_any = true;
                        }
                    }
                }
            }
        }
        self.count(outcome);
        for offset in markers {
            self.checker.violate(
                ViolationKind::Protocol,
                self.now_ns,
                format!("a node alone wrote a leader-change marker at offset {offset}"),
            );
        }
        let now_ms = ((EPOCH_NS + self.now_ns) / MS) as i64;
        for (partition, from, to) in jumps {
            self.checker
                .on_start_moved(self.now_ns, now_ms, partition, from, to);
        }
        for detail in key_errors {
            self.checker
                .violate(ViolationKind::Protocol, self.now_ns, detail);
        }
        for (partition, from, to, high_watermark) in gaps {
            self.checker
                .on_compacted_gap(self.now_ns, partition, from, to, high_watermark);
        }
        for (partition, lso, hw) in stable_offsets {
            self.checker
                .on_last_stable_offset(self.now_ns, partition, lso, hw);
        }
        for (partition, position, offset, value, sent_ns, committed) in reads {
            if let (true, Some(value)) = (committed, value) {
                self.checker
                    .on_committed_read(self.now_ns, partition, offset, value);
            }
            self.checker
                .check_above_start(self.now_ns, sent_ns, partition, offset);
            if offset != position {
                self.checker.violate(
                    ViolationKind::PollSkip,
                    self.now_ns,
                    format!("consumer {client} at {position} of partition {partition} got offset {offset}"),
                );
            }
            match value {
                Some(value) => self.checker.on_read(self.now_ns, partition, offset, value),
                None => self.checker.violate(
                    ViolationKind::Protocol,
                    self.now_ns,
                    format!("partition {partition} offset {offset} holds a record nobody wrote"),
                ),
            }
        }
        if self.machines.len() > 1 {
            if stale {
                self.refresh_metadata(client);
            }
            // On to the next leader (each leader serves only its own partitions).
            self.clients[client].rotate = stale || self.rng.random_bool(0.5);
        }
        if self.plan.lifecycle.on && !self.quiet && self.rng.random_bool(0.02) {
            // A seek to the beginning, as an application replaying a topic does: it finds
            // the log start, and what retention and DeleteRecords removed below it. Not in
            // the quiet phase, where consumers must catch up: a compacted log is never cut
            // short, and a consumer sent back to 0 every fiftieth fetch never reached the end
            // of one read a segment per fetch (seed 50029, three minutes on three nodes).
            let Role::Consumer { positions, .. } = &mut self.clients[client].role else {
                unreachable!("only consumers fetch");
            };
            if let Some(position) = positions.values_mut().next() {
                *position = 0;
                self.count("fetch:rewind");
            }
        }
        let backoff = if read_any {
            0
        } else {
            self.rng.random_range(5 * MS..=50 * MS)
        };
        let at = self.now_ns + backoff;
        if let Role::Consumer {
            next_poll_at_ns,
            fetching,
            ..
        } = &mut self.clients[client].role
        {
            *fetching = false;
            *next_poll_at_ns = at;
        }
    }
}

// ---- the admin workload (admin.rs) ----

impl Sim {
    pub(super) fn admin(&mut self, client: usize) -> &mut AdminState {
        match &mut self.clients[client].role {
            Role::Admin(admin) => admin,
            _ => unreachable!("only the admin client administers"),
        }
    }

    /// Sends what the admin client's step asks for.
    pub(super) fn admin_act(&mut self, client: usize) {
        use keel_core::protocol::messages::*;
        let step = self.admin(client).step;
        let name = self.admin(client).name.clone();
        let id = self.admin(client).id.unwrap_or_default();
        let partitions = self.admin(client).partitions;
        self.count("admin:request");
        match step {
            AdminStep::Create => {
                let num_partitions = self.rng.random_range(1..=3);
                // In a cluster, one to three replicas (on one node, the only one).
                let nodes = self.machines.len();
                let replication_factor = match nodes {
                    1 => 1,
                    _ => self.rng.random_range(1..=nodes.min(3)) as i16,
                };
                let request = Request::CreateTopics(CreateTopicsRequest {
                    topics: vec![create_topics_request::CreatableTopic {
                        name,
                        num_partitions,
                        replication_factor,
                        ..Default::default()
                    }],
                    timeout_ms: 5_000,
                    ..Default::default()
                });
                self.admin_send(client, 5, request, AdminRequest::Create);
            }
            AdminStep::Describe => {
                let request = Request::Metadata(MetadataRequest {
                    topics: Some(vec![MetadataRequestTopic {
                        name: Some(name),
                        ..Default::default()
                    }]),
                    allow_auto_topic_creation: false,
                    ..Default::default()
                });
                self.admin_send(client, 12, request, AdminRequest::Describe);
            }
            AdminStep::Produce(_) => {
                let partition = self.rng.random_range(0..partitions);
                let count = self.rng.random_range(1..=3);
                let timestamp_ms = ((EPOCH_NS + self.now_ns) / MS) as i64;
                let admin = self.admin(client);
                let values: Vec<u64> = (0..count)
                    .map(|_| {
                        admin.next_value += 1;
                        ((client as u64) << 40) | admin.next_value
                    })
                    .collect();
                for value in &values {
                    admin.written_to.insert(*value, Some(id));
                }
                // One timestamp for the whole batch: the by-time check looks it up.
                let records: Vec<NewRecord> = values
                    .iter()
                    .map(|v| NewRecord {
                        value: Some(value_bytes(*v, 0)),
                        ..Default::default()
                    })
                    .collect();
                let options = BatchOptions {
                    base_timestamp: timestamp_ms,
                    ..Default::default()
                };
                let batch =
                    record::build(&records, &options).expect("the simulator's batches build");
                let request = produce_request(&name, partition, batch, -1);
                let what = AdminRequest::Produce {
                    partition,
                    values,
                    timestamp_ms,
                };
                self.admin_send(client, 9, request, what);
            }
            AdminStep::FetchById => {
                let partition = self.rng.random_range(0..partitions);
                let request = self.admin_fetch(id, partition, 0, 0);
                let what = AdminRequest::FetchById {
                    partition,
                    long_poll: false,
                };
                self.admin_send(client, 13, request, what);
            }
            AdminStep::ListOffsets(which) => {
                let admin = self.admin(client);
                let (partition, timestamp) = match (which, admin.first_acked) {
                    (0, first) => (first.map_or(0, |f| f.1), -2),
                    (1, first) => (first.map_or(0, |f| f.1), -1),
                    (_, Some((timestamp, partition, _))) => (partition, timestamp),
                    (_, None) => (0, -1),
                };
                use keel_core::protocol::messages::list_offsets_request::*;
                let request = Request::ListOffsets(ListOffsetsRequest {
                    replica_id: -1,
                    topics: vec![ListOffsetsTopic {
                        name,
                        partitions: vec![ListOffsetsPartition {
                            partition_index: partition,
                            timestamp,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                self.admin_send(client, 7, request, AdminRequest::ListOffsets { which });
            }
            AdminStep::CreatePartitions => {
                let request = Request::CreatePartitions(CreatePartitionsRequest {
                    topics: vec![create_partitions_request::CreatePartitionsTopic {
                        name,
                        count: partitions + 1,
                        assignments: None,
                        ..Default::default()
                    }],
                    timeout_ms: 5_000,
                    ..Default::default()
                });
                self.admin_send(client, 3, request, AdminRequest::CreatePartitions);
            }
            AdminStep::Lifecycle(0) => {
                let lifecycle = &self.plan.lifecycle;
                let choices = &lifecycle.retention_ms;
                let retention_ms = choices[self.rng.random_range(0..choices.len())];
                let segment_ms = lifecycle.segment_ms;
                self.checker.on_retention_asked(retention_ms);
                use keel_core::protocol::messages::incremental_alter_configs_request::*;
                let set = |name: &str, value: i64| AlterableConfig {
                    name: name.into(),
                    config_operation: 0,
                    value: Some(value.to_string()),
                    ..Default::default()
                };
                let mut configs = vec![
                    set("retention.ms", retention_ms),
                    set("segment.ms", segment_ms),
                ];
                if let Some(compaction) = &lifecycle.compaction {
                    configs.push(AlterableConfig {
                        name: "cleanup.policy".into(),
                        config_operation: 0,
                        value: Some(compaction.policy().into()),
                        ..Default::default()
                    });
                    configs.push(set(
                        "min.compaction.lag.ms",
                        compaction.min_compaction_lag_ms,
                    ));
                }
                let request = Request::IncrementalAlterConfigs(IncrementalAlterConfigsRequest {
                    resources: vec![AlterConfigsResource {
                        resource_type: 2,
                        resource_name: TOPIC.into(),
                        configs,
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                self.admin_send(client, 1, request, AdminRequest::AlterRetention);
            }
            AdminStep::Lifecycle(_) => {
                let partition = self.rng.random_range(0..self.plan.partitions);
                let end = self
                    .checker
                    .acked_ends()
                    .get(&partition)
                    .copied()
                    .unwrap_or(0);
                let offset = self.rng.random_range(0..=end);
                self.checker.on_delete_records_asked(partition, offset);
                use keel_core::protocol::messages::delete_records_request::*;
                let request = Request::DeleteRecords(DeleteRecordsRequest {
                    topics: vec![DeleteRecordsTopic {
                        name: TOPIC.into(),
                        partitions: vec![DeleteRecordsPartition {
                            partition_index: partition,
                            offset,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    timeout_ms: 5_000,
                    ..Default::default()
                });
                self.admin_send(
                    client,
                    2,
                    request,
                    AdminRequest::DeleteRecords { partition, offset },
                );
            }
            AdminStep::LongPollAndDelete => {
                let admin = self.admin(client);
                let from = admin
                    .acked
                    .keys()
                    .filter(|(p, _)| *p == 0)
                    .map(|(_, o)| o + 1)
                    .max()
                    .unwrap_or(0);
                let max_wait_ms = self.rng.random_range(500..=3_000);
                let request = self.admin_fetch(id, 0, from, max_wait_ms);
                let what = AdminRequest::FetchById {
                    partition: 0,
                    long_poll: true,
                };
                self.admin_send(client, 13, request, what);
                let request = Request::DeleteTopics(DeleteTopicsRequest {
                    topic_names: vec![self.admin(client).name.clone()],
                    timeout_ms: 5_000,
                    ..Default::default()
                });
                self.admin_send(client, 5, request, AdminRequest::Delete);
            }
        }
    }

    pub(super) fn admin_fetch(
        &self,
        id: Uuid,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
    ) -> Request {
        Request::Fetch(FetchRequest {
            max_wait_ms,
            min_bytes: 1,
            max_bytes: FETCH_MAX_BYTES,
            topics: vec![FetchTopic {
                topic_id: id,
                partitions: vec![FetchPartition {
                    partition,
                    fetch_offset: offset,
                    partition_max_bytes: FETCH_PARTITION_MAX_BYTES,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    pub(super) fn admin_send(
        &mut self,
        client: usize,
        version: i16,
        request: Request,
        what: AdminRequest,
    ) {
        self.admin(client).in_flight += 1;
        self.send_request(client, version, request, PendingKind::Admin(what));
    }

    pub(super) fn on_admin_response(
        &mut self,
        client: usize,
        request: AdminRequest,
        response: Response,
        stale: bool,
    ) {
        let now = self.now_ns;
        let pause_ns = self.rng.random_range(10 * MS..=200 * MS);
        let admin = self.admin(client);
        admin.in_flight = admin.in_flight.saturating_sub(1);
        admin.next_at_ns = now + pause_ns;
        let mut violations: Vec<(ViolationKind, String)> = Vec::new();
        if self.machines.len() > 1 && misdirected(&response) {
            // Sent to the wrong node: the same step again from the next. (A write answered
            // NOT_LEADER_OR_FOLLOWER may still commit, if leadership moved after its append:
            // its values stay possible, never acknowledged.)
            let admin = self.admin(client);
            admin.misdirected = true;
            self.count("admin:misdirected");
            return;
        }
        let cluster = self.machines.len() > 1;
        let node = self.clients[client].node;
        // Produce and ListOffsets name the topic: a broker whose image has not yet applied
        // the deletion of this name's earlier topic (cut off from the quorum, say) answers
        // for that one, as Kafka's brokers do. Only answers from a broker whose image names
        // the admin's topic count (Fetch goes by topic id, which is exact).
        let by_name = matches!(
            request,
            AdminRequest::Produce { .. } | AdminRequest::ListOffsets { .. }
        );
        if cluster && by_name && stale {
            self.admin(client).misdirected = true;
            self.count("admin:stale-broker");
            return;
        }
        let lifecycle = self.plan.lifecycle.on;
        let delete_records =
            lifecycle && (self.rng).random_bool(self.plan.lifecycle.delete_records_probability);
        let admin = self.admin(client);
        match (request, response) {
            (AdminRequest::Create, Response::CreateTopics(r)) => {
                let code = r
                    .topics
                    .first()
                    .map_or(codes::UNKNOWN_SERVER_ERROR, |t| t.error_code);
                if matches!(code, codes::NONE | codes::TOPIC_ALREADY_EXISTS) {
                    admin.step = AdminStep::Describe;
                }
            }
            (AdminRequest::Describe, Response::Metadata(m)) => match m.topics.first() {
                Some(t) if t.error_code == codes::NONE && !t.partitions.is_empty() => {
                    let id = t.topic_id;
                    let this = (admin.name.clone(), admin.cycle);
                    match admin.ids.get(&id) {
                        // The same topic again (after a cycle whose delete was unknown).
                        Some((name, _)) if *name == this.0 && admin.id.is_none_or(|i| i == id) => {}
                        // A broker whose image has not yet applied the deletion of this name's
                        // earlier topic (metadata reaches brokers a little late, in Kafka too):
                        // asked again.
                        Some((name, cycle)) if cluster && *name == this.0 && *cycle != this.1 => {
                            admin.misdirected = true;
                            return;
                        }
                        Some((name, cycle)) if (name, *cycle) != (&this.0, this.1) => {
                            violations.push((
                                ViolationKind::WrongTopic,
                                format!("topic {} (cycle {}) has id {id:?}, which topic {name} (cycle {cycle}) had", this.0, this.1),
                            ));
                        }
                        _ => {}
                    }
                    if id == Uuid::default() {
                        violations.push((
                            ViolationKind::WrongTopic,
                            format!("topic {} has no id", this.0),
                        ));
                    }
                    admin.ids.entry(id).or_insert(this);
                    admin.id = Some(id);
                    admin.partitions = t.partitions.len() as i32;
                    admin.step = if admin.step == AdminStep::Describe && admin.acked.is_empty() {
                        AdminStep::Produce(3)
                    } else {
                        AdminStep::LongPollAndDelete
                    };
                }
                _ => admin.step = AdminStep::Create,
            },
            (
                AdminRequest::Produce {
                    partition,
                    values,
                    timestamp_ms,
                },
                Response::Produce(p),
            ) => {
                if let Some(answer) = p
                    .responses
                    .first()
                    .and_then(|t| t.partition_responses.first())
                {
                    if answer.error_code == codes::NONE {
                        tracing::debug!(
                            node = node + 1,
                            partition,
                            base_offset = answer.base_offset,
                            "side topic write acknowledged"
                        );
                        for (i, value) in values.iter().enumerate() {
                            let offset = answer.base_offset + i as i64;
                            admin.acked.insert((partition, offset), *value);
                        }
                        admin.first_acked.get_or_insert((
                            timestamp_ms,
                            partition,
                            answer.base_offset,
                        ));
                    } else {
                        // Refused: never to be read anywhere.
                        for value in &values {
                            admin.written_to.insert(*value, None);
                        }
                    }
                }
                admin.step = match admin.step {
                    AdminStep::Produce(n) if n > 1 => AdminStep::Produce(n - 1),
                    _ => AdminStep::FetchById,
                };
            }
            (
                AdminRequest::FetchById {
                    partition,
                    long_poll,
                },
                Response::Fetch(f),
            ) => {
                let id = admin.id.unwrap_or_default();
                for data in f.responses.iter().flat_map(|t| &t.partitions) {
                    if data.error_code != codes::NONE {
                        continue;
                    }
                    let Some(records) = &data.records else {
                        continue;
                    };
                    for batch in record::split_batches(records.clone()) {
                        let Ok(batch) = batch
                            .map_err(|_| ())
                            .and_then(|b| RecordBatch::parse(b).map_err(|_| ()))
                        else {
                            break;
                        };
                        let base = batch.header().base_offset;
                        if batch.header().is_control() {
                            continue;
                        }
                        let Ok(records) = batch.records(CLIENT_MAX_FRAME_BYTES) else {
                            break;
                        };
                        for r in records {
                            let offset = base + i64::from(r.offset_delta);
                            let value =
                                r.value.as_ref().filter(|v| v.len() >= 8).map(|v| {
                                    u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))
                                });
                            let Some(value) = value else { continue };
                            match admin.written_to.get(&value) {
                                Some(Some(to)) if *to == id => {}
                                Some(Some(to)) => violations.push((
                                    ViolationKind::WrongTopic,
                                    format!("value {value:#x} written to topic id {to:?} read from {id:?} partition {partition} offset {offset}"),
                                )),
                                Some(None) => violations.push((
                                    ViolationKind::PhantomWrite,
                                    format!("value {value:#x} was refused but read from topic id {id:?} partition {partition} offset {offset}"),
                                )),
                                None => violations.push((
                                    ViolationKind::WrongTopic,
                                    format!("topic id {id:?} partition {partition} offset {offset} holds {value:#x}, never written to a side topic"),
                                )),
                            }
                            if let Some(acked) = admin.acked.get(&(partition, offset)) {
                                if *acked != value {
                                    violations.push((
                                        ViolationKind::InconsistentOffset,
                                        format!("side topic {id:?} partition {partition} offset {offset} holds {value:#x}, {acked:#x} was acknowledged there"),
                                    ));
                                }
                            }
                        }
                    }
                }
                if !long_poll {
                    admin.step = AdminStep::ListOffsets(0);
                }
            }
            (AdminRequest::ListOffsets { which }, Response::ListOffsets(r)) => {
                if let Some(p) = r.topics.first().and_then(|t| t.partitions.first()) {
                    if p.error_code == codes::NONE {
                        let partition = p.partition_index;
                        let acked_end = admin
                            .acked
                            .keys()
                            .filter(|(q, _)| *q == partition)
                            .map(|(_, o)| o + 1)
                            .max()
                            .unwrap_or(0);
                        match which {
                            0 if p.offset != 0 => violations.push((
                                ViolationKind::InconsistentOffset,
                                format!("side topic partition {partition}: earliest offset {}", p.offset),
                            )),
                            1 if p.offset < acked_end => violations.push((
                                ViolationKind::LostWrite,
                                format!("side topic partition {partition}: latest offset {} (node {}), offset {} acknowledged", p.offset, node + 1, acked_end - 1),
                            )),
                            2 => {
                                if let Some((_, _, first)) = admin.first_acked {
                                    if p.offset < 0 || p.offset > first {
                                        violations.push((
                                            ViolationKind::LostWrite,
                                            format!("side topic partition {partition}: by time, offset {}; offset {first} was acknowledged at that time", p.offset),
                                        ));
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                admin.step = match which {
                    0 => AdminStep::ListOffsets(1),
                    1 if admin.first_acked.is_some() => AdminStep::ListOffsets(2),
                    _ if admin.partitions < 4 => AdminStep::CreatePartitions,
                    _ if lifecycle => AdminStep::Lifecycle(0),
                    _ => AdminStep::LongPollAndDelete,
                };
            }
            (AdminRequest::CreatePartitions, Response::CreatePartitions(r)) => {
                if r.results
                    .first()
                    .is_some_and(|t| t.error_code == codes::NONE)
                {
                    admin.partitions += 1;
                }
                admin.step = match lifecycle {
                    true => AdminStep::Lifecycle(0),
                    false => AdminStep::LongPollAndDelete,
                };
            }
            (AdminRequest::AlterRetention, Response::IncrementalAlterConfigs(_)) => {
                // Refused or not, its effect is possible from now on (the checker took the
                // value when it was sent).
                admin.step = match delete_records {
                    true => AdminStep::Lifecycle(1),
                    false => AdminStep::LongPollAndDelete,
                };
            }
            (AdminRequest::DeleteRecords { partition, offset }, Response::DeleteRecords(r)) => {
                let answer = (r.topics.first()).and_then(|t| t.partitions.first());
                if let Some(p) = answer.filter(|p| p.error_code == codes::NONE) {
                    if p.low_watermark < offset {
                        let detail = format!("DeleteRecords to {offset} of partition {partition} answered with low watermark {}", p.low_watermark);
                        self.checker.violate(ViolationKind::Protocol, now, detail);
                    }
                    // The promise is the offset asked for (the answer's low watermark may be
                    // the leader's own retention's start, which other replicas need not share).
                    let durable = self.options.durability == Durability::Fsync;
                    self.checker
                        .on_delete_records_acked(now, partition, offset, durable);
                    self.count("admin:delete-records");
                }
                self.admin(client).step = AdminStep::LongPollAndDelete;
            }
            (AdminRequest::Delete, Response::DeleteTopics(_)) => {
                admin.next_cycle();
            }
            (request, response) => {
                let detail = format!("{request:?} answered by {}", response.api_key().name());
                self.protocol_violation(client, detail);
                return;
            }
        }
        for (kind, detail) in violations {
            self.checker.violate(kind, now, detail);
        }
        self.count("admin:answered");
    }
}

/// Whether an answer to the admin client says it went to the wrong node: not the controller,
/// not the partition's leader (or a leader not serving yet).
fn misdirected(response: &Response) -> bool {
    let wrong = |code: i16| {
        matches!(
            code,
            codes::NOT_CONTROLLER
                | codes::NOT_LEADER_OR_FOLLOWER
                | codes::LEADER_NOT_AVAILABLE
                | codes::UNKNOWN_LEADER_EPOCH
                | codes::FENCED_LEADER_EPOCH
                | codes::OFFSET_NOT_AVAILABLE
        )
    };
    match response {
        Response::CreateTopics(r) => r.topics.iter().any(|t| wrong(t.error_code)),
        Response::DeleteTopics(r) => r.responses.iter().any(|t| wrong(t.error_code)),
        Response::CreatePartitions(r) => r.results.iter().any(|t| wrong(t.error_code)),
        Response::Produce(r) => (r.responses.iter())
            .flat_map(|t| &t.partition_responses)
            .any(|p| wrong(p.error_code)),
        Response::Fetch(r) => (r.responses.iter())
            .flat_map(|t| &t.partitions)
            .any(|p| wrong(p.error_code)),
        Response::ListOffsets(r) => (r.topics.iter())
            .flat_map(|t| &t.partitions)
            .any(|p| wrong(p.error_code)),
        Response::DeleteRecords(r) => (r.topics.iter())
            .flat_map(|t| &t.partitions)
            .any(|p| wrong(p.error_code)),
        Response::IncrementalAlterConfigs(r) => r.responses.iter().any(|t| wrong(t.error_code)),
        _ => false,
    }
}

/// What a read_committed client drops: the aborted transactions a fetch's answer lists, by
/// where they begin; a producer's batches are dropped from its first aborted offset to its
/// abort marker (Kafka's consumer does the same).
pub(super) struct AbortedFilter {
    aborted: std::iter::Peekable<std::vec::IntoIter<(i64, i64)>>,
    aborting: BTreeSet<i64>,
}

impl AbortedFilter {
    pub(super) fn new(data: &keel_core::protocol::messages::fetch_response::PartitionData) -> Self {
        let mut aborted: Vec<(i64, i64)> = (data.aborted_transactions.iter())
            .flatten()
            .map(|a| (a.first_offset, a.producer_id))
            .collect();
        aborted.sort_unstable();
        AbortedFilter {
            aborted: aborted.into_iter().peekable(),
            aborting: BTreeSet::new(),
        }
    }

    /// Whether `batch` (the next in the answer) is an aborted transaction's.
    pub(super) fn drops(&mut self, batch: &RecordBatch) -> bool {
        let header = *batch.header();
        while let Some((_, producer_id)) =
            (self.aborted).next_if(|(first, _)| *first <= header.last_offset())
        {
            self.aborting.insert(producer_id);
        }
        if keel_core::producers::txn_marker_of(batch).is_some_and(|m| !m.commit) {
            self.aborting.remove(&header.producer_id);
        }
        header.is_transactional()
            && !header.is_control()
            && self.aborting.contains(&header.producer_id)
    }
}
