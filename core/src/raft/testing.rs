//! The test cluster behind Raft's transcript tests (toydb's style): each file in
//! `core/src/raft/testdata/` is a script of `> command`
//! lines, each followed by what the cluster printed; `sim/tests/raft.rs` runs them. Commands: `cluster nodes=N
//! [manual-sync] [commit-unsynced] [seed=S]`, `tick MS` (time passes, stopping at each
//! deadline; messages wait), `run MS` (time passes and messages arrive at once), `deliver`
//! (what is in flight now), `stabilize` (until nothing is in flight), `drop`, `propose nN
//! PAYLOAD`, `partition nN`, `cut nA nB` (messages from nA to nB are lost), `heal`, `crash nN`, `restart nN`, `sync nN` (with
//! manual-sync), `transfer nN nM`, `status`. `UPDATE_TRANSCRIPTS=1 cargo test -p
//! keel-sim --test raft` writes the output anew (read the diff before committing it). The
//! cluster checks Raft's promises after every command: one leader per epoch, committed
//! prefixes that agree, high watermarks that never go back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use super::*;
use bytes::Bytes;

const ELECTION_TIMEOUT_MS: u64 = 100;
const FETCH_WAIT_MS: u64 = 40;
const FETCH_REFRESH_MS: u64 = 1_000;

/// One node of the test cluster: the engine (none while crashed) and a host: a log in
/// memory, and what is durable of it and of the vote.
pub(crate) struct Host {
    pub(crate) raft: Option<Raft>,
    pub(crate) log: Vec<Entry>,
    /// Offsets below this survive a crash.
    pub(crate) durable_end: Offset,
    pub(crate) durable_vote: Persisted,
    /// With manual syncs: a vote and a log sync asked for and not yet done.
    pub(crate) pending_vote: Option<Persisted>,
    pub(crate) pending_syncs: Vec<(Offset, u64, usize)>,
    /// Every truncation's offset, in order: a sync issued before one makes nothing at or past
    /// it durable (what it wrote there was cut, and what is there now came later).
    pub(crate) truncations: Vec<Offset>,
    pub(crate) high_watermark: Offset,
}

pub(crate) struct Cluster {
    pub(crate) now_ms: u64,
    pub(crate) hosts: BTreeMap<NodeId, Host>,
    pub(crate) queue: VecDeque<(NodeId, NodeId, Message)>,
    /// Links that drop everything: (from, to).
    pub(crate) cut: BTreeSet<(NodeId, NodeId)>,
    /// The host's view of its peers, as a node's heartbeats would give it: when `observer`
    /// last heard from `peer` (every link that carries messages carries heartbeats too), by
    /// (observer, peer); the peers an observer has reported down; links that lost a message
    /// since (from, to), which the next message across shows as a gap.
    pub(crate) heard: BTreeMap<(NodeId, NodeId), u64>,
    pub(crate) down: BTreeSet<(NodeId, NodeId)>,
    pub(crate) lossy: BTreeSet<(NodeId, NodeId)>,
    pub(crate) manual_sync: bool,
    pub(crate) commit_unsynced: bool,
    /// Whether a new leader appends an entry of its epoch at once (Kafka's control batch);
    /// without, older entries commit when every voter holds them, or with the next proposal.
    pub(crate) markers: bool,
    pub(crate) seed: u64,
    pub(crate) printed: Vec<String>,
    /// Every leader seen, by epoch: at most one.
    pub(crate) leaders: BTreeMap<Epoch, NodeId>,
    /// The longest committed prefix seen: (offset, epoch) of each committed entry.
    pub(crate) committed: Vec<(Offset, Epoch)>,
}

fn config(id: NodeId, voters: &[NodeId], commit_unsynced: bool, seed: u64) -> RaftConfig {
    RaftConfig {
        id,
        voters: voters.to_vec(),
        election_timeout_ms: ELECTION_TIMEOUT_MS,
        fetch_retry_ms: 2 * FETCH_WAIT_MS,
        fetch_refresh_ms: FETCH_REFRESH_MS,
        fetch_max_bytes: 64,
        commit_unsynced,
        in_sync_lag_ms: 10_000,
        seed,
        planted: None,
    }
}

fn shape(log: &[Entry], synced: Offset) -> LogShape {
    let mut shape = LogShape::default();
    for e in log {
        shape.append(e.epoch, e.base_offset, e.last_offset);
    }
    shape.synced = synced.min(shape.end);
    shape
}

