//! Topic configs over the Kafka protocol: DescribeConfigs, AlterConfigs and
//! IncrementalAlterConfigs (SET, DELETE, APPEND, SUBTRACT).
//!
//! A change is a set of `Config` records in the metadata log (`metadata::configs` says which
//! keys and values Keel takes). The controller writes them and answers once its image has
//! them, as for CreateTopics. Any other node takes the request too, since clients send
//! config changes to any broker (Kafka's brokers forward them to the controller, KIP-590):
//! it checks the change, forwards the records in its next peer frame, and answers once its
//! own image shows the change, or REQUEST_TIMED_OUT after [`FORWARDED_CHANGE_TIMEOUT_MS`].

use std::collections::BTreeMap;

use super::{Instant, Node, PendingChange};
use crate::disk::Disk;
use crate::metadata::configs::{self, TopicConfig, SOURCE_DEFAULT, SOURCE_TOPIC};
use crate::metadata::MetadataRecord;
use crate::protocol::codes;
use crate::protocol::messages::*;
use crate::protocol::wire::Uuid;

pub(super) const RESOURCE_TYPE_TOPIC: i8 = 2;
pub(super) const RESOURCE_TYPE_BROKER: i8 = 4;

/// How long a node that forwarded a config change waits to see it in its image before it
/// answers REQUEST_TIMED_OUT (the change may still be applied: clients describe and see).
pub(super) const FORWARDED_CHANGE_TIMEOUT_MS: u64 = 30_000;

/// IncrementalAlterConfigs' operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// One resource of an AlterConfigs or IncrementalAlterConfigs request, in one shape: each
/// key's operation and value. AlterConfigs replaces a topic's whole set (`replace`).
struct Alteration {
    resource_type: i8,
    resource_name: String,
    replace: bool,
    ops: Vec<(String, i8, Option<String>)>,
}

/// One resource's answer (both APIs answer alike).
#[derive(Debug, Clone)]
pub(super) struct AlterResult {
    pub error_code: i16,
    pub error_message: Option<String>,
    pub resource_type: i8,
    pub resource_name: String,
}

/// What a forwarded change waits to see in the image: each topic's keys and values.
pub(super) type Expected = Vec<(Uuid, String, Option<String>)>;

impl<D: Disk> Node<D> {
    /// The effective configs of `topic` (its own keys over this node's defaults).
    pub(crate) fn topic_config(&self, topic: &str) -> TopicConfig {
        match self.image.topic(topic) {
            Some(t) => self.config.topic_defaults.resolve(&t.configs),
            None => self.config.topic_defaults.clone(),
        }
    }

