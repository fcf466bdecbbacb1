//! Kafka's primitive wire types: fixed-width integers, varints, (compact) strings, bytes and
//! array lengths, UUIDs.
//!
//! Every reader takes `&mut Bytes` and advances it. A length or count read from the wire is
//! checked against the bytes that remain *before* anything is reserved or copied, so a forged
//! count can never make the decoder allocate more than its input: each array element and each
//! string byte occupies at least one byte of input. Byte fields are split off the input
//! zero-copy (`Bytes::split_to`).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::WireError;

/// The capacity to reserve for an array of `count` elements of `T` before decoding them: never
/// more bytes than the input has left, so a count that lies costs nothing up front. An array
/// whose elements are bigger in memory than on the wire grows as they are actually decoded.
#[inline]
pub fn prealloc_count<T>(count: usize, remaining_bytes: usize) -> usize {
    count.min(remaining_bytes / std::mem::size_of::<T>().max(1))
}

/// A Kafka UUID (topic ids): 16 bytes on the wire, printed in the usual hyphenated form.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(pub [u8; 16]);

impl std::fmt::Debug for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[inline]
fn need(buf: &Bytes, needed: usize) -> Result<(), WireError> {
    if buf.remaining() < needed {
        return Err(WireError::UnexpectedEnd {
            needed,
            remaining: buf.remaining(),
        });
    }
    Ok(())
}

macro_rules! fixed {
    ($read:ident, $write:ident, $ty:ty, $get:ident, $put:ident) => {
        #[inline]
        pub fn $read(buf: &mut Bytes) -> Result<$ty, WireError> {
            need(buf, std::mem::size_of::<$ty>())?;
            Ok(buf.$get())
        }
        #[inline]
        pub fn $write(buf: &mut BytesMut, value: $ty) {
            buf.$put(value);
        }
    };
}

fixed!(read_i8, write_i8, i8, get_i8, put_i8);
fixed!(read_i16, write_i16, i16, get_i16, put_i16);
fixed!(read_i32, write_i32, i32, get_i32, put_i32);
fixed!(read_i64, write_i64, i64, get_i64, put_i64);
fixed!(read_u16, write_u16, u16, get_u16, put_u16);
fixed!(read_u32, write_u32, u32, get_u32, put_u32);
fixed!(read_f64, write_f64, f64, get_f64, put_f64);

#[inline]
pub fn read_bool(buf: &mut Bytes) -> Result<bool, WireError> {
    Ok(read_i8(buf)? != 0)
}

#[inline]
pub fn write_bool(buf: &mut BytesMut, value: bool) {
    buf.put_i8(value as i8);
}

pub fn read_uuid(buf: &mut Bytes) -> Result<Uuid, WireError> {
    need(buf, 16)?;
    let mut id = [0u8; 16];
    buf.copy_to_slice(&mut id);
    Ok(Uuid(id))
}

pub fn write_uuid(buf: &mut BytesMut, value: &Uuid) {
    buf.put_slice(&value.0);
}

/// An unsigned LEB128 varint of at most 32 bits (5 bytes).
pub fn read_uvarint(buf: &mut Bytes) -> Result<u32, WireError> {
    let mut value: u32 = 0;
    for i in 0..5 {
        need(buf, 1)?;
        let byte = buf.get_u8();
        // The fifth byte may only carry the top four bits of a u32.
        if i == 4 && byte > 0x0f {
            return Err(WireError::VarintTooLong);
        }
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarintTooLong)
}

pub fn write_uvarint(buf: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// An unsigned LEB128 varint of at most 64 bits (10 bytes).
pub fn read_uvarlong(buf: &mut Bytes) -> Result<u64, WireError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        need(buf, 1)?;
        let byte = buf.get_u8();
        if i == 9 && byte > 0x01 {
            return Err(WireError::VarintTooLong);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarintTooLong)
}

