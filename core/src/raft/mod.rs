//! Raft, as Kafka's KRaft runs it (KIP-595), for one replicated log, knowing nothing of Kafka.
//!
//! # The shape
//!
//! [`Raft`] is a state machine. Inputs arrive through its `handle_*` methods, each with the
//! time `now_ms`; what it wants done leaves as [`Command`]s pushed onto the caller's vector:
//! messages to send, a vote to make durable, entries to append or a suffix to truncate, a
//! sync of the log, a new high watermark, a change of role. The host performs them and
//! reports completions back (`handle_vote_synced`, `handle_log_synced`). The engine keeps
//! only the log's shape (its end, how far it is synced, where each epoch starts): the log's
//! bytes stay with the host, which reads them when told to answer a fetch
//! ([`Command::SendEntries`]).
//!
//! # The algorithm
//!
//! Terms are *epochs*, as in Kafka, and every entry carries the epoch of the leader that
//! wrote it. Positions are *offsets*: an entry covers `[base_offset, last_offset]`, and the
//! log's end is one past the last offset.
//!
//! - **Elections.** A follower that hears nothing from a leader for its election timeout
//!   (drawn at random between one and two timeouts) first asks for *pre-votes* for the next
//!   epoch without changing its own state: a voter grants one only if it has not heard from
//!   a leader itself within the timeout and the asker's log is at least as up to date (higher
//!   last epoch, or the same and an end at least as far). With a majority of pre-votes it
//!   becomes a candidate: it moves to the next epoch, votes for itself, and asks for votes.
//!   A voter grants at most one vote per epoch, to a log at least as up to date as its own.
//!   With a majority the candidate leads and tells everyone (`BeginEpoch`). A voter alone
//!   campaigns at once: there is nobody to hear from.
//! - **Replication by pull.** Followers fetch (`Fetch { fetch_offset, last_fetched_epoch }`);
//!   the leader checks the pair against its own epochs. If the follower's last epoch ends
//!   earlier on the leader than the follower's log does, or the leader has no such epoch, the
//!   answer is the *diverging epoch*: the largest epoch the leader has at or below it, and
//!   where that epoch ends on the leader. The follower truncates to the smaller of that end
//!   and its own end for that epoch, and fetches again; each round cuts the disagreement
//!   short until the logs agree, then entries flow. This is what Kafka's
//!   `OffsetForLeaderEpoch` reports, so the partition log needs no second index.
//! - **Commit.** A follower's fetch says how far its log agrees with the leader's and how far
//!   it is synced. The high watermark is the largest offset a majority has *synced* (or, with
//!   [`RaftConfig::commit_unsynced`], has in its page cache), counting the leader's own synced
//!   end, and only once it passes the start of the leader's epoch (Raft commits only entries
//!   of the current term by counting a majority). What *every* voter holds is committed
//!   whatever its epoch (Ongaro's thesis, section 3.6.2): so a new leader whose followers are
//!   all caught up, or a voter alone, commits its predecessors' entries without writing one of
//!   its own. With a voter down, older entries commit with the new leader's first entry. The
//!   high watermark never goes back (except under `commit_unsynced`, when a crash of the
//!   majority that held committed entries in memory lost them: see log repair below).
//! - **Long polls, and quiet groups.** A fetch the leader cannot answer with anything new
//!   waits at the leader (it is *parked*) until an entry is appended or the high watermark
//!   moves, however long that takes. An idle group sends nothing and sets no timer: its
//!   follower's fetch waits at the leader, and both sides rely on the host to say when the
//!   other's node stops being heard from (`handle_peer_down`) or when messages between the
//!   two may have been lost (`handle_peer_reset`). The host learns both once per node pair,
//!   not once per group (heartbeats and sequence numbers on its frames), so many idle groups
//!   cost nothing per tick. A follower whose leader's node is in touch never campaigns; one
//!   whose leader's node went quiet campaigns after a random part of an election timeout;
//!   a reset makes it send its fetch again. A fetch unanswered for `fetch_refresh_ms` is sent
//!   again all the same, against a fetch dropped where no gap shows.
//! - **Check-quorum.** A leader that has not been fetched from by a majority (itself
//!   included) within the election timeout resigns: a leader cut off from the others stops
//!   believing it leads, as the others elect a new one. A parked fetch from a node in touch
//!   counts as a fetch now; a leader that resigns answers its parked fetches (`NotLeader`),
//!   so its followers look for the next leader at once.
//! - **Leadership transfer.** The leader waits until the target's log reaches its own end,
//!   then sends `TimeoutNow`; the target campaigns at once, skipping the pre-vote.
//!
//! # Durability
//!
//! A node votes, acknowledges, or counts itself in a quorum only for what it has synced. A
//! vote (and the epoch it is in) is made durable ([`Command::PersistVote`]) before the
//! answer that depends on it leaves: such messages are held until `handle_vote_synced`. A
//! candidate counts its own vote only once it is synced. Fetches report the follower's synced
//! end, and the leader counts its own synced end. A candidate advertises its synced log.
//!
//! # Departures from the Raft paper
//!
//! - Pull instead of push (KRaft): followers ask, the leader answers; divergence is found by
//!   epoch and end offset rather than by retrying `AppendEntries` one index back.
//! - Entries are ranges of offsets (Kafka batches), not single indexes.
//! - Fetch answers echo the fetch they answer; an answer to an earlier fetch (late or
//!   duplicated) is not acted on, nor one that arrives while no fetch is out, nor any before
//!   the latest truncation's sync completed (nothing is fetched until then). An answer the
//!   follower cannot act on is asked again after the fetch timeout, not at once. A sync
//!   issued before a truncation credits nothing, and a follower never truncates below what it
//!   saw committed.
//! - With [`RaftConfig::commit_unsynced`] (Kafka's replication-over-fsync durability) a
//!   follower truncates below what it saw committed when its leader's log says so: a crash of
//!   a majority may have lost committed entries, and the new leader's log is the log now.
//!   Raft assumes a majority never forgets; this mode chooses not to pay for that.
//! - Pre-vote and check-quorum (from Ongaro's thesis, as etcd and KRaft run them) are always on.
//! - No per-group heartbeats: an idle leader sends nothing, and its followers do not time it
//!   out. Liveness comes from the host, once per node pair (`handle_peer_down`, `_up`,
//!   `_reset`), and a parked fetch from a node in touch counts as a fetch now. A node that
//!   asks for a pre-vote gets its next fetch answered at once (it does not know who leads).
//! - A follower that learns of a new epoch from a leader's message follows it at once.
//! - A pre-vote answer carries the voter's epoch and leader, so a node that lost touch with a
//!   live leader asks it directly and follows it again instead of campaigning in vain; and a pre-vote from a node
//!   already in a later epoch (its own campaign failed) moves the voter up to that epoch, as
//!   any message of a later term does in Raft: otherwise that node could never rejoin.

pub mod testing;
#[cfg(test)]
mod tests;
pub mod wire;

use std::collections::BTreeMap;

use bytes::Bytes;

pub type NodeId = i32;
pub type Epoch = i32;
pub type Offset = i64;

/// The largest epoch a message may carry: a node moves past the epochs it hears of by
/// campaigning, and must never overflow (a billion elections past this are out of reach).
pub const EPOCH_MAX: Epoch = i32::MAX / 2;

