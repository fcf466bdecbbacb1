//! The transactional workload: producers with a transactional id that find their
//! coordinator, start (InitProducerId, which fences any earlier incarnation and aborts what
//! it left open), fetch the offsets their last committed transaction recorded, then run
//! transactions: AddPartitionsToTxn, transactional batches to each partition's leader, and
//! (consume-transform-produce) the offset the transaction stands for committed in it
//! (AddOffsetsToTxn, TxnOffsetCommit to their group's coordinator), ended by EndTxn, commit
//! or abort. On top of the cluster's faults they crash mid-transaction and start again with
//! the same transactional id, and the incarnation they replace goes on as a zombie: one more
//! batch, and an EndTxn, with its fenced epoch.
//!
//! Their records are ordinary records of the workload topic to the main checker (acknowledged
//! ones must be in the log, read back by read_uncommitted consumers); read_committed
//! consumers report to the transaction checks (`check.rs`): nothing of an aborted transaction
//! read, committed transactions whole, offsets committed in a transaction visible only if it
//! committed, zombies fenced, and the last stable offset never past the high watermark.

use super::*;
use keel_core::protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use keel_core::protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use keel_core::protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use keel_core::protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, EndTxnRequest, FindCoordinatorRequest,
    InitProducerIdRequest, OffsetFetchRequest, TxnOffsetCommitRequest,
};

/// How long a transaction may stay open before its coordinator aborts it.
const TXN_TIMEOUT_MS: i32 = 10_000;
/// Backoff after a retriable answer (CONCURRENT_TRANSACTIONS, a coordinator loading).
const TXN_RETRY_NS: u64 = 50 * MS;
/// Pause between transactions.
const TXN_PAUSE_NS: u64 = 20 * MS;

/// A transaction request in flight.
#[derive(Debug)]
pub(super) enum TxnCall {
    FindCoordinator {
        group: bool,
    },
    Init,
    FetchOffsets,
    AddPartitions,
    /// The transaction reads (read_committed) one of its partitions before it writes.
    Read {
        partition: i32,
    },
    Produce {
        op: usize,
    },
    AddOffsets,
    CommitOffsets,
    End {
        commit: bool,
    },
    /// A fenced incarnation's batch or EndTxn: must be refused.
    Zombie {
        op: Option<usize>,
        txn: u64,
    },
}

/// Where a transactional producer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Init,
    FetchOffsets,
    Begin,
    AddPartitions,
    Read,
    Produce,
    AddOffsets,
    CommitOffsets,
    End,
}

/// The transaction being run.
#[derive(Debug, Clone)]
struct Open {
    /// Its key in the checker.
    key: u64,
    partitions: Vec<i32>,
    /// Its writes, one batch per partition, sent in turn.
    ops: Vec<usize>,
    next_op: usize,
    commit: bool,
    /// The offset it commits in the transaction (its number), if it does.
    offsets: Option<i64>,
    /// AddPartitionsToTxn succeeded.
    added: bool,
    /// An EndTxn(commit) was sent: the outcome may be a commit even if no answer comes.
    commit_sent: bool,
    /// An error means it can only abort.
    doomed: bool,
}

/// A replaced incarnation that goes on: its id, epoch, and the transaction it had open.
#[derive(Debug, Clone)]
struct Zombie {
    producer_id: i64,
    epoch: i16,
    open: Open,
    sequences: BTreeMap<i32, i32>,
}

pub(super) struct TxnClient {
    pub txn_id: String,
    group: String,
    producer_id: i64,
    epoch: i16,
    pub coordinator: Option<usize>,
    pub group_coordinator: Option<usize>,
    step: Step,
    pub in_flight: bool,
    pub next_at_ns: u64,
    open: Option<Open>,
    sequences: BTreeMap<i32, i32>,
    end_version: i16,
    next_value: u64,
    next_send_seq: u64,
    /// The number of the next transaction (what its committed offset names).
    next_number: i64,
    /// Transactions begun by this client, over all its incarnations.
    begun: u64,
    /// The incarnation this one replaced, waiting to act as a zombie.
    zombie: Option<Zombie>,
    /// Ask for the next epoch with the id it has (KIP-360), after an abortable error.
    bump: bool,
    /// The partitions of the transaction it last aborted after an error: the next one does
    /// the same work again, there.
    redo: Option<Vec<i32>>,
    /// Where its transactions read each partition next (consume-transform-produce's input).
    read_positions: BTreeMap<i32, i64>,
}

impl TxnClient {
    pub(super) fn new(client: usize, end_version: i16) -> TxnClient {
        TxnClient {
            txn_id: format!("sim-txn-{client}"),
            group: format!("sim-txn-group-{client}"),
            producer_id: -1,
            epoch: -1,
            coordinator: None,
            group_coordinator: None,
            step: Step::Init,
            in_flight: false,
            next_at_ns: 0,
            open: None,
            sequences: BTreeMap::new(),
            end_version,
            next_value: 0,
            next_send_seq: 0,
            next_number: 1,
            begun: 0,
            zombie: None,
            bump: false,
            redo: None,
            read_positions: BTreeMap::new(),
        }
    }

