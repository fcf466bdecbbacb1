//! What the group coordinator writes to `__consumer_offsets`, in Kafka's own record formats,
//! so the topic reads as Kafka's does:
//!
//! - an offset commit: key v1 (`group`, `topic`, `partition`), value v3 (`offset`,
//!   `leader_epoch`, `metadata`, `commit_timestamp`);
//! - a group's metadata: key v2 (`group`), value v3 (protocol type, generation, protocol,
//!   leader, the state's timestamp, and each member with its subscription and assignment).
//!
//! A record with a null value (a tombstone) removes what its key names. Every count and length
//! read is checked against what remains (the wire helpers), so a damaged record is an error,
//! never a panic or a huge allocation.

use bytes::{Bytes, BytesMut};

use crate::protocol::wire;
use crate::protocol::WireError;

const OFFSET_KEY_V1: i16 = 1;
const OFFSET_KEY_V0: i16 = 0;
const GROUP_KEY_V2: i16 = 2;
/// KIP-848's ConsumerGroupMetadata record (Kafka's key type 3).
const CONSUMER_GROUP_KEY_V3: i16 = 3;
const CONSUMER_GROUP_VALUE_V0: i16 = 0;
const OFFSET_VALUE_V3: i16 = 3;
const GROUP_VALUE_V3: i16 = 3;

/// A record's key: what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
    /// A consumer-protocol group's epoch.
    ConsumerGroup {
        group: String,
    },
}

/// A committed offset, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// A member of a group, as stored with the group's generation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the chosen protocol.
    pub subscription: Bytes,
    /// What the leader assigned it (empty until the leader's SyncGroup).
    pub assignment: Bytes,
}

/// A group's generation, as stored: written when a generation begins (no assignments yet)
/// and when its leader assigns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
    pub members: Vec<MemberValue>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("record without a key")]
    NoKey,
    #[error("unknown key version {0}")]
    KeyVersion(i16),
    #[error("unknown value version {0}")]
    ValueVersion(i16),
    #[error("malformed record: {0}")]
    Wire(#[from] WireError),
}

pub fn encode_key(key: &Key) -> Bytes {
    let mut buf = BytesMut::new();
    match key {
        Key::Offset {
            group,
            topic,
            partition,
        } => {
            wire::write_i16(&mut buf, OFFSET_KEY_V1);
            put_string(&mut buf, group);
            put_string(&mut buf, topic);
            wire::write_i32(&mut buf, *partition);
        }
        Key::Group { group } => {
            wire::write_i16(&mut buf, GROUP_KEY_V2);
            put_string(&mut buf, group);
        }
        Key::ConsumerGroup { group } => {
            // Flexible, as Kafka's: a compact string and no tagged fields.
            wire::write_i16(&mut buf, CONSUMER_GROUP_KEY_V3);
            wire::write_string(&mut buf, group, true).expect("a group id from a request fits");
            wire::write_uvarint(&mut buf, 0);
        }
    }
    buf.freeze()
}

pub fn decode_key(mut bytes: Bytes) -> Result<Key, RecordError> {
    let version = wire::read_i16(&mut bytes)?;
    match version {
        OFFSET_KEY_V0 | OFFSET_KEY_V1 => Ok(Key::Offset {
            group: wire::read_string(&mut bytes, false)?,
            topic: wire::read_string(&mut bytes, false)?,
            partition: wire::read_i32(&mut bytes)?,
        }),
        GROUP_KEY_V2 => Ok(Key::Group {
            group: wire::read_string(&mut bytes, false)?,
        }),
        CONSUMER_GROUP_KEY_V3 => Ok(Key::ConsumerGroup {
            group: wire::read_string(&mut bytes, true)?,
        }),
        other => Err(RecordError::KeyVersion(other)),
    }
}

pub fn encode_offset(value: &OffsetValue) -> Bytes {
    let mut buf = BytesMut::new();
    wire::write_i16(&mut buf, OFFSET_VALUE_V3);
    wire::write_i64(&mut buf, value.offset);
    wire::write_i32(&mut buf, value.leader_epoch);
    put_string(&mut buf, &value.metadata);
    wire::write_i64(&mut buf, value.commit_timestamp_ms);
    buf.freeze()
}

pub fn decode_offset(mut bytes: Bytes) -> Result<OffsetValue, RecordError> {
    let version = wire::read_i16(&mut bytes)?;
    // v0: offset, metadata, timestamp; v1: and an expiry; v3: and the leader epoch.
    let offset = wire::read_i64(&mut bytes)?;
    let leader_epoch = if version >= 3 {
        wire::read_i32(&mut bytes)?
    } else {
        -1
    };
    let metadata = wire::read_string(&mut bytes, false)?;
    let commit_timestamp_ms = wire::read_i64(&mut bytes)?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::ValueVersion(version));
    }
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
    })
}

pub fn encode_group(value: &GroupValue) -> Bytes {
    let mut buf = BytesMut::new();
    wire::write_i16(&mut buf, GROUP_VALUE_V3);
    put_string(&mut buf, &value.protocol_type);
    wire::write_i32(&mut buf, value.generation);
    put_nullable_string(&mut buf, value.protocol.as_deref());
    put_nullable_string(&mut buf, value.leader.as_deref());
    wire::write_i64(&mut buf, value.state_timestamp_ms);
    wire::write_i32(&mut buf, value.members.len() as i32);
    for member in &value.members {
        put_string(&mut buf, &member.member_id);
        put_nullable_string(&mut buf, member.group_instance_id.as_deref());
        put_string(&mut buf, &member.client_id);
        put_string(&mut buf, &member.client_host);
        wire::write_i32(&mut buf, member.rebalance_timeout_ms);
        wire::write_i32(&mut buf, member.session_timeout_ms);
        put_bytes(&mut buf, &member.subscription);
        put_bytes(&mut buf, &member.assignment);
    }
    buf.freeze()
}

