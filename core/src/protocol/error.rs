//! Typed codec errors. A decode error names the message, the field and the version that
//! failed, and carries no allocation (every name is `'static`), so a hostile frame costs
//! nothing to reject.

/// What went wrong reading or writing one primitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("needs {needed} bytes but {remaining} remain")]
    UnexpectedEnd { needed: usize, remaining: usize },
    #[error("claims length {claimed} but only {remaining} bytes remain")]
    LengthExceedsInput { claimed: u64, remaining: usize },
    #[error("negative length {0}")]
    NegativeLength(i64),
    #[error("null where the version does not allow it")]
    UnexpectedNull,
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("varint longer than its type")]
    VarintTooLong,
    #[error("length {0} does not fit the wire type")]
    TooLong(usize),
    #[error("version {version} is not supported (supported: {min}..={max})")]
    UnsupportedVersion { version: i16, min: i16, max: i16 },
}

impl WireError {
    /// Attaches the field and version the error happened at.
    #[inline]
    pub fn at(self, field: &'static str, version: i16) -> DecodeError {
        DecodeError {
            field,
            version,
            kind: self,
        }
    }

    #[inline]
    pub fn encoding(self, field: &'static str, version: i16) -> EncodeError {
        EncodeError {
            field,
            version,
            kind: self,
        }
    }
}

/// A message or header could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {field} (version {version}): {kind}")]
pub struct DecodeError {
    /// `Message.field` or `Message.Struct.field`.
    pub field: &'static str,
    pub version: i16,
    pub kind: WireError,
}

/// A message could not be encoded at the requested version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {field} (version {version}): {kind}")]
pub struct EncodeError {
    pub field: &'static str,
    pub version: i16,
    pub kind: WireError,
}
