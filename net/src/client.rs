//! A small blocking Kafka client for the admin commands, over Keel's own codec: one
//! connection, one request at a time, every wait bounded by a timeout.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use keel_core::limits;
use keel_core::protocol::codec::{decode_response, encode_request};
use keel_core::protocol::{ApiKey, DecodeError, EncodeError, Request, RequestHeader, Response};

/// What the admin commands call themselves in request headers (brokers log it).
const CLIENT_ID: &str = "keel-admin";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("{address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("{address} closed the connection")]
    Closed { address: String },
    #[error("{address} answered a frame of {size} bytes (at most {max} are accepted)")]
    FrameTooLarge {
        address: String,
        size: i64,
        max: usize,
    },
    #[error("{address} answered {api} with bytes that do not decode: {source}")]
    Decode {
        address: String,
        api: &'static str,
        source: DecodeError,
    },
    #[error("{address} answered correlation id {got}, {expected} expected")]
    Correlation {
        address: String,
        got: i32,
        expected: i32,
    },
    #[error("{address} answered {api} with another API's response")]
    Unexpected { address: String, api: &'static str },
    #[error("{address} refused {api} with error code {code}")]
    Refused {
        address: String,
        api: &'static str,
        code: i16,
    },
    #[error("cannot encode a {api} request: {source}")]
    Encode {
        api: &'static str,
        source: EncodeError,
    },
}

/// A connection to one broker.
pub struct Client {
    stream: TcpStream,
    address: String,
    next_correlation_id: i32,
}

impl Client {
    /// Connects to `address` (`host:port`), waiting at most `timeout` to connect and, later,
    /// for each answer.
    pub fn connect(address: &str, timeout: Duration) -> Result<Client, ClientError> {
        let refused = |reason: String| ClientError::Connect {
            address: address.to_string(),
            reason,
        };
        let candidates = (address.to_socket_addrs()).map_err(|e| refused(e.to_string()))?;
        let mut last = "the name resolves to no address".to_string();
        for candidate in candidates {
            match TcpStream::connect_timeout(&candidate, timeout) {
                Ok(stream) => {
                    let io = |source| ClientError::Io {
                        address: address.to_string(),
                        source,
                    };
                    stream.set_read_timeout(Some(timeout)).map_err(io)?;
                    stream.set_write_timeout(Some(timeout)).map_err(io)?;
                    stream.set_nodelay(true).map_err(io)?;
                    return Ok(Client {
                        stream,
                        address: address.to_string(),
                        next_correlation_id: 1,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(refused(last))
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends `request` at `version` and waits for its answer.
    pub fn call(&mut self, version: i16, request: Request) -> Result<Response, ClientError> {
        let api = request.api_key();
        let header = RequestHeader {
            api_key: api as i16,
            api_version: version,
            correlation_id: self.next_correlation_id,
            client_id: Some(CLIENT_ID.to_string()),
            ..RequestHeader::default()
        };
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let mut out = BytesMut::new();
        encode_request(&mut out, &header, &request).map_err(|source| ClientError::Encode {
            api: api.name(),
            source,
        })?;
        self.stream.write_all(&out).map_err(|e| self.io(e))?;
        let frame = self.read_frame()?;
        let (answer, response) =
            decode_response(frame, api, version).map_err(|source| ClientError::Decode {
                address: self.address.clone(),
                api: api.name(),
                source,
            })?;
        if answer.correlation_id != header.correlation_id {
            return Err(ClientError::Correlation {
                address: self.address.clone(),
                got: answer.correlation_id,
                expected: header.correlation_id,
            });
        }
        Ok(response)
    }

    /// One response frame, without its size prefix. Its size is checked before anything is
    /// reserved: a broker (or something else on that port) could claim any size.
    fn read_frame(&mut self) -> Result<Bytes, ClientError> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(|e| self.io(e))?;
        let size = i32::from_be_bytes(size);
        let max = limits::FRAME_SIZE_MAX_BYTES;
        let Some(len) = usize::try_from(size).ok().filter(|len| *len <= max) else {
            return Err(ClientError::FrameTooLarge {
                address: self.address.clone(),
                size: i64::from(size),
                max,
            });
        };
        let mut frame = vec![0u8; len];
        self.stream.read_exact(&mut frame).map_err(|e| self.io(e))?;
        Ok(Bytes::from(frame))
    }

    /// An answer of another API than the one asked (the codec decodes by the API asked, so
    /// only a bug gets here).
    pub fn unexpected(&self, api: ApiKey) -> ClientError {
        ClientError::Unexpected {
            address: self.address.clone(),
            api: api.name(),
        }
    }

    /// An answer whose error `code` refuses the whole request.
    pub fn refused(&self, api: ApiKey, code: i16) -> ClientError {
        ClientError::Refused {
            address: self.address.clone(),
            api: api.name(),
            code,
        }
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        let address = self.address.clone();
        match source.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                ClientError::Closed { address }
            }
            _ => ClientError::Io { address, source },
        }
    }
}

/// The versions the admin commands speak: the newest Keel's codec has of each API they use.
pub fn version_of(api: ApiKey) -> i16 {
    api.versions().1
}
