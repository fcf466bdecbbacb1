//! keel-core: Keel's pure, deterministic core.
//!
//! Nothing in this crate reads a clock, draws OS randomness, touches a socket, a file or a
//! thread: inputs arrive as arguments and effects leave as values. `clippy.toml` beside this
//! crate forbids the escape hatches, and `tests/purity.rs` checks the dependency tree.
//!
//! - [`protocol`]: the Kafka wire codec (framing, headers, every message Keel speaks).
//! - [`record`]: record batches (magic 2): validation, stamping, iteration, decompression.

pub mod protocol;
pub mod record;
