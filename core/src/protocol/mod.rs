//! Keel's own Kafka wire codec.
//!
//! - [`wire`]: primitive types, with every length checked against the input before use;
//! - [`messages`]: every request and response, generated from `core/schema/` by `build.rs`;
//! - [`header`]: request headers v0-v2 and response headers v0-v1;
//! - [`frame`]: the 4-byte length-prefixed framing of a connection's byte stream;
//! - [`negotiate`]: which (api, version) pairs we serve, as Kafka's ApiVersions rules say.
//!
//! Why our own: the broker must survive hostile bytes. A decoder that reserves memory from a
//! count field before checking it can be made to allocate gigabytes with a 14-byte request.
//! Here a count or length is always compared with the bytes that remain first, errors are
//! typed and name the field, and record payloads stay `Bytes` slices of the input.

pub mod codec;
pub mod codes;
#[cfg(test)]
mod debug_view;
pub mod error;
pub mod frame;
pub mod header;
pub mod messages;
pub mod negotiate;
#[cfg(test)]
pub(crate) mod testgen;
pub mod wire;

#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

pub use error::{DecodeError, EncodeError, WireError};
pub use frame::{FrameDecoder, FrameError, DEFAULT_MAX_FRAME_SIZE_BYTES};
pub use header::{RequestHeader, ResponseHeader};
pub use messages::{ApiKey, Request, Response};

/// Whether a message is a request or a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Response,
}

/// A top-level Kafka message: decodes from and encodes to a body at a given version.
pub trait Message: Sized {
    const NAME: &'static str;
    const API_KEY: ApiKey;
    const KIND: MessageKind;
    /// Decodes a body; bytes after the message are left in `buf` (Kafka ignores them too).
    fn decode(buf: &mut Bytes, version: i16) -> Result<Self, DecodeError>;
    fn encode(&self, buf: &mut BytesMut, version: i16) -> Result<(), EncodeError>;
}
