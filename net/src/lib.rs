//! keel-net: the tokio adapter around the core's `Node` and the `keel` binary.
//!
//! - [`disk`]: the `Disk` trait over real files, and the fsync thread's jobs.
//! - [`server`]: the owner task, connection tasks, timers, graceful shutdown.
//! - [`config`]: `keel serve`'s settings (defaults, TOML, flags).

pub mod config;
pub mod disk;
pub mod server;
