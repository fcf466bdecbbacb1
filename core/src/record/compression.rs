//! The four codecs Kafka batches use, through well-kept crates: gzip (flate2), snappy (snap;
//! both raw blocks, as librdkafka writes, and the xerial framing the Java client writes), lz4
//! (lz4_flex, the LZ4 frame format) and zstd (zstd). Decompression is bounded: a batch may
//! not expand past a caller-given limit, so a small compressed batch cannot exhaust memory.

use std::io::Read;

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    #[error("{codec:?} payload is corrupt: {reason}")]
    Corrupt { codec: Compression, reason: String },
    #[error("{codec:?} payload expands past {limit_bytes} bytes")]
    TooLarge {
        codec: Compression,
        limit_bytes: usize,
    },
}

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The codec in a batch's attributes (bits 0-2).
    pub fn from_attribute(id: u8) -> Result<Compression, CompressionError> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(CompressionError::UnknownCodec(other)),
        })
    }

    pub fn attribute(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

/// The xerial snappy-java stream header: magic, version 1, compatible version 1.
const XERIAL_MAGIC: &[u8] = &[0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_BYTES: usize = 16;

fn corrupt(codec: Compression, reason: impl ToString) -> CompressionError {
    CompressionError::Corrupt {
        codec,
        reason: reason.to_string(),
    }
}

/// Reads all of `reader`, failing once more than `limit_bytes` come out.
fn read_bounded(
    codec: Compression,
    reader: impl Read,
    limit_bytes: usize,
) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    reader
        .take(limit_bytes as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(codec, e))?;
    if out.len() > limit_bytes {
        return Err(CompressionError::TooLarge { codec, limit_bytes });
    }
    Ok(out)
}

fn snappy_block(
    data: &[u8],
    limit_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    let len = snap::raw::decompress_len(data).map_err(|e| corrupt(Compression::Snappy, e))?;
    if out.len() + len > limit_bytes {
        return Err(CompressionError::TooLarge {
            codec: Compression::Snappy,
            limit_bytes,
        });
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(data, &mut out[start..])
        .map_err(|e| corrupt(Compression::Snappy, e))?;
    Ok(())
}

fn snappy_decompress(data: &[u8], limit_bytes: usize) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    if !data.starts_with(XERIAL_MAGIC) {
        snappy_block(data, limit_bytes, &mut out)?;
        return Ok(out);
    }
    // Xerial framing: a 16-byte header, then blocks of [i32 length][raw snappy block].
    let mut rest = data
        .get(XERIAL_HEADER_BYTES..)
        .ok_or_else(|| corrupt(Compression::Snappy, "short xerial header"))?;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(corrupt(Compression::Snappy, "short xerial block length"));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let block = rest
            .get(4..4 + len)
            .ok_or_else(|| corrupt(Compression::Snappy, "xerial block past the end"))?;
        snappy_block(block, limit_bytes, &mut out)?;
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// Decompresses a batch's records section; `None` returns it as it is (no copy).
pub fn decompress(
    codec: Compression,
    data: Bytes,
    limit_bytes: usize,
) -> Result<Bytes, CompressionError> {
    let out = match codec {
        Compression::None => return Ok(data),
        Compression::Gzip => read_bounded(
            codec,
            flate2::read::MultiGzDecoder::new(&data[..]),
            limit_bytes,
        )?,
        Compression::Snappy => snappy_decompress(&data, limit_bytes)?,
        Compression::Lz4 => read_bounded(
            codec,
            lz4_flex::frame::FrameDecoder::new(&data[..]),
            limit_bytes,
        )?,
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(&data[..]).map_err(|e| corrupt(codec, e))?;
            read_bounded(codec, decoder, limit_bytes)?
        }
    };
    Ok(Bytes::from(out))
}

/// Compresses a records section (for clients, the simulator and tests).
pub fn compress(codec: Compression, data: &[u8]) -> Result<Bytes, CompressionError> {
    use std::io::Write;
    let out = match codec {
        Compression::None => return Ok(Bytes::copy_from_slice(data)),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(data).map_err(|e| corrupt(codec, e))?;
            encoder.finish().map_err(|e| corrupt(codec, e))?
        }
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(data)
            .map_err(|e| corrupt(codec, e))?,
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(data).map_err(|e| corrupt(codec, e))?;
            encoder.finish().map_err(|e| corrupt(codec, e))?
        }
        Compression::Zstd => zstd::bulk::compress(data, 3).map_err(|e| corrupt(codec, e))?,
    };
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xerial_framed_snappy_is_read_like_raw_snappy() {
        let data = b"the quick brown fox jumps over the lazy dog ".repeat(100);
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&1i32.to_be_bytes());
        framed.extend_from_slice(&1i32.to_be_bytes());
        for chunk in data.chunks(1000) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
            framed.extend_from_slice(&block);
        }
        let out = decompress(Compression::Snappy, Bytes::from(framed), 1 << 20).unwrap();
        assert_eq!(&out[..], &data[..]);
    }

    #[test]
    fn garbage_is_a_typed_error_for_every_codec() {
        let garbage = Bytes::from_static(b"\x01\x02\x03 definitely not compressed");
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert!(
                matches!(
                    decompress(codec, garbage.clone(), 1 << 20),
                    Err(CompressionError::Corrupt { .. })
                ),
                "{codec:?}"
            );
        }
    }
}
