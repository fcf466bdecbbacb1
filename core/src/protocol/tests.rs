//! Differential tests against the `kafka-protocol` crate, the oracle.
//!
//! For every API and version both codecs speak, in both directions (request, response):
//! a random message encoded by Keel must decode with `kafka-protocol`, consuming every byte,
//! and re-encode to the same bytes; those bytes must decode with Keel back to the original
//! message. Equal bytes both ways means both decoders read what both encoders wrote, field by
//! field, including tagged fields and unknown tags.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey as OracleKey, RequestKind, ResponseKind};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::debug_view;
use super::testgen::Gen;
use super::{ApiKey, Request, Response};

const CASES_PER_VERSION: u32 = 64;

fn oracle_versions(key: ApiKey) -> (i16, i16) {
    let range = OracleKey::try_from(key as i16)
        .expect("the oracle knows every api we speak")
        .valid_versions();
    (range.min, range.max)
}

/// The versions both Keel and the oracle speak.
fn shared_versions(key: ApiKey) -> impl Iterator<Item = i16> {
    let (ours_min, ours_max) = key.versions();
    let (theirs_min, theirs_max) = oracle_versions(key);
    ours_min.max(theirs_min)..=ours_max.min(theirs_max)
}

/// One side of the codec under test: how Keel and the oracle encode and decode a direction.
struct Direction<K, O> {
    random: fn(&mut Gen, ApiKey, i16) -> K,
    encode: fn(&K, &mut BytesMut, i16) -> Result<(), super::EncodeError>,
    decode: fn(ApiKey, i16, &mut Bytes) -> Result<K, super::DecodeError>,
    oracle_decode: fn(OracleKey, &mut Bytes, i16) -> anyhow::Result<O>,
    oracle_encode: fn(&O, &mut BytesMut, i16) -> anyhow::Result<()>,
}

const REQUESTS: Direction<Request, RequestKind> = Direction {
    random: Request::random,
    encode: Request::encode,
    decode: Request::decode,
    oracle_decode: RequestKind::decode,
    oracle_encode: RequestKind::encode,
};

const RESPONSES: Direction<Response, ResponseKind> = Direction {
    random: Response::random,
    encode: Response::encode,
    decode: Response::decode,
    oracle_decode: ResponseKind::decode,
    oracle_encode: ResponseKind::encode,
};

fn round_trip<K, O>(
    d: &Direction<K, O>,
    key: ApiKey,
    version: i16,
    seed: u64,
) -> Result<(), TestCaseError>
where
    K: std::fmt::Debug + PartialEq,
    O: std::fmt::Debug,
{
    let oracle_key = OracleKey::try_from(key as i16).unwrap();
    let message = (d.random)(&mut Gen::new(seed), key, version);
    let mut ours = BytesMut::new();
    (d.encode)(&message, &mut ours, version)
        .map_err(|e| TestCaseError::fail(format!("keel encode: {e}")))?;
    let ours = ours.freeze();
    let mut input = ours.clone();
    let decoded = (d.oracle_decode)(oracle_key, &mut input, version)
        .map_err(|e| TestCaseError::fail(format!("oracle decode of {message:?}: {e}")))?;
    prop_assert!(
        input.is_empty(),
        "oracle left {} bytes of {:?}",
        input.len(),
        message
    );
    let mut theirs = BytesMut::new();
    (d.oracle_encode)(&decoded, &mut theirs, version)
        .map_err(|e| TestCaseError::fail(format!("oracle encode: {e}")))?;
    prop_assert_eq!(&ours[..], &theirs[..], "encodings differ for {:?}", message);
    // Same bytes could still mean different fields (two i32s swapped, a tag misnumbered):
    // the oracle's view of the message, field by field, must be ours.
    let ours_view = debug_view::parse(&format!("{message:?}"));
    let theirs_view = debug_view::parse(&format!("{decoded:?}"));
    debug_view::compare(&ours_view, &theirs_view, "").map_err(TestCaseError::fail)?;
    let mut input: Bytes = theirs.freeze();
    let back = (d.decode)(key, version, &mut input)
        .map_err(|e| TestCaseError::fail(format!("keel decode: {e}")))?;
    prop_assert!(input.is_empty());
    prop_assert_eq!(back, message);
    Ok(())
}

