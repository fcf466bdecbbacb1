//! Topic configs: Kafka's names, the values Keel honours, and the broker-wide defaults behind
//! them.
//!
//! A topic's configs are [`super::MetadataRecord::Config`] records in the metadata log: a key
//! set to a value, or back to its default. Every node resolves a topic's effective
//! [`TopicConfig`] from the keys its image holds and the node's defaults (`Config::
//! topic_defaults`, from `keel serve`'s settings), so a change reaches every replica when it
//! commits. Values are checked before they are written ([`check`]); a value that no longer
//! parses when applied (it cannot, but a record is data from the disk) leaves the default.

use std::collections::BTreeMap;

/// Kafka's `ConfigSource` values (DescribeConfigs).
pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

/// Kafka's `ConfigType` values (DescribeConfigs v3+).
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

/// One topic config Keel knows.
#[derive(Debug, Clone, Copy)]
pub struct ConfigKey {
    pub name: &'static str,
    /// The broker setting that supplies its default (Kafka's synonym).
    pub broker_name: &'static str,
    pub config_type: i8,
    /// A list of values (cleanup.policy): IncrementalAlterConfigs may APPEND and SUBTRACT.
    pub list: bool,
    pub documentation: &'static str,
}

/// Every topic config Keel knows, by name.
pub const KEYS: [ConfigKey; 11] = [
    ConfigKey {
        name: "cleanup.policy",
        broker_name: "log.cleanup.policy",
        config_type: TYPE_LIST,
        list: true,
        documentation: "delete: old segments go by retention.ms and retention.bytes; compact: \
                        every key's latest record is to be kept (no cleaner runs yet: a \
                        compacted topic keeps everything, and retention leaves it alone); or \
                        both.",
    },
    ConfigKey {
        name: "compression.type",
        broker_name: "compression.type",
        config_type: TYPE_STRING,
        list: false,
        documentation: "Batches are stored as producers compressed them.",
    },
    ConfigKey {
        name: "delete.retention.ms",
        broker_name: "log.cleaner.delete.retention.ms",
        config_type: TYPE_LONG,
        list: false,
        documentation: "How long the cleaner keeps a tombstone (a record with a null value) \
                        of a compacted topic.",
    },
    ConfigKey {
        name: "max.message.bytes",
        broker_name: "message.max.bytes",
        config_type: TYPE_INT,
        list: false,
        documentation: "The largest batch a producer may send.",
    },
    ConfigKey {
        name: "message.timestamp.type",
        broker_name: "log.message.timestamp.type",
        config_type: TYPE_STRING,
        list: false,
        documentation: "CreateTime: batches keep the producer's timestamps; LogAppendTime: \
                        the leader stamps each batch with its own clock.",
    },
    ConfigKey {
        name: "min.compaction.lag.ms",
        broker_name: "log.cleaner.min.compaction.lag.ms",
        config_type: TYPE_LONG,
        list: false,
        documentation: "A record younger than this is never compacted away.",
    },
    ConfigKey {
        name: "min.insync.replicas",
        broker_name: "min.insync.replicas",
        config_type: TYPE_INT,
        list: false,
        documentation: "An acks=all write waits for a majority of the replicas, which meets \
                        any minimum up to a majority.",
    },
    ConfigKey {
        name: "retention.bytes",
        broker_name: "log.retention.bytes",
        config_type: TYPE_LONG,
        list: false,
        documentation: "With cleanup.policy delete, the oldest segments go while the \
                        partition would still hold this many bytes without them (-1: no \
                        limit).",
    },
    ConfigKey {
        name: "retention.ms",
        broker_name: "log.retention.ms",
        config_type: TYPE_LONG,
        list: false,
        documentation: "With cleanup.policy delete, a segment goes once its newest record is \
                        this old (-1: kept for ever).",
    },
    ConfigKey {
        name: "segment.bytes",
        broker_name: "log.segment.bytes",
        config_type: TYPE_INT,
        list: false,
        documentation: "Segment files roll at this size.",
    },
    ConfigKey {
        name: "segment.ms",
        broker_name: "log.roll.ms",
        config_type: TYPE_LONG,
        list: false,
        documentation: "A segment rolls once its first batch is this old, so that retention \
                        and compaction can reach it.",
    },
];

/// The smallest segment Keel rolls at: one batch header (a smaller one would roll at every
/// batch anyway).
pub const SEGMENT_BYTES_MIN: i64 = 61;

pub fn key(name: &str) -> Option<&'static ConfigKey> {
    KEYS.iter().find(|k| k.name == name)
}

/// A topic's effective configs (or, as `Config::topic_defaults`, the node's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// cleanup.policy contains `delete`.
    pub delete: bool,
    /// cleanup.policy contains `compact`.
    pub compact: bool,
    pub delete_retention_ms: i64,
    pub max_message_bytes: i64,
    /// message.timestamp.type is LogAppendTime.
    pub log_append_time: bool,
    pub min_compaction_lag_ms: i64,
    pub min_insync_replicas: i64,
    pub retention_bytes: i64,
    pub retention_ms: i64,
    pub segment_bytes: i64,
    pub segment_ms: i64,
}

impl Default for TopicConfig {
    /// Kafka's defaults.
    fn default() -> Self {
        TopicConfig {
            delete: true,
            compact: false,
            delete_retention_ms: 86_400_000,
            max_message_bytes: 1_048_588,
            log_append_time: false,
            min_compaction_lag_ms: 0,
            min_insync_replicas: 1,
            retention_bytes: -1,
            retention_ms: 604_800_000,
            segment_bytes: 1 << 30,
            segment_ms: 604_800_000,
        }
    }
}