/// One entry: a range of offsets written by the leader of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub epoch: Epoch,
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    pub id: NodeId,
    /// Every voter, this node included if it votes.
    pub voters: Vec<NodeId>,
    /// A follower that hears nothing from its leader for a random time between this and
    /// twice this campaigns; a leader not fetched from by a majority for this long resigns.
    pub election_timeout_ms: u64,
    /// A follower whose fetch's answer it could not act on (or that cannot fetch yet) asks
    /// again after this long.
    pub fetch_retry_ms: u64,
    /// A follower whose fetch has had no answer for this long sends it again, although its
    /// leader's node is in touch (the leader holds a fetch it has nothing for without limit:
    /// this only catches a fetch dropped where the host saw no gap).
    pub fetch_refresh_ms: u64,
    /// At most this many bytes of entries per fetch answer (at least one entry).
    pub fetch_max_bytes: usize,
    /// Commit what a majority has in its page cache, not only what it has synced (Kafka's
    /// replication-over-fsync durability).
    pub commit_unsynced: bool,
    /// A follower is in sync (Kafka's ISR) while it caught up with the leader's log end within
    /// this long (Kafka's `replica.lag.time.max.ms`).
    pub in_sync_lag_ms: u64,
    pub seed: u64,
    /// A bug to plant, so that the simulator shows its checkers catch it (never set outside
    /// the simulator).
    pub planted: Option<RaftBug>,
}

/// Bugs the simulator plants in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftBug {
    /// Grant votes and count one's own vote before the vote is durable: a crash that loses it
    /// lets the node vote again in the same epoch, for another candidate.
    VoteWithoutSync,
    /// Leaders never report divergence: no follower truncates, and a follower keeps entries a
    /// new leader never had under the entries it appends after them.
    NoTruncate,
    /// A leader announces its epoch only once, when elected: a voter that missed it and led
    /// an earlier epoch goes on believing it leads.
    NoReannounce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Would you vote for me in `epoch`? (Nobody's state changes.)
    PreVote {
        epoch: Epoch,
        last_epoch: Epoch,
        end_offset: Offset,
    },
    /// The answer to a pre-vote for `epoch`, with the voter's own epoch and the leader it
    /// follows, if any: a node that lost touch with a live leader finds it again this way.
    PreVoteResponse {
        epoch: Epoch,
        granted: bool,
        current_epoch: Epoch,
        leader: Option<NodeId>,
    },
    Vote {
        epoch: Epoch,
        last_epoch: Epoch,
        end_offset: Offset,
    },
    VoteResponse {
        epoch: Epoch,
        granted: bool,
    },
    /// The sender leads `epoch`.
    BeginEpoch {
        epoch: Epoch,
    },
    /// A follower's fetch: from its log's end, how far it is synced, and the high watermark
    /// it knows (the leader answers at once if it knows a later one: a follower that
    /// restarted, or lost an answer, must not wait at the leader for news it already missed).
    Fetch {
        epoch: Epoch,
        fetch_offset: Offset,
        last_fetched_epoch: Epoch,
        synced_offset: Offset,
        high_watermark: Offset,
    },
    /// The answer to the fetch from `fetch_offset` with `last_fetched_epoch` (echoed: an
    /// answer to an earlier fetch, late or duplicated, must not act on a log that changed).
    FetchResponse {
        epoch: Epoch,
        high_watermark: Offset,
        fetch_offset: Offset,
        last_fetched_epoch: Epoch,
        reply: FetchReply,
    },
    /// Campaign now (leadership transfer).
    TimeoutNow {
        epoch: Epoch,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchReply {
    /// Entries from the fetch offset on (none: nothing new).
    Entries(Vec<Entry>),
    /// The logs disagree: the leader's log has `epoch` (the largest at or below the
    /// follower's last fetched epoch) ending at `end_offset`.
    Diverging { epoch: Epoch, end_offset: Offset },
    /// The fetch named an older epoch than the leader's, or this node does not lead.
    NotLeader,
    /// The leader's log starts at `offset` (retention, DeleteRecords), past where the
    /// follower's log agrees with it as far as the leader can tell: the follower starts its
    /// log over, empty, at `offset`, `epoch` being the epoch of the entry before it, with
    /// `state` (opaque to the engine: the partition's producer state as of `offset`).
    StartAt {
        offset: Offset,
        epoch: Epoch,
        state: bytes::Bytes,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Send {
        to: NodeId,
        message: Message,
    },
    /// Answer `to`'s fetch: read whole entries from `from` (at least one, then up to
    /// `max_bytes`) and send `FetchResponse { epoch, high_watermark, fetch_offset: from,
    /// last_fetched_epoch, Entries(..) }`.
    SendEntries {
        to: NodeId,
        epoch: Epoch,
        high_watermark: Offset,
        from: Offset,
        last_fetched_epoch: Epoch,
        max_bytes: usize,
    },
    /// Make the epoch and the vote in it durable, then call `handle_vote_synced`.
    PersistVote {
        epoch: Epoch,
        voted_for: Option<NodeId>,
    },
    /// Append these entries (they continue the log).
    Append {
        entries: Vec<Entry>,
    },
    /// Empty the log and start it at `offset`, with `epoch` in force there (past the log's
    /// end), and the leader's `state` as of there. A `SyncLog` follows, as for a truncation.
    Reset {
        offset: Offset,
        epoch: Epoch,
        state: bytes::Bytes,
    },
    /// Answer `to`'s fetch with `StartAt { offset: start, epoch: start_epoch, state }`, the
    /// state filled in by the host (`FetchResponse { epoch, high_watermark, fetch_offset,
    /// last_fetched_epoch, .. }`).
    SendStartAt {
        to: NodeId,
        epoch: Epoch,
        high_watermark: Offset,
        fetch_offset: Offset,
        last_fetched_epoch: Epoch,
        start: Offset,
        start_epoch: Epoch,
    },
    /// Remove every entry at or past `offset`. A `SyncLog` follows: the follower fetches
    /// again only once it completed (a partition log cuts its files in that round).
    Truncate {
        offset: Offset,
    },
    /// Sync the log, then call `handle_log_synced` with the end it covered and this
    /// `generation` (which a truncation moves on: a sync issued before one credits nothing).
    SyncLog {
        generation: u64,
    },
    /// The high watermark moved.
    Commit {
        high_watermark: Offset,
    },
    /// This node's role, epoch or leader changed. A new leader commits entries of earlier
    /// epochs that not every voter holds only once an entry of its own epoch is appended
    /// (`handle_appended`) and a majority holds it.
    RoleChanged {
        role: Role,
        epoch: Epoch,
        leader: Option<NodeId>,
    },
}

/// What a node keeps across restarts, besides its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Persisted {
    pub epoch: Epoch,
    pub voted_for: Option<NodeId>,
}

/// The log's shape: where each epoch starts (ascending), where the log ends, how far it is
/// synced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogShape {
    pub epochs: Vec<(Epoch, Offset)>,
    pub end: Offset,
    pub synced: Offset,
    /// Entries below this are gone (retention, DeleteRecords): all committed. The first
    /// epoch starts here at the earliest.
    pub start: Offset,
}

/// In a log whose epochs start at `epochs` (ascending) and which ends at `end`: the largest
/// epoch at or below `epoch` and where it ends (Kafka's `OffsetForLeaderEpoch`).
pub fn epoch_end(epochs: &[(Epoch, Offset)], end: Offset, epoch: Epoch) -> Option<(Epoch, Offset)> {
    let at = epochs.partition_point(|(e, _)| *e <= epoch);
    let (found, _) = *epochs.get(at.checked_sub(1)?)?;
    let end = epochs.get(at).map_or(end, |(_, start)| *start);
    Some((found, end))
}

impl LogShape {
    pub fn last_epoch(&self) -> Epoch {
        self.epochs.last().map_or(0, |(e, _)| *e)
    }

    /// The largest epoch at or below `epoch` and where it ends (Kafka's
    /// `OffsetForLeaderEpoch`); `None` if the log has no such epoch.
    pub fn epoch_end(&self, epoch: Epoch) -> Option<(Epoch, Offset)> {
        epoch_end(&self.epochs, self.end, epoch)
    }

    /// The epoch and end of the synced part of the log (what a candidate may claim).
    fn synced_tip(&self) -> (Epoch, Offset) {
        let at = self
            .epochs
            .partition_point(|(_, start)| *start < self.synced);
        let epoch = match at.checked_sub(1) {
            Some(i) => self.epochs[i].0,
            // Everything below the start is gone (and was committed): the epoch in force
            // there stands for it. It may claim more than the gone batch before the start
            // had, but committed entries past the start carry that epoch or a later one, so
            // no candidate that lacks them wins by it.
            None if self.start > 0 && self.synced >= self.start => self.start_epoch(),
            None => 0,
        };
        (epoch, self.synced)
    }

    fn append(&mut self, epoch: Epoch, base_offset: Offset, last_offset: Offset) {
        debug_assert_eq!(base_offset, self.end, "entries continue the log");
        if self.last_epoch() != epoch || self.epochs.is_empty() {
            assert!(epoch >= self.last_epoch(), "epochs never go back in a log");
            self.epochs.push((epoch, base_offset));
        }
        self.end = last_offset + 1;
    }

    /// Entries below `start` are gone (a batch boundary): the last epoch that started before
    /// it now starts there, so that the epoch of the entry before the log stays known.
    fn trim(&mut self, start: Offset) {
        if start <= self.start {
            return;
        }
        self.start = start;
        crate::log::trim_epochs(&mut self.epochs, start);
    }

    /// The epoch of the entry before the log start (or of the first entry).
    fn start_epoch(&self) -> Epoch {
        self.epochs.first().map_or(0, |(e, _)| *e)
    }

    fn truncate(&mut self, offset: Offset) {
        if offset >= self.end {
            return;
        }
        self.end = offset;
        self.synced = self.synced.min(offset);
        let first = self.epochs.first().copied();
        self.epochs.retain(|(_, start)| *start < offset);
        if let Some((epoch, start)) = first.filter(|_| self.epochs.is_empty()) {
            // Cut back to the log start: the epoch before it still stands for what is gone.
            if start <= offset && self.start > 0 {
                self.epochs.push((epoch, start));
            }
        }
    }
}

/// What the leader knows of a follower.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Its log agrees with the leader's below this.
    matched: Offset,
    /// And is synced below this.
    synced: Offset,
    last_fetch_ms: Option<u64>,
    /// When a fetch of its last reached the leader's log end.
    caught_up_ms: Option<u64>,
    /// It asked for a pre-vote, so it does not know this node leads: its next fetch is
    /// answered at once, not parked (it would wait there for news, and campaign in vain).
    owed_answer: bool,
    /// When it was last sent `BeginEpoch` again (once per instant: a heal brings a peer's
    /// return and its gaps at once).
    announced_ms: Option<u64>,
}

