//! The cluster's metadata: the records the metadata quorum commits, and the image every node
//! builds from them.
//!
//! The quorum is a Raft group like any partition's (KRaft's `__cluster_metadata`): its log
//! is a partition log whose batches hold [`MetadataRecord`]s, its voters are the cluster's
//! nodes, and its leader is the controller. Only the controller writes to it (a broker
//! forwards what it wants written, such as an auto-created topic, to the controller in its
//! peer frames). Every node applies the batches below the group's high watermark, in order,
//! to its [`MetadataImage`], which is what request handlers read for topics, ids and
//! assignments, and what decides which partition replicas the node keeps on its disk.
//!
//! Applying is deterministic and never fails: a record that no longer makes sense when its
//! turn comes (a topic created twice by two racing requests, partitions added to a topic
//! deleted meanwhile) changes nothing, on every node alike, so images that applied the same
//! prefix are equal.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::limits;
use crate::protocol::wire::Uuid;

pub mod configs;

/// The metadata log's topic name and id (Kafka's, `Uuid.METADATA_TOPIC_ID`): hidden from
/// clients, refused to CreateTopics, Produce and Fetch.
pub const METADATA_TOPIC: &str = "__cluster_metadata";
pub const METADATA_TOPIC_ID: Uuid = Uuid([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

/// The record format this code writes and reads (the first byte of every record).
const RECORD_VERSION: u8 = 0;
const TAG_TOPIC: u8 = 1;
const TAG_PARTITIONS: u8 = 2;
const TAG_REMOVE_TOPIC: u8 = 3;
const TAG_LEADER: u8 = 4;
const TAG_BROKER: u8 = 5;
const TAG_CONFIG: u8 = 6;

/// One change to the cluster's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataRecord {
    /// A topic and every partition's replicas (the first of each list is its preferred
    /// leader).
    Topic {
        name: String,
        id: Uuid,
        replicas: Vec<Vec<i32>>,
    },
    /// Partitions added at the end of a topic.
    Partitions { id: Uuid, replicas: Vec<Vec<i32>> },
    /// A topic deleted.
    RemoveTopic { id: Uuid },
    /// A partition's leader, as it reported itself once its epoch committed (written only
    /// for partitions some broker holds no replica of: the others know their leaders).
    Leader {
        id: Uuid,
        partition: i32,
        leader: i32,
        epoch: i32,
    },
    /// A broker's registration: where clients reach it and its rack, from its own
    /// configuration, at its `incarnation`-th start (a later start's replaces an earlier's).
    Broker {
        id: i32,
        host: String,
        port: i32,
        rack: Option<String>,
        incarnation: u64,
    },
    /// A topic's config set (`Some`) or back to its default (`None`).
    Config {
        id: Uuid,
        key: String,
        value: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("metadata record ends early")]
    Truncated,
    #[error("metadata record version {0}, this node reads {RECORD_VERSION}")]
    Version(u8),
    #[error("unknown metadata record tag {0}")]
    Tag(u8),
    #[error("metadata record count {0} past its maximum")]
    Count(u32),
    #[error("metadata record holds a name that is not UTF-8")]
    Name,
}

impl MetadataRecord {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(RECORD_VERSION);
        match self {
            MetadataRecord::Topic { name, id, replicas } => {
                out.put_u8(TAG_TOPIC);
                put_string(&mut out, name);
                out.put_slice(&id.0);
                put_replicas(&mut out, replicas);
            }
            MetadataRecord::Partitions { id, replicas } => {
                out.put_u8(TAG_PARTITIONS);
                out.put_slice(&id.0);
                put_replicas(&mut out, replicas);
            }
            MetadataRecord::RemoveTopic { id } => {
                out.put_u8(TAG_REMOVE_TOPIC);
                out.put_slice(&id.0);
            }
            MetadataRecord::Leader {
                id,
                partition,
                leader,
                epoch,
            } => {
                out.put_u8(TAG_LEADER);
                out.put_slice(&id.0);
                out.put_i32(*partition);
                out.put_i32(*leader);
                out.put_i32(*epoch);
            }
            MetadataRecord::Broker {
                id,
                host,
                port,
                rack,
                incarnation,
            } => {
                out.put_u8(TAG_BROKER);
                out.put_i32(*id);
                put_string(&mut out, host);
                out.put_i32(*port);
                match rack {
                    Some(rack) => {
                        out.put_u8(1);
                        put_string(&mut out, rack);
                    }
                    None => out.put_u8(0),
                }
                out.put_u64(*incarnation);
            }
            MetadataRecord::Config { id, key, value } => {
                out.put_u8(TAG_CONFIG);
                out.put_slice(&id.0);
                put_string(&mut out, key);
                match value {
                    Some(value) => {
                        out.put_u8(1);
                        put_string(&mut out, value);
                    }
                    None => out.put_u8(0),
                }
            }
        }
        out.freeze()
    }

    /// Decodes a record; every count is checked against what remains and its maximum.
    pub fn decode(mut buf: Bytes) -> Result<MetadataRecord, RecordError> {
        let version = get_u8(&mut buf)?;
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        match get_u8(&mut buf)? {
            TAG_TOPIC => {
                let name = get_string(&mut buf)?;
                let id = get_uuid(&mut buf)?;
                let replicas = get_replicas(&mut buf)?;
                Ok(MetadataRecord::Topic { name, id, replicas })
            }
            TAG_PARTITIONS => {
                let id = get_uuid(&mut buf)?;
                let replicas = get_replicas(&mut buf)?;
                Ok(MetadataRecord::Partitions { id, replicas })
            }
            TAG_REMOVE_TOPIC => Ok(MetadataRecord::RemoveTopic {
                id: get_uuid(&mut buf)?,
            }),
            TAG_LEADER => {
                let id = get_uuid(&mut buf)?;
                need(&buf, 12)?;
                Ok(MetadataRecord::Leader {
                    id,
                    partition: buf.get_i32(),
                    leader: buf.get_i32(),
                    epoch: buf.get_i32(),
                })
            }
            TAG_BROKER => {
                need(&buf, 4)?;
                let id = buf.get_i32();
                let host = get_string(&mut buf)?;
                need(&buf, 4)?;
                let port = buf.get_i32();
                let rack = match get_u8(&mut buf)? {
                    0 => None,
                    _ => Some(get_string(&mut buf)?),
                };
                need(&buf, 8)?;
                let incarnation = buf.get_u64();
                Ok(MetadataRecord::Broker {
                    id,
                    host,
                    port,
                    rack,
                    incarnation,
                })
            }
            TAG_CONFIG => {
                let id = get_uuid(&mut buf)?;
                let key = get_string(&mut buf)?;
                let value = match get_u8(&mut buf)? {
                    0 => None,
                    _ => Some(get_string(&mut buf)?),
                };
                Ok(MetadataRecord::Config { id, key, value })
            }
            tag => Err(RecordError::Tag(tag)),
        }
    }
}

