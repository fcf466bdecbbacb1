//! `keel serve`'s settings: embedded defaults, then a TOML file (`--config`), then flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use keel_core::limits;
use keel_core::node::{Broker, Config, Durability};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// Acknowledge a produce once its bytes are synced to disk (the default).
    Fsync,
    /// Acknowledge at once; trust replication over fsync (Kafka's default).
    Replicated,
}

/// Every setting of `keel serve`. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    pub node_id: i32,
    /// Address to listen on for Kafka clients.
    pub listen: String,
    /// Host clients are told to connect to (default: the listen address's host).
    pub advertised_host: Option<String>,
    /// Port clients are told to connect to (default: the port actually bound), for a broker
    /// behind a proxy or a port mapping.
    pub advertised_port: Option<u16>,
    /// This broker's rack (Kafka's broker.rack): reported to clients, and replicas of a
    /// partition are spread over racks.
    pub rack: Option<String>,
    pub data_dir: PathBuf,
    pub cluster_id: String,
    pub auto_create_topics: bool,
    /// Partitions of a topic created without a count.
    pub num_partitions: i32,
    pub durability: DurabilitySetting,
    /// Segment files roll at this size (log.segment.bytes; a topic's segment.bytes).
    pub segment_bytes: u64,
    /// A segment rolls once its first batch is this old (log.roll.ms; segment.ms).
    pub segment_ms: i64,
    /// Segments whose newest record is this old are deleted (log.retention.ms;
    /// retention.ms; -1: never).
    pub retention_ms: i64,
    /// The oldest segments are deleted while a partition holds more (log.retention.bytes;
    /// retention.bytes; -1: no limit).
    pub retention_bytes: i64,
    /// How often retention is applied (log.retention.check.interval.ms); compaction passes
    /// begin then too.
    pub retention_check_interval_ms: u64,
    /// Bytes per second the cleaner reads at most (log.cleaner.io.max.bytes.per.second).
    pub log_cleaner_io_bytes_per_sec: u64,
    /// Largest request frame accepted (Kafka's socket.request.max.bytes).
    pub max_request_bytes: usize,
    /// Largest batch a producer may send (Kafka's max.message.bytes).
    pub max_message_bytes: usize,
    /// A partition forgets an idempotent producer idle this long (producer.id.expiration.ms).
    pub producer_id_expiration_ms: i64,
    /// The cluster's nodes as `id@host:port`, each at its peer address (this node's
    /// included): every one of them votes in the metadata quorum. Empty: a cluster of one.
    pub voters: Vec<String>,
    /// Address to listen on for the other nodes (default: this node's voter address).
    pub peer_listen: Option<String>,
    /// The node's PRNG seed (topic ids, election timeouts). Not a setting: OS entropy at
    /// every start, unless a test gives one to replay a run (under madsim).
    #[serde(skip)]
    pub seed: Option<u64>,
    /// Address to serve Prometheus's `/metrics` on (default: none, no endpoint; three nodes
    /// on one machine would otherwise fight over one default port).
    pub metrics_listen: Option<String>,
    /// Partitions of `__consumer_offsets` (offsets.topic.num.partitions).
    pub offsets_topic_partitions: i32,
    /// Its replication factor, or every node of a smaller cluster.
    pub offsets_topic_replication_factor: i16,
    /// How long the first rebalance of an empty group waits for more members.
    pub group_initial_rebalance_delay_ms: i32,
    /// The session timeouts a group member may ask for.
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// How long an empty group's committed offsets are kept.
    pub offsets_retention_ms: i64,
    /// KIP-848 groups: how often members heartbeat, and how long one may stay silent.
    pub group_consumer_heartbeat_interval_ms: i32,
    pub group_consumer_session_timeout_ms: i32,
}

/// A cluster node: its id and its peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

impl Voter {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Parses `id@host:port`.
pub fn parse_voter(text: &str) -> anyhow::Result<Voter> {
    let (id, address) = text
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("voter {text:?}: expected id@host:port"))?;
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("voter {text:?}: expected id@host:port"))?;
    Ok(Voter {
        id: id
            .parse()
            .map_err(|_| anyhow::anyhow!("voter {text:?}: {id:?} is not a node id"))?,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: port
            .parse()
            .map_err(|_| anyhow::anyhow!("voter {text:?}: {port:?} is not a port"))?,
    })
}