    pub(super) fn due_ns(&self) -> u64 {
        self.next_at_ns
    }

    /// Whether it holds nothing open (the quiet phase waits for that).
    pub(super) fn idle(&self) -> bool {
        self.open.is_none() && !self.in_flight
    }
}

fn txn(role: &mut Role) -> &mut TxnClient {
    match role {
        Role::Txn(t) => t,
        _ => unreachable!("a transactional producer"),
    }
}

impl Sim {
    /// The node the client's next request must go to, if it knows.
    pub(super) fn txn_target(&self, client: usize) -> Option<usize> {
        let c = &self.clients[client];
        let Role::Txn(t) = &c.role else {
            return None;
        };
        match t.step {
            Step::Init | Step::AddPartitions | Step::AddOffsets | Step::End => t.coordinator,
            Step::FetchOffsets | Step::CommitOffsets => t.group_coordinator,
            Step::Produce => {
                let open = t.open.as_ref()?;
                let op = *open.ops.get(open.next_op)?;
                c.leaders.get(&self.ops[op].write.partition).copied()
            }
            Step::Read => c.leaders.get(t.open.as_ref()?.partitions.first()?).copied(),
            Step::Begin => None,
        }
    }

    fn txn_send(&mut self, client: usize, version: i16, request: Request, call: TxnCall) {
        let t = txn(&mut self.clients[client].role);
        tracing::debug!(client, id = %t.txn_id, producer_id = t.producer_id, epoch = t.epoch, ?call, "txn request");
        t.in_flight = true;
        self.send_request(client, version, request, PendingKind::Txn(call));
    }

