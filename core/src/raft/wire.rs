//! Raft messages between nodes, on the wire: frames that carry many Raft groups' messages
//! for one node pair (coalesced), each frame checked by a CRC before anything in it is
//! believed, every count checked against the bytes that remain before anything is reserved.
//!
//! ```text
//! frame   = size:u32 crc32c:u32 body            (size counts crc and body; crc covers body)
//! body    = version:u8 from:i32 to:i32 link count:u32 (group message){count}
//!           pcount:u32 (size:u32 proposal){pcount}
//!           ccount:u32 (id:u64 reply:u8 api_key:i16 version:i16 size:u32 body){ccount}
//! link    = session:u64 seq:u64 peer_session:u64 gaps:u64
//! group   = topic_id:[u8;16] partition:i32
//! message = tag:u8 fields                        (one tag per `Message` variant)
//! entry   = epoch:i32 base:i64 last:i64 size:u32 payload
//! ```
//! All integers are big-endian, as in Kafka. A payload is a slice of the frame (no copy).
//! A proposal is opaque here: bytes for the metadata quorum's leader, which the node
//! decodes and checks (a broker forwards what it wants the controller to write). A call is
//! a Kafka request or response body between nodes (WriteTxnMarkers from a transaction
//! coordinator to a partition's leader, AddPartitionsToTxn v4 the other way), also opaque
//! here: the node decodes it with the Kafka codec.
//!
//! The link header lets each side of a node pair tell when messages between them may have
//! been lost ([`LinkHeader`]); every frame, an empty heartbeat included, carries one.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Entry, FetchReply, Message, NodeId};
use crate::limits::{
    PEER_CALLS_PER_FRAME_MAX, PEER_ENTRIES_PER_MESSAGE_MAX, PEER_FRAME_SIZE_MAX_BYTES,
    PEER_PROPOSALS_PER_FRAME_MAX,
};

/// The body format this code writes and reads.
pub const PEER_WIRE_VERSION: u8 = 5;

/// Which Raft group a message belongs to: a partition of a topic (the metadata quorum has a
/// group of its own, by convention the all-zero topic id and partition -1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GroupId {
    pub topic_id: [u8; 16],
    pub partition: i32,
}

/// What a frame says of the link it crossed: the sender's process (`session`, drawn at each
/// start) and the frame's number in it (one more for every frame to this peer), and how many
/// gaps the sender saw in the numbers of the frames it received from the peer's process
/// `peer_session`. A receiver that sees a number skipped, a new session, or a count of gaps
/// grow knows that messages between the two may have been lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkHeader {
    pub session: u64,
    pub seq: u64,
    pub peer_session: u64,
    pub gaps: u64,
}

/// One frame's messages, from one node to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFrame {
    pub from: NodeId,
    pub to: NodeId,
    pub link: LinkHeader,
    pub messages: Vec<(GroupId, Message)>,
    /// Payloads for the metadata quorum's leader (opaque to Raft).
    pub proposals: Vec<Bytes>,
    /// Kafka requests and responses between the two nodes.
    pub calls: Vec<PeerCall>,
}

