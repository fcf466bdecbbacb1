//! Hostile input: forged counts and lengths must fail before the decoder allocates more than
//! the input's own size, for every API and version Keel speaks.
//!
//! A counting global allocator measures the bytes allocated by the current thread while a
//! decode runs (thread-local, so tests running in parallel do not disturb each other).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use keel_core::protocol::codec::{parse_request, RequestError};
use keel_core::protocol::{ApiKey, Request, Response, WireError};

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATED_BYTES: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: the thread-locals may already be gone while a thread shuts down.
        let _ = COUNTING.try_with(|counting| {
            if counting.get() {
                let _ = ALLOCATED_BYTES.try_with(|total| total.set(total.get() + layout.size()));
            }
        });
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns its result with the bytes it allocated on this thread.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALLOCATED_BYTES.with(|total| total.set(0));
    COUNTING.with(|counting| counting.set(true));
    let result = f();
    COUNTING.with(|counting| counting.set(false));
    (result, ALLOCATED_BYTES.with(Cell::get))
}

/// The forged Produce body that aborts kafka-protocol 0.18: 14 bytes claiming 54,265,856 topics.
const FORGED_PRODUCE_BODY_V3: [u8; 14] = [
    0xff, 0xff, // transactional_id = null
    0x00, 0x01, // acks = 1
    0x00, 0x00, 0x75, 0x30, // timeout_ms = 30000
    0x03, 0x3c, 0x08, 0x00, // topic count = 54,265,856
    0x00, 0x00, // two bytes where the topics would be
];

#[test]
fn the_forged_fourteen_byte_produce_body_fails_without_allocating() {
    assert_eq!(i32::from_be_bytes([0x03, 0x3c, 0x08, 0x00]), 54_265_856);
    let (result, allocated) = allocated_by(|| {
        Request::decode(
            ApiKey::Produce,
            3,
            &mut Bytes::from_static(&FORGED_PRODUCE_BODY_V3),
        )
    });
    let error = result.expect_err("a forged count must fail");
    assert_eq!(error.field, "ProduceRequest.topic_data");
    assert_eq!(
        error.kind,
        WireError::LengthExceedsInput {
            claimed: 54_265_856,
            remaining: 2
        }
    );
    assert!(
        allocated <= FORGED_PRODUCE_BODY_V3.len(),
        "allocated {allocated} bytes"
    );
}

#[test]
fn the_forged_body_inside_a_whole_request_frame_fails_the_same_way() {
    let mut frame = vec![0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x07, 0xff, 0xff];
    frame.extend_from_slice(&FORGED_PRODUCE_BODY_V3);
    let (result, allocated) = allocated_by(|| parse_request(Bytes::from(frame.clone())));
    assert!(matches!(result, Err(RequestError::Decode(_))), "{result:?}");
    assert!(
        allocated <= frame.len(),
        "allocated {allocated} bytes for a {}-byte frame",
        frame.len()
    );
}

/// Bodies that claim the largest counts and lengths everywhere: every i32 and i16 at its
/// maximum, every unsigned varint at its largest. Whatever field of whatever message comes
/// first that holds a count or a length lies; only fixed-width fields precede it.
fn claiming_bodies() -> Vec<Vec<u8>> {
    vec![
        [0x7f, 0xff, 0xff, 0xff].repeat(8),
        [0xff, 0xff, 0xff, 0xff, 0x0f].repeat(8),
        [0x7f, 0xff].repeat(16),
    ]
}

/// Bodies whose lie comes after a valid prefix (zeros: empty strings, empty arrays, zero
/// counts), so some of the message decodes before the lie is found.
fn late_lying_bodies() -> Vec<Vec<u8>> {
    let mut bodies = vec![vec![0x00; 40], vec![0xff; 40]];
    for prefix_zeros in 0..24 {
        let mut body = vec![0u8; prefix_zeros];
        body.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]);
        bodies.push(body);
        let mut compact = vec![0u8; prefix_zeros];
        compact.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]);
        bodies.push(compact);
    }
    bodies
}

/// Decodes `body` as request and response of every API and version, returning the most bytes
/// any one decode allocated, with where.
fn most_allocated(body: &[u8]) -> (usize, String) {
    let mut worst = (0, String::new());
    for key in ApiKey::ALL {
        let (min, max) = key.versions();
        for version in min..=max {
            let input = Bytes::copy_from_slice(body);
            let (request, allocated) =
                allocated_by(|| Request::decode(key, version, &mut input.clone()));
            if allocated > worst.0 {
                worst = (
                    allocated,
                    format!("{key:?} v{version} request: {request:?}"),
                );
            }
            let (response, allocated) =
                allocated_by(|| Response::decode(key, version, &mut input.clone()));
            if allocated > worst.0 {
                worst = (
                    allocated,
                    format!("{key:?} v{version} response: {response:?}"),
                );
            }
        }
    }
    worst
}

#[test]
fn bodies_claiming_i32_max_elements_fail_without_allocating_for_every_api_and_version() {
    let mut errors = 0;
    for body in claiming_bodies() {
        for key in ApiKey::ALL {
            let (min, max) = key.versions();
            for version in min..=max {
                // Messages of fixed-width fields only (Heartbeat's response) may decode.
                let input = Bytes::copy_from_slice(&body);
                errors += Request::decode(key, version, &mut input.clone()).is_err() as usize;
                errors += Response::decode(key, version, &mut input.clone()).is_err() as usize;
            }
        }
        let (allocated, at) = most_allocated(&body);
        assert!(
            allocated <= body.len(),
            "allocated {allocated} bytes for a {}-byte body at {at}",
            body.len()
        );
    }
    assert!(errors > 500, "only {errors} decodes failed");
}

#[test]
fn a_lie_after_a_valid_prefix_costs_at_most_a_small_multiple_of_the_input() {
    // What did decode before the lie may take more room in memory than on the wire (an empty
    // struct is one byte on the wire), but never more than a constant factor of the input.
    const MEMORY_PER_WIRE_BYTE_MAX: usize = 64;
    for body in late_lying_bodies() {
        let (allocated, at) = most_allocated(&body);
        assert!(
            allocated <= body.len() * MEMORY_PER_WIRE_BYTE_MAX,
            "allocated {allocated} bytes for a {}-byte body at {at}",
            body.len()
        );
    }
}
#[test]
fn an_i32_max_array_claim_is_a_typed_error_naming_the_field() {
    // Metadata v1 request: topics (nullable array) = i32::MAX elements, nothing after.
    static BODY: [u8; 4] = [0x7f, 0xff, 0xff, 0xff];
    let error = Request::decode(ApiKey::Metadata, 1, &mut Bytes::from_static(&BODY)).unwrap_err();
    assert_eq!(error.field, "MetadataRequest.topics");
    assert_eq!(error.version, 1);
    assert_eq!(
        error.kind,
        WireError::LengthExceedsInput {
            claimed: i32::MAX as u64,
            remaining: 0
        }
    );
    assert_eq!(
        error.to_string(),
        "cannot decode MetadataRequest.topics (version 1): claims length 2147483647 but only 0 bytes remain"
    );
}
