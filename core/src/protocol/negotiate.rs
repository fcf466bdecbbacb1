//! Version negotiation, as Kafka does it.
//!
//! A client opens with ApiVersions. If it asks with a version we do not know (a newer client),
//! we answer with a v0 ApiVersionsResponse carrying UNSUPPORTED_VERSION and our ranges, so it
//! can retry with a version we share. Any other API or version we do not speak is a protocol
//! violation: the caller closes the connection, as Kafka does.

use super::codes;
use super::messages::api_versions_response::ApiVersion;
use super::messages::{ApiKey, ApiVersionsResponse};

/// What to do with a request, judged from its api key and version alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiation {
    /// We decode and serve this (api, version).
    Supported(ApiKey),
    /// ApiVersions at a version we do not know: answer [`api_versions_fallback`] at v0.
    ApiVersionsFallback,
    /// An API or version we do not speak: close the connection.
    Unsupported,
}

pub fn negotiate(api_key: i16, api_version: i16) -> Negotiation {
    match ApiKey::from_i16(api_key) {
        Some(key) if key.supports(api_version) => Negotiation::Supported(key),
        Some(ApiKey::ApiVersions) => Negotiation::ApiVersionsFallback,
        _ => Negotiation::Unsupported,
    }
}

/// Our version ranges, one entry per API, in api key order.
pub fn supported_api_versions() -> Vec<ApiVersion> {
    ApiKey::ALL
        .iter()
        .map(|key| {
            let (min_version, max_version) = key.versions();
            ApiVersion {
                api_key: *key as i16,
                min_version,
                max_version,
                ..ApiVersion::default()
            }
        })
        .collect()
}

/// The answer to an ApiVersions request we understand.
pub fn api_versions_response() -> ApiVersionsResponse {
    ApiVersionsResponse {
        error_code: codes::NONE,
        api_keys: supported_api_versions(),
        ..ApiVersionsResponse::default()
    }
}

/// The answer to an ApiVersions request at a version we do not know; encode it at v0.
pub fn api_versions_fallback() -> ApiVersionsResponse {
    ApiVersionsResponse {
        error_code: codes::UNSUPPORTED_VERSION,
        api_keys: supported_api_versions(),
        ..ApiVersionsResponse::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_kafka() {
        assert_eq!(
            negotiate(18, 3),
            Negotiation::Supported(ApiKey::ApiVersions)
        );
        assert_eq!(negotiate(18, 99), Negotiation::ApiVersionsFallback);
        assert_eq!(negotiate(18, -1), Negotiation::ApiVersionsFallback);
        assert_eq!(negotiate(0, 99), Negotiation::Unsupported);
        assert_eq!(
            negotiate(1, 3),
            Negotiation::Unsupported,
            "Fetch below v4 is not spoken"
        );
        assert_eq!(negotiate(9999, 0), Negotiation::Unsupported);
        assert_eq!(negotiate(0, 0), Negotiation::Supported(ApiKey::Produce));
    }

    #[test]
    fn our_ranges_advertise_what_old_clients_probe_for() {
        let ranges = supported_api_versions();
        let find = |key: ApiKey| {
            ranges
                .iter()
                .find(|r| r.api_key == key as i16)
                .map(|r| r.min_version)
        };
        // librdkafka <= 2.11 enables compression only if Produce v0 is advertised, and
        // consumer groups only if JoinGroup, SyncGroup and Heartbeat v0 are.
        for key in [
            ApiKey::Produce,
            ApiKey::JoinGroup,
            ApiKey::SyncGroup,
            ApiKey::Heartbeat,
        ] {
            assert_eq!(find(key), Some(0), "{key:?} must advertise v0");
        }
    }
}
