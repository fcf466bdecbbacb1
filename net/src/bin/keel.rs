//! `keel`: the broker (`keel serve`) and its admin commands (`keel cluster status`).
// Built for madsim, `main` only says it cannot serve: the rest is unused there.
#![cfg_attr(madsim, allow(dead_code, unused_imports))]

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use keel_net::config::{DurabilitySetting, ServeConfig};

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: a Kafka-compatible event streaming platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker. With no arguments: node 1 on 127.0.0.1:9092, data in ./keel-data,
    /// topics auto-created with 1 partition, every acknowledged write synced to disk.
    // Boxed: its many settings would make every command as large.
    Serve(Box<ServeArgs>),
    /// Look at a running cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The nodes (which are reachable, which leads the metadata quorum) and each partition's
    /// leader, ISR and followers' lag, as the cluster's nodes describe them.
    Status(StatusArgs),
}

#[derive(clap::Args)]
struct StatusArgs {
    /// Any node(s) of the cluster, tried in turn.
    #[arg(
        long,
        value_name = "HOST:PORT,...",
        value_delimiter = ',',
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: Vec<String>,
    /// How long to wait for any one connection or answer, in ms.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    timeout_ms: u64,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML file with any of the settings below (flags win over it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on for Kafka clients [default: 127.0.0.1:9092].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Directory holding the topics' logs [default: ./keel-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// This node's id [default: 1].
    #[arg(long)]
    node_id: Option<i32>,
    /// Host name clients are told to connect to [default: the listen address's host].
    #[arg(long, value_name = "HOST")]
    advertised_host: Option<String>,
    /// Port clients are told to connect to [default: the port listened on].
    #[arg(long, value_name = "PORT")]
    advertised_port: Option<u16>,
    /// Create unknown topics when clients ask for their metadata [default: true].
    #[arg(long, value_name = "BOOL")]
    auto_create_topics: Option<bool>,
    /// Partitions of a topic created without a count [default: 1].
    #[arg(long, value_name = "N")]
    num_partitions: Option<i32>,
    /// When a produce is acknowledged: after fsync, or at once [default: fsync].
    #[arg(long, value_enum)]
    durability: Option<DurabilitySetting>,
    /// Segment files roll at this size [default: 1073741824].
    #[arg(long, value_name = "BYTES")]
    segment_bytes: Option<u64>,
    /// A segment rolls once its first batch is this old (log.roll.ms; a topic's segment.ms)
    /// [default: 604800000].
    #[arg(long, value_name = "MS")]
    segment_ms: Option<i64>,
    /// Segments whose newest record is this old are deleted (log.retention.ms; a topic's
    /// retention.ms; -1 keeps them) [default: 604800000].
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    retention_ms: Option<i64>,
    /// The oldest segments are deleted while a partition holds more than this
    /// (log.retention.bytes; a topic's retention.bytes; -1: no limit) [default: -1].
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    retention_bytes: Option<i64>,
    /// How often retention runs (log.retention.check.interval.ms) [default: 300000].
    #[arg(long, value_name = "MS")]
    retention_check_interval_ms: Option<u64>,
    /// Bytes per second the compaction cleaner reads at most, across every log
    /// (log.cleaner.io.max.bytes.per.second) [default: 104857600].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    log_cleaner_io_bytes_per_sec: Option<u64>,
    /// Largest request accepted (socket.request.max.bytes) [default: 104857600].
    #[arg(long, value_name = "BYTES")]
    max_request_bytes: Option<usize>,
    /// Largest batch a producer may send (max.message.bytes) [default: 1048588].
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// A partition forgets an idempotent producer idle this long
    /// (producer.id.expiration.ms) [default: 86400000].
    #[arg(long, value_name = "MS")]
    producer_id_expiration_ms: Option<i64>,
    /// The cluster id reported to clients [default: keel-cluster].
    #[arg(long)]
    cluster_id: Option<String>,
    /// Partitions of __consumer_offsets, fixed when it is created
    /// (offsets.topic.num.partitions) [default: 50].
    #[arg(long, value_name = "N")]
    offsets_topic_partitions: Option<i32>,
    /// Replication factor of __consumer_offsets, or every node of a smaller cluster
    /// (offsets.topic.replication.factor) [default: 3].
    #[arg(long, value_name = "N")]
    offsets_topic_replication_factor: Option<i16>,
    /// How long the first rebalance of an empty group waits for more members
    /// (group.initial.rebalance.delay.ms) [default: 3000].
    #[arg(long, value_name = "MS")]
    group_initial_rebalance_delay_ms: Option<i32>,
    /// Smallest session timeout a group member may ask for
    /// (group.min.session.timeout.ms) [default: 6000].
    #[arg(long, value_name = "MS")]
    group_min_session_timeout_ms: Option<i32>,
    /// Largest session timeout a group member may ask for
    /// (group.max.session.timeout.ms) [default: 1800000].
    #[arg(long, value_name = "MS")]
    group_max_session_timeout_ms: Option<i32>,
    /// How long an empty group's committed offsets are kept (offsets.retention.ms)
    /// [default: 604800000].
    #[arg(long, value_name = "MS")]
    offsets_retention_ms: Option<i64>,
    /// How often members of consumer-protocol groups (KIP-848) heartbeat
    /// (group.consumer.heartbeat.interval.ms) [default: 5000].
    #[arg(long, value_name = "MS")]
    group_consumer_heartbeat_interval_ms: Option<i32>,
    /// How long such a member may stay silent before it is dropped
    /// (group.consumer.session.timeout.ms) [default: 45000].
    #[arg(long, value_name = "MS")]
    group_consumer_session_timeout_ms: Option<i32>,
    /// This broker's rack (broker.rack), reported to clients; replicas are spread over racks.
    #[arg(long)]
    rack: Option<String>,
    /// The cluster's nodes, each at its peer address, this one included:
    /// `1@host:port,2@host:port,3@host:port` [default: none, a cluster of one].
    #[arg(long, value_name = "ID@HOST:PORT,...", value_delimiter = ',')]
    voters: Option<Vec<String>>,
    /// Address to listen on for the other nodes [default: this node's voter address].
    #[arg(long, value_name = "ADDR")]
    peer_listen: Option<String>,
    /// Address to serve Prometheus metrics on, at /metrics (for example 127.0.0.1:9644)
    /// [default: none, no metrics endpoint].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<ServeConfig> {
        let mut config = match &self.config {
            Some(path) => ServeConfig::from_toml(&std::fs::read_to_string(path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            None => ServeConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v; } )* };
        }
        set!(
            listen,
            data_dir,
            node_id,
            auto_create_topics,
            num_partitions,
            durability,
            segment_bytes,
            segment_ms,
            retention_ms,
            retention_bytes,
            retention_check_interval_ms,
            log_cleaner_io_bytes_per_sec,
            max_request_bytes,
            max_message_bytes,
            producer_id_expiration_ms,
            cluster_id,
            offsets_topic_partitions,
            offsets_topic_replication_factor,
            group_initial_rebalance_delay_ms,
            group_min_session_timeout_ms,
            group_max_session_timeout_ms,
            offsets_retention_ms,
            group_consumer_heartbeat_interval_ms,
            group_consumer_session_timeout_ms
        );
        if let Some(host) = self.advertised_host {
            config.advertised_host = Some(host);
        }
        if let Some(rack) = self.rack {
            config.rack = Some(rack);
        }
        if let Some(port) = self.advertised_port {
            config.advertised_port = Some(port);
        }
        if let Some(voters) = self.voters {
            config.voters = voters;
        }
        if let Some(listen) = self.peer_listen {
            config.peer_listen = Some(listen);
        }
        if let Some(listen) = self.metrics_listen {
            config.metrics_listen = Some(listen);
        }
        config.voters()?;
        for (key, value) in [
            ("segment.bytes", config.segment_bytes.to_string()),
            ("segment.ms", config.segment_ms.to_string()),
            ("retention.ms", config.retention_ms.to_string()),
            ("retention.bytes", config.retention_bytes.to_string()),
            ("max.message.bytes", config.max_message_bytes.to_string()),
        ] {
            keel_core::metadata::configs::check(key, &value, 1).map_err(anyhow::Error::msg)?;
        }
        if !(1..=keel_core::limits::PARTITIONS_PER_TOPIC_MAX)
            .contains(&config.offsets_topic_partitions)
        {
            anyhow::bail!(
                "offsets_topic_partitions {}: must be 1 to {}",
                config.offsets_topic_partitions,
                keel_core::limits::PARTITIONS_PER_TOPIC_MAX
            );
        }
        Ok(config)
    }
}

/// Built for madsim (`--cfg madsim`), the adapter runs only inside its simulated runtime
/// (`net/tests/madsim.rs`): there is no process to serve from.
#[cfg(madsim)]
fn main() -> anyhow::Result<()> {
    anyhow::bail!("this keel was built with --cfg madsim: it runs only in madsim's tests")
}

#[cfg(not(madsim))]
fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.into_config()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(keel_net::server::serve(config))
        }
        Command::Cluster(ClusterCommand::Status(args)) => {
            let timeout = std::time::Duration::from_millis(args.timeout_ms.max(1));
            let status = match keel_net::status::gather(&args.bootstrap, timeout) {
                Ok(status) => status,
                Err(e) => {
                    eprintln!("keel cluster status: {e}");
                    std::process::exit(1);
                }
            };
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            print!("{}", keel_net::status::render(&status, now_ms));
            Ok(())
        }
    }
}