/// A leader's view of one follower, for operators (metrics, DescribeQuorum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerState {
    pub id: NodeId,
    /// Its log's end as its latest fetch in this epoch said (`None` before its first).
    pub log_end: Option<Offset>,
    /// When it last fetched, and when a fetch of its last reached the leader's end.
    pub last_fetch_ms: Option<u64>,
    pub caught_up_ms: Option<u64>,
}

/// A fetch the leader holds until it has something to answer.
#[derive(Debug, Clone, Copy)]
struct ParkedFetch {
    from: Offset,
    last_fetched_epoch: Epoch,
}

#[derive(Debug)]
pub struct Raft {
    config: RaftConfig,
    role: Role,
    epoch: Epoch,
    voted_for: Option<NodeId>,
    /// What is durable of the two above.
    persisted: Persisted,
    leader: Option<NodeId>,
    log: LogShape,
    high_watermark: Offset,
    rng: u64,
    /// When a follower (or candidate) campaigns next.
    election_deadline_ms: u64,
    /// The last time a leader answered or announced itself.
    leader_contact_ms: Option<u64>,
    /// Votes (or pre-votes) granted to this node in the current round.
    votes: Vec<NodeId>,
    /// Messages that may leave only once `persisted` holds this epoch and vote.
    held: Vec<(Persisted, Command)>,
    /// Follower: a fetch is out, and is sent again at this time if no answer came.
    fetch_deadline_ms: Option<u64>,
    /// Where the fetch in flight asked from, and what it said this log has synced.
    fetch_offset: Offset,
    fetch_synced: Offset,
    /// Nodes the host has not heard from for an election timeout (`handle_peer_down`).
    unreachable: std::collections::BTreeSet<NodeId>,
    /// The time of the latest input.
    now_ms: u64,
    /// Leader: what it knows of each other voter.
    progress: BTreeMap<NodeId, Progress>,
    parked: BTreeMap<NodeId, ParkedFetch>,
    transfer_to: Option<NodeId>,
    /// Truncations so far: syncs are credited only within one generation.
    truncations: u64,
    /// Truncations whose sync round completed: a follower fetches nothing more until its
    /// latest truncation is safe (the log appends nothing before that round).
    truncations_synced: u64,
}

