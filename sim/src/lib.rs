//! keel-sim: Keel's deterministic simulator (built out by the simulator issue).