    pub(super) fn describe_configs(
        &mut self,
        request: &DescribeConfigsRequest,
        version: i16,
    ) -> DescribeConfigsResponse {
        use crate::protocol::messages::describe_configs_response::*;
        let wanted = |keys: &Option<Vec<String>>, name: &str| {
            keys.as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k == name))
        };
        let mut results = Vec::new();
        for resource in &request.resources {
            let mut result = DescribeConfigsResult {
                resource_type: resource.resource_type,
                resource_name: resource.resource_name.clone(),
                error_message: None,
                ..Default::default()
            };
            let name = &resource.resource_name;
            match resource.resource_type {
                RESOURCE_TYPE_TOPIC => {
                    let Some(topic) = self.image.topic(name) else {
                        result.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION;
                        result.error_message = Some(format!("no topic {name}"));
                        results.push(result);
                        continue;
                    };
                    let defaults = &self.config.topic_defaults;
                    let effective = defaults.resolve(&topic.configs);
                    for key in configs::KEYS {
                        if !wanted(&resource.configuration_keys, key.name) {
                            continue;
                        }
                        let default = defaults.value(key.name).expect("a known key");
                        let own = (topic.configs.get(key.name))
                            .filter(|v| TopicConfig::default().with(key.name, v).is_ok());
                        let mut synonyms = Vec::new();
                        if request.include_synonyms {
                            if let Some(value) = own {
                                synonyms.push(DescribeConfigsSynonym {
                                    name: key.name.to_string(),
                                    value: Some(value.clone()),
                                    source: SOURCE_TOPIC,
                                    ..Default::default()
                                });
                            }
                            synonyms.push(DescribeConfigsSynonym {
                                name: key.broker_name.to_string(),
                                value: Some(default.clone()),
                                source: SOURCE_DEFAULT,
                                ..Default::default()
                            });
                        }
                        result.configs.push(DescribeConfigsResourceResult {
                            name: key.name.to_string(),
                            value: effective.value(key.name),
                            read_only: false,
                            config_source: if own.is_some() {
                                SOURCE_TOPIC
                            } else {
                                SOURCE_DEFAULT
                            },
                            is_sensitive: false,
                            synonyms,
                            config_type: if version >= 3 { key.config_type } else { 0 },
                            documentation: request
                                .include_documentation
                                .then(|| key.documentation.to_string()),
                            ..Default::default()
                        });
                    }
                }
                RESOURCE_TYPE_BROKER => {
                    let defaults = &self.config.topic_defaults;
                    let mut entries: Vec<(String, String, i8, &str)> = vec![
                        (
                            "auto.create.topics.enable".into(),
                            self.config.auto_create_topics.to_string(),
                            1,
                            "Metadata requests create unknown topics.",
                        ),
                        (
                            "num.partitions".into(),
                            self.config.default_partitions.to_string(),
                            3,
                            "Partitions of an auto-created topic.",
                        ),
                        (
                            "socket.request.max.bytes".into(),
                            self.config.max_frame_size_bytes.to_string(),
                            3,
                            "The largest request accepted.",
                        ),
                    ];
                    for key in configs::KEYS {
                        let value = defaults.value(key.name).expect("a known key");
                        entries.push((
                            key.broker_name.to_string(),
                            value,
                            key.config_type,
                            key.documentation,
                        ));
                    }
                    entries.sort();
                    entries.dedup_by(|a, b| a.0 == b.0);
                    for (name, value, config_type, documentation) in entries {
                        if !wanted(&resource.configuration_keys, &name) {
                            continue;
                        }
                        result.configs.push(DescribeConfigsResourceResult {
                            name,
                            value: Some(value),
                            read_only: true,
                            config_source: configs::SOURCE_STATIC_BROKER,
                            is_sensitive: false,
                            config_type: if version >= 3 { config_type } else { 0 },
                            documentation: request
                                .include_documentation
                                .then(|| documentation.to_string()),
                            ..Default::default()
                        });
                    }
                }
                other => {
                    result.error_code = codes::INVALID_REQUEST;
                    result.error_message = Some(format!("resource type {other} is not supported"));
                }
            }
            results.push(result);
        }
        DescribeConfigsResponse {
            results,
            ..Default::default()
        }
    }

    pub(super) fn alter_configs(
        &mut self,
        now: Instant,
        request: &AlterConfigsRequest,
    ) -> (PendingChange, Option<super::AdminWait>) {
        let alterations = (request.resources.iter())
            .map(|r| Alteration {
                resource_type: r.resource_type,
                resource_name: r.resource_name.clone(),
                replace: true,
                ops: (r.configs.iter())
                    .map(|c| (c.name.clone(), OP_SET, c.value.clone()))
                    .collect(),
            })
            .collect();
        self.alter(now, alterations, request.validate_only, false)
    }

    pub(super) fn incremental_alter_configs(
        &mut self,
        now: Instant,
        request: &IncrementalAlterConfigsRequest,
    ) -> (PendingChange, Option<super::AdminWait>) {
        let alterations = (request.resources.iter())
            .map(|r| Alteration {
                resource_type: r.resource_type,
                resource_name: r.resource_name.clone(),
                replace: false,
                ops: (r.configs.iter())
                    .map(|c| (c.name.clone(), c.config_operation, c.value.clone()))
                    .collect(),
            })
            .collect();
        self.alter(now, alterations, request.validate_only, true)
    }

    fn alter(
        &mut self,
        now: Instant,
        alterations: Vec<Alteration>,
        validate_only: bool,
        incremental: bool,
    ) -> (PendingChange, Option<super::AdminWait>) {
        let mut results = Vec::new();
        let mut records = Vec::new();
        let mut altered = Vec::new();
        for alteration in alterations {
            let mut result = AlterResult {
                error_code: codes::NONE,
                error_message: None,
                resource_type: alteration.resource_type,
                resource_name: alteration.resource_name.clone(),
            };
            match self.config_records(&alteration) {
                Err((code, message)) => {
                    result.error_code = code;
                    result.error_message = Some(message);
                }
                Ok((id, changes)) => {
                    if !validate_only && !changes.is_empty() {
                        altered.push((results.len(), id));
                        records.extend(changes);
                    }
                }
            }
            results.push(result);
        }
        let pending = PendingChange::AlterConfigs {
            incremental,
            results,
            altered,
        };
        if records.is_empty() {
            return (pending, None);
        }
        if self.check_controller().is_ok() {
            return self.write_change(now, &records, pending);
        }
        // Another node is the controller (or none is known yet): the records go to it, and
        // the answer waits to see them applied.
        let expected: Expected = (records.iter())
            .filter_map(|r| match r {
                MetadataRecord::Config { id, key, value } => {
                    Some((*id, key.clone(), value.clone()))
                }
                _ => None,
            })
            .collect();
        let mut pending = pending;
        if !self.send_to_controller(now, records) {
            pending.refuse(codes::NOT_CONTROLLER, "no controller is elected yet");
            return (pending, None);
        }
        let deadline = now.plus_millis(FORWARDED_CHANGE_TIMEOUT_MS);
        (
            pending,
            Some(super::AdminWait::Forwarded { deadline, expected }),
        )
    }

    /// The records that make one resource's alteration, checked, or why it is refused.
    fn config_records(
        &self,
        alteration: &Alteration,
    ) -> Result<(Uuid, Vec<MetadataRecord>), (i16, String)> {
        let name = &alteration.resource_name;
        match alteration.resource_type {
            RESOURCE_TYPE_TOPIC => {}
            RESOURCE_TYPE_BROKER => {
                return Err((
                    codes::INVALID_REQUEST,
                    "broker settings are fixed when a node starts (keel serve --help); \
                     topic configs can be changed"
                        .into(),
                ))
            }
            other => {
                return Err((
                    codes::INVALID_REQUEST,
                    format!("resource type {other} is not supported"),
                ))
            }
        }
        let Some(topic) = self.image.topic(name) else {
            return Err((
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                format!("no topic {name}"),
            ));
        };
        if Self::internal_topic(name) {
            return Err((
                codes::INVALID_REQUEST,
                format!("{name} is internal: its configs are Keel's"),
            ));
        }
        let factor = topic.replicas.first().map_or(1, Vec::len);
        let mut set: BTreeMap<String, String> = match alteration.replace {
            true => BTreeMap::new(),
            false => topic.configs.clone(),
        };
        let mut seen = Vec::new();
        for (key, op, value) in &alteration.ops {
            if seen.contains(&key) {
                return Err((
                    codes::INVALID_REQUEST,
                    format!("{key} is named twice for topic {name}"),
                ));
            }
            seen.push(key);
            let Some(known) = configs::key(key) else {
                return Err((
                    codes::INVALID_CONFIG,
                    format!("{key} is not a topic config Keel knows"),
                ));
            };
            let current = || {
                (set.get(key).cloned())
                    .unwrap_or_else(|| self.config.topic_defaults.value(key).expect("known"))
            };
            match (*op, value) {
                (OP_SET, Some(value)) => {
                    set.insert(key.clone(), value.clone());
                }
                (OP_SET, None) => {
                    return Err((
                        codes::INVALID_CONFIG,
                        format!("{key}: a null value cannot be set (DELETE restores the default)"),
                    ))
                }
                (OP_DELETE, _) => {
                    set.remove(key);
                }
                (OP_APPEND | OP_SUBTRACT, _) if !known.list => {
                    return Err((
                        codes::INVALID_CONFIG,
                        format!("{key} is not a list: only SET and DELETE apply to it"),
                    ))
                }
                (OP_APPEND, Some(value)) => {
                    let now_set = current();
                    let mut values: Vec<&str> = configs::parse_list(&now_set);
                    for v in configs::parse_list(value) {
                        if !values.contains(&v) {
                            values.push(v);
                        }
                    }
                    set.insert(key.clone(), values.join(","));
                }
                (OP_SUBTRACT, Some(value)) => {
                    let now_set = current();
                    let gone = configs::parse_list(value);
                    let values: Vec<&str> = (configs::parse_list(&now_set).into_iter())
                        .filter(|v| !gone.contains(v))
                        .collect();
                    set.insert(key.clone(), values.join(","));
                }
                (OP_APPEND | OP_SUBTRACT, None) => {
                    return Err((
                        codes::INVALID_CONFIG,
                        format!("{key}: APPEND and SUBTRACT need a value"),
                    ))
                }
                (other, _) => {
                    return Err((
                        codes::INVALID_REQUEST,
                        format!("{key}: unknown config operation {other}"),
                    ))
                }
            }
        }
        for (key, value) in &set {
            configs::check(key, value, factor).map_err(|m| (codes::INVALID_CONFIG, m))?;
        }
        let mut changes = Vec::new();
        for (key, value) in &set {
            if topic.configs.get(key) != Some(value) {
                changes.push(MetadataRecord::Config {
                    id: topic.id,
                    key: key.clone(),
                    value: Some(value.clone()),
                });
            }
        }
        for key in topic.configs.keys() {
            if !set.contains_key(key) {
                changes.push(MetadataRecord::Config {
                    id: topic.id,
                    key: key.clone(),
                    value: None,
                });
            }
        }
        Ok((topic.id, changes))
    }

    /// Whether the image shows every key and value a forwarded change set, or a topic it
    /// changed is gone (the answer then says so).
    pub(super) fn image_shows(&self, expected: &Expected) -> bool {
        let gone = (expected.iter()).any(|(id, ..)| self.image.topic_by_id(id).is_none());
        gone || expected.iter().all(|(id, key, value)| {
            (self.image.topic_by_id(id)).is_some_and(|t| t.configs.get(key) == value.as_ref())
        })
    }
}

/// The answer to AlterConfigs or IncrementalAlterConfigs, from its results.
pub(super) fn alter_response(incremental: bool, results: &[AlterResult]) -> Response {
    if incremental {
        use crate::protocol::messages::incremental_alter_configs_response::*;
        Response::IncrementalAlterConfigs(IncrementalAlterConfigsResponse {
            responses: (results.iter())
                .map(|r| AlterConfigsResourceResponse {
                    error_code: r.error_code,
                    error_message: r.error_message.clone(),
                    resource_type: r.resource_type,
                    resource_name: r.resource_name.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    } else {
        use crate::protocol::messages::alter_configs_response::*;
        Response::AlterConfigs(AlterConfigsResponse {
            responses: (results.iter())
                .map(|r| AlterConfigsResourceResponse {
                    error_code: r.error_code,
                    error_message: r.error_message.clone(),
                    resource_type: r.resource_type,
                    resource_name: r.resource_name.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }
}
