//! Request headers v0-v2 and response headers v0-v1.
//!
//! The header version follows from the API and its version ([`ApiKey::request_header_version`]):
//! v1 adds the client id (a nullable string that stays non-compact even in v2: Kafka fixed its
//! encoding before flexible versions existed), v2 adds tagged fields.

use bytes::{Bytes, BytesMut};

use super::error::{DecodeError, WireError};
use super::messages::{ApiKey, TaggedFields};
use super::wire;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestHeader {
    /// The raw api key: it may name an API Keel does not speak.
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    pub unknown_tagged_fields: TaggedFields,
}

impl RequestHeader {
    /// Reads the api key and version that open every request, without consuming them.
    pub fn peek_api(frame: &[u8]) -> Result<(i16, i16), DecodeError> {
        if frame.len() < 4 {
            return Err(WireError::UnexpectedEnd {
                needed: 4,
                remaining: frame.len(),
            }
            .at("RequestHeader.request_api_key", 0));
        }
        Ok((
            i16::from_be_bytes([frame[0], frame[1]]),
            i16::from_be_bytes([frame[2], frame[3]]),
        ))
    }

    pub fn decode(buf: &mut Bytes, header_version: i16) -> Result<RequestHeader, DecodeError> {
        let v = header_version;
        let mut header = RequestHeader {
            api_key: wire::read_i16(buf).map_err(|e| e.at("RequestHeader.request_api_key", v))?,
            api_version: wire::read_i16(buf)
                .map_err(|e| e.at("RequestHeader.request_api_version", v))?,
            correlation_id: wire::read_i32(buf)
                .map_err(|e| e.at("RequestHeader.correlation_id", v))?,
            ..RequestHeader::default()
        };
        if v >= 1 {
            header.client_id = wire::read_nullable_string(buf, false)
                .map_err(|e| e.at("RequestHeader.client_id", v))?;
        }
        if v >= 2 {
            header.unknown_tagged_fields =
                read_tagged_fields(buf, "RequestHeader.tagged_fields", v)?;
        }
        Ok(header)
    }

    pub fn encode(&self, buf: &mut BytesMut, header_version: i16) {
        wire::write_i16(buf, self.api_key);
        wire::write_i16(buf, self.api_version);
        wire::write_i32(buf, self.correlation_id);
        if header_version >= 1 {
            // A client id longer than i16::MAX cannot be sent; Kafka clients truncate never,
            // so neither do we: such an id is written as null.
            let id = self
                .client_id
                .as_deref()
                .filter(|id| id.len() <= i16::MAX as usize);
            wire::write_nullable_string(buf, id, false).expect("length checked above");
        }
        if header_version >= 2 {
            write_tagged_fields(buf, &self.unknown_tagged_fields);
        }
    }

    /// The header version this header's API and version call for (v1 for unknown APIs).
    pub fn version(&self) -> i16 {
        ApiKey::from_i16(self.api_key).map_or(1, |key| key.request_header_version(self.api_version))
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResponseHeader {
    pub correlation_id: i32,
    pub unknown_tagged_fields: TaggedFields,
}

impl ResponseHeader {
    pub fn decode(buf: &mut Bytes, header_version: i16) -> Result<ResponseHeader, DecodeError> {
        let v = header_version;
        let mut header = ResponseHeader {
            correlation_id: wire::read_i32(buf)
                .map_err(|e| e.at("ResponseHeader.correlation_id", v))?,
            ..ResponseHeader::default()
        };
        if v >= 1 {
            header.unknown_tagged_fields =
                read_tagged_fields(buf, "ResponseHeader.tagged_fields", v)?;
        }
        Ok(header)
    }

    pub fn encode(&self, buf: &mut BytesMut, header_version: i16) {
        wire::write_i32(buf, self.correlation_id);
        if header_version >= 1 {
            write_tagged_fields(buf, &self.unknown_tagged_fields);
        }
    }
}

fn read_tagged_fields(
    buf: &mut Bytes,
    field: &'static str,
    version: i16,
) -> Result<TaggedFields, DecodeError> {
    let mut fields = TaggedFields::new();
    let count = wire::read_uvarint(buf).map_err(|e| e.at(field, version))?;
    for _ in 0..count {
        let tag = wire::read_uvarint(buf).map_err(|e| e.at(field, version))?;
        let size = wire::read_uvarint(buf).map_err(|e| e.at(field, version))? as usize;
        let value = wire::read_exact(buf, size).map_err(|e| e.at(field, version))?;
        fields.insert(tag, value);
    }
    Ok(fields)
}

fn write_tagged_fields(buf: &mut BytesMut, fields: &TaggedFields) {
    wire::write_uvarint(buf, fields.len() as u32);
    for (tag, value) in fields {
        wire::write_uvarint(buf, *tag);
        wire::write_uvarint(buf, value.len() as u32);
        buf.extend_from_slice(value);
    }
}