/// A Kafka request one node sends another (`reply` false), or the response to one (`reply`
/// true, with the request's `id`): the body alone, at `version` of `api_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCall {
    pub id: u64,
    pub reply: bool,
    pub api_key: i16,
    pub version: i16,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerWireError {
    #[error("frame of {0} bytes, more than the maximum")]
    TooLarge(usize),
    #[error("the frame's CRC does not match its body")]
    Crc,
    #[error("peer wire version {0}, this node speaks {PEER_WIRE_VERSION}")]
    Version(u8),
    #[error("the frame ends inside {0}")]
    Truncated(&'static str),
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("{what} count {count} is more than the frame can hold or the maximum")]
    Count { what: &'static str, count: u32 },
    #[error("{0} bytes after the last message")]
    Trailing(usize),
}

const TAG_PRE_VOTE: u8 = 1;
const TAG_PRE_VOTE_RESPONSE: u8 = 2;
const TAG_VOTE: u8 = 3;
const TAG_VOTE_RESPONSE: u8 = 4;
const TAG_BEGIN_EPOCH: u8 = 5;
const TAG_FETCH: u8 = 6;
const TAG_FETCH_RESPONSE: u8 = 7;
const TAG_TIMEOUT_NOW: u8 = 8;

const REPLY_ENTRIES: u8 = 0;
const REPLY_DIVERGING: u8 = 1;
const REPLY_NOT_LEADER: u8 = 2;
const REPLY_START_AT: u8 = 3;

/// The smallest encoding of a group and a message: counts are checked against it.
const GROUP_AND_MESSAGE_BYTES_MIN: usize = 16 + 4 + 1 + 4;
const ENTRY_HEADER_BYTES: usize = 4 + 8 + 8 + 4;
const CALL_HEADER_BYTES: usize = 8 + 1 + 2 + 2 + 4;

/// Encodes `frame`, size prefix and CRC included.
pub fn encode(frame: &PeerFrame) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(PEER_WIRE_VERSION);
    body.put_i32(frame.from);
    body.put_i32(frame.to);
    body.put_u64(frame.link.session);
    body.put_u64(frame.link.seq);
    body.put_u64(frame.link.peer_session);
    body.put_u64(frame.link.gaps);
    body.put_u32(frame.messages.len() as u32);
    for (group, message) in &frame.messages {
        body.put_slice(&group.topic_id);
        body.put_i32(group.partition);
        encode_message(&mut body, message);
    }
    body.put_u32(frame.proposals.len() as u32);
    for proposal in &frame.proposals {
        body.put_u32(proposal.len() as u32);
        body.put_slice(proposal);
    }
    body.put_u32(frame.calls.len() as u32);
    for call in &frame.calls {
        body.put_u64(call.id);
        body.put_u8(u8::from(call.reply));
        body.put_i16(call.api_key);
        body.put_i16(call.version);
        body.put_u32(call.body.len() as u32);
        body.put_slice(&call.body);
    }
    let mut out = BytesMut::with_capacity(8 + body.len());
    out.put_u32(4 + body.len() as u32);
    out.put_u32(crc32c::crc32c(&body));
    out.put_slice(&body);
    out.freeze()
}

fn encode_message(out: &mut BytesMut, message: &Message) {
    match message {
        Message::PreVote {
            epoch,
            last_epoch,
            end_offset,
        } => {
            out.put_u8(TAG_PRE_VOTE);
            out.put_i32(*epoch);
            out.put_i32(*last_epoch);
            out.put_i64(*end_offset);
        }
        Message::PreVoteResponse {
            epoch,
            granted,
            current_epoch,
            leader,
        } => {
            out.put_u8(TAG_PRE_VOTE_RESPONSE);
            out.put_i32(*epoch);
            out.put_u8(u8::from(*granted));
            out.put_i32(*current_epoch);
            out.put_i32(leader.unwrap_or(-1));
        }
        Message::Vote {
            epoch,
            last_epoch,
            end_offset,
        } => {
            out.put_u8(TAG_VOTE);
            out.put_i32(*epoch);
            out.put_i32(*last_epoch);
            out.put_i64(*end_offset);
        }
        Message::VoteResponse { epoch, granted } => {
            out.put_u8(TAG_VOTE_RESPONSE);
            out.put_i32(*epoch);
            out.put_u8(u8::from(*granted));
        }
        Message::BeginEpoch { epoch } => {
            out.put_u8(TAG_BEGIN_EPOCH);
            out.put_i32(*epoch);
        }
        Message::Fetch {
            epoch,
            fetch_offset,
            last_fetched_epoch,
            synced_offset,
            high_watermark,
        } => {
            out.put_u8(TAG_FETCH);
            out.put_i32(*epoch);
            out.put_i64(*fetch_offset);
            out.put_i32(*last_fetched_epoch);
            out.put_i64(*synced_offset);
            out.put_i64(*high_watermark);
        }
        Message::FetchResponse {
            epoch,
            high_watermark,
            fetch_offset,
            last_fetched_epoch,
            reply,
        } => {
            out.put_u8(TAG_FETCH_RESPONSE);
            out.put_i32(*epoch);
            out.put_i64(*high_watermark);
            out.put_i64(*fetch_offset);
            out.put_i32(*last_fetched_epoch);
            match reply {
                FetchReply::Entries(entries) => {
                    out.put_u8(REPLY_ENTRIES);
                    out.put_u32(entries.len() as u32);
                    for entry in entries {
                        out.put_i32(entry.epoch);
                        out.put_i64(entry.base_offset);
                        out.put_i64(entry.last_offset);
                        out.put_u32(entry.payload.len() as u32);
                        out.put_slice(&entry.payload);
                    }
                }
                FetchReply::Diverging { epoch, end_offset } => {
                    out.put_u8(REPLY_DIVERGING);
                    out.put_i32(*epoch);
                    out.put_i64(*end_offset);
                }
                FetchReply::NotLeader => out.put_u8(REPLY_NOT_LEADER),
                FetchReply::StartAt {
                    offset,
                    epoch,
                    state,
                } => {
                    out.put_u8(REPLY_START_AT);
                    out.put_i64(*offset);
                    out.put_i32(*epoch);
                    out.put_u32(state.len() as u32);
                    out.put_slice(state);
                }
            }
        }
        Message::TimeoutNow { epoch } => {
            out.put_u8(TAG_TIMEOUT_NOW);
            out.put_i32(*epoch);
        }
    }
}