fn put_replicas(out: &mut BytesMut, replicas: &[Vec<i32>]) {
    out.put_u32(replicas.len() as u32);
    for nodes in replicas {
        out.put_u32(nodes.len() as u32);
        for node in nodes {
            out.put_i32(*node);
        }
    }
}

fn put_string(out: &mut BytesMut, text: &str) {
    out.put_u16(text.len() as u16);
    out.put_slice(text.as_bytes());
}

fn get_string(buf: &mut Bytes) -> Result<String, RecordError> {
    let len = get_u16(buf)? as usize;
    need(buf, len)?;
    String::from_utf8(buf.split_to(len).to_vec()).map_err(|_| RecordError::Name)
}

fn need(buf: &Bytes, bytes: usize) -> Result<(), RecordError> {
    if buf.remaining() < bytes {
        return Err(RecordError::Truncated);
    }
    Ok(())
}

fn get_u8(buf: &mut Bytes) -> Result<u8, RecordError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

fn get_u16(buf: &mut Bytes) -> Result<u16, RecordError> {
    need(buf, 2)?;
    Ok(buf.get_u16())
}

fn get_u32(buf: &mut Bytes) -> Result<u32, RecordError> {
    need(buf, 4)?;
    Ok(buf.get_u32())
}

fn get_uuid(buf: &mut Bytes) -> Result<Uuid, RecordError> {
    need(buf, 16)?;
    let mut id = [0u8; 16];
    buf.copy_to_slice(&mut id);
    Ok(Uuid(id))
}

fn get_replicas(buf: &mut Bytes) -> Result<Vec<Vec<i32>>, RecordError> {
    let partitions = get_u32(buf)?;
    // Each partition takes at least its count's four bytes.
    if partitions > limits::PARTITIONS_PER_TOPIC_MAX as u32
        || partitions as usize > buf.remaining() / 4
    {
        return Err(RecordError::Count(partitions));
    }
    let mut replicas = Vec::with_capacity(partitions as usize);
    for _ in 0..partitions {
        let count = get_u32(buf)?;
        if count as usize > limits::REPLICATION_FACTOR_MAX || count as usize > buf.remaining() / 4 {
            return Err(RecordError::Count(count));
        }
        replicas.push((0..count).map(|_| buf.get_i32()).collect());
    }
    Ok(replicas)
}