fn describe_entries(entries: &[Entry]) -> String {
    let parts: Vec<String> = entries
        .iter()
        .map(|e| {
            if e.base_offset == e.last_offset {
                format!("{}@{}", e.epoch, e.base_offset)
            } else {
                format!("{}@{}..{}", e.epoch, e.base_offset, e.last_offset)
            }
        })
        .collect();
    format!("[{}]", parts.join(" "))
}

fn describe(message: &Message) -> String {
    match message {
        Message::PreVote {
            epoch,
            last_epoch,
            end_offset,
        } => format!("PreVote epoch={epoch} log={last_epoch}@{end_offset}"),
        Message::PreVoteResponse {
            epoch,
            granted,
            current_epoch,
            leader,
        } => {
            let leader = leader.map_or("none".into(), |l| format!("n{l}"));
            format!("PreVoteResponse epoch={epoch} granted={granted} (epoch={current_epoch} leader={leader})")
        }
        Message::Vote {
            epoch,
            last_epoch,
            end_offset,
        } => format!("Vote epoch={epoch} log={last_epoch}@{end_offset}"),
        Message::VoteResponse { epoch, granted } => {
            format!("VoteResponse epoch={epoch} granted={granted}")
        }
        Message::BeginEpoch { epoch } => format!("BeginEpoch epoch={epoch}"),
        Message::Fetch {
            epoch,
            fetch_offset,
            last_fetched_epoch,
            synced_offset,
            high_watermark,
        } => format!(
            "Fetch epoch={epoch} offset={fetch_offset} last_epoch={last_fetched_epoch} synced={synced_offset} hw={high_watermark}"
        ),
        Message::FetchResponse {
            epoch,
            high_watermark,
            reply,
            ..
        } => {
            let reply = match reply {
                FetchReply::Entries(entries) => describe_entries(entries),
                FetchReply::Diverging { epoch, end_offset } => {
                    format!("diverging={epoch}@{end_offset}")
                }
                FetchReply::NotLeader => "not-leader".into(),
                FetchReply::StartAt { offset, epoch, .. } => format!("start-at={epoch}@{offset}"),
            };
            format!("FetchResponse epoch={epoch} hw={high_watermark} {reply}")
        }
        Message::TimeoutNow { epoch } => format!("TimeoutNow epoch={epoch}"),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

impl Cluster {
    pub(crate) fn new(
        nodes: usize,
        manual_sync: bool,
        commit_unsynced: bool,
        seed: u64,
    ) -> Cluster {
        let voters: Vec<NodeId> = (1..=nodes as NodeId).collect();
        let hosts = voters
            .iter()
            .map(|id| {
                let raft = Raft::new(
                    config(*id, &voters, commit_unsynced, seed),
                    Persisted::default(),
                    LogShape::default(),
                    0,
                );
                let host = Host {
                    raft: Some(raft),
                    log: Vec::new(),
                    durable_end: 0,
                    durable_vote: Persisted::default(),
                    pending_vote: None,
                    pending_syncs: Vec::new(),
                    truncations: Vec::new(),
                    high_watermark: 0,
                };
                (*id, host)
            })
            .collect();
        Cluster {
            now_ms: 0,
            hosts,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            heard: BTreeMap::new(),
            down: BTreeSet::new(),
            lossy: BTreeSet::new(),
            manual_sync,
            commit_unsynced,
            markers: true,
            seed,
            printed: Vec::new(),
            leaders: BTreeMap::new(),
            committed: Vec::new(),
        }
    }

    pub(crate) fn voters(&self) -> Vec<NodeId> {
        self.hosts.keys().copied().collect()
    }

    pub(crate) fn print(&mut self, line: String) {
        self.printed.push(line);
    }

    /// Carries out what node `id` asked for, and whatever that leads to.
    pub(crate) fn apply(&mut self, id: NodeId, commands: Vec<Command>) {
        for command in commands {
            let mut more = Vec::new();
            match command {
                Command::Send { to, message } => {
                    self.print(format!("n{id} -> n{to} {}", describe(&message)));
                    self.queue.push_back((id, to, message));
                }
                Command::SendEntries {
                    to,
                    epoch,
                    high_watermark,
                    from,
                    last_fetched_epoch,
                    max_bytes,
                } => {
                    let log = &self.hosts[&id].log;
                    let mut entries = Vec::new();
                    let mut bytes = 0;
                    for e in log.iter().filter(|e| e.last_offset >= from) {
                        if !entries.is_empty() && bytes + e.payload.len() > max_bytes {
                            break;
                        }
                        bytes += e.payload.len();
                        entries.push(e.clone());
                    }
                    let message = Message::FetchResponse {
                        epoch,
                        high_watermark,
                        fetch_offset: from,
                        last_fetched_epoch,
                        reply: FetchReply::Entries(entries),
                    };
                    self.print(format!("n{id} -> n{to} {}", describe(&message)));
                    self.queue.push_back((id, to, message));
                }
                Command::PersistVote { epoch, voted_for } => {
                    let vote = Persisted { epoch, voted_for };
                    let who = voted_for.map_or("none".into(), |v| format!("n{v}"));
                    self.print(format!("n{id}: persist epoch={epoch} vote={who}"));
                    if self.manual_sync {
                        self.hosts.get_mut(&id).expect("node").pending_vote = Some(vote);
                    } else {
                        self.sync_vote(id, vote, &mut more);
                    }
                }
                Command::Append { entries } => {
                    self.print(format!("n{id}: append {}", describe_entries(&entries)));
                    let host = self.hosts.get_mut(&id).expect("node");
                    let end = host.log.last().map_or(0, |e| e.last_offset + 1);
                    assert_eq!(entries[0].base_offset, end, "appends continue the log");
                    host.log.extend(entries);
                }
                Command::Reset { offset, epoch, .. } => {
                    // The test cluster never moves a log start, so no leader asks for this.
                    unreachable!("reset to {offset} in epoch {epoch}: no log start moves here");
                }
                Command::SendStartAt { start, .. } => {
                    unreachable!("a log start at {start}: no log start moves here");
                }
                Command::Truncate { offset } => {
                    let host = self.hosts.get_mut(&id).expect("node");
                    assert!(
                        host.log
                            .iter()
                            .all(|e| e.base_offset >= offset || e.last_offset < offset),
                        "truncation at an entry boundary"
                    );
                    host.log.retain(|e| e.base_offset < offset);
                    host.durable_end = host.durable_end.min(offset);
                    host.truncations.push(offset);
                    self.print(format!("n{id}: truncate {offset}"));
                }
                Command::SyncLog { generation } => {
                    let host = self.hosts.get_mut(&id).expect("node");
                    // A sync covers what the log held when it was issued.
                    let end = host.log.last().map_or(0, |e| e.last_offset + 1);
                    let since = host.truncations.len();
                    if self.manual_sync {
                        host.pending_syncs.push((end, generation, since));
                    } else {
                        self.sync_log(id, end, generation, since, &mut more);
                    }
                }
                Command::Commit { high_watermark } => {
                    let host = self.hosts.get_mut(&id).expect("node");
                    assert!(
                        high_watermark >= host.high_watermark,
                        "the high watermark never goes back"
                    );
                    host.high_watermark = high_watermark;
                    self.print(format!("n{id}: commit {high_watermark}"));
                }
                Command::RoleChanged {
                    role,
                    epoch,
                    leader,
                } => {
                    let leader = leader.map_or("none".into(), |l| format!("n{l}"));
                    self.print(format!(
                        "n{id}: {} epoch={epoch} leader={leader}",
                        role_name(role)
                    ));
                    if role == Role::Leader {
                        if let Some(other) = self.leaders.insert(epoch, id) {
                            assert_eq!(other, id, "two leaders in epoch {epoch}");
                        }
                        if self.markers {
                            // A new leader writes an entry of its epoch (Kafka: a control batch).
                            self.append(id, 1, "marker", &mut more);
                        }
                    }
                }
            }
            if !more.is_empty() {
                self.apply(id, more);
            }
        }
        self.check();
    }

    pub(crate) fn sync_vote(&mut self, id: NodeId, vote: Persisted, out: &mut Vec<Command>) {
        let now = self.now_ms;
        let host = self.hosts.get_mut(&id).expect("node");
        host.durable_vote = vote;
        if let Some(raft) = host.raft.as_mut() {
            raft.handle_vote_synced(now, vote, out);
        }
    }

    pub(crate) fn sync_log(
        &mut self,
        id: NodeId,
        end: Offset,
        generation: u64,
        truncations_before: usize,
        out: &mut Vec<Command>,
    ) {
        let now = self.now_ms;
        let host = self.hosts.get_mut(&id).expect("node");
        let cut_since = host.truncations[truncations_before..].iter().min().copied();
        let covered = end.min(cut_since.unwrap_or(Offset::MAX));
        host.durable_end = host.durable_end.max(covered);
        if let Some(raft) = host.raft.as_mut() {
            raft.handle_log_synced(now, end, generation, out);
        }
    }

    pub(crate) fn append(&mut self, id: NodeId, count: i64, payload: &str, out: &mut Vec<Command>) {
        let now = self.now_ms;
        let host = self.hosts.get_mut(&id).expect("node");
        let Some(raft) = host.raft.as_mut() else {
            return;
        };
        if raft.role() != Role::Leader {
            return;
        }
        let base = host.log.last().map_or(0, |e| e.last_offset + 1);
        let entry = Entry {
            epoch: raft.epoch(),
            base_offset: base,
            last_offset: base + count - 1,
            payload: Bytes::from(payload.to_string()),
        };
        host.log.push(entry);
        raft.handle_appended(now, base, base + count - 1, out);
    }

    /// The invariants: at most one leader per epoch (checked as roles change); every node's
    /// committed prefix agrees with every other's; each engine's view of its log matches it.
    pub(crate) fn check(&mut self) {
        for (id, host) in &self.hosts {
            let end = host.log.last().map_or(0, |e| e.last_offset + 1);
            if let Some(raft) = &host.raft {
                assert_eq!(
                    raft.log().end,
                    end,
                    "n{id}'s engine knows where its log ends"
                );
                assert!(raft.high_watermark() <= end);
            }
            let committed: Vec<(Offset, Epoch)> = host
                .log
                .iter()
                .filter(|e| e.last_offset < host.high_watermark)
                .map(|e| (e.base_offset, e.epoch))
                .collect();
            let common = committed.len().min(self.committed.len());
            assert_eq!(
                committed[..common],
                self.committed[..common],
                "n{id}'s committed entries differ from another node's"
            );
            if committed.len() > self.committed.len() {
                self.committed = committed;
            }
        }
    }

    pub(crate) fn deliver_one(&mut self, from: NodeId, to: NodeId, message: Message) {
        if self.cut.contains(&(from, to)) {
            self.lossy.insert((from, to));
            return;
        }
        let now = self.now_ms;
        let Some(raft) = self.hosts.get_mut(&to).and_then(|h| h.raft.as_mut()) else {
            return;
        };
        let mut out = Vec::new();
        raft.handle_message(now, from, message, &mut out);
        self.apply(to, out);
    }

    pub(crate) fn deliver(&mut self) {
        let batch: Vec<_> = self.queue.drain(..).collect();
        for (from, to, message) in batch {
            self.deliver_one(from, to, message);
        }
    }

    /// Whether `peer` is running and its messages reach `observer`.
    fn reaches(&self, peer: NodeId, observer: NodeId) -> bool {
        self.hosts[&peer].raft.is_some() && !self.cut.contains(&(peer, observer))
    }

    /// What the hosts' heartbeats tell the engines now: a peer heard from again is up, one
    /// not heard from for an election timeout is down, a link that lost messages shows a gap
    /// (a reset on both sides) once a message crosses it again.
    pub(crate) fn links(&mut self) {
        let now = self.now_ms;
        let ids = self.voters();
        for &observer in &ids {
            for &peer in &ids {
                if peer == observer || self.hosts[&observer].raft.is_none() {
                    continue;
                }
                let mut out = Vec::new();
                if self.reaches(peer, observer) {
                    self.heard.insert((observer, peer), now);
                    let raft = self.hosts.get_mut(&observer).and_then(|h| h.raft.as_mut());
                    let raft = raft.expect("running");
                    if self.down.remove(&(observer, peer)) {
                        self.printed
                            .push(format!("n{observer}: hears n{peer} again"));
                        raft.handle_peer_up(now, peer, &mut out);
                        self.lossy.insert((peer, observer));
                    }
                    if self.lossy.remove(&(peer, observer)) {
                        self.printed.push(format!("n{observer}: gap from n{peer}"));
                        raft.handle_peer_reset(now, peer, &mut out);
                        // The gap is reported back with the next heartbeat.
                        if let Some(raft) = self.hosts.get_mut(&peer).and_then(|h| h.raft.as_mut())
                        {
                            let mut back = Vec::new();
                            raft.handle_peer_reset(now, observer, &mut back);
                            self.apply(peer, back);
                        }
                    }
                } else {
                    let heard = *self.heard.entry((observer, peer)).or_insert(now);
                    if !self.down.contains(&(observer, peer)) && now >= heard + ELECTION_TIMEOUT_MS
                    {
                        self.down.insert((observer, peer));
                        self.printed
                            .push(format!("n{observer}: n{peer} unreachable"));
                        let raft = self.hosts.get_mut(&observer).and_then(|h| h.raft.as_mut());
                        raft.expect("running").handle_peer_down(now, peer, &mut out);
                    }
                }
                self.apply(observer, out);
            }
        }
    }

    /// The next time a host would report a peer down.
    fn next_link_deadline(&self) -> Option<u64> {
        let ids = self.voters();
        let mut next = None::<u64>;
        for &observer in &ids {
            for &peer in &ids {
                let watching = peer != observer
                    && self.hosts[&observer].raft.is_some()
                    && !self.reaches(peer, observer)
                    && !self.down.contains(&(observer, peer));
                if watching {
                    let heard = self.heard.get(&(observer, peer)).copied();
                    let at = heard.unwrap_or(self.now_ms) + ELECTION_TIMEOUT_MS;
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        next
    }

    /// The next deadline of any engine or host.
    fn next_deadline(&self) -> Option<u64> {
        let engines = (self.hosts.values())
            .filter_map(|h| h.raft.as_ref().map(Raft::next_deadline_ms))
            .min();
        [engines, self.next_link_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Lets `ms` pass, stopping at every deadline on the way (messages sent meanwhile wait
    /// for `deliver`).
    pub(crate) fn tick(&mut self, ms: u64) {
        let target = self.now_ms + ms;
        self.links();
        while let Some(next) = self.next_deadline() {
            let next = next.max(self.now_ms);
            if next > target {
                break;
            }
            self.now_ms = next;
            self.links();
            for id in self.voters() {
                let Some(raft) = self.hosts.get_mut(&id).and_then(|h| h.raft.as_mut()) else {
                    continue;
                };
                if raft.next_deadline_ms() > next {
                    continue;
                }
                let mut out = Vec::new();
                raft.handle_tick(next, &mut out);
                self.apply(id, out);
            }
        }
        self.now_ms = target;
        self.links();
    }

    /// Lets `ms` pass with messages arriving at once: at every deadline, tick, then deliver
    /// until nothing is in flight.
    pub(crate) fn run_for(&mut self, ms: u64) {
        let target = self.now_ms + ms;
        self.settle();
        while let Some(next) = self.next_deadline().filter(|next| *next <= target) {
            self.tick(next.saturating_sub(self.now_ms));
            self.settle();
        }
        self.now_ms = target;
    }

    pub(crate) fn settle(&mut self) {
        for _ in 0..1000 {
            if self.queue.is_empty() {
                return;
            }
            self.deliver();
        }
        panic!("the cluster did not settle");
    }

    pub(crate) fn crash(&mut self, id: NodeId) {
        let host = self.hosts.get_mut(&id).expect("node");
        host.raft = None;
        let durable = host.durable_end;
        host.log.retain(|e| e.last_offset < durable);
        host.pending_vote = None;
        host.pending_syncs.clear();
        self.queue.retain(|(from, to, _)| *from != id && *to != id);
        self.down.retain(|(observer, _)| *observer != id);
        self.lossy.retain(|(from, to)| *from != id && *to != id);
    }

    pub(crate) fn restart(&mut self, id: NodeId) {
        let voters = self.voters();
        let (unsynced, seed, now) = (self.commit_unsynced, self.seed, self.now_ms);
        let host = self.hosts.get_mut(&id).expect("node");
        let end = host.log.last().map_or(0, |e| e.last_offset + 1);
        host.high_watermark = 0;
        host.raft = Some(Raft::new(
            config(id, &voters, unsynced, seed),
            host.durable_vote,
            shape(&host.log, end),
            now,
        ));
        // A new process: its peers see a new session (a reset), and it hears them afresh.
        for other in self.voters() {
            self.heard.remove(&(id, other));
            if other != id {
                self.lossy.insert((id, other));
            }
        }
        self.links();
    }

    pub(crate) fn status(&mut self) {
        for (id, host) in &self.hosts {
            let line = match &host.raft {
                None => format!("n{id}: crashed log={}", describe_entries(&host.log)),
                Some(raft) => format!(
                    "n{id}: {} epoch={} leader={} hw={} log={}",
                    role_name(raft.role()),
                    raft.epoch(),
                    raft.leader().map_or("none".into(), |l| format!("n{l}")),
                    raft.high_watermark(),
                    describe_entries(&host.log)
                ),
            };
            self.printed.push(line);
        }
    }

    pub(crate) fn run(&mut self, command: &str) {
        let words: Vec<&str> = command.split_whitespace().collect();
        let node = |w: &str| -> NodeId { w.trim_start_matches('n').parse().expect("a node") };
        match words.as_slice() {
            ["tick", ms] => self.tick(ms.parse().expect("ms")),
            ["run", ms] => self.run_for(ms.parse().expect("ms")),
            ["deliver"] => self.deliver(),
            ["stabilize"] => self.settle(),
            ["drop"] => {
                for (from, to, _) in std::mem::take(&mut self.queue) {
                    self.lossy.insert((from, to));
                }
                self.links();
            }
            ["propose", n, payload] => {
                let mut out = Vec::new();
                self.append(node(n), 1, payload, &mut out);
                self.apply(node(n), out);
            }
            ["partition", n] => {
                let n = node(n);
                for other in self.voters() {
                    self.cut.insert((n, other));
                    self.cut.insert((other, n));
                }
            }
            ["cut", from, to] => {
                self.cut.insert((node(from), node(to)));
            }
            ["heal"] => {
                self.cut.clear();
                self.links();
            }
            ["crash", n] => self.crash(node(n)),
            ["restart", n] => self.restart(node(n)),
            ["sync", n] => {
                let id = node(n);
                let host = self.hosts.get_mut(&id).expect("node");
                let vote = host.pending_vote.take();
                let syncs = std::mem::take(&mut host.pending_syncs);
                let mut out = Vec::new();
                if let Some(vote) = vote {
                    self.sync_vote(id, vote, &mut out);
                }
                for (end, generation, since) in syncs {
                    self.sync_log(id, end, generation, since, &mut out);
                }
                self.apply(id, out);
            }
            ["transfer", from, to] => {
                let mut out = Vec::new();
                if let Some(raft) = self
                    .hosts
                    .get_mut(&node(from))
                    .and_then(|h| h.raft.as_mut())
                {
                    raft.transfer_leadership(node(to), &mut out);
                }
                self.apply(node(from), out);
            }
            ["status"] => self.status(),
            _ => panic!("unknown command {command:?}"),
        }
    }
}

/// Runs one transcript and returns it with every command's output written anew: the first
/// command must be `cluster nodes=N [manual-sync]
/// [commit-unsynced] [seed=S]`.
pub fn run_transcript(text: &str) -> String {
    let mut cluster: Option<Cluster> = None;
    let mut output = String::new();
    for line in text.lines() {
        let Some(command) = line.strip_prefix("> ") else {
            if line.starts_with('#') || line.trim().is_empty() {
                output.push_str(line);
                output.push('\n');
            }
            continue;
        };
        output.push_str(line);
        output.push('\n');
        if let Some(args) = command.strip_prefix("cluster") {
            let mut nodes = 3;
            let (mut manual, mut unsynced, mut seed) = (false, false, 0);
            for arg in args.split_whitespace() {
                match arg.split_once('=') {
                    Some(("nodes", n)) => nodes = n.parse().expect("nodes"),
                    Some(("seed", s)) => seed = s.parse().expect("seed"),
                    None if arg == "manual-sync" => manual = true,
                    None if arg == "commit-unsynced" => unsynced = true,
                    _ => panic!("unknown cluster argument {arg}"),
                }
            }
            cluster = Some(Cluster::new(nodes, manual, unsynced, seed));
            continue;
        }
        let cluster = cluster.as_mut().expect("a cluster first");
        cluster.run(command);
        for printed in cluster.printed.drain(..) {
            let _ = writeln!(output, "{printed}");
        }
    }
    output
}