impl Default for ServeConfig {
    fn default() -> Self {
        let core = Config::default();
        ServeConfig {
            node_id: core.node_id,
            listen: "127.0.0.1:9092".into(),
            advertised_host: None,
            advertised_port: None,
            rack: None,
            data_dir: PathBuf::from("keel-data"),
            cluster_id: core.cluster_id,
            auto_create_topics: core.auto_create_topics,
            num_partitions: core.default_partitions,
            durability: DurabilitySetting::Fsync,
            segment_bytes: core.topic_defaults.segment_bytes as u64,
            segment_ms: core.topic_defaults.segment_ms,
            retention_ms: core.topic_defaults.retention_ms,
            retention_bytes: core.topic_defaults.retention_bytes,
            retention_check_interval_ms: core.retention_check_interval_ms,
            log_cleaner_io_bytes_per_sec: core.log_cleaner_io_bytes_per_sec,
            max_request_bytes: core.max_frame_size_bytes,
            max_message_bytes: core.topic_defaults.max_message_bytes as usize,
            producer_id_expiration_ms: core.log.producer_id_expiration_ms,
            voters: Vec::new(),
            peer_listen: None,
            seed: None,
            metrics_listen: None,
            offsets_topic_partitions: core.offsets_topic_partitions,
            offsets_topic_replication_factor: core.offsets_topic_replication_factor,
            group_initial_rebalance_delay_ms: core.groups.initial_rebalance_delay_ms,
            group_min_session_timeout_ms: core.groups.min_session_timeout_ms,
            group_max_session_timeout_ms: core.groups.max_session_timeout_ms,
            offsets_retention_ms: core.groups.offsets_retention_ms,
            group_consumer_heartbeat_interval_ms: core.groups.consumer_heartbeat_interval_ms,
            group_consumer_session_timeout_ms: core.groups.consumer_session_timeout_ms,
        }
    }
}

impl ServeConfig {
    pub fn from_toml(text: &str) -> anyhow::Result<ServeConfig> {
        Ok(toml::from_str(text)?)
    }

    /// The cluster's nodes, checked: distinct ids, this node among them (none: a cluster of
    /// one).
    pub fn voters(&self) -> anyhow::Result<Vec<Voter>> {
        let voters = (self.voters.iter())
            .map(|v| parse_voter(v))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut ids: Vec<i32> = voters.iter().map(|v| v.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != voters.len() {
            anyhow::bail!("voters {:?}: a node id appears twice", self.voters);
        }
        if !voters.is_empty() && !ids.contains(&self.node_id) {
            anyhow::bail!(
                "voters {:?} do not include this node ({}): pass --node-id",
                self.voters,
                self.node_id
            );
        }
        if voters.len() > limits::REPLICATION_FACTOR_MAX {
            anyhow::bail!(
                "{} voters, more than the {} a quorum may have",
                voters.len(),
                limits::REPLICATION_FACTOR_MAX
            );
        }
        Ok(voters)
    }

    /// Where to listen for peers: `peer_listen`, or this node's own voter address.
    pub fn peer_listen(&self) -> anyhow::Result<Option<String>> {
        if let Some(listen) = &self.peer_listen {
            return Ok(Some(listen.clone()));
        }
        Ok((self.voters()?.into_iter())
            .find(|v| v.id == self.node_id)
            .map(|v| v.address()))
    }

    /// The core's configuration, advertising `local` (the address actually bound).
    pub fn node_config(&self, local: SocketAddr) -> Config {
        let mut config = Config {
            node_id: self.node_id,
            advertised_host: self
                .advertised_host
                .clone()
                .unwrap_or_else(|| local.ip().to_string()),
            advertised_port: i32::from(self.advertised_port.unwrap_or(local.port())),
            rack: self.rack.clone(),
            cluster_id: self.cluster_id.clone(),
            auto_create_topics: self.auto_create_topics,
            default_partitions: self.num_partitions,
            durability: match self.durability {
                DurabilitySetting::Fsync => Durability::Fsync,
                DurabilitySetting::Replicated => Durability::Replicated,
            },
            max_frame_size_bytes: self.max_request_bytes,
            retention_check_interval_ms: self.retention_check_interval_ms,
            log_cleaner_io_bytes_per_sec: self.log_cleaner_io_bytes_per_sec,
            // Topic ids come from this seed: it must differ at every start, even in a
            // container where the pid and the port are always the same.
            seed: self.seed.unwrap_or_else(os_random_seed),
            ..Config::default()
        };
        // The other nodes' client addresses are known once they register with the quorum
        // (port 0 until then: clients are not told of them before).
        config.cluster = (self.voters().unwrap_or_default().into_iter())
            .map(|v| Broker {
                node_id: v.id,
                host: v.host,
                port: 0,
                rack: None,
            })
            .map(|b| match b.node_id == config.node_id {
                true => Broker {
                    node_id: config.node_id,
                    host: config.advertised_host.clone(),
                    port: config.advertised_port,
                    rack: config.rack.clone(),
                },
                false => b,
            })
            .collect();
        config.offsets_topic_partitions = self.offsets_topic_partitions;
        config.offsets_topic_replication_factor = self.offsets_topic_replication_factor;
        config.groups.initial_rebalance_delay_ms = self.group_initial_rebalance_delay_ms;
        config.groups.min_session_timeout_ms = self.group_min_session_timeout_ms;
        config.groups.max_session_timeout_ms = self.group_max_session_timeout_ms;
        config.groups.offsets_retention_ms = self.offsets_retention_ms;
        config.groups.consumer_heartbeat_interval_ms = self.group_consumer_heartbeat_interval_ms;
        config.groups.consumer_session_timeout_ms = self.group_consumer_session_timeout_ms;
        config.topic_defaults.segment_bytes = self.segment_bytes as i64;
        config.topic_defaults.segment_ms = self.segment_ms;
        config.topic_defaults.retention_ms = self.retention_ms;
        config.topic_defaults.retention_bytes = self.retention_bytes;
        config.topic_defaults.max_message_bytes = self.max_message_bytes as i64;
        config.log.producer_id_expiration_ms = self.producer_id_expiration_ms;
        config
    }
}

/// The process's open-file limit, raised first to its hard limit: the more files may stay
/// open, the fewer the disk closes and opens again.
pub fn open_files_max() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1_024, |(soft, _)| soft)
        }
    }
}

