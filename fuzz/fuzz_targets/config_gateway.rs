//! tyk.conf parsing (`config::parse_gateway`): the gateway configuration as bytes. Whatever is
//! accepted must satisfy what the rest of the gateway relies on without checking again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipegate::config;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(gw) = config::parse_gateway(Path::new("/conf/tyk.conf"), data) {
        assert!(gw.workers >= 1);
    }
});
