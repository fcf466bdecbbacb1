//! The admin workload: a client that cycles through side topics the way an operator and an
//! application would. Each cycle creates a topic (two names take turns, so names are created
//! again after their deletion), looks it up, writes to it, reads it back by topic id, asks
//! ListOffsets for its earliest, latest and by-time offsets, sometimes adds a partition, and
//! deletes it while a long-polling fetch waits on it.
//!
//! Its checks, against what this client itself did:
//! - **wrong-topic**: a topic id given to two topics (a new topic must never get an id an
//!   earlier one had: clients that address topics by id would reach the wrong one), or a
//!   record read from a topic it was not written to (a topic created again must start empty);
//! - **inconsistent-offset**: a record read by topic id where an acknowledged one was;
//! - **lost-write**: ListOffsets latest below an acknowledged offset of the live topic, or
//!   by-time past the first acknowledged record at that time.

use std::collections::BTreeMap;

use keel_core::protocol::wire::Uuid;

/// What the admin client sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminStep {
    Create,
    Describe,
    /// Writes left in this cycle.
    Produce(u32),
    FetchById,
    /// 0: earliest, 1: latest, 2: by the first acknowledged write's time.
    ListOffsets(u8),
    CreatePartitions,
    /// A long-polling fetch, then the delete behind it on the same connection.
    LongPollAndDelete,
    /// With the lifecycle on (`LifecyclePlan`), on the workload's topic: 0 sets its
    /// retention.ms and segment.ms, 1 moves a partition's start (DeleteRecords).
    Lifecycle(u8),
}

/// A request of the admin client in flight.
#[derive(Debug, Clone)]
pub(crate) enum AdminRequest {
    Create,
    Describe,
    Produce {
        partition: i32,
        values: Vec<u64>,
        timestamp_ms: i64,
    },
    FetchById {
        partition: i32,
        long_poll: bool,
    },
    ListOffsets {
        which: u8,
    },
    CreatePartitions,
    Delete,
    AlterRetention,
    DeleteRecords {
        partition: i32,
        offset: i64,
    },
}

#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) cycle: u64,
    pub(crate) step: AdminStep,
    /// Requests in flight (a long poll and a delete may be together).
    pub(crate) in_flight: usize,
    pub(crate) next_at_ns: u64,
    pub(crate) name: String,
    pub(crate) partitions: i32,
    /// The live topic's id, once Metadata told it.
    pub(crate) id: Option<Uuid>,
    /// Every id a topic was given, with the topic (name and cycle): never given twice.
    pub(crate) ids: BTreeMap<Uuid, (String, u64)>,
    /// (partition, offset) -> value acknowledged there, for the live topic.
    pub(crate) acked: BTreeMap<(i32, i64), u64>,
    /// The first acknowledged write of the live topic: (timestamp, partition, offset).
    pub(crate) first_acked: Option<(i64, i32, i64)>,
    /// value -> the topic id it was written to (any cycle).
    pub(crate) written_to: BTreeMap<u64, Option<Uuid>>,
    pub(crate) next_value: u64,
    /// The last answer came from the wrong node (not the controller, not the leader): the
    /// step is sent again from the next node (in a cluster).
    pub(crate) misdirected: bool,
}

impl AdminState {
    pub(crate) fn new() -> AdminState {
        AdminState {
            cycle: 0,
            step: AdminStep::Create,
            in_flight: 0,
            next_at_ns: 0,
            name: "side-0".into(),
            partitions: 1,
            id: None,
            ids: BTreeMap::new(),
            acked: BTreeMap::new(),
            first_acked: None,
            written_to: BTreeMap::new(),
            next_value: 0,
            misdirected: false,
        }
    }

    /// The cycle is over (the topic deleted, or its deletion's outcome unknown): the next
    /// one starts with the other name.
    pub(crate) fn next_cycle(&mut self) {
        self.cycle += 1;
        self.name = format!("side-{}", self.cycle % 2);
        self.step = AdminStep::Create;
        self.id = None;
        self.acked.clear();
        self.first_acked = None;
    }
}