    /// The client's next step, if one is due.
    pub(super) fn txn_act(&mut self, client: usize) {
        let now = self.now_ns;
        let quiet = self.quiet;
        let here = self.clients[client].node;
        let single = self.machines.len() == 1;
        let t = txn(&mut self.clients[client].role);
        if t.in_flight || t.next_at_ns > now {
            return;
        }
        let needs_group = matches!(t.step, Step::FetchOffsets | Step::CommitOffsets);
        let needs_txn = matches!(
            t.step,
            Step::Init | Step::AddPartitions | Step::AddOffsets | Step::End
        );
        if (needs_txn && t.coordinator.is_none()) || (needs_group && t.group_coordinator.is_none())
        {
            let key = if needs_group {
                t.group.clone()
            } else {
                t.txn_id.clone()
            };
            let request = Request::FindCoordinator(FindCoordinatorRequest {
                key: key.clone(),
                key_type: i8::from(!needs_group),
                coordinator_keys: vec![key],
                ..Default::default()
            });
            let version = if self.rng.random_bool(0.5) { 3 } else { 4 };
            let call = TxnCall::FindCoordinator { group: needs_group };
            self.txn_send(client, version, request, call);
            return;
        }
        if !single {
            // Not yet where the step must go: the client moves first (`move_target`).
            if self.txn_target(client).is_some_and(|n| n != here) {
                return;
            }
        }
        let t = txn(&mut self.clients[client].role);
        if !quiet && t.open.is_some() && t.step != Step::Init {
            // A crash mid-transaction: a new incarnation with the same id starts over.
            if self.rng.random_bool(self.plan.txn.crash_probability) {
                return self.txn_crash(client);
            }
        }
        let t = txn(&mut self.clients[client].role);
        match t.step {
            Step::Init => {
                let (producer_id, epoch) = match t.bump {
                    true => (t.producer_id, t.epoch),
                    false => (-1, -1),
                };
                let request = Request::InitProducerId(InitProducerIdRequest {
                    transactional_id: Some(t.txn_id.clone()),
                    transaction_timeout_ms: TXN_TIMEOUT_MS,
                    producer_id,
                    producer_epoch: epoch,
                    ..Default::default()
                });
                self.txn_send(client, 4, request, TxnCall::Init);
            }
            Step::FetchOffsets => {
                let request = Request::OffsetFetch(OffsetFetchRequest {
                    group_id: t.group.clone(),
                    topics: Some(vec![OffsetFetchRequestTopic {
                        name: TOPIC.into(),
                        partition_indexes: vec![0],
                        ..Default::default()
                    }]),
                    require_stable: true,
                    ..Default::default()
                });
                self.txn_send(client, 7, request, TxnCall::FetchOffsets);
            }
            Step::Begin => {
                if quiet {
                    // No new transaction once the faults stop: it sleeps for good.
                    t.next_at_ns = u64::MAX;
                    return;
                }
                self.txn_begin(client);
            }
            Step::AddPartitions => {
                let open = t.open.as_ref().expect("a transaction is open");
                let request = Request::AddPartitionsToTxn(AddPartitionsToTxnRequest {
                    v3_and_below_transactional_id: t.txn_id.clone(),
                    v3_and_below_producer_id: t.producer_id,
                    v3_and_below_producer_epoch: t.epoch,
                    v3_and_below_topics: vec![AddPartitionsToTxnTopic {
                        name: TOPIC.into(),
                        partitions: open.partitions.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                let version = if self.rng.random_bool(0.5) { 1 } else { 3 };
                self.txn_send(client, version, request, TxnCall::AddPartitions);
            }
            Step::Read => {
                let open = t.open.as_ref().expect("a transaction is open");
                let partition = open.partitions[0];
                let position = t.read_positions.get(&partition).copied().unwrap_or(0);
                let request = Request::Fetch(FetchRequest {
                    replica_id: -1,
                    isolation_level: 1,
                    max_wait_ms: 0,
                    min_bytes: 1,
                    max_bytes: FETCH_MAX_BYTES,
                    session_epoch: -1,
                    topics: vec![FetchTopic {
                        topic: TOPIC.into(),
                        partitions: vec![FetchPartition {
                            partition,
                            fetch_offset: position,
                            partition_max_bytes: FETCH_PARTITION_MAX_BYTES,
                            current_leader_epoch: -1,
                            log_start_offset: -1,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                let version = self.plan.fetch_version.max(4);
                self.txn_send(client, version, request, TxnCall::Read { partition });
            }
            Step::Produce => {
                let open = t.open.as_ref().expect("a transaction is open");
                let op = open.ops[open.next_op];
                let partition = self.ops[op].write.partition;
                let batch = self.ops[op].batch.clone();
                let mut request = produce_request(TOPIC, partition, batch, -1);
                if let Request::Produce(p) = &mut request {
                    p.transactional_id = Some(t.txn_id.clone());
                }
                let version = self.plan.produce_version.max(3);
                // The connection stalls (a retransmission storm, a proxy): the batch, and
                // whatever follows it on the connection, arrives after the producer gave up
                // on it and moved on. Only producers of EndTxn v5 and later meet it: with
                // older ones a request that late can land in their next transaction (Kafka's
                // transactions before KIP-890 part 2, which Keel keeps for them).
                let stall = !quiet
                    && t.end_version >= 5
                    && self.rng.random_bool(self.plan.txn.stall_probability);
                if stall {
                    self.count("txn:stall");
                    let extra =
                        (self.plan.request_timeout_ms + self.rng.random_range(0..=2_000)) * MS;
                    if let Some(id) = self.clients[client].conn.as_ref().map(|c| c.id) {
                        if let Some(link) = self.links.get_mut(&id) {
                            link.to_node_at_ns = link.to_node_at_ns.max(self.now_ns) + extra;
                        }
                    }
                }
                self.txn_send(client, version, request, TxnCall::Produce { op });
            }
            Step::AddOffsets => {
                let request = Request::AddOffsetsToTxn(AddOffsetsToTxnRequest {
                    transactional_id: t.txn_id.clone(),
                    producer_id: t.producer_id,
                    producer_epoch: t.epoch,
                    group_id: t.group.clone(),
                    ..Default::default()
                });
                self.txn_send(client, 3, request, TxnCall::AddOffsets);
            }
            Step::CommitOffsets => {
                let open = t.open.as_ref().expect("a transaction is open");
                let offset = open.offsets.expect("it commits offsets");
                let request = Request::TxnOffsetCommit(TxnOffsetCommitRequest {
                    transactional_id: t.txn_id.clone(),
                    group_id: t.group.clone(),
                    producer_id: t.producer_id,
                    producer_epoch: t.epoch,
                    generation_id: -1,
                    topics: vec![TxnOffsetCommitRequestTopic {
                        name: TOPIC.into(),
                        partitions: vec![TxnOffsetCommitRequestPartition {
                            partition_index: 0,
                            committed_offset: offset,
                            committed_leader_epoch: -1,
                            committed_metadata: Some(String::new()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                self.txn_send(client, 3, request, TxnCall::CommitOffsets);
            }
            Step::End => {
                let open = t.open.as_mut().expect("a transaction is open");
                let commit = open.commit && !open.doomed;
                open.commit_sent |= commit;
                let request = Request::EndTxn(EndTxnRequest {
                    transactional_id: t.txn_id.clone(),
                    producer_id: t.producer_id,
                    producer_epoch: t.epoch,
                    committed: commit,
                    ..Default::default()
                });
                let version = t.end_version;
                let coordinator = t.coordinator;
                self.txn_send(client, version, request, TxnCall::End { commit });
                // The coordinator fails over mid-commit: its node crashes while the
                // markers may be on their way (a cluster's other nodes take over).
                let p = self.plan.txn.commit_crash_probability;
                if let Some(node) = coordinator.filter(|_| commit && !quiet && !single && p > 0.0) {
                    if self.rng.random_bool(p) {
                        let at = self.now_ns + self.rng.random_range(0..=10) * MS;
                        // Half the time the producer goes down with it (one rack): nobody
                        // asks for the commit again, and the next incarnation's start ends
                        // the transaction as the log says it stands.
                        let key = txn(&mut self.clients[client].role)
                            .open
                            .as_ref()
                            .map(|o| o.key);
                        let producer = key
                            .filter(|_| self.rng.random_bool(0.5))
                            .map(|k| (client, k));
                        self.schedule(at, Event::CrashNode { node, producer });
                    }
                }
            }
        }
    }

    /// Starts the next transaction: partitions (on a cluster, some of those one node leads,
    /// so that its batches go to one place), a batch of new values for each.
    fn txn_begin(&mut self, client: usize) {
        let redo = txn(&mut self.clients[client].role).redo.take();
        let c = &self.clients[client];
        let candidates: Vec<i32> = if let Some(redo) = redo {
            // The work of the transaction it aborted, again.
            redo
        } else if self.machines.len() == 1 {
            (0..self.plan.partitions).collect()
        } else {
            let nodes: BTreeSet<usize> = c.leaders.values().copied().collect();
            let Some(node) = nodes
                .iter()
                .nth(self.rng.random_range(0..nodes.len().max(1)))
            else {
                self.refresh_metadata(client);
                txn(&mut self.clients[client].role).next_at_ns = self.now_ns + TXN_RETRY_NS;
                return;
            };
            let node = *node;
            (c.leaders.iter())
                .filter(|(_, n)| **n == node)
                .map(|(p, _)| *p)
                .collect()
        };
        let wanted = self
            .rng
            .random_range(1..=self.plan.txn.partitions_per_txn_max.max(1));
        let mut partitions = candidates;
        while partitions.len() > wanted.max(1) && self.rng.random_bool(0.9) {
            let at = self.rng.random_range(0..partitions.len());
            partitions.remove(at);
        }
        let commit = !self.rng.random_bool(self.plan.txn.abort_probability);
        let with_offsets = self.rng.random_bool(self.plan.txn.offsets_probability);
        let timestamp = ((EPOCH_NS + self.now_ns) / MS) as i64;
        let mut ops = Vec::new();
        let t = txn(&mut self.clients[client].role);
        t.begun += 1;
        let key = ((client as u64) << 32) | t.begun;
        let number = t.next_number;
        t.next_number += 1;
        let (producer_id, epoch) = (t.producer_id, t.epoch);
        let mut all_values = Vec::new();
        let mut writes = Vec::new();
        for partition in &partitions {
            let count = self.rng.random_range(1..=self.plan.records_per_batch_max);
            let t = txn(&mut self.clients[client].role);
            let values: Vec<u64> = (0..count)
                .map(|_| {
                    t.next_value += 1;
                    ((client as u64) << 40) | t.next_value
                })
                .collect();
            let sequence = t.sequences.entry(*partition).or_insert(0);
            let options = BatchOptions {
                base_timestamp: timestamp,
                producer_id,
                producer_epoch: epoch,
                base_sequence: *sequence,
                transactional: true,
                ..Default::default()
            };
            *sequence = keel_core::producers::last_sequence(*sequence, count as i32 - 1)
                .wrapping_add(1)
                .max(0);
            let send_seq = t.next_send_seq;
            t.next_send_seq += 1;
            all_values.extend(values.iter().copied());
            writes.push((
                Write {
                    producer: client,
                    partition: *partition,
                    send_seq,
                    values,
                    timestamp_ms: timestamp,
                },
                options,
            ));
        }
        for (write, options) in writes {
            self.checker.on_send(self.now_ns, &write);
            let padding = self.rng.random_range(0..=self.plan.value_padding_bytes_max);
            ops.push(self.new_op(write, padding, &options, 0));
        }
        self.checker
            .on_txn_begin(key, &all_values, with_offsets.then_some(number));
        self.count("txn:begin");
        let t = txn(&mut self.clients[client].role);
        t.open = Some(Open {
            key,
            partitions,
            ops,
            next_op: 0,
            commit,
            offsets: with_offsets.then_some(number),
            added: false,
            commit_sent: false,
            doomed: false,
        });
        t.step = Step::AddPartitions;
    }

    /// The producer crashes while its EndTxn(commit) of transaction `key` is out (if it is).
    pub(super) fn txn_crash_in_commit(&mut self, client: usize, key: u64) {
        let t = txn(&mut self.clients[client].role);
        let ending = t.step == Step::End && t.open.as_ref().is_some_and(|o| o.key == key);
        if ending {
            self.txn_crash(client);
        }
    }

    /// A crash: the client forgets everything and starts again with the same transactional
    /// id; the incarnation it was may go on as a zombie.
    fn txn_crash(&mut self, client: usize) {
        self.count("txn:crash");
        let zombie_probability = self.plan.txn.zombie_probability;
        let zombie = !self.quiet && self.rng.random_bool(zombie_probability);
        let t = txn(&mut self.clients[client].role);
        tracing::debug!(client, id = %t.txn_id, "transactional producer crashes");
        let open = t.open.take();
        if let Some(open) = &open {
            // Unless it asked to commit, nobody will: the new incarnation's start aborts it.
            let key = open.key;
            let commit_sent = open.commit_sent;
            if zombie && open.added && t.producer_id >= 0 {
                t.zombie = Some(Zombie {
                    producer_id: t.producer_id,
                    epoch: t.epoch,
                    open: open.clone(),
                    sequences: t.sequences.clone(),
                });
            }
            self.checker.on_txn_abandoned(self.now_ns, key, commit_sent);
        }
        let t = txn(&mut self.clients[client].role);
        t.producer_id = -1;
        t.epoch = -1;
        t.sequences.clear();
        t.step = Step::Init;
        t.bump = false;
        t.coordinator = None;
        t.group_coordinator = None;
        t.next_at_ns = self.now_ns + self.rng.random_range(0..=200) * MS;
        self.client_close(client);
    }

    /// The zombie acts once its successor has started: a batch to a partition of its old
    /// transaction (whose abort marker fenced its epoch), then an EndTxn(commit).
    fn txn_zombie(&mut self, client: usize) {
        let single = self.machines.len() == 1;
        let here = self.clients[client].node;
        let t = txn(&mut self.clients[client].role);
        let Some(z) = t.zombie.take() else {
            return;
        };
        self.count("txn:zombie");
        let partition = z.open.partitions[0];
        let led_here = single || self.clients[client].leaders.get(&partition) == Some(&here);
        if led_here {
            let t = txn(&mut self.clients[client].role);
            t.next_value += 1;
            let value = ((client as u64) << 40) | t.next_value;
            let sequence = z.sequences.get(&partition).copied().unwrap_or(0);
            let options = BatchOptions {
                base_timestamp: ((EPOCH_NS + self.now_ns) / MS) as i64,
                producer_id: z.producer_id,
                producer_epoch: z.epoch,
                base_sequence: sequence,
                transactional: true,
                ..Default::default()
            };
            let send_seq = t.next_send_seq;
            t.next_send_seq += 1;
            let write = Write {
                producer: client,
                partition,
                send_seq,
                values: vec![value],
                timestamp_ms: options.base_timestamp,
            };
            self.checker.on_send(self.now_ns, &write);
            self.checker.on_txn_zombie_value(z.open.key, value);
            let op = self.new_op(write, 0, &options, 0);
            let mut request = produce_request(TOPIC, partition, self.ops[op].batch.clone(), -1);
            let id = txn(&mut self.clients[client].role).txn_id.clone();
            if let Request::Produce(p) = &mut request {
                p.transactional_id = Some(id);
            }
            let version = self.plan.produce_version.max(3);
            let call = TxnCall::Zombie {
                op: Some(op),
                txn: z.open.key,
            };
            self.send_request(client, version, request, PendingKind::Txn(call));
        }
        let t = txn(&mut self.clients[client].role);
        if t.coordinator == Some(here) || single {
            let request = Request::EndTxn(EndTxnRequest {
                transactional_id: t.txn_id.clone(),
                producer_id: z.producer_id,
                producer_epoch: z.epoch,
                committed: true,
                ..Default::default()
            });
            let version = t.end_version;
            let call = TxnCall::Zombie {
                op: None,
                txn: z.open.key,
            };
            self.send_request(client, version, request, PendingKind::Txn(call));
        }
        let t = txn(&mut self.clients[client].role);
        if t.group_coordinator == Some(here) || single {
            // Its offsets too, whether or not its transaction had added them: a stray commit
            // must not open a transaction in the offsets topic that nobody will end.
            let request = Request::TxnOffsetCommit(TxnOffsetCommitRequest {
                transactional_id: t.txn_id.clone(),
                group_id: t.group.clone(),
                producer_id: z.producer_id,
                producer_epoch: z.epoch,
                generation_id: -1,
                topics: vec![TxnOffsetCommitRequestTopic {
                    name: TOPIC.into(),
                    partitions: vec![TxnOffsetCommitRequestPartition {
                        partition_index: 0,
                        committed_offset: z.open.offsets.unwrap_or(0),
                        committed_leader_epoch: -1,
                        committed_metadata: Some(String::new()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            });
            let call = TxnCall::Zombie {
                op: None,
                txn: z.open.key,
            };
            self.send_request(client, 3, request, PendingKind::Txn(call));
        }
    }

    /// The connection went with the request: the step is tried again (a produce with the
    /// same batch and sequence, an EndTxn as a retry).
    pub(super) fn txn_conn_lost(&mut self, client: usize, call: TxnCall) {
        match call {
            TxnCall::Zombie { .. } => return,
            TxnCall::Produce { op } => {
                self.ops[op].outcome = Outcome::Unknown;
                self.ops[op].attempted_unknown = true;
                if self.rng.random_bool(0.5) {
                    // Its delivery timed out: the transaction is given up (aborted), as
                    // librdkafka does; the batch may still be on its way.
                    let t = txn(&mut self.clients[client].role);
                    if let Some(open) = t.open.as_mut() {
                        open.doomed = true;
                        t.redo = Some(open.partitions.clone());
                    }
                    t.step = Step::End;
                }
            }
            TxnCall::FindCoordinator { .. } | TxnCall::Read { .. } => {}
            TxnCall::Init | TxnCall::AddPartitions | TxnCall::AddOffsets | TxnCall::End { .. } => {
                txn(&mut self.clients[client].role).coordinator = None
            }
            TxnCall::FetchOffsets | TxnCall::CommitOffsets => {
                txn(&mut self.clients[client].role).group_coordinator = None
            }
        }
        let t = txn(&mut self.clients[client].role);
        t.in_flight = false;
        t.next_at_ns = self.now_ns + TXN_RETRY_NS;
    }

    /// An error that leaves the transaction only an abort (or the incarnation only a restart).
    fn txn_fatal(&mut self, client: usize, code: i16) {
        let t = txn(&mut self.clients[client].role);
        if matches!(
            code,
            codes::PRODUCER_FENCED
                | codes::INVALID_PRODUCER_EPOCH
                | codes::INVALID_PRODUCER_ID_MAPPING
        ) || t.step == Step::Init
            || t.open
                .as_ref()
                .is_none_or(|o| o.doomed && t.step == Step::End)
        {
            // Fenced (or its abort failed): this incarnation is done.
            let open = t.open.take();
            self.count("txn:fenced");
            if let Some(open) = open {
                self.checker
                    .on_txn_abandoned(self.now_ns, open.key, open.commit_sent);
            }
            let t = txn(&mut self.clients[client].role);
            t.producer_id = -1;
            t.epoch = -1;
            t.sequences.clear();
            t.bump = false;
            t.step = Step::Init;
            t.next_at_ns = self.now_ns + TXN_RETRY_NS;
            return;
        }
        if let Some(open) = t.open.as_mut() {
            open.doomed = true;
        }
        t.step = Step::End;
        self.count("txn:abortable");
        let t = txn(&mut self.clients[client].role);
        t.next_at_ns = self.now_ns + TXN_RETRY_NS;
    }

    pub(super) fn on_txn_response(&mut self, client: usize, call: TxnCall, response: Response) {
        let now = self.now_ns;
        tracing::debug!(client, ?call, ?response, "txn answer");
        if !matches!(call, TxnCall::Zombie { .. }) {
            txn(&mut self.clients[client].role).in_flight = false;
        }
        let retriable = |code: i16| {
            matches!(
                code,
                codes::COORDINATOR_LOAD_IN_PROGRESS
                    | codes::CONCURRENT_TRANSACTIONS
                    | codes::REQUEST_TIMED_OUT
                    | codes::UNKNOWN_SERVER_ERROR
            )
        };
        let moved = |code: i16| {
            matches!(
                code,
                codes::NOT_COORDINATOR | codes::COORDINATOR_NOT_AVAILABLE
            )
        };
        match (call, response) {
            (TxnCall::FindCoordinator { group }, Response::FindCoordinator(r)) => {
                let (code, node_id) = match r.coordinators.first() {
                    Some(c) => (c.error_code, c.node_id),
                    None => (r.error_code, r.node_id),
                };
                let nodes = self.machines.len() as i32;
                let t = txn(&mut self.clients[client].role);
                if code == codes::NONE && (1..=nodes).contains(&node_id) {
                    let node = Some(node_id as usize - 1);
                    match group {
                        true => t.group_coordinator = node,
                        false => t.coordinator = node,
                    }
                } else {
                    t.next_at_ns = now + TXN_RETRY_NS;
                }
            }
            (TxnCall::Init, Response::InitProducerId(r)) => {
                let t = txn(&mut self.clients[client].role);
                if r.error_code == codes::NONE && r.producer_id >= 0 {
                    t.producer_id = r.producer_id;
                    t.epoch = r.producer_epoch;
                    t.sequences.clear();
                    t.bump = false;
                    t.step = Step::FetchOffsets;
                    let zombie = t.zombie.is_some();
                    self.count("txn:init");
                    self.checker.on_txn_init(now, client);
                    if zombie {
                        self.txn_zombie(client);
                    }
                } else if moved(r.error_code) {
                    t.coordinator = None;
                    t.next_at_ns = now + TXN_RETRY_NS;
                } else if retriable(r.error_code) {
                    t.next_at_ns = now + TXN_RETRY_NS;
                } else {
                    // Fenced with the id it had (a timeout bumped it past): start afresh.
                    t.bump = false;
                    t.producer_id = -1;
                    t.epoch = -1;
                    t.next_at_ns = now + TXN_RETRY_NS;
                }
            }
            (TxnCall::FetchOffsets, Response::OffsetFetch(r)) => {
                let partition = (r.topics.iter())
                    .flat_map(|t| &t.partitions)
                    .find(|p| p.partition_index == 0);
                let code = if r.error_code != codes::NONE {
                    r.error_code
                } else {
                    partition.map_or(codes::NONE, |p| p.error_code)
                };
                let t = txn(&mut self.clients[client].role);
                if code == codes::NONE {
                    let committed = partition.map_or(-1, |p| p.committed_offset);
                    t.next_number = t.next_number.max(committed + 1);
                    t.step = Step::Begin;
                    let group = t.group.clone();
                    self.checker
                        .on_txn_offsets_fetched(now, client, &group, committed);
                } else if moved(code) || code == codes::COORDINATOR_LOAD_IN_PROGRESS {
                    t.group_coordinator = None;
                    t.next_at_ns = now + TXN_RETRY_NS;
                } else {
                    // UNSTABLE_OFFSET_COMMIT: a transaction with offsets is still open.
                    t.next_at_ns = now + TXN_RETRY_NS;
                }
            }
            (TxnCall::AddPartitions, Response::AddPartitionsToTxn(r)) => {
                let codes_seen: Vec<i16> = (r.results_by_topic_v3_and_below.iter())
                    .flat_map(|t| &t.results_by_partition)
                    .map(|p| p.partition_error_code)
                    .collect();
                let code = codes_seen
                    .iter()
                    .copied()
                    .find(|c| *c != codes::NONE && *c != codes::OPERATION_NOT_ATTEMPTED)
                    .unwrap_or(codes::NONE);
                let t = txn(&mut self.clients[client].role);
                if code == codes::NONE {
                    let open = t.open.as_mut().expect("a transaction is open");
                    open.added = true;
                    t.step = Step::Read;
                    let think = self.plan.txn.think_ms_max;
                    if think > 0 {
                        // What it does before it writes (reading, transforming).
                        let pause = self.rng.random_range(0..=think) * MS;
                        txn(&mut self.clients[client].role).next_at_ns = now + pause;
                    }
                } else if moved(code) {
                    t.coordinator = None;
                    t.next_at_ns = now + TXN_RETRY_NS;
                } else if retriable(code) {
                    t.next_at_ns = now + TXN_RETRY_NS;
                } else {
                    self.txn_fatal(client, code);
                }
            }
            (TxnCall::Read { partition }, Response::Fetch(f)) => {
                let data = (f.responses.iter())
                    .filter(|t| t.topic == TOPIC)
                    .flat_map(|t| &t.partitions)
                    .find(|p| p.partition_index == partition);
                let t = txn(&mut self.clients[client].role);
                let key = t.open.as_ref().map(|o| o.key);
                let position = t.read_positions.get(&partition).copied().unwrap_or(0);
                match data {
                    Some(d) if d.error_code == codes::NONE => {
                        let (values, next) = Self::committed_values(d, position);
                        t.read_positions.insert(partition, next);
                        if let Some(key) = key {
                            self.checker.on_txn_read(now, key, partition, &values);
                        }
                        self.count("txn:read");
                    }
                    Some(d) if d.error_code == codes::OFFSET_OUT_OF_RANGE => {
                        t.read_positions
                            .insert(partition, d.log_start_offset.max(0));
                    }
                    // Not read this time (a leader moved, a partition offline): it writes
                    // all the same, as an application that found nothing new would.
                    _ => {}
                }
                let t = txn(&mut self.clients[client].role);
                if t.step == Step::Read {
                    t.step = Step::Produce;
                }
            }
            (TxnCall::Produce { op }, Response::Produce(p)) => {
                let partition = self.ops[op].write.partition;
                let Some(answer) = (p.responses.iter())
                    .filter(|t| t.name == TOPIC)
                    .flat_map(|t| &t.partition_responses)
                    .find(|r| r.index == partition)
                else {
                    self.protocol_violation(
                        client,
                        "a produce response without the partition".into(),
                    );
                    return;
                };
                let code = answer.error_code;
                if code == codes::NONE {
                    self.ops[op].outcome = Outcome::Ok;
                    let base_offset = answer.base_offset;
                    self.check_replicated(op, base_offset);
                    let write = self.ops[op].write.clone();
                    self.checker.on_ack(now, &write, base_offset);
                    self.count("txn:produce:ok");
                    let with_offsets;
                    {
                        let t = txn(&mut self.clients[client].role);
                        let open = t.open.as_mut().expect("a transaction is open");
                        open.next_op += 1;
                        with_offsets = open.offsets.is_some();
                        if open.next_op == open.ops.len() {
                            t.step = if with_offsets {
                                Step::AddOffsets
                            } else {
                                Step::End
                            };
                        }
                    }
                    return;
                }
                let leadership_moved = matches!(
                    code,
                    codes::NOT_LEADER_OR_FOLLOWER
                        | codes::LEADER_NOT_AVAILABLE
                        | codes::FENCED_LEADER_EPOCH
                        | codes::UNKNOWN_LEADER_EPOCH
                        | codes::KAFKA_STORAGE_ERROR
                        | codes::REQUEST_TIMED_OUT
                        | codes::NOT_ENOUGH_REPLICAS
                );
                if leadership_moved {
                    // It may be in a log a new leader keeps: sent again, same sequence.
                    self.ops[op].outcome = Outcome::Unknown;
                    self.ops[op].attempted_unknown = true;
                    self.refresh_metadata(client);
                    txn(&mut self.clients[client].role).next_at_ns = now + TXN_RETRY_NS;
                    return;
                }
                if self.ops[op].attempted_unknown {
                    self.ops[op].outcome = Outcome::Unknown;
                } else {
                    self.ops[op].outcome = Outcome::Fail;
                    let write = self.ops[op].write.clone();
                    self.checker.on_fail(now, &write);
                }
                self.count("txn:produce:refused");
                self.txn_fatal(client, code);
            }
            (TxnCall::AddOffsets, Response::AddOffsetsToTxn(r)) => {
                let t = txn(&mut self.clients[client].role);
                if r.error_code == codes::NONE {
                    t.step = Step::CommitOffsets;
                } else if moved(r.error_code) {
                    t.coordinator = None;
                    t.next_at_ns = now + TXN_RETRY_NS;
                } else if retriable(r.error_code) {
                    t.next_at_ns = now + TXN_RETRY_NS;
                } else {
                    self.txn_fatal(client, r.error_code);
                }
            }
            (TxnCall::CommitOffsets, Response::TxnOffsetCommit(r)) => {
                let code = (r.topics.iter())
                    .flat_map(|t| &t.partitions)
                    .map(|p| p.error_code)
                    .find(|c| *c != codes::NONE)
                    .unwrap_or(codes::NONE);
                let t = txn(&mut self.clients[client].role);
                if code == codes::NONE {
                    t.step = Step::End;
                } else if moved(code) || code == codes::COORDINATOR_LOAD_IN_PROGRESS {
                    t.group_coordinator = None;
                    t.next_at_ns = now + TXN_RETRY_NS;
                } else if retriable(code) || code == codes::UNKNOWN_TOPIC_OR_PARTITION {
                    t.next_at_ns = now + TXN_RETRY_NS;
                } else {
                    self.txn_fatal(client, code);
                }
            }
            (TxnCall::End { commit }, Response::EndTxn(r)) => {
                let t = txn(&mut self.clients[client].role);
                if r.error_code == codes::NONE {
                    let open = t.open.take().expect("a transaction is open");
                    if r.producer_id >= 0 && t.end_version >= 5 {
                        // KIP-890: the coordinator bumped the epoch; sequences start over.
                        if (r.producer_id, r.producer_epoch) != (t.producer_id, t.epoch) {
                            t.sequences.clear();
                        }
                        t.producer_id = r.producer_id;
                        t.epoch = r.producer_epoch;
                    }
                    if open.doomed && t.end_version < 5 {
                        // After an abortable error the sequences may have gaps: a new epoch
                        // (KIP-360). With EndTxn v5 the abort bumped it already.
                        t.bump = true;
                        t.step = Step::Init;
                    } else {
                        t.step = Step::Begin;
                    }
                    t.next_at_ns = now + TXN_PAUSE_NS;
                    self.count(if commit { "txn:commit" } else { "txn:abort" });
                    self.checker.on_txn_end(now, open.key, commit);
                } else if moved(r.error_code) {
                    t.coordinator = None;
                    t.next_at_ns = now + TXN_RETRY_NS;
                } else if retriable(r.error_code) {
                    t.next_at_ns = now + TXN_RETRY_NS;
                } else {
                    self.txn_fatal(client, r.error_code);
                }
            }
            (TxnCall::Zombie { op, txn: key }, response) => {
                let what = match &response {
                    Response::Produce(_) => "a batch",
                    Response::TxnOffsetCommit(_) => "TxnOffsetCommit",
                    _ => "EndTxn(commit)",
                };
                let accepted = match (&response, op) {
                    (Response::Produce(p), Some(op)) => {
                        let code = (p.responses.iter())
                            .flat_map(|t| &t.partition_responses)
                            .map(|r| r.error_code)
                            .next()
                            .unwrap_or(codes::NONE);
                        if code == codes::NONE {
                            self.ops[op].outcome = Outcome::Unknown;
                        } else {
                            self.ops[op].outcome = Outcome::Fail;
                            let write = self.ops[op].write.clone();
                            self.checker.on_fail(now, &write);
                        }
                        code == codes::NONE
                    }
                    (Response::EndTxn(r), None) => r.error_code == codes::NONE,
                    (Response::TxnOffsetCommit(r), None) => (r.topics.iter())
                        .flat_map(|t| &t.partitions)
                        .any(|p| p.error_code == codes::NONE),
                    _ => false,
                };
                self.checker.on_txn_zombie_answer(now, key, what, accepted);
            }
            (call, response) => self.protocol_violation(
                client,
                format!("{call:?} answered by {}", response.api_key().name()),
            ),
        }
    }
}
