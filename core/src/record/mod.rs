//! Record batches (magic 2): validation in place, stamping, record iteration, compression.

pub mod batch;
pub mod compression;

pub use batch::{
    build, rebuild, set_log_append_time, split_batches, stamp, BatchError, BatchHeader,
    BatchOptions, NewRecord, Record, RecordBatch,
};
pub use compression::{Compression, CompressionError};

/// How far one batch may decompress (against zip bombs), from [`crate::limits`].
pub const DECOMPRESSED_BATCH_SIZE_MAX_BYTES: usize =
    crate::limits::DECOMPRESSED_BATCH_SIZE_MAX_BYTES;