/// The size of the next frame in `buffer` (prefix included), once its prefix is there;
/// a size past the maximum is an error (the connection is not to be trusted).
pub fn frame_size(buffer: &[u8]) -> Result<Option<usize>, PeerWireError> {
    let Some(prefix) = buffer.first_chunk::<4>() else {
        return Ok(None);
    };
    let size = u32::from_be_bytes(*prefix) as usize;
    if !(4..=PEER_FRAME_SIZE_MAX_BYTES).contains(&size) {
        return Err(PeerWireError::TooLarge(size));
    }
    Ok(Some(4 + size))
}

/// Decodes one whole frame (as [`frame_size`] delimits it, prefix included). Payloads are
/// slices of `frame`.
pub fn decode(frame: Bytes) -> Result<PeerFrame, PeerWireError> {
    let mut buf = frame;
    need(&buf, 8, "the frame header")?;
    let size = buf.get_u32() as usize;
    if size > PEER_FRAME_SIZE_MAX_BYTES {
        return Err(PeerWireError::TooLarge(size));
    }
    if size < 4 {
        return Err(PeerWireError::Truncated("the frame header"));
    }
    let crc = buf.get_u32();
    need(&buf, size - 4, "the frame body")?;
    let mut body = buf.split_to(size - 4);
    if !buf.is_empty() {
        return Err(PeerWireError::Trailing(buf.len()));
    }
    if crc32c::crc32c(&body) != crc {
        return Err(PeerWireError::Crc);
    }
    need(&body, 1 + 4 + 4 + 4 * 8 + 4, "the body header")?;
    let version = body.get_u8();
    if version != PEER_WIRE_VERSION {
        return Err(PeerWireError::Version(version));
    }
    let from = body.get_i32();
    let to = body.get_i32();
    let link = LinkHeader {
        session: body.get_u64(),
        seq: body.get_u64(),
        peer_session: body.get_u64(),
        gaps: body.get_u64(),
    };
    let count = body.get_u32();
    if count as usize > body.remaining() / GROUP_AND_MESSAGE_BYTES_MIN {
        return Err(PeerWireError::Count {
            what: "message",
            count,
        });
    }
    let mut messages = Vec::with_capacity(count as usize);
    for _ in 0..count {
        need(&body, 16 + 4, "a group id")?;
        let mut topic_id = [0u8; 16];
        body.copy_to_slice(&mut topic_id);
        let partition = body.get_i32();
        let message = decode_message(&mut body)?;
        messages.push((
            GroupId {
                topic_id,
                partition,
            },
            message,
        ));
    }
    need(&body, 4, "the proposal count")?;
    let count = body.get_u32();
    if count as usize > body.remaining() / 4 || count as usize > PEER_PROPOSALS_PER_FRAME_MAX {
        return Err(PeerWireError::Count {
            what: "proposal",
            count,
        });
    }
    let mut proposals = Vec::with_capacity(count as usize);
    for _ in 0..count {
        need(&body, 4, "a proposal size")?;
        let size = body.get_u32() as usize;
        need(&body, size, "a proposal")?;
        proposals.push(body.split_to(size));
    }
    need(&body, 4, "the call count")?;
    let count = body.get_u32();
    if count as usize > body.remaining() / CALL_HEADER_BYTES
        || count as usize > PEER_CALLS_PER_FRAME_MAX
    {
        return Err(PeerWireError::Count {
            what: "call",
            count,
        });
    }
    let mut calls = Vec::with_capacity(count as usize);
    for _ in 0..count {
        need(&body, CALL_HEADER_BYTES, "a call header")?;
        let id = body.get_u64();
        let reply = match body.get_u8() {
            0 => false,
            1 => true,
            tag => return Err(PeerWireError::UnknownTag { what: "call", tag }),
        };
        let api_key = body.get_i16();
        let version = body.get_i16();
        let size = body.get_u32() as usize;
        need(&body, size, "a call body")?;
        calls.push(PeerCall {
            id,
            reply,
            api_key,
            version,
            body: body.split_to(size),
        });
    }
    if body.has_remaining() {
        return Err(PeerWireError::Trailing(body.remaining()));
    }
    Ok(PeerFrame {
        from,
        to,
        link,
        messages,
        proposals,
        calls,
    })
}