pub fn write_uvarlong(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// A zigzag-encoded signed varint (record fields).
pub fn read_varint(buf: &mut Bytes) -> Result<i32, WireError> {
    let raw = read_uvarint(buf)?;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

pub fn write_varint(buf: &mut BytesMut, value: i32) {
    write_uvarint(buf, ((value << 1) ^ (value >> 31)) as u32);
}

/// A zigzag-encoded signed varlong (record fields).
pub fn read_varlong(buf: &mut Bytes) -> Result<i64, WireError> {
    let raw = read_uvarlong(buf)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

pub fn write_varlong(buf: &mut BytesMut, value: i64) {
    write_uvarlong(buf, ((value << 1) ^ (value >> 63)) as u64);
}

/// Reads a length prefix: i16 (strings) or i32 (bytes, arrays) when not compact, an unsigned
/// varint holding length + 1 when compact. `None` is null. The length is *not* yet checked
/// against the input; callers do that with what one unit costs.
fn read_len(buf: &mut Bytes, compact: bool, wide: bool) -> Result<Option<usize>, WireError> {
    let len: i64 = if compact {
        i64::from(read_uvarint(buf)?) - 1
    } else if wide {
        i64::from(read_i32(buf)?)
    } else {
        i64::from(read_i16(buf)?)
    };
    match len {
        -1 => Ok(None),
        n if n < -1 => Err(WireError::NegativeLength(n)),
        n => Ok(Some(n as usize)),
    }
}

fn check_len(buf: &Bytes, claimed: usize) -> Result<(), WireError> {
    if claimed > buf.remaining() {
        return Err(WireError::LengthExceedsInput {
            claimed: claimed as u64,
            remaining: buf.remaining(),
        });
    }
    Ok(())
}

pub fn read_nullable_string(buf: &mut Bytes, compact: bool) -> Result<Option<String>, WireError> {
    let Some(len) = read_len(buf, compact, false)? else {
        return Ok(None);
    };
    // A compact length can claim more than an i16 allows; Kafka refuses such strings too.
    if len > i16::MAX as usize {
        return Err(WireError::TooLong(len));
    }
    check_len(buf, len)?;
    let raw = buf.split_to(len);
    match std::str::from_utf8(&raw) {
        Ok(s) => Ok(Some(s.to_owned())),
        Err(_) => Err(WireError::InvalidUtf8),
    }
}

pub fn read_string(buf: &mut Bytes, compact: bool) -> Result<String, WireError> {
    read_nullable_string(buf, compact)?.ok_or(WireError::UnexpectedNull)
}

pub fn read_nullable_bytes(buf: &mut Bytes, compact: bool) -> Result<Option<Bytes>, WireError> {
    let Some(len) = read_len(buf, compact, true)? else {
        return Ok(None);
    };
    check_len(buf, len)?;
    Ok(Some(buf.split_to(len)))
}

pub fn read_bytes(buf: &mut Bytes, compact: bool) -> Result<Bytes, WireError> {
    read_nullable_bytes(buf, compact)?.ok_or(WireError::UnexpectedNull)
}

/// An array's element count, checked against the remaining input (every element takes at
/// least one byte), so a forged count fails here, before any allocation.
pub fn read_array_len(buf: &mut Bytes, compact: bool) -> Result<Option<usize>, WireError> {
    let Some(count) = read_len(buf, compact, true)? else {
        return Ok(None);
    };
    check_len(buf, count)?;
    Ok(Some(count))
}

/// Splits off `size` bytes (a tagged field's value) zero-copy.
pub fn read_exact(buf: &mut Bytes, size: usize) -> Result<Bytes, WireError> {
    check_len(buf, size)?;
    Ok(buf.split_to(size))
}

fn write_len(
    buf: &mut BytesMut,
    len: Option<usize>,
    compact: bool,
    wide: bool,
) -> Result<(), WireError> {
    let limit = if wide {
        i32::MAX as usize
    } else {
        i16::MAX as usize
    };
    match len {
        Some(n) if n > limit => return Err(WireError::TooLong(n)),
        _ => {}
    }
    if compact {
        write_uvarint(buf, len.map_or(0, |n| n as u32 + 1));
    } else if wide {
        write_i32(buf, len.map_or(-1, |n| n as i32));
    } else {
        write_i16(buf, len.map_or(-1, |n| n as i16));
    }
    Ok(())
}

pub fn write_nullable_string(
    buf: &mut BytesMut,
    value: Option<&str>,
    compact: bool,
) -> Result<(), WireError> {
    write_len(buf, value.map(str::len), compact, false)?;
    if let Some(s) = value {
        buf.put_slice(s.as_bytes());
    }
    Ok(())
}

pub fn write_string(buf: &mut BytesMut, value: &str, compact: bool) -> Result<(), WireError> {
    write_nullable_string(buf, Some(value), compact)
}

pub fn write_nullable_bytes(
    buf: &mut BytesMut,
    value: Option<&[u8]>,
    compact: bool,
) -> Result<(), WireError> {
    write_len(buf, value.map(<[u8]>::len), compact, true)?;
    if let Some(b) = value {
        buf.put_slice(b);
    }
    Ok(())
}

pub fn write_bytes(buf: &mut BytesMut, value: &[u8], compact: bool) -> Result<(), WireError> {
    write_nullable_bytes(buf, Some(value), compact)
}

pub fn write_array_len(
    buf: &mut BytesMut,
    count: Option<usize>,
    compact: bool,
) -> Result<(), WireError> {
    write_len(buf, count, compact, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvarint_round_trips_at_the_edges() {
        for value in [0u32, 1, 127, 128, 16_383, 16_384, u32::MAX / 2, u32::MAX] {
            let mut out = BytesMut::new();
            write_uvarint(&mut out, value);
            let mut input = out.freeze();
            assert_eq!(read_uvarint(&mut input), Ok(value));
            assert!(input.is_empty());
        }
    }

    #[test]
    fn varlong_round_trips_signed_values() {
        for value in [0i64, -1, 1, i64::MIN, i64::MAX, -300, 300] {
            let mut out = BytesMut::new();
            write_varlong(&mut out, value);
            let mut input = out.freeze();
            assert_eq!(read_varlong(&mut input), Ok(value));
        }
    }

    #[test]
    fn overlong_varints_are_rejected() {
        let mut input = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(read_uvarint(&mut input), Err(WireError::VarintTooLong));
        let mut input = Bytes::from_static(&[0x80; 11]);
        assert_eq!(read_uvarlong(&mut input), Err(WireError::VarintTooLong));
    }

    #[test]
    fn a_forged_array_count_fails_before_allocating() {
        let mut input = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0]);
        assert_eq!(
            read_array_len(&mut input, false),
            Err(WireError::LengthExceedsInput {
                claimed: i32::MAX as u64,
                remaining: 2
            })
        );
    }

    #[test]
    fn strings_check_length_and_utf8() {
        let mut input = Bytes::from_static(&[0x00, 0x05, b'a', b'b']);
        assert!(matches!(
            read_string(&mut input, false),
            Err(WireError::LengthExceedsInput { claimed: 5, .. })
        ));
        let mut input = Bytes::from_static(&[0x03, 0xff, 0xfe]);
        assert_eq!(read_string(&mut input, true), Err(WireError::InvalidUtf8));
        let mut input = Bytes::from_static(&[0xff, 0xff]);
        assert_eq!(
            read_string(&mut input, false),
            Err(WireError::UnexpectedNull)
        );
        let mut input = Bytes::from_static(&[0xff, 0xfe]);
        assert_eq!(
            read_nullable_string(&mut input, false),
            Err(WireError::NegativeLength(-2))
        );
    }
}