impl Raft {
    /// A node starting (or restarting) with what it persisted and the log it recovered. It
    /// starts as a follower with no known leader.
    pub fn new(config: RaftConfig, persisted: Persisted, log: LogShape, now_ms: u64) -> Raft {
        let rng = config.seed ^ (config.id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut raft = Raft {
            config,
            role: Role::Follower,
            epoch: persisted.epoch,
            voted_for: persisted.voted_for,
            persisted,
            leader: None,
            log,
            high_watermark: 0,
            rng,
            election_deadline_ms: 0,
            leader_contact_ms: None,
            votes: Vec::new(),
            held: Vec::new(),
            fetch_deadline_ms: None,
            fetch_offset: 0,
            fetch_synced: 0,
            unreachable: Default::default(),
            now_ms,
            progress: BTreeMap::new(),
            parked: BTreeMap::new(),
            transfer_to: None,
            truncations: 0,
            truncations_synced: 0,
        };
        raft.reset_election_timer(now_ms);
        raft
    }

    // ---- getters ----

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    pub fn log(&self) -> &LogShape {
        &self.log
    }

    /// The nodes the host reported down and not up again.
    pub fn unreachable(&self) -> &std::collections::BTreeSet<NodeId> {
        &self.unreachable
    }

    /// The replicas in sync at `now_ms`, as this node knows them (Kafka's ISR): a leader
    /// counts itself and every follower that reached its log end within
    /// [`RaftConfig::in_sync_lag_ms`] (a fetch it holds is one at the end); a follower names
    /// its leader.
    pub fn in_sync(&self, now_ms: u64) -> Vec<NodeId> {
        if self.role != Role::Leader {
            return self.leader.into_iter().collect();
        }
        let mut nodes = vec![self.config.id];
        let since = now_ms.saturating_sub(self.config.in_sync_lag_ms);
        nodes.extend(
            (self.progress.iter())
                .filter(|(id, p)| {
                    self.parked.contains_key(id) || p.caught_up_ms.is_some_and(|at| at >= since)
                })
                .map(|(id, _)| *id),
        );
        nodes.sort_unstable();
        nodes
    }

    /// What a leader knows of each other voter, in id order (nothing unless it leads). A
    /// fetch held here counts as one at `now_ms`, at the leader's end, as it does for the ISR
    /// and check-quorum (one from a node gone quiet was dropped).
    pub fn followers(&self, now_ms: u64) -> Vec<FollowerState> {
        if self.role != Role::Leader {
            return Vec::new();
        }
        (self.progress.iter())
            .map(|(id, p)| {
                let parked = self.parked.contains_key(id);
                FollowerState {
                    id: *id,
                    log_end: (parked || p.last_fetch_ms.is_some()).then_some(p.matched),
                    last_fetch_ms: if parked {
                        Some(now_ms)
                    } else {
                        p.last_fetch_ms
                    },
                    caught_up_ms: if parked { Some(now_ms) } else { p.caught_up_ms },
                }
            })
            .collect()
    }

    /// When the engine next needs `handle_tick`. An idle group needs none, but for the
    /// follower's fetch refresh: a leader whose quorum is parked here has nothing to check
    /// (a follower's node that goes quiet is reported), a follower whose leader's node is in
    /// touch does not campaign.
    pub fn next_deadline_ms(&self) -> u64 {
        match self.role {
            Role::Leader if self.quorum_parked() => u64::MAX,
            Role::Leader => self.election_deadline_ms,
            _ => match (self.leader_in_touch(), self.fetch_deadline_ms) {
                (true, Some(fetch)) => fetch,
                // In touch with no fetch out (one waits for a sync): the election timer
                // stands guard, and fetches when it fires rather than campaigning.
                (true, None) => self.election_deadline_ms,
                (false, fetch) => self.election_deadline_ms.min(fetch.unwrap_or(u64::MAX)),
            },
        }
    }

    /// A leader with a majority (itself included) whose fetches it holds: nothing to check
    /// until one of those nodes goes quiet. A leader alone, always.
    fn quorum_parked(&self) -> bool {
        1 + self.parked.len() >= self.majority()
    }

    /// A follower whose leader is another node that the host still hears from.
    fn leader_in_touch(&self) -> bool {
        self.role == Role::Follower
            && (self.leader).is_some_and(|l| l != self.config.id && !self.unreachable.contains(&l))
    }

    pub fn voters(&self) -> &[NodeId] {
        &self.config.voters
    }

    pub fn is_voter(&self) -> bool {
        self.config.voters.contains(&self.config.id)
    }

    fn majority(&self) -> usize {
        self.config.voters.len() / 2 + 1
    }

    fn others(&self) -> Vec<NodeId> {
        let me = self.config.id;
        self.config
            .voters
            .iter()
            .copied()
            .filter(|v| *v != me)
            .collect()
    }

    fn reset_election_timer(&mut self, now_ms: u64) {
        if self.role == Role::Follower && self.is_voter() && self.others().is_empty() {
            // A voter alone has nobody to hear from: it campaigns at once (a campaign that
            // waits for its vote to be durable tries again after a timeout).
            self.election_deadline_ms = now_ms;
            return;
        }
        let timeout = self.config.election_timeout_ms;
        let jitter = crate::node::node_rng(&mut self.rng) % timeout.max(1);
        self.election_deadline_ms = now_ms + timeout + jitter;
    }

    // ---- inputs ----

    /// Time passed: campaign, resign, send a fetch again.
    pub fn handle_tick(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        self.now_ms = now_ms;
        match self.role {
            Role::Leader => {
                if self.lost_quorum(now_ms) {
                    self.become_follower(self.epoch, None, now_ms, out);
                    return;
                }
                // Check the quorum again in half a timeout.
                self.election_deadline_ms = now_ms + self.config.election_timeout_ms / 2;
            }
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                let in_touch = self.leader_in_touch();
                if !in_touch && now_ms >= self.election_deadline_ms && self.is_voter() {
                    self.start_pre_vote(now_ms, out);
                    return;
                }
                let due = match self.fetch_deadline_ms {
                    Some(deadline) => now_ms >= deadline,
                    None => in_touch && now_ms >= self.election_deadline_ms,
                };
                if due {
                    self.fetch_deadline_ms = None;
                    if in_touch {
                        self.reset_election_timer(now_ms);
                    }
                    self.send_fetch(now_ms, out);
                }
            }
        }
    }

    /// The host has heard nothing from node `peer` for an election timeout. A follower of
    /// it campaigns after a random part of another (so that the groups it led do not all
    /// campaign at once); a leader no longer counts a fetch `peer` left here, and resigns if
    /// that leaves it without a quorum.
    pub fn handle_peer_down(&mut self, now_ms: u64, peer: NodeId, out: &mut Vec<Command>) {
        self.now_ms = now_ms;
        if peer == self.config.id || !self.unreachable.insert(peer) {
            return;
        }
        match self.role {
            Role::Leader => {
                self.parked.remove(&peer);
                if self.lost_quorum(now_ms) {
                    self.become_follower(self.epoch, None, now_ms, out);
                }
            }
            _ if self.leader == Some(peer) => {
                let timeout = self.config.election_timeout_ms.max(1);
                let jitter = crate::node::node_rng(&mut self.rng) % timeout;
                self.election_deadline_ms = now_ms + jitter;
            }
            _ => {}
        }
    }

    /// The host hears from node `peer` again: a leader `peer` has not fetched from yet tells
    /// it again that it leads (`announce_again`).
    pub fn handle_peer_up(&mut self, now_ms: u64, peer: NodeId, out: &mut Vec<Command>) {
        self.now_ms = now_ms;
        self.unreachable.remove(&peer);
        self.announce_again(peer, out);
    }

    /// Messages between this node and `peer` may have been lost (the host saw a gap in what
    /// one sent the other, or `peer` started again): a follower of `peer` with a fetch out
    /// sends it again, since its answer, or the fetch itself, may be what was lost; a leader
    /// `peer` has not fetched from yet tells it again that it leads.
    pub fn handle_peer_reset(&mut self, now_ms: u64, peer: NodeId, out: &mut Vec<Command>) {
        self.now_ms = now_ms;
        if self.role == Role::Follower
            && self.leader == Some(peer)
            && self.fetch_deadline_ms.is_some()
        {
            self.send_fetch(now_ms, out);
        }
        self.announce_again(peer, out);
    }

    /// A leader sends `BeginEpoch` again to a voter that has not fetched in its epoch: the
    /// first may be what was lost. Without it, a voter that led an earlier epoch and missed
    /// the news (its process frozen through the election, then its link broken and made
    /// again) would go on believing it leads: it waits for fetches, nobody else writes to
    /// it, and it answers clients as the leader, from a log that no longer moves.
    fn announce_again(&mut self, peer: NodeId, out: &mut Vec<Command>) {
        if self.role != Role::Leader || self.config.planted == Some(RaftBug::NoReannounce) {
            return;
        }
        let now_ms = self.now_ms;
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        if progress.last_fetch_ms.is_none() && progress.announced_ms != Some(now_ms) {
            progress.announced_ms = Some(now_ms);
            out.push(Command::Send {
                to: peer,
                message: Message::BeginEpoch { epoch: self.epoch },
            });
        }
    }