fn need(buf: &Bytes, bytes: usize, what: &'static str) -> Result<(), PeerWireError> {
    if buf.remaining() < bytes {
        return Err(PeerWireError::Truncated(what));
    }
    Ok(())
}

fn decode_message(buf: &mut Bytes) -> Result<Message, PeerWireError> {
    need(buf, 1, "a message tag")?;
    let tag = buf.get_u8();
    let message = match tag {
        TAG_PRE_VOTE | TAG_VOTE => {
            need(buf, 4 + 4 + 8, "a vote request")?;
            let (epoch, last_epoch, end_offset) = (buf.get_i32(), buf.get_i32(), buf.get_i64());
            if tag == TAG_PRE_VOTE {
                Message::PreVote {
                    epoch,
                    last_epoch,
                    end_offset,
                }
            } else {
                Message::Vote {
                    epoch,
                    last_epoch,
                    end_offset,
                }
            }
        }
        TAG_PRE_VOTE_RESPONSE => {
            need(buf, 4 + 1 + 4 + 4, "a pre-vote response")?;
            let epoch = buf.get_i32();
            let granted = buf.get_u8() != 0;
            let current_epoch = buf.get_i32();
            let leader = buf.get_i32();
            Message::PreVoteResponse {
                epoch,
                granted,
                current_epoch,
                leader: (leader >= 0).then_some(leader),
            }
        }
        TAG_VOTE_RESPONSE => {
            need(buf, 4 + 1, "a vote response")?;
            Message::VoteResponse {
                epoch: buf.get_i32(),
                granted: buf.get_u8() != 0,
            }
        }
        TAG_BEGIN_EPOCH | TAG_TIMEOUT_NOW => {
            need(buf, 4, "an epoch")?;
            let epoch = buf.get_i32();
            if tag == TAG_BEGIN_EPOCH {
                Message::BeginEpoch { epoch }
            } else {
                Message::TimeoutNow { epoch }
            }
        }
        TAG_FETCH => {
            need(buf, 4 + 8 + 4 + 8 + 8, "a fetch")?;
            Message::Fetch {
                epoch: buf.get_i32(),
                fetch_offset: buf.get_i64(),
                last_fetched_epoch: buf.get_i32(),
                synced_offset: buf.get_i64(),
                high_watermark: buf.get_i64(),
            }
        }
        TAG_FETCH_RESPONSE => {
            need(buf, 4 + 8 + 8 + 4 + 1, "a fetch response")?;
            let epoch = buf.get_i32();
            let high_watermark = buf.get_i64();
            let fetch_offset = buf.get_i64();
            let last_fetched_epoch = buf.get_i32();
            let reply = match buf.get_u8() {
                REPLY_ENTRIES => {
                    need(buf, 4, "an entry count")?;
                    let count = buf.get_u32();
                    let fits = count as usize <= buf.remaining() / ENTRY_HEADER_BYTES;
                    if !fits || count as usize > PEER_ENTRIES_PER_MESSAGE_MAX {
                        return Err(PeerWireError::Count {
                            what: "entry",
                            count,
                        });
                    }
                    let mut entries = Vec::with_capacity(count as usize);
                    for _ in 0..count {
                        need(buf, ENTRY_HEADER_BYTES, "an entry")?;
                        let epoch = buf.get_i32();
                        let base_offset = buf.get_i64();
                        let last_offset = buf.get_i64();
                        let size = buf.get_u32() as usize;
                        need(buf, size, "an entry's payload")?;
                        entries.push(Entry {
                            epoch,
                            base_offset,
                            last_offset,
                            payload: buf.split_to(size),
                        });
                    }
                    FetchReply::Entries(entries)
                }
                REPLY_DIVERGING => {
                    need(buf, 4 + 8, "a diverging epoch")?;
                    FetchReply::Diverging {
                        epoch: buf.get_i32(),
                        end_offset: buf.get_i64(),
                    }
                }
                REPLY_NOT_LEADER => FetchReply::NotLeader,
                REPLY_START_AT => {
                    need(buf, 8 + 4 + 4, "a log start")?;
                    let offset = buf.get_i64();
                    let epoch = buf.get_i32();
                    let size = buf.get_u32() as usize;
                    need(buf, size, "a log start's state")?;
                    FetchReply::StartAt {
                        offset,
                        epoch,
                        state: buf.split_to(size),
                    }
                }
                tag => {
                    return Err(PeerWireError::UnknownTag {
                        what: "fetch reply",
                        tag,
                    })
                }
            };
            Message::FetchResponse {
                epoch,
                high_watermark,
                fetch_offset,
                last_fetched_epoch,
                reply,
            }
        }
        tag => {
            return Err(PeerWireError::UnknownTag {
                what: "message",
                tag,
            })
        }
    };
    Ok(message)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry() -> impl Strategy<Value = Entry> {
        (
            any::<i32>(),
            any::<i64>(),
            any::<i64>(),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(epoch, base_offset, last_offset, payload)| Entry {
                epoch,
                base_offset,
                last_offset,
                payload: Bytes::from(payload),
            })
    }

    fn message() -> impl Strategy<Value = Message> {
        let reply = prop_oneof![
            prop::collection::vec(entry(), 0..4).prop_map(FetchReply::Entries),
            (any::<i32>(), any::<i64>())
                .prop_map(|(epoch, end_offset)| FetchReply::Diverging { epoch, end_offset }),
            Just(FetchReply::NotLeader),
            (
                0..i64::MAX,
                0..i32::MAX,
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(offset, epoch, state)| FetchReply::StartAt {
                    offset,
                    epoch,
                    state: Bytes::from(state),
                }),
        ];
        prop_oneof![
            (any::<i32>(), any::<i32>(), any::<i64>()).prop_map(
                |(epoch, last_epoch, end_offset)| {
                    Message::PreVote {
                        epoch,
                        last_epoch,
                        end_offset,
                    }
                }
            ),
            (
                any::<i32>(),
                any::<bool>(),
                any::<i32>(),
                prop::option::of(0..1000i32)
            )
                .prop_map(|(epoch, granted, current_epoch, leader)| {
                    Message::PreVoteResponse {
                        epoch,
                        granted,
                        current_epoch,
                        leader,
                    }
                }),
            (any::<i32>(), any::<i32>(), any::<i64>()).prop_map(
                |(epoch, last_epoch, end_offset)| {
                    Message::Vote {
                        epoch,
                        last_epoch,
                        end_offset,
                    }
                }
            ),
            (any::<i32>(), any::<bool>())
                .prop_map(|(epoch, granted)| Message::VoteResponse { epoch, granted }),
            any::<i32>().prop_map(|epoch| Message::BeginEpoch { epoch }),
            (
                any::<i32>(),
                any::<i64>(),
                any::<i32>(),
                any::<i64>(),
                any::<i64>()
            )
                .prop_map(
                    |(epoch, fetch_offset, last_fetched_epoch, synced_offset, high_watermark)| {
                        Message::Fetch {
                            epoch,
                            fetch_offset,
                            last_fetched_epoch,
                            synced_offset,
                            high_watermark,
                        }
                    }
                ),
            (
                any::<i32>(),
                any::<i64>(),
                any::<i64>(),
                any::<i32>(),
                reply
            )
                .prop_map(
                    |(epoch, high_watermark, fetch_offset, last_fetched_epoch, reply)| {
                        Message::FetchResponse {
                            epoch,
                            high_watermark,
                            fetch_offset,
                            last_fetched_epoch,
                            reply,
                        }
                    }
                ),
            any::<i32>().prop_map(|epoch| Message::TimeoutNow { epoch }),
        ]
    }

    fn frame() -> impl Strategy<Value = PeerFrame> {
        let group = (any::<[u8; 16]>(), any::<i32>()).prop_map(|(topic_id, partition)| GroupId {
            topic_id,
            partition,
        });
        (
            any::<i32>(),
            any::<i32>(),
            prop::collection::vec((group, message()), 0..8),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 0..3),
            any::<[u64; 4]>(),
            prop::collection::vec(
                (
                    any::<u64>(),
                    any::<bool>(),
                    any::<(i16, i16)>(),
                    prop::collection::vec(any::<u8>(), 0..16),
                ),
                0..3,
            ),
        )
            .prop_map(|(from, to, messages, proposals, link, calls)| PeerFrame {
                from,
                to,
                link: LinkHeader {
                    session: link[0],
                    seq: link[1],
                    peer_session: link[2],
                    gaps: link[3],
                },
                messages,
                proposals: proposals.into_iter().map(Bytes::from).collect(),
                calls: (calls.into_iter())
                    .map(|(id, reply, (api_key, version), body)| PeerCall {
                        id,
                        reply,
                        api_key,
                        version,
                        body: Bytes::from(body),
                    })
                    .collect(),
            })
    }

    proptest! {
        /// Every frame decodes to itself; any flipped bit is refused by the CRC (or the size
        /// prefix); any cut is refused, never a panic.
        #[test]
        fn frames_round_trip_and_damage_is_refused(frame in frame(), bit in any::<usize>(), cut in any::<usize>()) {
            let bytes = encode(&frame);
            prop_assert_eq!(frame_size(&bytes).unwrap(), Some(bytes.len()));
            prop_assert_eq!(decode(bytes.clone()).unwrap(), frame);
            let mut flipped = bytes.to_vec();
            let bit = bit % (flipped.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(Bytes::from(flipped)).is_err());
            let cut = cut % bytes.len();
            prop_assert!(decode(bytes.slice(..cut)).is_err());
        }

        /// Arbitrary bytes never panic the decoder, and a count never reserves more than
        /// the frame could hold.
        #[test]
        fn arbitrary_bytes_are_refused_without_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut frame = BytesMut::new();
            frame.put_u32(4 + body.len() as u32);
            frame.put_u32(crc32c::crc32c(&body));
            frame.put_slice(&body);
            let _ = decode(frame.freeze());
        }
    }

    #[test]
    fn a_huge_size_prefix_is_refused_before_anything_is_read() {
        let prefix = u32::MAX.to_be_bytes();
        assert!(matches!(
            frame_size(&prefix),
            Err(PeerWireError::TooLarge(_))
        ));
        assert_eq!(frame_size(&prefix[..3]), Ok(None));
    }
}
