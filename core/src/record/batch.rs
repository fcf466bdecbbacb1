//! Record batches, magic 2: Kafka's unit of storage and replication.
//!
//! A batch is a 61-byte header and its records, possibly compressed:
//!
//! ```text
//! offset  field                  covered by the CRC
//!  0      base_offset      i64   no  (stamped by the broker)
//!  8      batch_length     i32   no  (bytes after this field)
//! 12      partition_leader_epoch i32 no (stamped by the broker)
//! 16      magic            i8    no
//! 17      crc              u32   -   (CRC-32C of bytes 21..end)
//! 21      attributes       i16   yes (compression, timestamp type, transactional, control)
//! 23      last_offset_delta i32  yes
//! 27      base_timestamp   i64   yes
//! 35      max_timestamp    i64   yes
//! 43      producer_id      i64   yes
//! 51      producer_epoch   i16   yes
//! 53      base_sequence    i32   yes
//! 57      records_count    i32   yes
//! 61      records ...            yes
//! ```
//!
//! Keel stores batches byte for byte as clients sent them. [`RecordBatch::parse`] validates
//! the header and the CRC in place, without copying; [`stamp`] writes the base offset and
//! leader epoch, which the CRC does not cover; [`RecordBatch::records`] decompresses (once per
//! batch) and iterates the records without allocating per record.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::compression::{self, Compression, CompressionError};
use crate::protocol::wire;
use crate::protocol::WireError;

pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batch_length` counts: base_offset and batch_length themselves.
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
pub const MAGIC_V2: i8 = 2;
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;

const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const MAGIC_OFFSET: usize = 16;

const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
const ATTRIBUTE_CONTROL: i16 = 0x20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch of {size_bytes} bytes is shorter than the {BATCH_HEADER_BYTES}-byte header")]
    TooShort { size_bytes: usize },
    #[error("batch length field says {declared} bytes follow but {actual} do")]
    LengthMismatch { declared: i64, actual: usize },
    #[error("unsupported magic {0} (only magic 2 record batches are accepted)")]
    UnsupportedMagic(i8),
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error(transparent)]
    Compression(#[from] CompressionError),
    #[error("record count {records_count} does not match last offset delta {last_offset_delta}")]
    CountMismatch {
        records_count: i32,
        last_offset_delta: i32,
    },
    #[error("invalid producer fields: id {producer_id}, epoch {producer_epoch}, base sequence {base_sequence}")]
    InvalidProducerFields {
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    },
    #[error("transactional batch without a producer id")]
    TransactionalWithoutProducer,
    #[error("record {index}: {reason}")]
    InvalidRecord { index: i32, reason: &'static str },
    #[error("record {index}: {source}")]
    RecordWire { index: i32, source: WireError },
    #[error("{trailing_bytes} bytes after the last record")]
    TrailingBytes { trailing_bytes: usize },
}

/// The fixed fields of a batch header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Decodes the header fields; checks nothing. `bytes` must hold at least the header.
    fn read(mut bytes: &[u8]) -> BatchHeader {
        debug_assert!(bytes.len() >= BATCH_HEADER_BYTES);
        BatchHeader {
            base_offset: bytes.get_i64(),
            batch_length: bytes.get_i32(),
            partition_leader_epoch: bytes.get_i32(),
            magic: bytes.get_i8(),
            crc: bytes.get_u32(),
            attributes: bytes.get_i16(),
            last_offset_delta: bytes.get_i32(),
            base_timestamp: bytes.get_i64(),
            max_timestamp: bytes.get_i64(),
            producer_id: bytes.get_i64(),
            producer_epoch: bytes.get_i16(),
            base_sequence: bytes.get_i32(),
            records_count: bytes.get_i32(),
        }
    }

    pub fn compression(&self) -> Result<Compression, CompressionError> {
        Compression::from_attribute((self.attributes & ATTRIBUTE_COMPRESSION_MASK) as u8)
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }
    pub fn has_producer_id(&self) -> bool {
        self.producer_id != NO_PRODUCER_ID
    }
    /// The offset of the batch's last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
    /// Bytes the whole batch occupies, header included.
    pub fn size_bytes(&self) -> usize {
        BATCH_LENGTH_PREFIX_BYTES + self.batch_length as usize
    }
}

/// A batch whose header and CRC have been validated: a zero-copy view on its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordBatch {
    bytes: Bytes,
    header: BatchHeader,
}

impl RecordBatch {
    /// Validates one whole batch: length, magic, CRC-32C, compression codec, record count
    /// against last offset delta, producer fields. Does not decompress.
    pub fn parse(bytes: Bytes) -> Result<RecordBatch, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::TooShort {
                size_bytes: bytes.len(),
            });
        }
        let header = BatchHeader::read(&bytes);
        let declared = i64::from(header.batch_length);
        let actual = bytes.len() - BATCH_LENGTH_PREFIX_BYTES;
        if declared != actual as i64 {
            return Err(BatchError::LengthMismatch { declared, actual });
        }
        if header.magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(header.magic));
        }
        let computed = crc32c::crc32c(&bytes[ATTRIBUTES_OFFSET..]);
        if computed != header.crc {
            return Err(BatchError::CrcMismatch {
                stored: header.crc,
                computed,
            });
        }
        header.compression()?;
        // A compacted batch keeps its offsets with fewer records (none, once every one is
        // gone); a producer's batch is dense ([`RecordBatch::check_dense`]).
        if header.records_count < 0
            || header.last_offset_delta < 0
            || i64::from(header.records_count) > i64::from(header.last_offset_delta) + 1
        {
            return Err(BatchError::CountMismatch {
                records_count: header.records_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        let producer_ok = if header.has_producer_id() {
            // A control batch (a transaction marker) carries its producer but no sequence.
            header.producer_id >= 0
                && header.producer_epoch >= 0
                && (header.base_sequence >= 0
                    || (header.is_control() && header.base_sequence == NO_SEQUENCE))
        } else {
            header.producer_id == NO_PRODUCER_ID
        };
        if !producer_ok {
            return Err(BatchError::InvalidProducerFields {
                producer_id: header.producer_id,
                producer_epoch: header.producer_epoch,
                base_sequence: header.base_sequence,
            });
        }
        if header.is_transactional() && !header.has_producer_id() {
            return Err(BatchError::TransactionalWithoutProducer);
        }
        Ok(RecordBatch { bytes, header })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Checks that a batch holds a record at every offset it spans, as a producer's must
    /// (only compaction leaves gaps).
    pub fn check_dense(&self) -> Result<(), BatchError> {
        let header = &self.header;
        if header.records_count < 1 || header.last_offset_delta != header.records_count - 1 {
            return Err(BatchError::CountMismatch {
                records_count: header.records_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        Ok(())
    }

    /// Decodes the header fields of a batch without checking anything (for stored batches,
    /// which were validated when they were written and are verified again on recovery).
    pub fn header_of(raw: &[u8; BATCH_HEADER_BYTES]) -> BatchHeader {
        BatchHeader::read(raw)
    }

    /// The batch exactly as it is stored and sent.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The records, decompressed (at most `decompressed_size_max_bytes`, against zip bombs)
    /// and checked: each record's length, offset deltas rising within the batch's span (each
    /// one its index in a dense batch), the count.
    pub fn records(&self, decompressed_size_max_bytes: usize) -> Result<Vec<Record>, BatchError> {
        if self.header.records_count == 0 {
            // A batch the cleaner emptied is a header alone.
            let trailing_bytes = self.bytes.len() - BATCH_HEADER_BYTES;
            if trailing_bytes > 0 {
                return Err(BatchError::TrailingBytes { trailing_bytes });
            }
            return Ok(Vec::new());
        }
        let payload = self.bytes.slice(BATCH_HEADER_BYTES..);
        let compression = self.header.compression()?;
        let mut data = compression::decompress(compression, payload, decompressed_size_max_bytes)?;
        let count = self.header.records_count;
        // Each record takes at least 7 bytes; never reserve more than the data could hold.
        let mut records = Vec::with_capacity((count as usize).min(data.len() / 7 + 1));
        let mut lowest = 0;
        for index in 0..count {
            let record = Record::read(&mut data, index, lowest, self.header.last_offset_delta)?;
            lowest = record.offset_delta + 1;
            records.push(record);
        }
        if !data.is_empty() {
            return Err(BatchError::TrailingBytes {
                trailing_bytes: data.len(),
            });
        }
        Ok(records)
    }
}

/// Writes the base offset and partition leader epoch into a batch's header. The CRC does not
/// cover these fields, so the batch stays valid.
pub fn stamp(batch: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    assert!(
        batch.len() >= BATCH_HEADER_BYTES,
        "stamp needs a whole batch header"
    );
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&partition_leader_epoch.to_be_bytes());
}

/// Marks a batch's timestamps as the broker's (LogAppendTime) and sets its max timestamp to
/// `timestamp_ms`, as a leader does for a topic with `message.timestamp.type=LogAppendTime`;
/// both lie under the CRC, which is computed again.
pub fn set_log_append_time(batch: &mut [u8], timestamp_ms: i64) {
    assert!(
        batch.len() >= BATCH_HEADER_BYTES,
        "a timestamp needs a whole batch header"
    );
    // Attributes (2), last offset delta (4), base timestamp (8), then the max timestamp.
    const MAX_TIMESTAMP_OFFSET: usize = ATTRIBUTES_OFFSET + 2 + 4 + 8;
    let at = ATTRIBUTES_OFFSET;
    let attributes = i16::from_be_bytes([batch[at], batch[at + 1]]) | ATTRIBUTE_LOG_APPEND_TIME;
    batch[at..at + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8]
        .copy_from_slice(&timestamp_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
}

/// Splits a records field (several batches back to back) into whole batches, zero-copy.
/// A partial batch at the end is an error: a producer must send whole batches.
pub fn split_batches(mut records: Bytes) -> impl Iterator<Item = Result<Bytes, BatchError>> {
    std::iter::from_fn(move || {
        if records.is_empty() {
            return None;
        }
        if records.len() < BATCH_LENGTH_PREFIX_BYTES {
            let size_bytes = records.len();
            records.clear();
            return Some(Err(BatchError::TooShort { size_bytes }));
        }
        let declared = i32::from_be_bytes([records[8], records[9], records[10], records[11]]);
        let size = BATCH_LENGTH_PREFIX_BYTES as i64 + i64::from(declared);
        if declared < 0 || size > records.len() as i64 {
            let actual = records.len() - BATCH_LENGTH_PREFIX_BYTES;
            records.clear();
            return Some(Err(BatchError::LengthMismatch {
                declared: i64::from(declared),
                actual,
            }));
        }
        Some(Ok(records.split_to(size as usize)))
    })
}

/// One record of a batch. Key, value and headers are slices of the batch (or of its
/// decompressed payload): no copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers_count: u32,
    /// The headers, still encoded; [`Record::headers`] iterates them.
    pub headers_bytes: Bytes,
}

/// A record header. Keys may repeat; order is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

fn read_varbytes(buf: &mut Bytes) -> Result<Option<Bytes>, WireError> {
    let len = wire::read_varint(buf)?;
    if len < 0 {
        return Ok(None);
    }
    Ok(Some(wire::read_exact(buf, len as usize)?))
}

impl Record {
    /// Reads the record at `index`, whose offset delta lies in `lowest..=highest`.
    fn read(data: &mut Bytes, index: i32, lowest: i32, highest: i32) -> Result<Record, BatchError> {
        let wire_err = |source| BatchError::RecordWire { index, source };
        let length = wire::read_varint(data).map_err(wire_err)?;
        if length < 0 {
            return Err(BatchError::InvalidRecord {
                index,
                reason: "negative record length",
            });
        }
        let mut body = wire::read_exact(data, length as usize).map_err(wire_err)?;
        let attributes = wire::read_i8(&mut body).map_err(wire_err)?;
        let timestamp_delta = wire::read_varlong(&mut body).map_err(wire_err)?;
        let offset_delta = wire::read_varint(&mut body).map_err(wire_err)?;
        if offset_delta < lowest || offset_delta > highest {
            return Err(BatchError::InvalidRecord {
                index,
                reason: "offset delta does not follow the record before it",
            });
        }
        let key = read_varbytes(&mut body).map_err(wire_err)?;
        let value = read_varbytes(&mut body).map_err(wire_err)?;
        let headers_count = wire::read_varint(&mut body).map_err(wire_err)?;
        if headers_count < 0 {
            return Err(BatchError::InvalidRecord {
                index,
                reason: "negative header count",
            });
        }
        let record = Record {
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers_count: headers_count as u32,
            headers_bytes: body,
        };
        // Validate the headers now, so iterating them later cannot fail.
        let mut seen = 0;
        let mut rest = record.headers_bytes.clone();
        while seen < record.headers_count {
            Self::read_header(&mut rest).map_err(wire_err)?;
            seen += 1;
        }
        if !rest.is_empty() {
            return Err(BatchError::InvalidRecord {
                index,
                reason: "bytes after the record's last header",
            });
        }
        Ok(record)
    }

    fn read_header(buf: &mut Bytes) -> Result<Header, WireError> {
        let key = read_varbytes(buf)?.ok_or(WireError::UnexpectedNull)?;
        let value = read_varbytes(buf)?;
        Ok(Header { key, value })
    }

    /// The record's headers in order, duplicates kept.
    pub fn headers(&self) -> impl Iterator<Item = Header> + '_ {
        let mut rest = self.headers_bytes.clone();
        (0..self.headers_count)
            .map(move |_| Self::read_header(&mut rest).expect("validated when the record was read"))
    }
}

/// One record to put in a batch: for clients, the simulator and tests.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewRecord {
    pub timestamp_delta: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// How to build a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchOptions {
    pub compression: Compression,
    pub base_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub transactional: bool,
    /// A control batch (markers the broker writes; clients skip them).
    pub control: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            compression: Compression::None,
            base_timestamp: 0,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            transactional: false,
            control: false,
        }
    }
}

fn write_varbytes(buf: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        None => wire::write_varint(buf, -1),
        Some(bytes) => {
            wire::write_varint(buf, bytes.len() as i32);
            buf.put_slice(bytes);
        }
    }
}

/// The batch `batch` with only the records `kept` (some of its own, in order): every header
/// field stays (base offset, last offset delta, leader epoch, timestamps, producer fields,
/// attributes) but the count and the CRC, and each record keeps its offset and timestamp
/// deltas, so offsets, batch boundaries and a producer's sequences read as before
/// (compaction, as Kafka's cleaner rewrites a batch). With no record left it is a header
/// alone, uncompressed.
pub fn rebuild(batch: &RecordBatch, kept: &[Record]) -> Result<Bytes, BatchError> {
    let header = batch.header();
    let mut payload = BytesMut::new();
    let mut record_buf = BytesMut::new();
    for record in kept {
        record_buf.clear();
        wire::write_i8(&mut record_buf, record.attributes);
        wire::write_varlong(&mut record_buf, record.timestamp_delta);
        wire::write_varint(&mut record_buf, record.offset_delta);
        write_varbytes(&mut record_buf, record.key.as_deref());
        write_varbytes(&mut record_buf, record.value.as_deref());
        wire::write_varint(&mut record_buf, record.headers_count as i32);
        record_buf.put_slice(&record.headers_bytes);
        wire::write_varint(&mut payload, record_buf.len() as i32);
        payload.put_slice(&record_buf);
    }
    let mut attributes = header.attributes;
    let payload = if kept.is_empty() {
        attributes &= !ATTRIBUTE_COMPRESSION_MASK;
        Bytes::new()
    } else {
        compression::compress(header.compression()?, &payload)?
    };
    let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + payload.len());
    out.put_i64(header.base_offset);
    out.put_i32((BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES + payload.len()) as i32);
    out.put_i32(header.partition_leader_epoch);
    out.put_i8(MAGIC_V2);
    out.put_u32(0); // the CRC, patched below
    out.put_i16(attributes);
    out.put_i32(header.last_offset_delta);
    out.put_i64(header.base_timestamp);
    out.put_i64(header.max_timestamp);
    out.put_i64(header.producer_id);
    out.put_i16(header.producer_epoch);
    out.put_i32(header.base_sequence);
    out.put_i32(kept.len() as i32);
    out.put_slice(&payload);
    let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
    out[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

/// Encodes a batch with base offset 0 and leader epoch -1, as a producer sends it.
pub fn build(records: &[NewRecord], options: &BatchOptions) -> Result<Bytes, BatchError> {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let mut payload = BytesMut::new();
    let mut record_buf = BytesMut::new();
    for (index, record) in records.iter().enumerate() {
        record_buf.clear();
        wire::write_i8(&mut record_buf, 0);
        wire::write_varlong(&mut record_buf, record.timestamp_delta);
        wire::write_varint(&mut record_buf, index as i32);
        write_varbytes(&mut record_buf, record.key.as_deref());
        write_varbytes(&mut record_buf, record.value.as_deref());
        wire::write_varint(&mut record_buf, record.headers.len() as i32);
        for header in &record.headers {
            write_varbytes(&mut record_buf, Some(&header.key));
            write_varbytes(&mut record_buf, header.value.as_deref());
        }
        wire::write_varint(&mut payload, record_buf.len() as i32);
        payload.put_slice(&record_buf);
    }
    let payload = compression::compress(options.compression, &payload)?;
    let max_delta = records.iter().map(|r| r.timestamp_delta).max().unwrap_or(0);
    let mut attributes = options.compression.attribute() as i16;
    if options.transactional {
        attributes |= ATTRIBUTE_TRANSACTIONAL;
    }
    if options.control {
        attributes |= ATTRIBUTE_CONTROL;
    }
    let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + payload.len());
    out.put_i64(0);
    out.put_i32((BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES + payload.len()) as i32);
    out.put_i32(-1);
    out.put_i8(MAGIC_V2);
    out.put_u32(0); // the CRC, patched below
    out.put_i16(attributes);
    out.put_i32(records.len() as i32 - 1);
    out.put_i64(options.base_timestamp);
    out.put_i64(options.base_timestamp + max_delta);
    out.put_i64(options.producer_id);
    out.put_i16(options.producer_epoch);
    out.put_i32(options.base_sequence);
    out.put_i32(records.len() as i32);
    out.put_slice(&payload);
    let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
    out[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
    debug_assert_eq!(out[MAGIC_OFFSET], MAGIC_V2 as u8);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_records(count: usize) -> Vec<NewRecord> {
        (0..count)
            .map(|i| NewRecord {
                timestamp_delta: i as i64 * 3,
                key: if i % 3 == 0 {
                    None
                } else {
                    Some(Bytes::from(format!("key-{i}")))
                },
                value: Some(Bytes::from(format!("value-{i}-").repeat(i % 7 + 1))),
                headers: vec![
                    Header {
                        key: Bytes::from_static(b"h"),
                        value: Some(Bytes::from_static(b"1")),
                    },
                    Header {
                        key: Bytes::from_static(b"h"),
                        value: None,
                    },
                ],
            })
            .collect()
    }

    #[test]
    fn every_codec_round_trips_records_keys_and_duplicate_headers() {
        for compression in Compression::ALL {
            let records = sample_records(50);
            let options = BatchOptions {
                compression,
                base_timestamp: 1_700_000_000_000,
                ..BatchOptions::default()
            };
            let batch = RecordBatch::parse(build(&records, &options).unwrap()).unwrap();
            assert_eq!(batch.header().compression().unwrap(), compression);
            assert_eq!(batch.header().max_timestamp, 1_700_000_000_000 + 49 * 3);
            let read = batch.records(1 << 20).unwrap();
            assert_eq!(read.len(), 50);
            for (new, old) in records.iter().zip(&read) {
                assert_eq!(old.key, new.key);
                assert_eq!(old.value, new.value);
                assert_eq!(old.timestamp_delta, new.timestamp_delta);
                assert_eq!(
                    old.headers().collect::<Vec<_>>(),
                    new.headers,
                    "duplicate keys kept, in order"
                );
            }
        }
    }

    #[test]
    fn stamping_keeps_the_crc_valid() {
        let bytes = build(&sample_records(3), &BatchOptions::default()).unwrap();
        let mut copy = BytesMut::from(&bytes[..]);
        stamp(&mut copy, 1234, 7);
        let batch = RecordBatch::parse(copy.freeze()).unwrap();
        assert_eq!(batch.header().base_offset, 1234);
        assert_eq!(batch.header().partition_leader_epoch, 7);
        assert_eq!(batch.header().last_offset(), 1236);
    }

    #[test]
    fn log_append_time_is_stamped_under_a_valid_crc() {
        let bytes = build(&sample_records(2), &BatchOptions::default()).unwrap();
        let mut copy = BytesMut::from(&bytes[..]);
        set_log_append_time(&mut copy, 1_700_000_000_123);
        let batch = RecordBatch::parse(copy.freeze()).unwrap();
        assert!(batch.header().is_log_append_time());
        assert_eq!(batch.header().max_timestamp, 1_700_000_000_123);
    }

    #[test]
    fn any_flipped_bit_under_the_crc_is_caught() {
        let bytes = build(&sample_records(4), &BatchOptions::default()).unwrap();
        for byte in ATTRIBUTES_OFFSET..bytes.len() {
            let mut copy = bytes.to_vec();
            copy[byte] ^= 0x10;
            assert!(
                matches!(
                    RecordBatch::parse(Bytes::from(copy)),
                    Err(BatchError::CrcMismatch { .. })
                ),
                "flip at {byte}"
            );
        }
    }

    #[test]
    fn header_checks_name_what_is_wrong() {
        let bytes = build(&sample_records(2), &BatchOptions::default()).unwrap();
        assert_eq!(
            RecordBatch::parse(bytes.slice(..40)),
            Err(BatchError::TooShort { size_bytes: 40 })
        );
        assert!(matches!(
            RecordBatch::parse(bytes.slice(..bytes.len() - 1)),
            Err(BatchError::LengthMismatch { .. })
        ));
        let mut copy = bytes.to_vec();
        copy[MAGIC_OFFSET] = 1;
        assert_eq!(
            RecordBatch::parse(Bytes::from(copy)),
            Err(BatchError::UnsupportedMagic(1))
        );

        // A codec id of 5 is unknown; fix the CRC so the codec check is what fails.
        let mut copy = bytes.to_vec();
        copy[ATTRIBUTES_OFFSET + 1] |= 0x05;
        let crc = crc32c::crc32c(&copy[ATTRIBUTES_OFFSET..]);
        copy[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            RecordBatch::parse(Bytes::from(copy)),
            Err(BatchError::Compression(CompressionError::UnknownCodec(5)))
        );

        // Idempotent fields must be all set or all unset.
        let options = BatchOptions {
            producer_id: 9,
            producer_epoch: 0,
            base_sequence: -1,
            ..BatchOptions::default()
        };
        let bad = build(&sample_records(1), &options).unwrap();
        assert!(matches!(
            RecordBatch::parse(bad),
            Err(BatchError::InvalidProducerFields { .. })
        ));
        let options = BatchOptions {
            transactional: true,
            ..BatchOptions::default()
        };
        let bad = build(&sample_records(1), &options).unwrap();
        assert_eq!(
            RecordBatch::parse(bad),
            Err(BatchError::TransactionalWithoutProducer)
        );
    }

    #[test]
    fn record_count_must_match_the_offset_delta() {
        let bytes = build(&sample_records(3), &BatchOptions::default()).unwrap();
        let mut copy = bytes.to_vec();
        copy[57..61].copy_from_slice(&4i32.to_be_bytes());
        let crc = crc32c::crc32c(&copy[ATTRIBUTES_OFFSET..]);
        copy[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            RecordBatch::parse(Bytes::from(copy)),
            Err(BatchError::CountMismatch {
                records_count: 4,
                last_offset_delta: 2
            })
        );
    }

    #[test]
    fn split_batches_cuts_back_to_back_batches_and_rejects_a_partial_tail() {
        let a = build(&sample_records(2), &BatchOptions::default()).unwrap();
        let b = build(&sample_records(5), &BatchOptions::default()).unwrap();
        let mut both = BytesMut::new();
        both.put_slice(&a);
        both.put_slice(&b);
        let split: Vec<_> = split_batches(both.clone().freeze())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(split, vec![a.clone(), b.clone()]);
        let partial: Vec<_> = split_batches(both.freeze().slice(..a.len() + 20)).collect();
        assert_eq!(partial.len(), 2);
        assert!(partial[1].is_err());
    }

    #[test]
    fn a_zip_bomb_is_refused_at_the_limit() {
        let records = vec![NewRecord {
            value: Some(Bytes::from(vec![0u8; 1 << 20])),
            ..NewRecord::default()
        }];
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let options = BatchOptions {
                compression,
                ..BatchOptions::default()
            };
            let batch = RecordBatch::parse(build(&records, &options).unwrap()).unwrap();
            assert!(
                batch.as_bytes().len() < 1 << 16,
                "{compression:?} compresses zeros"
            );
            assert!(matches!(
                batch.records(1 << 16),
                Err(BatchError::Compression(CompressionError::TooLarge { .. }))
            ));
        }
    }
}
