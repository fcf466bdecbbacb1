//! keel-net: the tokio adapter and the `keel` binary (built out by the broker issue).
