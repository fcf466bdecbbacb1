//! Whole frames: a request's header and body from a frame, a response framed for the wire,
//! and the reverse directions for clients (the simulator's workloads, the tests).

use bytes::{Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::frame::{begin_frame, end_frame};
use super::header::{RequestHeader, ResponseHeader};
use super::messages::{ApiKey, Request, Response};
use super::negotiate::{negotiate, Negotiation};

/// A request frame, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedRequest {
    /// A request we serve (boxed: the largest request is far larger than the fallback).
    Request {
        header: RequestHeader,
        api_key: ApiKey,
        request: Box<Request>,
    },
    /// ApiVersions at a version we do not know: answer `negotiate::api_versions_fallback()`
    /// at version 0 with this header's correlation id.
    ApiVersionsFallback { header: RequestHeader },
}

/// Why a request frame was refused. Each of these closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("api key {api_key} version {api_version} is not supported")]
    Unsupported { api_key: i16, api_version: i16 },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Parses one request frame (without its size prefix).
pub fn parse_request(mut frame: Bytes) -> Result<ParsedRequest, RequestError> {
    let (api_key, api_version) = RequestHeader::peek_api(&frame)?;
    match negotiate(api_key, api_version) {
        Negotiation::Unsupported => Err(RequestError::Unsupported {
            api_key,
            api_version,
        }),
        Negotiation::ApiVersionsFallback => {
            // The body is in a format we do not know; header v1 holds all we need.
            let header = RequestHeader::decode(&mut frame, 1)?;
            Ok(ParsedRequest::ApiVersionsFallback { header })
        }
        Negotiation::Supported(key) => {
            let header =
                RequestHeader::decode(&mut frame, key.request_header_version(api_version))?;
            let request = Box::new(Request::decode(key, api_version, &mut frame)?);
            Ok(ParsedRequest::Request {
                header,
                api_key: key,
                request,
            })
        }
    }
}

/// Appends a framed response to `out`.
pub fn encode_response(
    out: &mut BytesMut,
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    response: &Response,
) -> Result<(), EncodeError> {
    let at = begin_frame(out);
    let header = ResponseHeader {
        correlation_id,
        ..ResponseHeader::default()
    };
    header.encode(out, api_key.response_header_version(version));
    if let Err(e) = response.encode(out, version) {
        out.truncate(at);
        return Err(e);
    }
    end_frame(out, at);
    Ok(())
}

/// Appends a framed request to `out`; the header's api key and version say how to encode.
pub fn encode_request(
    out: &mut BytesMut,
    header: &RequestHeader,
    request: &Request,
) -> Result<(), EncodeError> {
    let at = begin_frame(out);
    header.encode(out, header.version());
    if let Err(e) = request.encode(out, header.api_version) {
        out.truncate(at);
        return Err(e);
    }
    end_frame(out, at);
    Ok(())
}

/// Parses a response frame (without its size prefix) to a request of `api_key` at `version`.
pub fn decode_response(
    mut frame: Bytes,
    api_key: ApiKey,
    version: i16,
) -> Result<(ResponseHeader, Response), DecodeError> {
    let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))?;
    let response = Response::decode(api_key, version, &mut frame)?;
    Ok((header, response))
}
