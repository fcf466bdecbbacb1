//! keel-sim: Keel's deterministic simulator. Today: the simulated disk the log's recovery is
//! tested against. The harness, faults, workloads and checkers come with the simulator issue.

pub mod disk;

pub use disk::SimDisk;