/// How many files the disk may keep open under an `open_files` limit: what connections,
/// the listener and the runtime need is kept back (a quarter of a small limit).
pub fn descriptors_for_files(open_files: u64) -> usize {
    let open_files = usize::try_from(open_files).unwrap_or(usize::MAX);
    let reserved = limits::FILES_RESERVED.min(open_files / 4);
    (open_files - reserved).min(limits::OPEN_FILES_MAX)
}

/// 64 bits from the operating system's entropy source.
fn os_random_seed() -> u64 {
    getrandom::u64().expect("the operating system's random source works")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_budget_follows_the_open_file_limit() {
        assert_eq!(descriptors_for_files(1_024), 768);
        assert_eq!(descriptors_for_files(30_000), 30_000 - 1_024);
        assert_eq!(descriptors_for_files(u64::MAX), limits::OPEN_FILES_MAX);
    }

    #[test]
    fn the_three_node_example_is_a_valid_cluster() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster");
        let mut listens = Vec::new();
        for id in 1..=3 {
            let path = dir.join(format!("node-{id}.toml"));
            let config = ServeConfig::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(config.node_id, id);
            assert_eq!(config.voters().unwrap().len(), 3);
            let peer = config.peer_listen().unwrap().expect("a peer address");
            let metrics = config.metrics_listen.clone().expect("a metrics address");
            listens.extend([config.listen.clone(), peer, metrics]);
        }
        listens.sort();
        listens.dedup();
        assert_eq!(listens.len(), 9, "every address distinct");
    }

    #[test]
    fn every_start_seeds_the_node_differently() {
        let config = ServeConfig::default();
        let local: SocketAddr = "127.0.0.1:9092".parse().unwrap();
        assert_ne!(
            config.node_config(local).seed,
            config.node_config(local).seed,
            "same pid and port, yet the seed must differ"
        );
    }

    #[test]
    fn toml_overrides_the_defaults_and_unknown_keys_are_errors() {
        let config = ServeConfig::from_toml(
            "listen = \"127.0.0.1:19092\"\nnum_partitions = 8\ndurability = \"replicated\"\n",
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:19092");
        assert_eq!(config.num_partitions, 8);
        assert_eq!(config.durability, DurabilitySetting::Replicated);
        assert_eq!(config.data_dir, PathBuf::from("keel-data"));
        assert!(ServeConfig::from_toml("lisen = \"x\"").is_err());
    }
}
