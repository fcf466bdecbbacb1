//! Kafka's framing: every request and response is a 4-byte big-endian size, then that many
//! bytes. [`FrameDecoder`] turns a connection's byte stream, arriving in arbitrary pieces, into
//! whole frames. A size above the configured maximum (Kafka's `socket.request.max.bytes`) is
//! rejected as soon as its four bytes arrive, before any of the frame is buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Kafka's default `socket.request.max.bytes`: 100 MiB ([`crate::limits`]).
pub const DEFAULT_MAX_FRAME_SIZE_BYTES: usize = crate::limits::FRAME_SIZE_MAX_BYTES;

const SIZE_PREFIX_BYTES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size_bytes} bytes exceeds the maximum of {max_bytes}")]
    TooLarge { size_bytes: u64, max_bytes: usize },
    #[error("negative frame size {0}")]
    NegativeSize(i32),
}

#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    max_frame_size_bytes: usize,
}

impl FrameDecoder {
    pub fn new(max_frame_size_bytes: usize) -> FrameDecoder {
        FrameDecoder {
            buffer: BytesMut::new(),
            max_frame_size_bytes,
        }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole frame (without its size prefix), `None` if more bytes are needed.
    /// After an error the stream cannot be resynchronised: close the connection.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buffer.len() < SIZE_PREFIX_BYTES {
            return Ok(None);
        }
        let size = i32::from_be_bytes([
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ]);
        if size < 0 {
            return Err(FrameError::NegativeSize(size));
        }
        let size = size as usize;
        if size > self.max_frame_size_bytes {
            return Err(FrameError::TooLarge {
                size_bytes: size as u64,
                max_bytes: self.max_frame_size_bytes,
            });
        }
        if self.buffer.len() < SIZE_PREFIX_BYTES + size {
            // Reserve for the rest of this frame only now that its size is known to be allowed.
            self.buffer
                .reserve(SIZE_PREFIX_BYTES + size - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(SIZE_PREFIX_BYTES);
        Ok(Some(self.buffer.split_to(size).freeze()))
    }
}

/// Starts a frame in `buf`: writes a placeholder size and returns where it is.
pub fn begin_frame(buf: &mut BytesMut) -> usize {
    let at = buf.len();
    buf.put_i32(0);
    at
}

/// Finishes the frame begun at `at`: patches its size.
pub fn end_frame(buf: &mut BytesMut, at: usize) {
    let size = (buf.len() - at - SIZE_PREFIX_BYTES) as i32;
    buf[at..at + SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for body in bodies {
            out.extend_from_slice(&(body.len() as i32).to_be_bytes());
            out.extend_from_slice(body);
        }
        out
    }

    #[test]
    fn frames_split_at_every_byte_boundary_reassemble() {
        let stream = framed(&[b"hello", b"", b"kafka wire"]);
        for cut in 0..=stream.len() {
            let mut decoder = FrameDecoder::new(64);
            let mut frames = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames, vec![&b"hello"[..], &b""[..], &b"kafka wire"[..]]);
            assert_eq!(decoder.buffered_bytes(), 0);
        }
    }

    #[test]
    fn oversized_and_negative_sizes_fail_on_the_prefix_alone() {
        let mut decoder = FrameDecoder::new(10);
        decoder.push(&11i32.to_be_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                size_bytes: 11,
                max_bytes: 10
            })
        );
        let mut decoder = FrameDecoder::new(10);
        decoder.push(&(-5i32).to_be_bytes());
        assert_eq!(decoder.next_frame(), Err(FrameError::NegativeSize(-5)));
    }

    #[test]
    fn begin_and_end_frame_patch_the_size() {
        let mut buf = BytesMut::new();
        let at = begin_frame(&mut buf);
        buf.put_slice(b"abc");
        end_frame(&mut buf, at);
        assert_eq!(&buf[..], &[0, 0, 0, 3, b'a', b'b', b'c']);
    }
}
