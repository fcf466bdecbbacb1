//! Arbitrary bytes as a peer frame: decoded (size, CRC, counts checked against what remains),
//! and whatever decodes is handed to a Raft engine, message by message, as a follower and as
//! a leader. Nothing may panic, abort or allocate without bound: a peer's bytes can pass their
//! CRC and still make no sense.
//!
//! Random bytes almost never carry a valid CRC, so half the inputs are repaired first (size
//! and CRC set right) to reach the message decoding and the engine behind them.
#![no_main]

use bytes::Bytes;
use keel_core::raft::wire;
use keel_core::raft::{LogShape, Persisted, Raft, RaftConfig};
use libfuzzer_sys::fuzz_target;

fn engine(id: i32) -> Raft {
    let config = RaftConfig {
        id,
        voters: vec![1, 2, 3],
        election_timeout_ms: 100,
        fetch_retry_ms: 100,
        fetch_refresh_ms: 1_000,
        fetch_max_bytes: 1 << 20,
        commit_unsynced: false,
        in_sync_lag_ms: 10_000,
        seed: 7,
        planted: None,
    };
    let log = LogShape {
        epochs: vec![(1, 0), (3, 4)],
        end: 9,
        synced: 9,
        start: 0,
    };
    let persisted = Persisted {
        epoch: 3,
        voted_for: Some(id),
    };
    Raft::new(config, persisted, log, 0)
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    if bytes.first().is_some_and(|b| b & 1 == 1) && bytes.len() >= 9 {
        // Repair: the size prefix covers the rest, the version is known, the CRC is right.
        bytes[8] = wire::PEER_WIRE_VERSION;
        let size = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&size.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[8..]);
        bytes[4..8].copy_from_slice(&crc.to_be_bytes());
    }
    let Ok(frame) = wire::decode(Bytes::from(bytes)) else {
        return;
    };
    let mut follower = engine(1);
    // A second engine ticked into a campaign, so that votes and answers meet another role.
    let mut candidate = engine(1);
    let mut out = Vec::new();
    candidate.handle_tick(1_000, &mut out);
    for (_, message) in frame.messages {
        let mut out = Vec::new();
        follower.handle_message(1_500, frame.from, message.clone(), &mut out);
        candidate.handle_message(1_500, frame.from, message, &mut out);
    }
    // What the frame's link header would make the host say of its sender.
    let mut out = Vec::new();
    match frame.link.gaps % 3 {
        0 => follower.handle_peer_reset(2_000, frame.from, &mut out),
        1 => follower.handle_peer_down(2_000, frame.from, &mut out),
        _ => follower.handle_peer_up(2_000, frame.from, &mut out),
    }
    follower.handle_tick(3_000, &mut out);
});
