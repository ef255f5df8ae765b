//! Large bodies handed to a plugin through tmpfs files (`raw_body_file`, PROTOCOL.md section 6),
//! end to end: real gateway, real upstream, a raw msgpack plugin that announced `"mmap": true`.

mod common;

use common::*;
use serde_json::json;

fn plugin_env(tag: &str, threshold: u64) -> (Gateway, ScriptedUpstream, Sandbox) {
    let up = ScriptedUpstream::body_mirror();
    let sandbox = Sandbox::new(tag);
    let plugin = format!(
        "{}/tests/plugins/bodyfile_plugin.py",
        env!("CARGO_MANIFEST_DIR")
    );
    sandbox.write_conf(&conf_with(json!({
        "coprocess_options": {
            "enable_coprocess": true,
            "pipe_command": ["python3", plugin],
            "mmap_threshold_bytes": threshold,
            "hook_timeout_ms": 20000
        }
    })));
    let mut api = keyless_api("bf", "/bf/", &format!("{}/", up.url()));
    api["custom_middleware"] = json!({
        "driver": "python",
        "pre": [{"name": "UpperReq"}],
        "response": [{"name": "UpperResp"}]
    });
    sandbox.write_api("bf", &api);
    let gw = Gateway::start(&sandbox);
    (gw, up, sandbox)
}

#[test]
fn large_bodies_go_through_files_both_ways() {
    let (gw, _up, _sb) = plugin_env("bodyfile-large", 64 * 1024);
    let body: Vec<u8> = (0..3_000_000u32)
        .map(|i| b"abcxyz"[(i % 6) as usize])
        .collect();
    let mut c = gw.client();
    let r = c.request(&req("POST", "/bf/x").body(body.clone()).to_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    // The upstream mirrors what it received: the plugin's uppercased body, from its own file.
    let upper = body.to_ascii_uppercase();
    assert_eq!(r.body.len(), upper.len());
    assert!(r.body == upper, "body changed through the file path");
    assert_eq!(r.header("X-Resp-Got-Via"), Some("file"), "{:?}", r.headers);
    // Nothing left behind in the spill folder by the gateway or taken from the plugin.
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("pipegate-body-plugin-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "plugin files not deleted: {leftovers:?}"
    );
    gw.assert_no_panics();
}

#[test]
fn small_bodies_stay_inline() {
    let (gw, _up, _sb) = plugin_env("bodyfile-small", 64 * 1024);
    let mut c = gw.client();
    let r = c.request(&req("POST", "/bf/x").body(&b"small body"[..]).to_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"SMALL BODY");
    assert_eq!(r.header("X-Resp-Got-Via"), Some("inline"));
}

#[test]
fn a_plugin_cannot_make_the_gateway_read_other_files() {
    // The reply names a file outside the spill folder (with the right prefix, even): the gateway
    // must refuse it (500), never forward or delete it.
    let up = ScriptedUpstream::body_mirror();
    let sandbox = Sandbox::new("bodyfile-escape");
    let victim = sandbox.write_file("pipegate-body-victim", b"secret");
    let script = sandbox.write_file(
        "evil.py",
        r#"
import struct, sys, msgpack
out = sys.stdout.buffer
def send(m):
    d = msgpack.packb(m, use_bin_type=True); out.write(struct.pack(">I", len(d)) + d); out.flush()
while True:
    h = sys.stdin.buffer.read(4)
    if len(h) < 4: break
    m = msgpack.unpackb(sys.stdin.buffer.read(struct.unpack(">I", h)[0]), raw=False)
    if m.get("type") == "hello":
        send({"type": "hello", "id": 0, "protocol": 1, "mmap": True})
    elif m.get("type") == "dispatch":
        send({"id": m["id"], "object": {"request": {"raw_body_file": {"path": sys.argv[1], "len": 6}}}})
"#,
    );
    sandbox.write_conf(&conf_with(json!({
        "coprocess_options": {"enable_coprocess": true, "pipe_command": ["python3", script, victim]}
    })));
    let mut api = keyless_api("ev", "/ev/", &format!("{}/", up.url()));
    api["custom_middleware"] = json!({"driver": "python", "pre": [{"name": "Any"}]});
    sandbox.write_api("ev", &api);
    let gw = Gateway::start(&sandbox);
    let r = gw.send(&req("POST", "/ev/x").body(&b"x"[..]).to_bytes());
    r.assert_tyk_error(500);
    assert!(victim.exists(), "the gateway deleted a file a plugin named");
    assert!(up.requests().is_empty(), "the request went upstream");
}