    pub fn handle_message(
        &mut self,
        now_ms: u64,
        from: NodeId,
        message: Message,
        out: &mut Vec<Command>,
    ) {
        self.now_ms = now_ms;
        if !self.plausible(from, &message) {
            // A peer's bytes passed their CRC but not sense: a bug or damage on its side.
            // Acting on it could break this log; dropping it costs a resend at most.
            tracing::warn!(from, ?message, "implausible Raft message dropped");
            return;
        }
        match message {
            Message::PreVote {
                epoch,
                last_epoch,
                end_offset,
            } => {
                if epoch - 1 > self.epoch {
                    // The asker is already in a later epoch (a campaign that failed): no
                    // leader of an earlier one can ever reach it again, so move up to it,
                    // stepping down if leading, and let an election settle the new epoch.
                    self.become_follower(epoch - 1, None, now_ms, out);
                }
                if let Some(progress) = self.progress.get_mut(&from) {
                    progress.owed_answer = true;
                }
                let leader_alive = self.role == Role::Leader
                    || self.leader_in_touch()
                    || self
                        .leader_contact_ms
                        .is_some_and(|at| now_ms < at + self.config.election_timeout_ms);
                let granted = epoch > self.epoch
                    && !leader_alive
                    && self.log_is_behind((last_epoch, end_offset));
                out.push(Command::Send {
                    to: from,
                    message: Message::PreVoteResponse {
                        epoch,
                        granted,
                        current_epoch: self.epoch,
                        leader: self.leader,
                    },
                });
            }
            Message::PreVoteResponse {
                epoch,
                granted,
                current_epoch,
                leader,
            } => {
                if let Some(leader) = leader.filter(|l| *l != self.config.id) {
                    if current_epoch >= self.epoch && self.role != Role::Leader {
                        // The voter hears from a leader: ask that leader directly. If it
                        // answers, this node follows it again (a dead leader the voter has
                        // not yet given up on answers nothing, and the campaign goes on).
                        if current_epoch > self.epoch {
                            self.become_follower(current_epoch, None, now_ms, out);
                        }
                        out.push(Command::Send {
                            to: leader,
                            message: self.fetch_message(),
                        });
                    }
                }
                if self.role == Role::PreCandidate && epoch == self.epoch + 1 && granted {
                    if !self.votes.contains(&from) {
                        self.votes.push(from);
                    }
                    if self.votes.len() >= self.majority() {
                        self.start_election(now_ms, out);
                    }
                }
            }
            Message::Vote {
                epoch,
                last_epoch,
                end_offset,
            } => {
                if epoch < self.epoch {
                    out.push(Command::Send {
                        to: from,
                        message: Message::VoteResponse {
                            epoch: self.epoch,
                            granted: false,
                        },
                    });
                    return;
                }
                if epoch > self.epoch {
                    self.become_follower(epoch, None, now_ms, out);
                }
                let granted = self.voted_for.is_none_or(|v| v == from)
                    && self.log_is_behind((last_epoch, end_offset));
                if granted {
                    self.voted_for = Some(from);
                    self.reset_election_timer(now_ms);
                    self.persist(out);
                }
                self.send_after_persist(from, Message::VoteResponse { epoch, granted }, out);
            }
            Message::VoteResponse { epoch, granted } => {
                if epoch > self.epoch {
                    self.become_follower(epoch, None, now_ms, out);
                    return;
                }
                if self.role == Role::Candidate && epoch == self.epoch && granted {
                    if !self.votes.contains(&from) {
                        self.votes.push(from);
                    }
                    self.maybe_win(now_ms, out);
                }
            }
            Message::BeginEpoch { epoch } => {
                if epoch >= self.epoch && self.leader != Some(from) || epoch > self.epoch {
                    self.become_follower(epoch, Some(from), now_ms, out);
                }
                if self.leader == Some(from) && epoch == self.epoch {
                    self.leader_contact_ms = Some(now_ms);
                    self.reset_election_timer(now_ms);
                    if self.fetch_deadline_ms.is_none() {
                        self.send_fetch(now_ms, out);
                    }
                }
            }
            Message::Fetch {
                epoch,
                fetch_offset,
                last_fetched_epoch,
                synced_offset,
                high_watermark,
            } => self.on_fetch(
                now_ms,
                from,
                epoch,
                (fetch_offset, last_fetched_epoch),
                synced_offset,
                high_watermark,
                out,
            ),
            Message::FetchResponse {
                epoch,
                high_watermark,
                fetch_offset,
                last_fetched_epoch,
                reply,
            } => self.on_fetch_response(
                now_ms,
                from,
                epoch,
                high_watermark,
                fetch_offset,
                last_fetched_epoch,
                reply,
                out,
            ),
            Message::TimeoutNow { epoch } => {
                if epoch == self.epoch && self.leader == Some(from) && self.is_voter() {
                    self.start_election(now_ms, out);
                }
            }
        }
    }

    /// Whether `message` from `from` could have come from a correct voter: a voter other
    /// than this node, epochs and offsets within range, entries that continue one another in
    /// non-decreasing epochs no later than the answer's own.
    fn plausible(&self, from: NodeId, message: &Message) -> bool {
        let epoch_ok = |e: Epoch| (0..=EPOCH_MAX).contains(&e);
        let offset_ok = |o: Offset| o >= 0;
        if from == self.config.id || !self.config.voters.contains(&from) {
            return false;
        }
        match message {
            Message::PreVote {
                epoch,
                last_epoch,
                end_offset,
            }
            | Message::Vote {
                epoch,
                last_epoch,
                end_offset,
            } => epoch_ok(*epoch) && epoch_ok(*last_epoch) && offset_ok(*end_offset),
            Message::PreVoteResponse {
                epoch,
                current_epoch,
                leader,
                ..
            } => {
                epoch_ok(*epoch)
                    && epoch_ok(*current_epoch)
                    && leader.is_none_or(|l| self.config.voters.contains(&l))
            }
            Message::VoteResponse { epoch, .. }
            | Message::BeginEpoch { epoch }
            | Message::TimeoutNow { epoch } => epoch_ok(*epoch),
            Message::Fetch {
                epoch,
                fetch_offset,
                last_fetched_epoch,
                synced_offset,
                high_watermark,
            } => {
                epoch_ok(*epoch)
                    && epoch_ok(*last_fetched_epoch)
                    && offset_ok(*fetch_offset)
                    && offset_ok(*synced_offset)
                    && offset_ok(*high_watermark)
            }
            Message::FetchResponse {
                epoch,
                high_watermark,
                fetch_offset,
                last_fetched_epoch,
                reply,
            } => {
                let header = epoch_ok(*epoch)
                    && offset_ok(*high_watermark)
                    && offset_ok(*fetch_offset)
                    && epoch_ok(*last_fetched_epoch);
                header
                    && match reply {
                        FetchReply::NotLeader => true,
                        FetchReply::StartAt {
                            offset,
                            epoch: start_epoch,
                            ..
                        } => epoch_ok(*start_epoch) && start_epoch <= epoch && offset_ok(*offset),
                        FetchReply::Diverging {
                            epoch: diverging,
                            end_offset,
                        } => epoch_ok(*diverging) && diverging <= epoch && offset_ok(*end_offset),
                        FetchReply::Entries(entries) => {
                            let mut next = *fetch_offset;
                            let mut last_epoch = *last_fetched_epoch;
                            entries.iter().all(|e| {
                                let fits = e.base_offset == next
                                    && e.last_offset >= e.base_offset
                                    && e.last_offset < Offset::MAX
                                    && (last_epoch..=*epoch).contains(&e.epoch);
                                next = e.last_offset.saturating_add(1);
                                last_epoch = e.epoch;
                                fits
                            })
                        }
                    }
            }
        }
    }

