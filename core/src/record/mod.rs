//! Record batches (magic 2): validation in place, stamping, record iteration, compression.

pub mod batch;
pub mod compression;

pub use batch::{
    build, split_batches, stamp, BatchError, BatchHeader, BatchOptions, NewRecord, Record,
    RecordBatch,
};
pub use compression::{Compression, CompressionError};

/// Default bound on how far one batch may decompress (against zip bombs): Kafka's default
/// maximum message size is 1 MiB compressed; 64 MiB uncompressed leaves room for real data.
pub const DECOMPRESSED_BATCH_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;