impl TopicConfig {
    /// The config with `key` set to `value`, or why that value is not one Keel takes (the
    /// message names the key).
    pub fn with(&self, key: &str, value: &str) -> Result<TopicConfig, String> {
        let int = |min: i64, max: i64| match value.trim().parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(format!(
                "{key} must be an integer from {min} to {max}, not {value:?}"
            )),
        };
        let mut config = self.clone();
        match key {
            "cleanup.policy" => {
                let policies = parse_list(value);
                if policies.is_empty() {
                    return Err("cleanup.policy must name delete, compact or both".into());
                }
                config.delete = false;
                config.compact = false;
                for policy in policies {
                    match policy {
                        "delete" => config.delete = true,
                        "compact" => config.compact = true,
                        other => {
                            return Err(format!(
                                "cleanup.policy {other:?}: only \"delete\" and \"compact\""
                            ))
                        }
                    }
                }
            }
            "compression.type" if value == "producer" => {}
            "compression.type" => {
                return Err(format!(
                    "compression.type {value:?}: only \"producer\" (batches are stored as sent)"
                ))
            }
            "delete.retention.ms" => config.delete_retention_ms = int(0, i64::MAX)?,
            "max.message.bytes" => config.max_message_bytes = int(0, i32::MAX.into())?,
            "message.timestamp.type" => {
                config.log_append_time = match value {
                    "CreateTime" => false,
                    "LogAppendTime" => true,
                    _ => {
                        return Err(format!(
                            "message.timestamp.type {value:?}: CreateTime or LogAppendTime"
                        ))
                    }
                }
            }
            "min.compaction.lag.ms" => config.min_compaction_lag_ms = int(0, i64::MAX)?,
            "min.insync.replicas" => config.min_insync_replicas = int(1, i32::MAX.into())?,
            "retention.bytes" => config.retention_bytes = int(-1, i64::MAX)?,
            "retention.ms" => config.retention_ms = int(-1, i64::MAX)?,
            "segment.bytes" => config.segment_bytes = int(SEGMENT_BYTES_MIN, i32::MAX.into())?,
            "segment.ms" => config.segment_ms = int(1, i64::MAX)?,
            _ => return Err(format!("{key} is not a topic config Keel knows")),
        }
        Ok(config)
    }

    /// The effective configs of a topic that sets `set`, over these defaults. A value that
    /// does not parse (never written so: [`check`] comes first) leaves the default.
    pub fn resolve(&self, set: &BTreeMap<String, String>) -> TopicConfig {
        let mut config = self.clone();
        for (key, value) in set {
            if let Ok(next) = config.with(key, value) {
                config = next;
            }
        }
        config
    }

    /// `name`'s value, as DescribeConfigs shows it.
    pub fn value(&self, name: &str) -> Option<String> {
        Some(match name {
            "cleanup.policy" => match (self.delete, self.compact) {
                (true, true) => "compact,delete".into(),
                (false, true) => "compact".into(),
                _ => "delete".into(),
            },
            "compression.type" => "producer".into(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "message.timestamp.type" => match self.log_append_time {
                true => "LogAppendTime".into(),
                false => "CreateTime".into(),
            },
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "min.insync.replicas" => self.min_insync_replicas.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            _ => return None,
        })
    }
}

/// A list config's values: comma-separated, trimmed, empty ones dropped.
pub fn parse_list(value: &str) -> Vec<&str> {
    (value.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// A topic config a client may set, checked: Kafka's name, a value Keel honours. Returns why
/// not otherwise (the answer's INVALID_CONFIG message). `replication_factor` bounds
/// `min.insync.replicas`: an acks=all write waits for a majority of the replicas, so any
/// minimum up to a majority holds.
pub fn check(key: &str, value: &str, replication_factor: usize) -> Result<(), String> {
    let config = TopicConfig::default().with(key, value)?;
    let majority = replication_factor / 2 + 1;
    if key == "min.insync.replicas" && config.min_insync_replicas as usize > majority {
        return Err(format!(
            "min.insync.replicas {}: an acks=all write waits for a majority ({majority} of \
             {replication_factor} replicas), no more",
            config.min_insync_replicas
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_by_name_and_range() {
        assert!(check("retention.ms", "3600000", 1).is_ok());
        assert!(check("retention.ms", "-1", 1).is_ok());
        let e = check("retention.ms", "-2", 1).unwrap_err();
        assert!(e.contains("retention.ms"), "{e}");
        let e = check("retention.msx", "1", 1).unwrap_err();
        assert!(e.contains("retention.msx"), "{e}");
        assert!(check("cleanup.policy", "compact, delete", 1).is_ok());
        assert!(check("cleanup.policy", "", 1).is_err());
        assert!(check("cleanup.policy", "compact,shred", 1).is_err());
        assert!(check("segment.bytes", "60", 1).is_err());
        assert!(check("min.insync.replicas", "2", 3).is_ok());
        assert!(check("min.insync.replicas", "3", 3).is_err());
        assert!(check("message.timestamp.type", "LogAppendTime", 1).is_ok());
        assert!(check("message.timestamp.type", "Now", 1).is_err());
    }

    #[test]
    fn a_topic_resolves_over_the_defaults_and_describes_back() {
        let defaults = TopicConfig {
            segment_bytes: 4096,
            ..TopicConfig::default()
        };
        let set = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("retention.ms".to_string(), "1000".to_string()),
        ]);
        let config = defaults.resolve(&set);
        assert!(config.compact && !config.delete);
        assert_eq!(config.retention_ms, 1000);
        assert_eq!(config.segment_bytes, 4096);
        for key in KEYS {
            let value = config.value(key.name).expect("every key has a value");
            assert_eq!(
                config.with(key.name, &value).as_ref(),
                Ok(&config),
                "{}",
                key.name
            );
        }
    }
}
