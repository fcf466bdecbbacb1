//! keel-net: the tokio adapter around the core's `Node` and the `keel` binary.
//!
//! - [`disk`]: the `Disk` trait over real files, and the fsync thread's jobs.
//! - [`server`]: the owner task, connection tasks, timers, graceful shutdown.
//! - [`config`]: `keel serve`'s settings (defaults, TOML, flags).
//! - [`identity`]: `keel.properties`, whose data directory this is.
//! - [`peers`]: links to the other nodes of a cluster (TCP, a hello, frames both ways).
//! - [`metrics`]: the Prometheus `/metrics` endpoint.
//! - [`client`]: a small blocking Kafka client for the admin commands.
//! - [`status`]: `keel cluster status`.

pub mod client;
pub mod config;
pub mod disk;
pub mod identity;
pub mod metrics;
pub mod peers;
pub mod server;
pub mod status;