fn check_every_shared_version<K, O>(d: &Direction<K, O>)
where
    K: std::fmt::Debug + PartialEq,
    O: std::fmt::Debug,
{
    let mut failures = Vec::new();
    for key in ApiKey::ALL {
        for version in shared_versions(key) {
            let mut runner = TestRunner::new(Config {
                cases: CASES_PER_VERSION,
                failure_persistence: None,
                ..Config::default()
            });
            if let Err(e) = runner.run(&any::<u64>(), |seed| round_trip(d, key, version, seed)) {
                failures.push(format!("{key:?} v{version}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing versions:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn requests_agree_with_the_oracle_at_every_shared_version() {
    check_every_shared_version(&REQUESTS);
}

#[test]
fn responses_agree_with_the_oracle_at_every_shared_version() {
    check_every_shared_version(&RESPONSES);
}

#[test]
fn every_version_keel_speaks_round_trips_through_keel() {
    // Includes the versions the oracle lacks (Produce 0-2).
    for key in ApiKey::ALL {
        let (min, max) = key.versions();
        for version in min..=max {
            for seed in 0..32 {
                let request = Request::random(&mut Gen::new(seed), key, version);
                let mut out = BytesMut::new();
                request.encode(&mut out, version).unwrap();
                let back = Request::decode(key, version, &mut out.freeze()).unwrap();
                assert_eq!(back, request, "{key:?} v{version} request");
                let response = Response::random(&mut Gen::new(seed), key, version);
                let mut out = BytesMut::new();
                response.encode(&mut out, version).unwrap();
                let back = Response::decode(key, version, &mut out.freeze()).unwrap();
                assert_eq!(back, response, "{key:?} v{version} response");
            }
        }
    }
}

#[test]
fn only_produce_0_to_2_are_missing_from_the_oracle() {
    // The hand-built vectors in `produce_v0_to_v2` cover what the oracle cannot.
    let mut lacking = Vec::new();
    for key in ApiKey::ALL {
        let (min, max) = key.versions();
        let (theirs_min, theirs_max) = oracle_versions(key);
        for version in min..=max {
            if version < theirs_min || version > theirs_max {
                lacking.push((key, version));
            }
        }
    }
    assert_eq!(
        lacking,
        vec![
            (ApiKey::Produce, 0),
            (ApiKey::Produce, 1),
            (ApiKey::Produce, 2)
        ]
    );
}

mod produce_v0_to_v2 {
    //! Hand-built byte vectors, from the protocol guide's BNF, for the versions the oracle lacks.
    use super::super::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use super::super::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use super::super::messages::{ProduceRequest, ProduceResponse};
    use super::super::Message;
    use bytes::{Bytes, BytesMut};

    // Produce Request (Version: 0-2) => acks timeout_ms [topic_data]
    //   topic_data => name [partition_data]; partition_data => index records
    const REQUEST: &[u8] = &[
        0x00, 0x01, // acks = 1
        0x00, 0x00, 0x75, 0x30, // timeout_ms = 30000
        0x00, 0x00, 0x00, 0x01, // one topic
        0x00, 0x03, b'f', b'o', b'o', // name = "foo"
        0x00, 0x00, 0x00, 0x01, // one partition
        0x00, 0x00, 0x00, 0x02, // index = 2
        0x00, 0x00, 0x00, 0x03, 0xaa, 0xbb, 0xcc, // records = 3 opaque bytes
    ];

    fn request() -> ProduceRequest {
        ProduceRequest {
            acks: 1,
            timeout_ms: 30_000,
            topic_data: vec![TopicProduceData {
                name: "foo".into(),
                partition_data: vec![PartitionProduceData {
                    index: 2,
                    records: Some(Bytes::from_static(&[0xaa, 0xbb, 0xcc])),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn requests_v0_to_v2_match_the_bnf() {
        for version in 0..=2 {
            let decoded =
                ProduceRequest::decode(&mut Bytes::from_static(REQUEST), version).unwrap();
            assert_eq!(decoded, request());
            let mut out = BytesMut::new();
            request().encode(&mut out, version).unwrap();
            assert_eq!(&out[..], REQUEST);
        }
    }

    #[test]
    fn responses_v0_to_v2_match_the_bnf() {
        // v0 => [responses]; v1 adds throttle_time_ms at the end; v2 adds log_append_time_ms.
        let response = ProduceResponse {
            responses: vec![TopicProduceResponse {
                name: "foo".into(),
                partition_responses: vec![PartitionProduceResponse {
                    index: 2,
                    error_code: 35,
                    base_offset: -1,
                    log_append_time_ms: -1,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            throttle_time_ms: 0,
            ..Default::default()
        };
        let mut v0 = vec![
            0, 0, 0, 1, 0, 3, b'f', b'o', b'o', 0, 0, 0, 1, 0, 0, 0, 2, 0, 35,
        ];
        v0.extend_from_slice(&(-1i64).to_be_bytes());
        let mut v1 = v0.clone();
        v1.extend_from_slice(&[0, 0, 0, 0]);
        let mut v2 = v0.clone();
        v2.extend_from_slice(&(-1i64).to_be_bytes());
        v2.extend_from_slice(&[0, 0, 0, 0]);
        for (version, bytes) in [(0, v0), (1, v1), (2, v2)] {
            let mut out = BytesMut::new();
            response.encode(&mut out, version).unwrap();
            assert_eq!(&out[..], &bytes[..], "v{version}");
            let back = ProduceResponse::decode(&mut Bytes::from(bytes), version).unwrap();
            assert_eq!(back, response);
        }
    }
}

/// Every error code Keel names means what Kafka means by it: each constant in `codes.rs` is
/// checked against `kafka-protocol`'s table by name. (UNKNOWN_LEADER_EPOCH once carried 74,
/// which is FENCED_LEADER_EPOCH.)
#[test]
fn error_codes_carry_kafka_s_numbers() {
    use kafka_protocol::error::ResponseError;
    let source = include_str!("codes.rs");
    let mut checked = 0;
    for line in source.lines() {
        let Some(rest) = line.strip_prefix("pub const ") else {
            continue;
        };
        let (name, value) = rest.split_once(": i16 = ").expect("a code");
        let code: i16 = value.trim_end_matches(';').parse().expect("a number");
        let Some(error) = ResponseError::try_from_code(code) else {
            assert_eq!(name, "NONE");
            continue;
        };
        let kafka_name: String = format!("{error:?}")
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                sep.into_iter()
                    .chain(std::iter::once(c.to_ascii_uppercase()))
            })
            .collect();
        assert_eq!(name, kafka_name, "code {code}");
        checked += 1;
    }
    assert!(checked > 25, "{checked} codes checked");
}
