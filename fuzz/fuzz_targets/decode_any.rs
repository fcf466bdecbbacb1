//! Arbitrary bytes as any (api key, version), request and response, and as a whole request
//! frame. Nothing may panic or abort; whatever decodes must re-encode and decode to itself.
#![no_main]

use bytes::{Bytes, BytesMut};
use keel_core::protocol::codec::parse_request;
use keel_core::protocol::{ApiKey, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(Bytes::copy_from_slice(data));
    let [api, version, body @ ..] = data else {
        return;
    };
    let key = ApiKey::ALL[*api as usize % ApiKey::ALL.len()];
    let (min, max) = key.versions();
    let version = min + (*version as i16) % (max - min + 1);
    let body = Bytes::copy_from_slice(body);

    if let Ok(request) = Request::decode(key, version, &mut body.clone()) {
        let mut out = BytesMut::new();
        request
            .encode(&mut out, version)
            .expect("a decoded request re-encodes");
        let again =
            Request::decode(key, version, &mut out.freeze()).expect("a re-encoded request decodes");
        assert_eq!(again, request);
    }
    if let Ok(response) = Response::decode(key, version, &mut body.clone()) {
        let mut out = BytesMut::new();
        response
            .encode(&mut out, version)
            .expect("a decoded response re-encodes");
        let again = Response::decode(key, version, &mut out.freeze())
            .expect("a re-encoded response decodes");
        assert_eq!(again, response);
    }
});