/// A topic as the image holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicImage {
    pub name: String,
    pub id: Uuid,
    /// Each partition's replicas, the preferred leader first.
    pub replicas: Vec<Vec<i32>>,
    /// Each partition's leader and its epoch, as last reported ((-1, -1): none yet; only
    /// partitions some broker holds no replica of are reported).
    pub leaders: Vec<(i32, i32)>,
    /// Configs set for the topic (the others have their defaults).
    pub configs: BTreeMap<String, String>,
}

/// A broker as it registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerImage {
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    pub incarnation: u64,
}

/// What applying some records changed, for the node to make its disk agree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImageChanges {
    /// Topics created or grown (by id).
    pub grown: BTreeSet<Uuid>,
    /// Topics deleted (by id).
    pub removed: BTreeSet<Uuid>,
    /// Topics whose configs changed (by id): their logs take the new settings.
    pub configured: BTreeSet<Uuid>,
}

/// The metadata every node builds from the committed metadata log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MetadataImage {
    topics: BTreeMap<String, TopicImage>,
    brokers: BTreeMap<i32, BrokerImage>,
    names: BTreeMap<Uuid, String>,
    /// The offset after the last batch applied.
    applied_end: i64,
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&TopicImage> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&TopicImage> {
        self.topics.get(self.names.get(id)?)
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicImage> {
        self.topics.values()
    }

    /// The brokers that registered, by id.
    pub fn brokers(&self) -> &BTreeMap<i32, BrokerImage> {
        &self.brokers
    }

    /// Broker `id`'s registration, as the record that made it.
    pub fn registration(&self, id: i32) -> Option<MetadataRecord> {
        let b = self.brokers.get(&id)?;
        Some(MetadataRecord::Broker {
            id,
            host: b.host.clone(),
            port: b.port,
            rack: b.rack.clone(),
            incarnation: b.incarnation,
        })
    }

    pub fn applied_end(&self) -> i64 {
        self.applied_end
    }

    /// Partition replicas the image assigns, over every topic.
    pub fn replica_count(&self) -> usize {
        self.topics
            .values()
            .flat_map(|t| &t.replicas)
            .map(Vec::len)
            .sum()
    }

    /// Applies one record (see the module docs: a record that no longer makes sense changes
    /// nothing).
    pub fn apply(&mut self, record: &MetadataRecord, changes: &mut ImageChanges) {
        match record {
            MetadataRecord::Topic { name, id, replicas } => {
                if self.topics.contains_key(name)
                    || self.names.contains_key(id)
                    || *id == METADATA_TOPIC_ID
                    || *id == Uuid::default()
                {
                    return;
                }
                self.names.insert(*id, name.clone());
                self.topics.insert(
                    name.clone(),
                    TopicImage {
                        name: name.clone(),
                        id: *id,
                        replicas: replicas.clone(),
                        leaders: vec![(-1, -1); replicas.len()],
                        configs: BTreeMap::new(),
                    },
                );
                changes.grown.insert(*id);
            }
            MetadataRecord::Partitions { id, replicas } => {
                let Some(name) = self.names.get(id) else {
                    return;
                };
                let topic = self.topics.get_mut(name).expect("indexed");
                if topic.replicas.len() + replicas.len() > limits::PARTITIONS_PER_TOPIC_MAX as usize
                {
                    return;
                }
                topic.replicas.extend(replicas.iter().cloned());
                topic.leaders.resize(topic.replicas.len(), (-1, -1));
                changes.grown.insert(*id);
            }
            MetadataRecord::Leader {
                id,
                partition,
                leader,
                epoch,
            } => {
                let Some(name) = self.names.get(id) else {
                    return;
                };
                let topic = self.topics.get_mut(name).expect("indexed");
                if let Some(known) = topic.leaders.get_mut(*partition as usize) {
                    if *partition >= 0 && *epoch > known.1 {
                        *known = (*leader, *epoch);
                    }
                }
            }
            MetadataRecord::RemoveTopic { id } => {
                if let Some(name) = self.names.remove(id) {
                    self.topics.remove(&name);
                    changes.grown.remove(id);
                    changes.configured.remove(id);
                    changes.removed.insert(*id);
                }
            }
            MetadataRecord::Config { id, key, value } => {
                let Some(name) = self.names.get(id) else {
                    return;
                };
                let topic = self.topics.get_mut(name).expect("indexed");
                match value {
                    Some(value) => topic.configs.insert(key.clone(), value.clone()),
                    None => topic.configs.remove(key),
                };
                changes.configured.insert(*id);
            }
            MetadataRecord::Broker {
                id,
                host,
                port,
                rack,
                incarnation,
            } => {
                if self
                    .brokers
                    .get(id)
                    .is_some_and(|b| b.incarnation > *incarnation)
                {
                    return;
                }
                self.brokers.insert(
                    *id,
                    BrokerImage {
                        host: host.clone(),
                        port: *port,
                        rack: rack.clone(),
                        incarnation: *incarnation,
                    },
                );
            }
        }
    }

    /// Marks everything before `end` applied (the end of a batch whose records were applied).
    pub fn applied_to(&mut self, end: i64) {
        debug_assert!(end >= self.applied_end, "the image never goes back");
        self.applied_end = end;
    }

    /// A digest of the image, equal on two nodes exactly when their images are (the
    /// simulator compares images that applied the same prefix).
    pub fn fingerprint(&self) -> u32 {
        let mut buf = BytesMut::new();
        for record in self.brokers.keys().filter_map(|id| self.registration(*id)) {
            buf.put_slice(&record.encode());
        }
        for topic in self.topics.values() {
            let record = MetadataRecord::Topic {
                name: topic.name.clone(),
                id: topic.id,
                replicas: topic.replicas.clone(),
            };
            buf.put_slice(&record.encode());
            for (key, value) in &topic.configs {
                let record = MetadataRecord::Config {
                    id: topic.id,
                    key: key.clone(),
                    value: Some(value.clone()),
                };
                buf.put_slice(&record.encode());
            }
            for (partition, (leader, epoch)) in topic.leaders.iter().enumerate() {
                let record = MetadataRecord::Leader {
                    id: topic.id,
                    partition: partition as i32,
                    leader: *leader,
                    epoch: *epoch,
                };
                buf.put_slice(&record.encode());
            }
        }
        crc32c::crc32c(&buf)
    }
}

