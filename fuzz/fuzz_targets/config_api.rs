//! API definition parsing (`config::parse_api_file`): a Tyk API definition file as bytes, the
//! way `load_apis` reads each file of `app_path`. Whatever is accepted must be usable by the
//! router and the upstream path join without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipegate::config;
use std::path::Path;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(apis) = config::parse_api_file(Path::new("/apps/api.json"), data) else {
        return;
    };
    let mut out = Vec::new();
    for (api, _prefix) in &apis {
        assert!(api.listen_path.starts_with('/'), "{:?}", api.listen_path);
        for path in ["/", api.listen_path.as_str(), "/x/y?z=1"] {
            out.clear();
            api.upstream_path(path, &mut out);
            let _ = api.is_ignored(path, "GET");
        }
    }
    // The router over whatever was accepted.
    if let Ok(gw) = config::parse_gateway(Path::new("/conf/tyk.conf"), b"{}") {
        let snap = config::Snapshot::new(
            Arc::new(gw),
            apis.into_iter().map(|(a, _)| Arc::new(a)).collect(),
        );
        for path in ["/", "/a", "/a/b/c", ""] {
            let _ = snap.route(path);
        }
    }
});
