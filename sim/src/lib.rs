//! keel-sim: Keel's deterministic simulator.
//!
//! - [`disk`]: the simulated disk (page cache, durable image, faults).
//! - [`plan`]: what a seed decides: the workload and the fault rates.
//! - [`sim`]: the harness: event queue, virtual clock, nodes, clients.
//! - [`network`]: the network between nodes: loss, delay, duplication, clogs, partitions.
//! - [`check`]: the checkers over the history and the node's state.
//! - [`campaign`]: many seeds on many threads.

mod admin;
pub mod campaign;
pub mod check;
pub mod cluster;
pub mod disk;
pub mod network;
pub mod plan;
pub mod replicas;
pub mod sim;

pub use disk::{PendingSync, SimDisk};
pub use sim::{produce_request, run, Options, Report};