/// `brokers` (sorted ids, with their racks) in the order placement walks them: with racks,
/// one broker of each rack in turn (Kafka's rack-alternated list), so that consecutive
/// brokers sit in different racks whenever racks remain; without racks, as they are.
pub fn rack_alternated(brokers: &[(i32, Option<String>)]) -> Vec<i32> {
    if brokers.iter().all(|(_, rack)| rack.is_none()) {
        return brokers.iter().map(|(id, _)| *id).collect();
    }
    let mut by_rack: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (id, rack) in brokers {
        by_rack
            .entry(rack.as_deref().unwrap_or(""))
            .or_default()
            .push(*id);
    }
    let mut ordered = Vec::with_capacity(brokers.len());
    for round in 0.. {
        let before = ordered.len();
        for ids in by_rack.values() {
            if let Some(id) = ids.get(round) {
                ordered.push(*id);
            }
        }
        if ordered.len() == before {
            break;
        }
    }
    ordered
}

/// Replicas for `count` new partitions numbered from `first`, placed evenly over `brokers`
/// (sorted ids): partition `p` starts at broker `(start + p) % n` and takes the next
/// `replication_factor` brokers in turn, so leaders (the first of each list) and replicas
/// spread over all brokers, and a topic's start differs from another's by `start` (drawn by
/// the caller). Kafka places replicas the same way; given [`rack_alternated`] brokers, each
/// partition's replicas span as many racks as there are, up to its replication factor.
pub fn place_replicas(
    brokers: &[i32],
    first: i32,
    count: i32,
    replication_factor: usize,
    start: usize,
) -> Vec<Vec<i32>> {
    let n = brokers.len();
    assert!(replication_factor >= 1 && replication_factor <= n);
    (first..first + count)
        .map(|p| {
            (0..replication_factor)
                .map(|j| brokers[(start + p as usize + j) % n])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Uuid {
        Uuid([n; 16])
    }

    #[test]
    fn records_round_trip_and_lying_counts_are_refused() {
        let records = [
            MetadataRecord::Topic {
                name: "orders".into(),
                id: id(7),
                replicas: vec![vec![1, 2, 3], vec![2, 3, 1]],
            },
            MetadataRecord::Partitions {
                id: id(7),
                replicas: vec![vec![3]],
            },
            MetadataRecord::RemoveTopic { id: id(7) },
            MetadataRecord::Leader {
                id: id(7),
                partition: 1,
                leader: 3,
                epoch: 9,
            },
            MetadataRecord::Broker {
                id: 2,
                host: "kafka-2.example".into(),
                port: 9092,
                rack: Some("eu-west-1b".into()),
                incarnation: 7,
            },
            MetadataRecord::Broker {
                id: 3,
                host: "h".into(),
                port: 1,
                rack: None,
                incarnation: 0,
            },
            MetadataRecord::Config {
                id: id(7),
                key: "retention.ms".into(),
                value: Some("86400000".into()),
            },
            MetadataRecord::Config {
                id: id(7),
                key: "retention.ms".into(),
                value: None,
            },
        ];
        for record in records {
            let bytes = record.encode();
            assert_eq!(MetadataRecord::decode(bytes.clone()), Ok(record));
            for cut in 0..bytes.len() {
                assert!(MetadataRecord::decode(bytes.slice(..cut)).is_err());
            }
        }
        let mut lying = BytesMut::new();
        lying.put_u8(RECORD_VERSION);
        lying.put_u8(TAG_PARTITIONS);
        lying.put_slice(&[1; 16]);
        lying.put_u32(u32::MAX);
        assert_eq!(
            MetadataRecord::decode(lying.freeze()),
            Err(RecordError::Count(u32::MAX))
        );
    }

    #[test]
    fn a_record_that_no_longer_applies_changes_nothing() {
        let mut image = MetadataImage::default();
        let mut changes = ImageChanges::default();
        let create = |name: &str, n| MetadataRecord::Topic {
            name: name.into(),
            id: id(n),
            replicas: vec![vec![1]],
        };
        image.apply(&create("a", 1), &mut changes);
        let before = image.clone();
        // The same name again, and another name with a taken id: nothing.
        image.apply(&create("a", 2), &mut changes);
        image.apply(&create("b", 1), &mut changes);
        assert_eq!(image, before);
        image.apply(&MetadataRecord::RemoveTopic { id: id(1) }, &mut changes);
        assert!(image.topic("a").is_none());
        assert_eq!(changes.removed, BTreeSet::from([id(1)]));
        assert!(
            changes.grown.is_empty(),
            "a topic created and removed leaves nothing to make"
        );
        // Partitions for a topic gone: nothing.
        let after = image.clone();
        let grow = MetadataRecord::Partitions {
            id: id(1),
            replicas: vec![vec![1]],
        };
        image.apply(&grow, &mut changes);
        assert_eq!(image, after);
        // The name is free again, under a new id.
        image.apply(&create("a", 3), &mut changes);
        assert_eq!(image.topic("a").map(|t| t.id), Some(id(3)));
        assert_ne!(image.fingerprint(), before.fingerprint());
    }

    #[test]
    fn replicas_span_racks_when_racks_are_known() {
        let rack = |r: &str| Some(r.to_string());
        let brokers = [
            (1, rack("a")),
            (2, rack("a")),
            (3, rack("b")),
            (4, rack("b")),
            (5, rack("c")),
            (6, rack("c")),
        ];
        let order = rack_alternated(&brokers);
        assert_eq!(order, vec![1, 3, 5, 2, 4, 6]);
        let rack_of: BTreeMap<i32, &str> =
            [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")]
                .into_iter()
                .collect();
        for start in 0..6 {
            for replicas in place_replicas(&order, 0, 12, 3, start) {
                let racks: BTreeSet<_> = replicas.iter().map(|r| rack_of[r]).collect();
                assert_eq!(racks.len(), 3, "{replicas:?} in three racks");
            }
        }
        assert_eq!(rack_alternated(&[(1, None), (2, None)]), vec![1, 2]);
    }

    #[test]
    fn replicas_spread_evenly() {
        let placed = place_replicas(&[1, 2, 3, 4, 5], 0, 10, 3, 2);
        let mut leaders = BTreeMap::new();
        let mut held = BTreeMap::new();
        for replicas in &placed {
            assert_eq!(replicas.len(), 3);
            let distinct: BTreeSet<_> = replicas.iter().collect();
            assert_eq!(distinct.len(), 3, "no broker twice in one partition");
            *leaders.entry(replicas[0]).or_insert(0) += 1;
            for r in replicas {
                *held.entry(*r).or_insert(0) += 1;
            }
        }
        assert!(leaders.values().all(|n| *n == 2), "{leaders:?}");
        assert!(held.values().all(|n| *n == 6), "{held:?}");
    }
}