pub fn decode_group(mut bytes: Bytes) -> Result<GroupValue, RecordError> {
    let version = wire::read_i16(&mut bytes)?;
    if version != GROUP_VALUE_V3 {
        return Err(RecordError::ValueVersion(version));
    }
    let protocol_type = wire::read_string(&mut bytes, false)?;
    let generation = wire::read_i32(&mut bytes)?;
    let protocol = wire::read_nullable_string(&mut bytes, false)?;
    let leader = wire::read_nullable_string(&mut bytes, false)?;
    let state_timestamp_ms = wire::read_i64(&mut bytes)?;
    let count = wire::read_array_len(&mut bytes, false)?.unwrap_or(0);
    let mut members = Vec::with_capacity(wire::prealloc_count::<MemberValue>(count, bytes.len()));
    for _ in 0..count {
        members.push(MemberValue {
            member_id: wire::read_string(&mut bytes, false)?,
            group_instance_id: wire::read_nullable_string(&mut bytes, false)?,
            client_id: wire::read_string(&mut bytes, false)?,
            client_host: wire::read_string(&mut bytes, false)?,
            rebalance_timeout_ms: wire::read_i32(&mut bytes)?,
            session_timeout_ms: wire::read_i32(&mut bytes)?,
            subscription: wire::read_bytes(&mut bytes, false)?,
            assignment: wire::read_bytes(&mut bytes, false)?,
        });
    }
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp_ms,
        members,
    })
}

/// A consumer-protocol group's epoch (Kafka's ConsumerGroupMetadataValue v0: the epoch, no
/// tagged fields).
pub fn encode_consumer_group(epoch: i32) -> Bytes {
    let mut buf = BytesMut::new();
    wire::write_i16(&mut buf, CONSUMER_GROUP_VALUE_V0);
    wire::write_i32(&mut buf, epoch);
    wire::write_uvarint(&mut buf, 0);
    buf.freeze()
}

pub fn decode_consumer_group(mut bytes: Bytes) -> Result<i32, RecordError> {
    let version = wire::read_i16(&mut bytes)?;
    if version != CONSUMER_GROUP_VALUE_V0 {
        return Err(RecordError::ValueVersion(version));
    }
    Ok(wire::read_i32(&mut bytes)?)
}

// Strings the coordinator writes came from requests, where they were at most i16::MAX
// bytes: writing them back cannot fail.
fn put_string(buf: &mut BytesMut, value: &str) {
    wire::write_string(buf, value, false).expect("a string read from a request fits");
}

fn put_nullable_string(buf: &mut BytesMut, value: Option<&str>) {
    wire::write_nullable_string(buf, value, false).expect("a string read from a request fits");
}

fn put_bytes(buf: &mut BytesMut, value: &[u8]) {
    wire::write_bytes(buf, value, false).expect("bytes read from a request fit");
}

/// Kafka's `Utils.abs(groupId.hashCode()) % partitions`: Java's `String.hashCode` over the
/// UTF-16 code units, so a group lands on the partition it would in Kafka.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let mut hash: i32 = 0;
    for unit in group.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(unit as i32);
    }
    // Kafka's `Utils.abs` maps i32::MIN to 0 rather than overflowing.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let key = Key::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
        };
        assert_eq!(decode_key(encode_key(&key)), Ok(key));
        let key = Key::Group { group: "g".into() };
        assert_eq!(decode_key(encode_key(&key)), Ok(key));
        let offset = OffsetValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp_ms: 1000,
        };
        assert_eq!(decode_offset(encode_offset(&offset)), Ok(offset));
        let group = GroupValue {
            protocol_type: "consumer".into(),
            generation: 4,
            protocol: Some("range".into()),
            leader: Some("a".into()),
            state_timestamp_ms: 5,
            members: vec![MemberValue {
                member_id: "a".into(),
                group_instance_id: Some("i".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 1,
                session_timeout_ms: 2,
                subscription: Bytes::from_static(b"s"),
                assignment: Bytes::from_static(b"x"),
            }],
        };
        assert_eq!(decode_group(encode_group(&group)), Ok(group));
    }

    #[test]
    fn damaged_records_are_errors() {
        let bytes = encode_group(&GroupValue::default());
        for cut in 0..bytes.len() {
            assert!(decode_group(bytes.slice(..cut)).is_err());
        }
        let mut forged = BytesMut::new();
        wire::write_i16(&mut forged, GROUP_VALUE_V3);
        put_string(&mut forged, "consumer");
        wire::write_i32(&mut forged, 1);
        put_nullable_string(&mut forged, None);
        put_nullable_string(&mut forged, None);
        wire::write_i64(&mut forged, 0);
        wire::write_i32(&mut forged, i32::MAX);
        assert!(decode_group(forged.freeze()).is_err());
    }

    #[test]
    fn groups_land_where_kafka_puts_them() {
        // Java: Math.abs("my-group".hashCode()) % 50 == 12; "".hashCode() == 0.
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("", 50), 0);
        assert_eq!(partition_for("test-consumer-group", 50), 31);
    }
}
