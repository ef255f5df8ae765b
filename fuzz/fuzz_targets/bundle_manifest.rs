//! Bundle manifest parsing (`BundleManifest::parse`, Go `json.Unmarshal` rules) and the hooks
//! section inside it (`config::parse_middleware_section`), as a bundle's manifest.json reaches
//! them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipegate::bundle::BundleManifest;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok((m, _raw)) = BundleManifest::parse(data, Path::new("manifest.json")) {
        let again = BundleManifest::parse(m.to_json().as_bytes(), Path::new("manifest.json"));
        match again {
            Ok((m2, _)) => assert_eq!(m, m2, "to_json does not round-trip"),
            Err(e) => panic!("a parsed manifest must re-parse after to_json: {e}"),
        }
        let _ = pipegate::config::parse_middleware_section(
            Path::new("manifest.json"),
            "custom_middleware",
            &m.custom_middleware,
        );
    }
});