    /// The leader's host appended an entry of the current epoch ending at `last_offset`.
    pub fn handle_appended(
        &mut self,
        now_ms: u64,
        base_offset: Offset,
        last_offset: Offset,
        out: &mut Vec<Command>,
    ) {
        assert_eq!(self.role, Role::Leader, "only a leader appends proposals");
        self.now_ms = now_ms;
        self.log.append(self.epoch, base_offset, last_offset);
        out.push(Command::SyncLog {
            generation: self.truncations,
        });
        if self.config.commit_unsynced {
            // The leader's page cache counts: it may complete a quorum now.
            self.advance_high_watermark(out);
        }
        self.answer_parked(out);
    }

    /// Every fetch held here is answered (something new arrived for it). Each follower was
    /// in touch and at the log's end until now: it counts so until its next fetch arrives.
    fn answer_parked(&mut self, out: &mut Vec<Command>) {
        let now_ms = self.now_ms;
        for (id, parked) in std::mem::take(&mut self.parked) {
            if let Some(progress) = self.progress.get_mut(&id) {
                progress.last_fetch_ms = Some(now_ms);
                progress.caught_up_ms = Some(now_ms);
            }
            self.send_entries(id, parked.from, parked.last_fetched_epoch, out);
        }
    }

    /// The log is synced up to `offset` (the end it had when the sync of `generation` was
    /// issued).
    pub fn handle_log_synced(
        &mut self,
        now_ms: u64,
        offset: Offset,
        generation: u64,
        out: &mut Vec<Command>,
    ) {
        if generation != self.truncations {
            // Issued before a truncation: what it covered may since have been cut and written
            // again, not durable. The truncation's own sync comes later.
            return;
        }
        self.now_ms = now_ms;
        self.log.synced = self.log.synced.max(offset.min(self.log.end));
        self.truncations_synced = self.truncations;
        match self.role {
            Role::Leader => {
                self.advance_high_watermark(out);
                self.maybe_transfer(out);
            }
            _ if self.fetch_deadline_ms.is_none() => self.send_fetch(now_ms, out),
            // A fetch is out, but it told the leader of less than is synced now: the leader
            // may hold it (it had nothing new to send) while it waits for this very news to
            // commit. A fetch that says so replaces it there.
            _ if self.fetch_synced < self.log.synced && self.fetch_at_end() => {
                self.send_fetch(now_ms, out)
            }
            _ => {}
        }
    }

    /// The log's start moved to `start` (retention or DeleteRecords, below the high
    /// watermark): entries below it are gone.
    pub fn handle_log_start(&mut self, start: Offset) {
        self.log.trim(start.min(self.log.end));
    }

