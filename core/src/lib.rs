//! keel-core: Keel's pure, deterministic core.
//!
//! Nothing in this crate reads a clock, draws OS randomness, touches a socket, a file or a
//! thread: inputs arrive as arguments and effects leave as values. `clippy.toml` beside this
//! crate forbids the escape hatches, and `tests/tests/purity.rs` checks the dependency tree.
//!
//! - [`protocol`]: the Kafka wire codec (framing, headers, every message Keel speaks).
//! - [`record`]: record batches (magic 2): validation, stamping, iteration, decompression.
//! - [`disk`]: the storage interface (real files in `keel-net`, simulated in `keel-sim`).
//! - [`log`]: the partition log: segments, indexes, recovery.
//! - [`producers`]: idempotent producers' state per partition (deduplication, sequences).
//! - [`node`]: the broker state machine: inputs in, outputs out.
//! - [`raft`]: the Raft engine (KRaft's pull model), knowing nothing of Kafka.
//! - [`partition`]: a partition replica (its Raft group over its log) and the node's votes.
//! - [`metadata`]: the metadata quorum's records and the image every node builds from them.
//! - [`coordinator`]: the group coordinator (consumer groups and their committed offsets).
//! - [`limits`]: every maximum a client can push against, with its reason.

pub mod coordinator;
pub mod disk;
pub mod limits;
pub mod log;
pub mod metadata;
pub mod node;
pub mod partition;
pub mod producers;
pub mod protocol;
pub mod raft;
pub mod record;