    /// The epoch and vote of `persisted` are durable.
    pub fn handle_vote_synced(
        &mut self,
        now_ms: u64,
        persisted: Persisted,
        out: &mut Vec<Command>,
    ) {
        self.now_ms = now_ms;
        if persisted.epoch > self.persisted.epoch
            || (persisted.epoch == self.persisted.epoch && persisted.voted_for.is_some())
        {
            self.persisted = persisted;
        }
        let durable = self.persisted;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(needs, _)| *needs == durable || needs.epoch < durable.epoch);
        self.held = waiting;
        // A vote answer for an epoch since left behind is still true: it goes too.
        out.extend(ready.into_iter().map(|(_, command)| command));
        if self.role == Role::Candidate {
            self.maybe_win(now_ms, out);
        }
    }

    /// The follower leadership is best handed to: one in touch, the furthest synced (ties to
    /// the lowest id). `None` unless leading with another voter.
    pub fn transfer_target(&self) -> Option<NodeId> {
        if self.role != Role::Leader {
            return None;
        }
        let unsynced = self.config.commit_unsynced;
        (self.progress.iter())
            .filter(|(id, _)| !self.unreachable.contains(id))
            .max_by_key(|(id, p)| {
                let at = if unsynced { p.matched } else { p.synced };
                (at, std::cmp::Reverse(**id))
            })
            .map(|(id, _)| *id)
    }

    /// Hand leadership to `to` once its log has caught up.
    pub fn transfer_leadership(&mut self, to: NodeId, out: &mut Vec<Command>) {
        if self.role == Role::Leader && to != self.config.id && self.config.voters.contains(&to) {
            self.transfer_to = Some(to);
            self.maybe_transfer(out);
        }
    }

    // ---- roles ----

    /// Follows `leader` in `epoch` (or nobody yet) and, knowing a leader, fetches from it.
    fn become_follower(
        &mut self,
        epoch: Epoch,
        leader: Option<NodeId>,
        now_ms: u64,
        out: &mut Vec<Command>,
    ) {
        self.follow(epoch, leader, now_ms, out);
        if self.leader.is_some() {
            self.send_fetch(now_ms, out);
        }
    }

    /// Follows `leader` in `epoch` without fetching (the caller decides when).
    fn follow(
        &mut self,
        epoch: Epoch,
        leader: Option<NodeId>,
        now_ms: u64,
        out: &mut Vec<Command>,
    ) {
        let new_epoch = epoch > self.epoch;
        if new_epoch {
            self.epoch = epoch;
            self.voted_for = None;
            self.persist(out);
        }
        let changed = new_epoch || self.role != Role::Follower || self.leader != leader;
        // Followers whose fetches wait here hear at once that this node no longer leads (they
        // would otherwise wait for nothing while this node is in touch).
        for (to, parked) in std::mem::take(&mut self.parked) {
            out.push(Command::Send {
                to,
                message: Message::FetchResponse {
                    epoch: self.epoch,
                    high_watermark: self.high_watermark,
                    fetch_offset: parked.from,
                    last_fetched_epoch: parked.last_fetched_epoch,
                    reply: FetchReply::NotLeader,
                },
            });
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        self.transfer_to = None;
        self.fetch_deadline_ms = None;
        if leader.is_some() {
            self.leader_contact_ms = Some(now_ms);
        }
        self.reset_election_timer(now_ms);
        if changed {
            out.push(self.role_changed());
        }
    }

    fn role_changed(&self) -> Command {
        Command::RoleChanged {
            role: self.role,
            epoch: self.epoch,
            leader: self.leader,
        }
    }

    /// Leaves whatever leader this node followed and campaigns in `role`, its own vote counted.
    fn begin_campaign(&mut self, role: Role, now_ms: u64, out: &mut Vec<Command>) {
        self.role = role;
        self.leader = None;
        self.leader_contact_ms = None;
        self.fetch_deadline_ms = None;
        self.votes = vec![self.config.id];
        self.reset_election_timer(now_ms);
        out.push(self.role_changed());
    }

    fn start_pre_vote(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        self.begin_campaign(Role::PreCandidate, now_ms, out);
        if self.votes.len() >= self.majority() {
            return self.start_election(now_ms, out);
        }
        let (last_epoch, end_offset) = self.log.synced_tip();
        for to in self.others() {
            out.push(Command::Send {
                to,
                message: Message::PreVote {
                    epoch: self.epoch + 1,
                    last_epoch,
                    end_offset,
                },
            });
        }
    }

    fn start_election(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        self.epoch += 1;
        self.voted_for = Some(self.config.id);
        self.begin_campaign(Role::Candidate, now_ms, out);
        self.persist(out);
        let (last_epoch, end_offset) = self.log.synced_tip();
        for to in self.others() {
            let message = Message::Vote {
                epoch: self.epoch,
                last_epoch,
                end_offset,
            };
            self.send_after_persist(to, message, out);
        }
        self.maybe_win(now_ms, out);
    }

    /// A candidate wins with a majority, counting its own vote only once it is durable.
    fn maybe_win(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        let own_durable = (self.persisted.epoch == self.epoch
            && self.persisted.voted_for == Some(self.config.id))
            || self.config.planted == Some(RaftBug::VoteWithoutSync);
        let count = self
            .votes
            .iter()
            .filter(|v| **v != self.config.id || own_durable)
            .count();
        if count >= self.majority() {
            self.become_leader(now_ms, out);
        }
    }

    fn become_leader(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.votes.clear();
        self.progress = (self.others().into_iter())
            .map(|id| (id, Progress::default()))
            .collect();
        self.leader_contact_ms = Some(now_ms);
        self.election_deadline_ms = now_ms + self.config.election_timeout_ms / 2;
        out.push(self.role_changed());
        for to in self.others() {
            out.push(Command::Send {
                to,
                message: Message::BeginEpoch { epoch: self.epoch },
            });
        }
        // A voter alone may already hold, synced, what is now committed.
        self.advance_high_watermark(out);
    }

    /// Whether a majority (this leader included) fetched within the election timeout.
    fn lost_quorum(&self, now_ms: u64) -> bool {
        // A fetch held here (a long poll) is a follower in touch (one from a node gone quiet
        // was dropped).
        let recent = (self.progress.iter())
            .filter(|(id, p)| {
                self.parked.contains_key(id)
                    || p.last_fetch_ms
                        .is_some_and(|at| now_ms < at + self.config.election_timeout_ms)
            })
            .count();
        let since = self.leader_contact_ms.unwrap_or(now_ms);
        recent + 1 < self.majority() && now_ms >= since + self.config.election_timeout_ms
    }

    // ---- votes ----

    /// Whether a log ending at `(last_epoch, end)` is at least as up to date as this one.
    fn log_is_behind(&self, (last_epoch, end): (Epoch, Offset)) -> bool {
        (last_epoch, end) >= (self.log.last_epoch(), self.log.end)
    }

    fn persist(&mut self, out: &mut Vec<Command>) {
        out.push(Command::PersistVote {
            epoch: self.epoch,
            voted_for: self.voted_for,
        });
    }

    /// Sends `message` once the current epoch and vote are durable.
    fn send_after_persist(&mut self, to: NodeId, message: Message, out: &mut Vec<Command>) {
        let needs = Persisted {
            epoch: self.epoch,
            voted_for: self.voted_for,
        };
        let command = Command::Send { to, message };
        if self.persisted == needs || self.config.planted == Some(RaftBug::VoteWithoutSync) {
            out.push(command);
        } else {
            self.held.push((needs, command));
        }
    }

    // ---- replication ----

    fn send_fetch(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        let Some(leader) = self.leader else { return };
        if leader == self.config.id || self.truncations_synced < self.truncations {
            return;
        }
        self.fetch_deadline_ms = Some(now_ms + self.config.fetch_refresh_ms);
        self.fetch_synced = self.log.synced;
        self.fetch_offset = self.log.end;
        out.push(Command::Send {
            to: leader,
            message: self.fetch_message(),
        });
    }

    /// Whether the fetch in flight asked from this log's end (it may be held at the leader).
    fn fetch_at_end(&self) -> bool {
        self.fetch_deadline_ms.is_some() && self.fetch_offset == self.log.end
    }

    /// A fetch from this log's end: its last epoch, and how far it is synced.
    fn fetch_message(&self) -> Message {
        Message::Fetch {
            epoch: self.epoch,
            fetch_offset: self.log.end,
            last_fetched_epoch: self.log.last_epoch(),
            synced_offset: self.log.synced,
            high_watermark: self.high_watermark,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_fetch(
        &mut self,
        now_ms: u64,
        from: NodeId,
        epoch: Epoch,
        (fetch_offset, last_fetched_epoch): (Offset, Epoch),
        synced_offset: Offset,
        follower_high_watermark: Offset,
        out: &mut Vec<Command>,
    ) {
        if !self.config.voters.contains(&from) {
            // Only voters replicate so far (observers would need progress that does not
            // count toward commit); a stranger's epoch must not move this node.
            return;
        }
        if epoch > self.epoch {
            // A newer leader exists; its announcement will reach this node.
            self.become_follower(epoch, None, now_ms, out);
        }
        let answer = |reply| Command::Send {
            to: from,
            message: Message::FetchResponse {
                epoch: self.epoch,
                high_watermark: self.high_watermark,
                fetch_offset,
                last_fetched_epoch,
                reply,
            },
        };
        if self.role != Role::Leader || epoch < self.epoch {
            out.push(answer(FetchReply::NotLeader));
            return;
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.last_fetch_ms = Some(now_ms);
        // A follower's newer fetch replaces one held here: only the newest is answered (two
        // answers in flight would keep two fetches going for ever).
        self.parked.remove(&from);
        let start = self.log.start;
        let start_at = Command::SendStartAt {
            to: from,
            epoch: self.epoch,
            high_watermark: self.high_watermark,
            fetch_offset,
            last_fetched_epoch,
            start,
            start_epoch: self.log.start_epoch(),
        };
        if fetch_offset < start {
            // What the follower needs next is gone here (all of it committed).
            out.push(start_at);
            return;
        }
        if fetch_offset > 0 {
            let agrees = self
                .log
                .epoch_end(last_fetched_epoch)
                .is_some_and(|(e, end)| e == last_fetched_epoch && end >= fetch_offset);
            let agrees = agrees || self.config.planted == Some(RaftBug::NoTruncate);
            if !agrees || fetch_offset > self.log.end {
                let (epoch, end_offset) = self.log.epoch_end(last_fetched_epoch).unwrap_or((0, 0));
                if start > 0 && end_offset.min(fetch_offset) < start {
                    // Where the logs part is below what this log still holds.
                    out.push(start_at);
                    return;
                }
                out.push(answer(FetchReply::Diverging {
                    epoch,
                    end_offset: end_offset.min(fetch_offset),
                }));
                return;
            }
        }
        progress.matched = fetch_offset;
        progress.synced = synced_offset.min(fetch_offset);
        if fetch_offset >= self.log.end {
            progress.caught_up_ms = Some(now_ms);
        }
        self.advance_high_watermark(out);
        self.maybe_transfer(out);
        let news = follower_high_watermark < self.high_watermark.min(fetch_offset)
            || self.progress[&from].owed_answer;
        if fetch_offset < self.log.end || news {
            self.send_entries(from, fetch_offset, last_fetched_epoch, out);
        } else {
            let parked = ParkedFetch {
                from: fetch_offset,
                last_fetched_epoch,
            };
            self.parked.insert(from, parked);
        }
    }

    fn send_entries(
        &mut self,
        to: NodeId,
        from: Offset,
        last_fetched_epoch: Epoch,
        out: &mut Vec<Command>,
    ) {
        self.parked.remove(&to);
        if let Some(progress) = self.progress.get_mut(&to) {
            progress.owed_answer = false;
        }
        out.push(Command::SendEntries {
            to,
            epoch: self.epoch,
            high_watermark: self.high_watermark,
            from,
            last_fetched_epoch,
            max_bytes: self.config.fetch_max_bytes,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_fetch_response(
        &mut self,
        now_ms: u64,
        from: NodeId,
        epoch: Epoch,
        high_watermark: Offset,
        fetch_offset: Offset,
        last_fetched_epoch: Epoch,
        reply: FetchReply,
        out: &mut Vec<Command>,
    ) {
        if epoch < self.epoch {
            return;
        }
        if matches!(reply, FetchReply::NotLeader) {
            if epoch > self.epoch {
                self.become_follower(epoch, None, now_ms, out);
            } else if self.leader == Some(from) {
                // It no longer leads this epoch: look for the next leader.
                self.fetch_deadline_ms = None;
                self.leader = None;
                self.reset_election_timer(now_ms);
                out.push(self.role_changed());
            }
            return;
        }
        if (fetch_offset, last_fetched_epoch) != (self.log.end, self.log.last_epoch()) {
            // The answer to an earlier fetch (late, or one of two in flight): the log has
            // changed since, and acting on it could cut what was since agreed. Only who leads
            // is news.
            if epoch > self.epoch || self.leader != Some(from) {
                self.become_follower(epoch, Some(from), now_ms, out);
            }
            return;
        }
        if self.fetch_deadline_ms.is_none()
            && self.role != Role::Leader
            && self.leader == Some(from)
        {
            // No fetch of this node's waits for an answer: a duplicate of one already acted
            // on. Acting again would send a second fetch, and every duplicate after it a
            // third: chains of fetches that multiply.
            return;
        }
        if self.truncations_synced < self.truncations {
            // An answer to a fetch sent before the truncation (duplicated, or late) that
            // happens to match the cut log: nothing is appended before the cut is safe, and
            // the fetch after it asks again.
            if epoch > self.epoch || self.leader != Some(from) {
                self.become_follower(epoch, Some(from), now_ms, out);
            }
            return;
        }
        if epoch > self.epoch || self.leader != Some(from) {
            self.follow(epoch, Some(from), now_ms, out);
        }
        self.fetch_deadline_ms = None;
        self.leader_contact_ms = Some(now_ms);
        self.reset_election_timer(now_ms);
        match reply {
            FetchReply::NotLeader => unreachable!("handled above"),
            FetchReply::StartAt {
                offset,
                epoch,
                state,
            } => {
                let empty_there = offset == self.log.start && offset >= self.log.end;
                if offset < self.high_watermark || (offset <= self.log.start && !empty_there) {
                    // Not for this log (it holds what it saw committed there): ask again.
                    self.fetch_deadline_ms = Some(now_ms + self.config.fetch_retry_ms);
                    return;
                }
                if offset < self.log.end {
                    // Its entries past the leader's start cannot be checked there: cut back
                    // to what it saw committed (agreed), then fetch again.
                    let offset = self.high_watermark.max(self.log.start);
                    self.log.truncate(offset);
                    self.truncations += 1;
                    out.push(Command::Truncate { offset });
                    out.push(Command::SyncLog {
                        generation: self.truncations,
                    });
                    return;
                }
                self.log = LogShape {
                    epochs: vec![(epoch, offset)],
                    end: offset,
                    synced: self.log.synced.min(offset),
                    start: offset,
                };
                self.truncations += 1;
                out.push(Command::Reset {
                    offset,
                    epoch,
                    state,
                });
                out.push(Command::SyncLog {
                    generation: self.truncations,
                });
                return;
            }
            FetchReply::Diverging { epoch, end_offset } => {
                let own_end = self.log.epoch_end(epoch).map_or(0, |(_, end)| end);
                let offset = end_offset.min(own_end);
                if offset < self.log.start {
                    // Below what this log still holds: only a leader that lost committed
                    // entries (replicated durability) says so. Asked again, not cut.
                    self.fetch_deadline_ms = Some(now_ms + self.config.fetch_retry_ms);
                    return;
                }
                if offset < self.high_watermark && !self.config.commit_unsynced {
                    // Never below what this node saw committed: a leader that says so is
                    // wrong, or the answer is not for this log. Ask again when a lost fetch
                    // would be asked again (at once, the two could answer each other as fast
                    // as the network goes).
                    self.fetch_deadline_ms = Some(now_ms + self.config.fetch_retry_ms);
                    return;
                }
                // Committing what a majority holds only in memory, a crash of that majority
                // loses committed entries, and a leader elected without them is the log now:
                // this node follows it below what it saw committed (as Kafka's followers
                // do), or it would disagree with its leader for ever.
                self.high_watermark = self.high_watermark.min(offset);
                self.log.truncate(offset);
                self.truncations += 1;
                out.push(Command::Truncate { offset });
                // The log makes a truncation safe to crash in with a sync round (its recovery
                // point first): fetch again once that is done.
                out.push(Command::SyncLog {
                    generation: self.truncations,
                });
                return;
            }
            FetchReply::Entries(entries) => {
                let fits = (entries.first()).is_none_or(|e| e.base_offset == self.log.end);
                if !fits {
                    // Ask again later, as above.
                    self.fetch_deadline_ms = Some(now_ms + self.config.fetch_retry_ms);
                    return;
                }
                let appended = !entries.is_empty();
                for entry in &entries {
                    self.log
                        .append(entry.epoch, entry.base_offset, entry.last_offset);
                }
                if appended {
                    out.push(Command::Append { entries });
                    out.push(Command::SyncLog {
                        generation: self.truncations,
                    });
                }
                let high_watermark = high_watermark.min(self.log.end);
                if high_watermark > self.high_watermark {
                    self.high_watermark = high_watermark;
                    out.push(Command::Commit { high_watermark });
                }
                if appended && !self.config.commit_unsynced {
                    // The next fetch acknowledges what it appended: only once it is synced.
                    return;
                }
            }
        }
        self.send_fetch(now_ms, out);
    }

    fn advance_high_watermark(&mut self, out: &mut Vec<Command>) {
        let unsynced = self.config.commit_unsynced;
        let mut positions: Vec<Offset> = (self.progress.values())
            .map(|p| if unsynced { p.matched } else { p.synced })
            .collect();
        positions.push(if unsynced {
            self.log.end
        } else {
            self.log.synced
        });
        positions.sort_unstable_by(|a, b| b.cmp(a));
        let majority = positions[self.majority() - 1];
        let epoch_start = (self.log.epochs.last())
            .filter(|(e, _)| *e == self.epoch)
            .map(|(_, start)| *start);
        let ours = epoch_start.is_some_and(|start| majority > start);
        // What every voter holds is committed whatever its epoch (Ongaro's thesis, 3.6.2): a
        // later leader is a voter, and no voter ever gives up an entry every voter holds.
        let everyone = *positions.last().expect("the leader counts");
        let candidate = if ours { majority } else { everyone };
        if candidate > self.high_watermark {
            self.high_watermark = candidate;
            out.push(Command::Commit {
                high_watermark: candidate,
            });
            self.answer_parked(out);
        }
    }

    fn maybe_transfer(&mut self, out: &mut Vec<Command>) {
        let Some(to) = self.transfer_to else { return };
        // The target campaigns with what it has synced: wait for that to be everything.
        let unsynced = self.config.commit_unsynced;
        let end = self.log.end;
        let caught_up = |p: &Progress| (if unsynced { p.matched } else { p.synced }) == end;
        if self.progress.get(&to).is_some_and(caught_up) {
            self.transfer_to = None;
            out.push(Command::Send {
                to,
                message: Message::TimeoutNow { epoch: self.epoch },
            });
        }
    }
}
