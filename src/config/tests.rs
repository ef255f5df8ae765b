//! Tests of configuration loading against files written the way Tyk users write them.

use super::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A scratch directory removed when dropped (no tempfile crate in the build).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pipegate-config-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("apps")).unwrap();
        Scratch(dir)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn conf(&self, text: &str) -> PathBuf {
        self.write("tyk.conf", text)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A realistic tyk.conf as shipped with Tyk's docker images, with many keys pipegate ignores.
const REAL_TYK_CONF: &str = r#"{
  "listen_address": "",
  "listen_port": 8080,
  "secret": "352d20ee67be67f6340b4c0605b044b7",
  "node_secret": "352d20ee67be67f6340b4c0605b044b7",
  "template_path": "/opt/tyk-gateway/templates",
  "tyk_js_path": "/opt/tyk-gateway/js/tyk.js",
  "use_db_app_configs": false,
  "app_path": "./apps",
  "middleware_path": "./middleware",
  "storage": {
    "type": "redis",
    "host": "tyk-redis",
    "port": 6379,
    "username": "",
    "password": "",
    "database": 0,
    "optimisation_max_idle": 2000,
    "optimisation_max_active": 4000
  },
  "enable_analytics": false,
  "analytics_config": { "type": "", "ignored_ips": [] },
  "health_check": { "enable_health_checks": false, "health_check_value_timeouts": 0 },
  "optimisations_use_async_session_write": true,
  "enable_non_transactional_rate_limiter": true,
  "enable_sentinel_rate_limiter": false,
  "enable_redis_rolling_limiter": false,
  "allow_master_keys": false,
  "policies": { "policy_source": "file", "policy_record_name": "./policies/policies.json" },
  "hash_keys": true,
  "hash_key_function": "murmur64",
  "suppress_redis_signal_reload": false,
  "force_global_session_lifetime": false,
  "max_idle_connections_per_host": 500,
  "proxy_default_timeout": 12.5,
  "http_server_options": {
    "enable_websockets": true,
    "read_timeout": 120,
    "write_timeout": 45,
    "max_request_body_size": 0,
    "enable_path_prefix_matching": true
  },
  "coprocess_options": {
    "enable_coprocess": true,
    "coprocess_grpc_server": "tcp://127.0.0.1:5555",
    "grpc_recv_max_size": 100000000,
    "grpc_send_max_size": 100000000,
    "grpc_authority": "localhost",
    "python_path_prefix": "/opt/tyk-gateway"
  },
  "enable_bundle_downloader": true,
  "bundle_base_url": "http://bundles.local/bundles/",
  "public_key_path": "",
  "close_connections": false,
  "hide_generator_header": true,
  "local_session_cache": { "disable_cached_session_state": false },
  "uptime_tests": { "disable": true },
  "hostname": "",
  "enable_custom_domains": true,
  "enable_jsvm": true
}"#;

/// A keyless API definition the way Tyk's samples write it.
const KEYLESS_API: &str = r#"{
  "name": "Keyless",
  "api_id": "keyless",
  "org_id": "default",
  "use_keyless": true,
  "definition": { "location": "header", "key": "x-api-version" },
  "version_data": {
    "not_versioned": true,
    "versions": { "Default": { "name": "Default", "use_extended_paths": true } }
  },
  "proxy": { "listen_path": "/keyless/", "target_url": "http://127.0.0.1:8081/", "strip_listen_path": true },
  "active": true
}"#;

fn api_json(id: &str, listen: &str, target: &str) -> String {
    format!(
        r#"{{"api_id": "{id}", "name": "{id}", "org_id": "o", "use_keyless": true,
            "proxy": {{"listen_path": "{listen}", "target_url": "{target}", "strip_listen_path": true}}}}"#
    )
}

fn messages(errs: &[ConfigError]) -> Vec<String> {
    errs.iter().map(|e| e.to_string()).collect()
}

#[test]
fn real_tyk_conf_with_many_unknown_keys_loads() {
    let s = Scratch::new("real");
    let conf = s.conf(REAL_TYK_CONF);
    s.write("apps/keyless.json", KEYLESS_API);
    let snap = load_snapshot(&conf).unwrap();
    let gw = &snap.gateway;
    assert_eq!(gw.listen_address, "0.0.0.0");
    assert_eq!(gw.listen_port, 8080);
    assert_eq!(gw.upstream.read_timeout, Duration::from_millis(12_500));
    assert_eq!(gw.upstream.max_idle_per_target, 500);
    assert_eq!(gw.limits.write_timeout, Duration::from_secs(45));
    assert_eq!(gw.limits.client_body_timeout, Duration::from_secs(120));
    assert_eq!(
        gw.coprocess.grpc_server.as_deref(),
        Some("tcp://127.0.0.1:5555")
    );
    assert_eq!(gw.coprocess.grpc_recv_max_size, 100_000_000);
    assert_eq!(gw.coprocess.grpc_authority.as_deref(), Some("localhost"));
    assert!(gw.coprocess.enable_coprocess);
    assert!(gw.enable_bundle_downloader && gw.hide_generator_header);
    assert_eq!(gw.public_key_path, None);
    assert_eq!(gw.storage["host"], "tyk-redis");
    assert_eq!(snap.apis.len(), 1);
    assert_eq!(snap.apis[0].api_id, "keyless");
}

#[test]
fn defaults_apply_to_an_empty_conf() {
    let s = Scratch::new("defaults");
    let gw = load_gateway(&s.conf("{}")).unwrap();
    assert_eq!(gw.listen_address, "0.0.0.0");
    assert_eq!(gw.listen_port, 8080);
    assert_eq!(gw.secret, "352d20ee67be67f6340b4c0605b044b7");
    assert_eq!(gw.app_path, s.0.join("apps/"));
    assert_eq!(gw.middleware_path, s.0.join("middleware"));
    assert!(!gw.enable_bundle_downloader && !gw.close_connections);
    assert_eq!(gw.public_key_path, None);
    assert!(gw.workers >= 1);
    assert_eq!(gw.shutdown_grace, Duration::from_secs(10));
    assert_eq!(gw.log_format, LogFormat::Text);
    assert_eq!(gw.storage, serde_json::Value::Null);
    let l = &gw.limits;
    assert_eq!(l.max_header_bytes, 32768);
    assert_eq!(l.max_request_body_bytes, 100 * 1024 * 1024);
    assert_eq!(l.client_header_timeout, Duration::from_secs(10));
    assert_eq!(l.client_body_timeout, Duration::from_secs(30));
    assert_eq!(l.keepalive_timeout, Duration::from_secs(60));
    assert_eq!(l.write_timeout, Duration::from_secs(30));
    assert_eq!(l.max_connections_per_worker, 65536);
    let u = &gw.upstream;
    assert_eq!(u.connect_timeout, Duration::from_secs(2));
    assert_eq!(u.read_timeout, Duration::from_secs(30));
    assert_eq!(u.max_idle_per_target, 100);
    let c = &gw.coprocess;
    assert!(!c.enable_coprocess && c.grpc_server.is_none() && c.pipe_command.is_empty());
    assert_eq!(c.hook_timeout, Duration::from_secs(1));
    assert!(!c.fail_open && c.send_body && !c.enable_grpc_fallback);
    assert_eq!(c.max_frame_bytes, 64 * 1024 * 1024);
    assert_eq!(c.mmap_threshold_bytes, 4 * 1024 * 1024);
    assert_eq!(c.restart_backoff_max, Duration::from_secs(5));
}

#[test]
fn pipegate_settings_and_overrides() {
    let s = Scratch::new("pg");
    let gw = load_gateway(&s.conf(
        r#"{"listen_address": "[::1]", "max_idle_connections_per_host": 7,
            "http_server_options": {"max_request_body_size": 5000},
            "coprocess_options": {"pipe_command": ["python3", "plugin.py"], "pipe_env": {"B": "2", "A": "1"},
                                  "hook_timeout_ms": 250, "fail_open": true, "mmap_threshold_bytes": 0},
            "pipegate": {"workers": 3, "max_request_body_bytes": 9, "client_body_timeout_ms": 1500,
                         "log_format": "json", "shutdown_grace_ms": 0}}"#,
    ))
    .unwrap();
    assert_eq!(gw.listen_address, "::1");
    assert_eq!(gw.workers, 3);
    assert_eq!(gw.upstream.max_idle_per_target, 7);
    assert_eq!(
        gw.limits.max_request_body_bytes, 5000,
        "Tyk's size wins when > 0"
    );
    assert_eq!(gw.limits.client_body_timeout, Duration::from_millis(1500));
    assert_eq!(gw.log_format, LogFormat::Json);
    assert_eq!(gw.shutdown_grace, Duration::ZERO);
    assert_eq!(gw.coprocess.pipe_command, vec!["python3", "plugin.py"]);
    assert_eq!(
        gw.coprocess.pipe_env,
        vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string())
        ]
    );
    assert_eq!(gw.coprocess.hook_timeout, Duration::from_millis(250));
    assert!(gw.coprocess.fail_open);
    assert_eq!(gw.coprocess.mmap_threshold_bytes, 0);
}

#[test]
fn observability_settings_tyk_keys_and_defaults() {
    let s = Scratch::new("obs");
    let gw = load_gateway(&s.conf("{}")).unwrap();
    assert_eq!(
        gw.metrics,
        crate::config::MetricsOptions {
            enabled: true,
            path: "/metrics".into(),
            listen_address: None
        }
    );
    assert_eq!(gw.log_level, None);
    assert!(!gw.access_log.enabled);
    assert!(gw.access_log.has("status") && gw.access_log.has("upstream_addr"));

    // Tyk's top-level log_format wins over pipegate.log_format.
    let gw = load_gateway(&s.conf(
        r#"{"log_format": "json", "log_level": "warn",
            "access_logs": {"enabled": true, "template": ["api_key", "status", "path"]},
            "pipegate": {"log_format": "text",
                         "metrics": {"enabled": false, "path": "/m", "listen_address": "127.0.0.1:9100"}}}"#,
    ))
    .unwrap();
    assert_eq!(gw.log_format, LogFormat::Json);
    assert_eq!(gw.log_level.as_deref(), Some("warn"));
    assert!(!gw.metrics.enabled);
    assert_eq!(gw.metrics.path, "/m");
    assert_eq!(
        gw.metrics.listen_address,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    assert!(gw.access_log.enabled);
    assert!(gw.access_log.has("status") && gw.access_log.has("path"));
    assert!(!gw.access_log.has("method"), "only the template's fields");
}

#[test]
fn observability_errors_name_the_field() {
    let s = Scratch::new("obserr");
    let conf = s.conf(
        r#"{"log_level": "loud", "log_format": "xml",
            "access_logs": {"template": ["status", "nonsense"]},
            "pipegate": {"metrics": {"path": "metrics", "listen_address": "nowhere", "port": 1}}}"#,
    );
    let errs = load_gateway_all(&conf).unwrap_err();
    let file = conf.display().to_string();
    let msgs = messages(&errs);
    for prefix in [
        "log_level: \"loud\" is not a log level",
        "log_format: \"xml\" is not a log format",
        "access_logs.template[1]: \"nonsense\" is not an access log field",
        "pipegate.metrics.path: \"metrics\" is not a usable path",
        "pipegate.metrics.listen_address: \"nowhere\" is not a host:port address",
        "pipegate.metrics.port: unknown metrics setting",
    ] {
        let want = format!("{file}: {prefix}");
        assert!(
            msgs.iter().any(|m| m.starts_with(&want)),
            "missing {want:?} in {msgs:#?}"
        );
    }
}

#[test]
fn relative_paths_resolve_against_the_conf_directory() {
    let s = Scratch::new("paths");
    let gw = load_gateway(&s.conf(
        r#"{"app_path": "defs", "middleware_path": "./mw", "public_key_path": "keys/pub.pem",
            "coprocess_options": {"pipe_workdir": "plugins"}}"#,
    ))
    .unwrap();
    assert_eq!(gw.app_path, s.0.join("defs"));
    assert_eq!(gw.middleware_path, s.0.join("./mw"));
    assert_eq!(gw.public_key_path, Some(s.0.join("keys/pub.pem")));
    assert_eq!(gw.coprocess.pipe_workdir, Some(s.0.join("plugins")));

    let gw = load_gateway(&s.conf(r#"{"app_path": "/etc/tyk/apps"}"#)).unwrap();
    assert_eq!(
        gw.app_path,
        PathBuf::from("/etc/tyk/apps"),
        "absolute paths stay"
    );
}

#[test]
fn gateway_errors_name_file_field_and_reason() {
    let s = Scratch::new("gwerr");
    let conf = s.conf(
        r#"{"listen_port": 70000, "secret": 5, "http_server_options": {"use_ssl": true},
            "coprocess_options": {"pipe_env": {"X": 1}, "hook_timeout_ms": 0},
            "pipegate": {"log_format": "xml", "wokers": 2}}"#,
    );
    let errs = load_gateway_all(&conf).unwrap_err();
    let file = conf.display().to_string();
    let msgs = messages(&errs);
    let expect = [
        format!("{file}: listen_port: 70000 is not a TCP port; use a number from 0 to 65535"),
        format!("{file}: secret: expected a string, found the number 5"),
        format!("{file}: pipegate.log_format: \"xml\" is not a log format; use \"text\" or \"json\""),
        format!("{file}: coprocess_options.pipe_env.X: environment values must be strings, found the number 1; quote it"),
        format!("{file}: coprocess_options.hook_timeout_ms: must be greater than 0; leave it out for the default of 1000"),
    ];
    for e in &expect {
        assert!(msgs.contains(e), "missing {e:?} in {msgs:#?}");
    }
    assert!(msgs.iter().any(|m| m.starts_with(&format!(
        "{file}: pipegate.wokers: unknown pipegate setting"
    ))));
    assert!(msgs.iter().any(|m| m.starts_with(&format!(
        "{file}: http_server_options.certificates: use_ssl is on but no certificates are listed"
    ))));
    // load_gateway reports the first of them.
    assert_eq!(load_gateway(&conf).unwrap_err().to_string(), msgs[0]);

    // Port 0 asks the OS for a free port (the bound address is logged).
    let zero = s.conf(r#"{"listen_port": 0}"#);
    assert_eq!(load_gateway(&zero).unwrap().listen_port, 0);
}

#[test]
fn json_syntax_error_names_line_and_column() {
    let s = Scratch::new("syntax");
    let conf = s.conf("{\n  \"listen_port\": 8080,\n}\n");
    let err = load_gateway(&conf).unwrap_err();
    assert_eq!(err.position, Some((3, 1)));
    assert_eq!(err.field, "");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}: invalid JSON at line 3, column 1: trailing comma",
            conf.display()
        )),
        "{msg}"
    );

    let missing = s.0.join("nope.conf");
    let err = load_gateway(&missing).unwrap_err();
    assert!(err.to_string().contains("cannot read the file"), "{err}");
}

/// Loads one API definition text and returns its errors as strings.
fn api_errors(def: &str) -> (String, Vec<String>) {
    let s = Scratch::new("apierr");
    let conf = s.conf("{}");
    let file = s.write("apps/a.json", def);
    let gw = load_gateway(&conf).unwrap();
    let errs = load_apis(&gw).unwrap_err();
    (file.display().to_string(), messages(&errs))
}

#[test]
fn api_validation_errors_name_file_field_and_reason() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "ftp://h/"}}"#,
            r#"proxy.target_url: scheme "ftp" is not supported; use http:// or https://"#,
        ),
        (
            r#"{"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "127.0.0.1:8080"}}"#,
            r#"proxy.target_url: "127.0.0.1:8080" has no scheme; write it as http://host[:port]/path or https://host[:port]/path"#,
        ),
        (
            r#"{"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "http://h:99999/"}}"#,
            r#"proxy.target_url: port "99999" is not a number from 1 to 65535"#,
        ),
        (
            r#"{"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "http:///x"}}"#,
            r#"proxy.target_url: "http:///x" has no host; write it as http://host[:port]/path"#,
        ),
        (
            r#"{"api_id": "", "proxy": {"listen_path": "/a/", "target_url": "http://h/"}}"#,
            "api_id: is missing or empty; every API needs a unique api_id",
        ),
        (
            r#"{"api_id": "a", "proxy": {"target_url": "http://h/"}}"#,
            r#"proxy.listen_path: is missing; set the path prefix this API is served under, e.g. "/my-api/""#,
        ),
        (
            r#"{"api_id": "a", "proxy": {"listen_path": "/a/"}}"#,
            r#"proxy.target_url: is missing; set the upstream URL, e.g. "http://127.0.0.1:8081/""#,
        ),
        (
            r#"{"api_id": "a", "proxy": {"listen_path": "/{id}/", "target_url": "http://h/"}}"#,
            r#"proxy.listen_path: "/{id}/" uses mux-style variables, which pipegate does not support; use a fixed prefix"#,
        ),
        (
            r#"{"api_id": "a", "use_keyless": "yes", "proxy": {"listen_path": "/a/", "target_url": "http://h/"}}"#,
            r#"use_keyless: expected true or false, found the string "yes""#,
        ),
        (
            r#"{"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "http://h/"},
                "custom_middleware": {"driver": "grpc", "pre": [{"name": ""}]}}"#,
            r#"custom_middleware.pre[0].name: is empty; set the plugin function name, or set "disabled": true"#,
        ),
        (
            r#"{"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "http://h/"},
                "custom_middleware": {"pre": [{"name": "x"}]}}"#,
            r#"custom_middleware.driver: hooks are defined but no driver is set"#,
        ),
        (
            r#"{"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "http://h/"},
                "custom_middleware": {"driver": "grpc", "post": [{"name": "x", "timeout_ms": 0}]}}"#,
            "custom_middleware.post[0].timeout_ms: must be greater than 0; leave it out to use coprocess_options.hook_timeout_ms",
        ),
        (
            r#"{"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "http://h/"},
                "custom_middleware": {"driver": "grpc", "id_extractor": {"extract_from": "querystring", "extract_with": "value"}}}"#,
            r#"custom_middleware.id_extractor.extract_from: "querystring" is not supported"#,
        ),
        (
            r#"{"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "http://h/"},
                "custom_middleware": {"driver": "grpc", "id_extractor": {"extract_from": "header", "extract_with": "value", "extractor_config": {}}}}"#,
            "custom_middleware.id_extractor.extractor_config.header_name: is empty; set the header to read",
        ),
        (
            r#"{"api_id": "a", "enable_coprocess_auth": true, "proxy": {"listen_path": "/a/", "target_url": "http://h/"}}"#,
            r#"custom_middleware.driver: hooks are defined but no driver is set"#,
        ),
        (
            r#"{"api_id": "a", "listen_port": 1, "proxy": {"listen_path": "/a/", "target_url": "http://h:0/"}}"#,
            r#"proxy.target_url: port "0" is not a number from 1 to 65535"#,
        ),
        (
            r#"{"api_id": "a", "config_data": [1], "proxy": {"listen_path": "/a/", "target_url": "http://h/"}}"#,
            "config_data: expected an object, found an array",
        ),
        (
            r#"{"api_id": "a", "base_identity_provided_by": "magic", "proxy": {"listen_path": "/a/", "target_url": "http://h/"}}"#,
            r#"base_identity_provided_by: "magic" is not an auth method"#,
        ),
    ];
    for (def, expected) in cases {
        let (file, msgs) = api_errors(def);
        let want = format!("{file}: {expected}");
        assert!(
            msgs.iter().any(|m| m.starts_with(&want)),
            "expected {want:?}, got {msgs:#?}"
        );
    }
}

#[test]
fn all_errors_across_api_files_are_collected() {
    let s = Scratch::new("collect");
    let conf = s.conf("{}");
    s.write(
        "apps/1.json",
        r#"{"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "gopher://h/"}}"#,
    );
    s.write("apps/2.json", "{\"api_id\": \"b\",\n \"proxy\": {]}");
    s.write("apps/3.json", &api_json("c", "/c/", "http://h/"));
    s.write("apps/4.json", r#"{"api_id": 4, "use_keyless": 1, "proxy": {"listen_path": "/d/", "target_url": "http://h/"}}"#);
    s.write("apps/notes.txt", "not json, not loaded");
    let errs = load_snapshot(&conf).unwrap_err();
    let files: Vec<String> = errs
        .iter()
        .map(|e| e.file.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        vec!["1.json", "2.json", "4.json", "4.json"],
        "{errs:#?}"
    );
    assert_eq!(errs[1].position, Some((2, 12)));
    assert!(
        errs[1]
            .reason
            .starts_with("invalid JSON at line 2, column 12"),
        "{}",
        errs[1]
    );
}

#[test]
fn array_of_definitions_in_one_file() {
    let s = Scratch::new("array");
    let conf = s.conf("{}");
    let arr = format!(
        "[{}, {}, {}]",
        api_json("one", "/one/", "http://h1/"),
        r#"{"api_id": "off", "active": false, "proxy": {"listen_path": "/one/", "target_url": "ftp://ignored"}}"#,
        api_json("two", "two", "https://h2:8443/base/")
    );
    s.write("apps/many.json", &arr);
    let snap = load_snapshot(&conf).unwrap();
    let ids: Vec<&str> = snap.apis.iter().map(|a| a.api_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["one", "two"],
        "inactive API skipped without validation"
    );
    let two = snap.api_by_id("two").unwrap();
    assert_eq!(two.listen_path, "/two", "normalised to start with '/'");
    assert_eq!(two.target.authority, "h2:8443");
    assert_eq!(
        two.raw["proxy"]["listen_path"], "two",
        "raw keeps the original"
    );
    assert!(snap.api_by_id("off").is_none());

    s.write(
        "apps/many.json",
        r#"[{"api_id": "x", "proxy": {"listen_path": "/x/", "target_url": "http://h/"}}, 7]"#,
    );
    let errs = load_snapshot(&conf).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "[1]");
    assert_eq!(
        errs[0].reason,
        "expected an API definition object, found the number 7"
    );
}

#[test]
fn duplicate_api_id_and_listen_path_name_both_files() {
    let s = Scratch::new("dup");
    let conf = s.conf("{}");
    let a = s.write("apps/a.json", &api_json("same", "/a/", "http://h/"));
    let b = s.write("apps/b.json", &api_json("same", "/b/", "http://h/"));
    let errs = load_snapshot(&conf).unwrap_err();
    assert_eq!(
        messages(&errs),
        vec![format!(
            "{}: api_id: \"same\" is already used by {}; api_id must be unique among active APIs",
            b.display(),
            a.display()
        )]
    );

    s.write(
        "apps/b.json",
        &format!("[{}]", api_json("other", "/a/", "http://h/")),
    );
    let errs = load_snapshot(&conf).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "[0].proxy.listen_path");
    assert!(errs[0]
        .reason
        .contains(&format!("already used by API \"same\" in {}", a.display())));

    // An inactive twin is not a duplicate.
    s.write("apps/b.json", r#"{"api_id": "same", "active": false, "proxy": {"listen_path": "/a/", "target_url": "http://h/"}}"#);
    assert_eq!(load_snapshot(&conf).unwrap().apis.len(), 1);
}

fn snapshot_of(listen_paths: &[&str]) -> (Scratch, Snapshot) {
    let s = Scratch::new("route");
    let conf = s.conf("{}");
    for (i, lp) in listen_paths.iter().enumerate() {
        s.write(
            &format!("apps/{i}.json"),
            &api_json(&format!("api{i}"), lp, "http://h/"),
        );
    }
    let snap = load_snapshot(&conf).unwrap();
    (s, snap)
}

#[test]
fn routing_picks_the_longest_prefix() {
    let (_s, snap) = snapshot_of(&["/", "/api/", "/api/v2/", "/apiv"]);
    let route = |p: &str| snap.route(p).map(|a| a.listen_path.as_str());
    assert_eq!(route("/api/v2/users"), Some("/api/v2/"));
    assert_eq!(route("/api/v1/users"), Some("/api/"));
    assert_eq!(
        route("/apivx"),
        Some("/apiv"),
        "plain string prefix, as Tyk"
    );
    assert_eq!(route("/other"), Some("/"));
    let (_s2, no_root) = snapshot_of(&["/api/"]);
    assert!(no_root.route("/nothing").is_none());
    assert!(no_root.route("/ap").is_none());
}

#[test]
fn routing_trailing_slash_listen_path_matches_without_slash() {
    let (_s, snap) = snapshot_of(&["/demo/", "/de"]);
    let route = |p: &str| snap.route(p).map(|a| a.listen_path.as_str());
    assert_eq!(route("/demo"), Some("/demo/"));
    assert_eq!(route("/demo/x"), Some("/demo/"));
    assert_eq!(route("/demox"), Some("/de"));
    // An API listening on the slash-less path itself wins.
    let (_s2, both) = snapshot_of(&["/demo/", "/demo"]);
    assert_eq!(both.route("/demo").unwrap().listen_path, "/demo");
    assert_eq!(both.route("/demo/").unwrap().listen_path, "/demo/");
}

fn api_with(listen: &str, target: &str, strip: bool, disable_strip_slash: bool) -> ApiDefinition {
    let mut issues = fields::Issues::default();
    let v: serde_json::Value = serde_json::from_str(&format!(
        r#"{{"api_id": "t", "proxy": {{"listen_path": "{listen}", "target_url": "{target}",
             "strip_listen_path": {strip}, "disable_strip_slash": {disable_strip_slash}}}}}"#
    ))
    .unwrap();
    let api = api::api_from_value(&v, "", Path::new("t.json"), &mut issues);
    assert!(issues.is_empty(), "{issues:?}");
    api.unwrap()
}

fn up(api: &ApiDefinition, path: &str) -> String {
    let mut out = Vec::new();
    api.upstream_path(path, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn upstream_path_with_and_without_strip_and_base_path() {
    let strip = api_with("/demo/", "http://127.0.0.1:8081/", true, false);
    assert_eq!(up(&strip, "/demo/get"), "/get");
    assert_eq!(up(&strip, "/demo/"), "/");
    assert_eq!(up(&strip, "/demo"), "/");
    assert_eq!(up(&strip, "/demo/a/b/"), "/a/b/");
    assert_eq!(
        up(&strip, "/demo//x"),
        "/x",
        "leading slashes collapse as in Tyk"
    );

    let keep = api_with("/demo/", "http://127.0.0.1:8081", false, false);
    assert_eq!(up(&keep, "/demo/get"), "/demo/get");
    assert_eq!(up(&keep, "/demo"), "/demo");

    let base = api_with("/demo/", "http://h/base/", true, false);
    assert_eq!(base.target.base_path, "/base");
    assert_eq!(up(&base, "/demo/get"), "/base/get");
    assert_eq!(
        up(&base, "/demo/"),
        "/base",
        "Tyk drops the target's trailing slash"
    );
    let base_keep = api_with("/demo/", "http://h/base", false, false);
    assert_eq!(up(&base_keep, "/demo/get"), "/base/demo/get");

    let keep_slash = api_with("/demo/", "http://h/base/", true, true);
    assert_eq!(
        up(&keep_slash, "/demo/"),
        "/base/",
        "disable_strip_slash keeps it"
    );
    assert_eq!(up(&keep_slash, "/demo/x"), "/base/x");

    // Appends to what the caller already wrote.
    let mut line = b"GET ".to_vec();
    strip.upstream_path("/demo/a", &mut line);
    assert_eq!(line, b"GET /a");
}

#[test]
fn upstream_target_parsing() {
    let t = UpstreamTarget::parse("https://Example.com/v1/?k=v#frag").unwrap();
    assert!(t.https);
    assert_eq!((t.host.as_str(), t.port), ("Example.com", 443));
    assert_eq!(t.authority, "Example.com");
    assert_eq!((t.base_path.as_str(), t.raw_path.as_str()), ("/v1", "/v1/"));
    assert_eq!(t.query, "k=v");

    let t = UpstreamTarget::parse("http://127.0.0.1:8081").unwrap();
    assert_eq!(
        (t.port, t.authority.as_str(), t.base_path.as_str()),
        (8081, "127.0.0.1:8081", "")
    );
    let t = UpstreamTarget::parse("http://h:80/").unwrap();
    assert_eq!((t.authority.as_str(), t.base_path.as_str()), ("h", ""));
    let t = UpstreamTarget::parse("http://[::1]:9000/x").unwrap();
    assert_eq!(
        (t.host.as_str(), t.authority.as_str()),
        ("::1", "[::1]:9000")
    );

    assert!(UpstreamTarget::parse("http://user:pw@h/")
        .unwrap_err()
        .contains("credentials"));
    assert!(UpstreamTarget::parse("http://a b/")
        .unwrap_err()
        .contains("spaces"));
    assert!(UpstreamTarget::parse("http://h:0/")
        .unwrap_err()
        .contains("port"));
    assert!(UpstreamTarget::parse("http://h:8x/")
        .unwrap_err()
        .contains("port"));
    assert!(UpstreamTarget::parse("ws://h/")
        .unwrap_err()
        .contains("scheme \"ws\""));
}

#[test]
fn config_data_is_go_marshalled_with_sorted_keys() {
    let s = Scratch::new("cd");
    let conf = s.conf("{}");
    s.write(
        "apps/a.json",
        r#"{"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "http://h/"},
            "config_data": {"zeta": 1.0, "alpha": {"b": true, "a": "<x>"}, "mid": [3, "s"]}}"#,
    );
    s.write(
        "apps/b.json",
        r#"{"api_id": "b", "proxy": {"listen_path": "/b/", "target_url": "http://h/"},
            "config_data": {"key": "value"}, "config_data_disabled": true}"#,
    );
    s.write(
        "apps/c.json",
        r#"{"api_id": "c", "proxy": {"listen_path": "/c/", "target_url": "http://h/"}, "config_data": {}}"#,
    );
    let snap = load_snapshot(&conf).unwrap();
    assert_eq!(
        snap.api_by_id("a").unwrap().config_data.as_deref(),
        Some(r#"{"alpha":{"a":"\u003cx\u003e","b":true},"mid":[3,"s"],"zeta":1}"#)
    );
    assert_eq!(snap.api_by_id("b").unwrap().config_data, None);
    assert_eq!(snap.api_by_id("c").unwrap().config_data, None);
}

#[test]
fn bundle_hash_is_md5_of_the_bundle_name() {
    let none = api_with("/a/", "http://h/", false, false);
    assert_eq!(none.bundle_hash, "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(
        api::md5_hex(b"bundle.zip"),
        "c343271e0935000c0ea41f8d9822015c"
    );
}

#[test]
fn plugin_section_auth_and_ignored_paths() {
    let s = Scratch::new("plugins");
    let conf = s.conf("{}");
    s.write(
        "apps/p.json",
        r#"{
          "name": "Tyk Test API", "api_id": "p1", "org_id": "default", "use_keyless": false,
          "enable_coprocess_auth": true, "use_standard_auth": true,
          "base_identity_provided_by": "custom_auth",
          "auth": {"auth_header_name": "X-Legacy"},
          "auth_configs": {"authToken": {"auth_header_name": "AuthToken"}},
          "custom_middleware": {
            "driver": "grpc",
            "pre": [{"name": "MyPre", "path": "", "require_session": false, "raw_body_only": true},
                    {"name": "Off", "disabled": true}],
            "post": [{"name": "MyPost", "timeout_ms": 250, "fail_open": true}],
            "post_key_auth": [], "response": [{"name": "MyResp"}],
            "id_extractor": {"extract_from": "header", "extract_with": "value",
                             "extractor_config": {"header_name": "Authorization"}}
          },
          "version_data": {"not_versioned": true, "versions": {"Default": {"name": "Default",
            "use_extended_paths": true,
            "extended_paths": {"ignored": [
              {"path": "/anything", "method_actions": {"GET": {"action": "no_action", "code": 200, "data": "", "headers": {}}}},
              {"path": "/health", "method": "HEAD"},
              {"path": "/all"},
              {"path": "/none", "method_actions": {}},
              {"path": "/off", "disabled": true}
            ]}}}},
          "event_handlers": {"events": {"AuthFailure": [{"handler_name": "cp_dynamic_handler", "handler_meta": {"name": "h"}}]}},
          "tags": ["t1"],
          "proxy": {"listen_path": "/grpc-test-api/", "target_url": "http://127.0.0.1:9000", "strip_listen_path": true}
        }"#,
    );
    let snap = load_snapshot(&conf).unwrap();
    let api = snap.api_by_id("p1").unwrap();
    let cm = &api.custom_middleware;
    let names = |v: &[HookDef]| v.iter().map(|h| h.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&cm.pre), vec!["MyPre"], "disabled hook dropped");
    assert!(cm.pre[0].raw_body_only);
    assert_eq!(cm.post[0].timeout, Some(Duration::from_millis(250)));
    assert_eq!(cm.post[0].fail_open, Some(true));
    assert_eq!(names(&cm.response), vec!["MyResp"]);
    assert!(api.coprocess_auth && api.use_standard_auth);
    assert_eq!(
        api.auth_hook().map(|h| h.name.as_str()),
        Some(""),
        "Tyk dispatches hook_name \"\""
    );
    assert_eq!(api.auth_header_name, "AuthToken");
    let ex = cm.id_extractor.as_ref().unwrap();
    assert_eq!(
        (ex.extract_from.as_str(), ex.header_name.as_str()),
        ("header", "Authorization")
    );
    let ignored: Vec<(&str, Vec<&str>)> = api
        .ignored_paths
        .iter()
        .map(|p| {
            (
                p.path.as_str(),
                p.methods.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        ignored,
        vec![
            ("/anything", vec!["GET"]),
            ("/health", vec!["HEAD"]),
            ("/all", vec![])
        ]
    );
    assert_eq!(
        api.event_handlers["events"]["AuthFailure"][0]["handler_name"],
        "cp_dynamic_handler"
    );
    assert_eq!(api.tags, vec!["t1"]);
}

#[test]
fn auth_header_falls_back_and_keyless_never_runs_auth() {
    let s = Scratch::new("authhdr");
    let conf = s.conf("{}");
    s.write(
        "apps/a.json",
        r#"{"api_id": "a", "auth": {"auth_header_name": "X-Key"}, "custom_plugin_auth_enabled": true,
            "use_keyless": true, "custom_middleware": {"driver": "grpc", "auth_check": {"name": "Auth"}},
            "proxy": {"listen_path": "/a/", "target_url": "http://h/"}}"#,
    );
    s.write(
        "apps/b.json",
        r#"{"api_id": "b", "enable_coprocess_auth": true,
            "custom_middleware": {"driver": "grpc", "auth_check": {"name": "Auth", "disabled": true}},
            "proxy": {"listen_path": "/b/", "target_url": "http://h/"}}"#,
    );
    s.write("apps/c.json", &api_json("c", "/c/", "http://h/"));
    let snap = load_snapshot(&conf).unwrap();
    let a = snap.api_by_id("a").unwrap();
    assert_eq!(a.auth_header_name, "X-Key");
    assert!(a.auth_hook().is_none(), "keyless APIs never run auth_check");
    assert!(
        snap.api_by_id("b").unwrap().auth_hook().is_none(),
        "disabled auth_check"
    );
    assert_eq!(
        snap.api_by_id("c").unwrap().auth_header_name,
        "Authorization"
    );
}

#[test]
fn bundle_apis_skip_the_driver_check_and_manifest_sections_parse() {
    let s = Scratch::new("bundle");
    let conf = s.conf("{}");
    s.write(
        "apps/a.json",
        r#"{"api_id": "a", "custom_middleware_bundle": "b.zip",
            "custom_middleware": {"pre": [{"name": "JsHook"}]},
            "proxy": {"listen_path": "/a/", "target_url": "http://h/"}}"#,
    );
    let snap = load_snapshot(&conf).unwrap();
    assert_eq!(snap.apis[0].bundle_hash, api::md5_hex(b"b.zip"));

    let manifest: serde_json::Value = serde_json::from_str(
        r#"{"driver": "grpc", "post": [{"name": "P"}], "auth_check": {"name": "A"}}"#,
    )
    .unwrap();
    let section =
        parse_middleware_section(Path::new("manifest.json"), "custom_middleware", &manifest)
            .unwrap();
    assert_eq!(section.auth_check.unwrap().name, "A");
    // Every driver but "grpc" goes to the pipe child, so Tyk's values load unchanged.
    let pipe: serde_json::Value =
        serde_json::from_str(r#"{"driver": "python", "post": [{"name": "P"}]}"#).unwrap();
    assert!(
        parse_middleware_section(Path::new("manifest.json"), "custom_middleware", &pipe).is_ok()
    );
    let bad: serde_json::Value = serde_json::from_str(r#"{"post": [{"name": "P"}]}"#).unwrap();
    let errs = parse_middleware_section(Path::new("manifest.json"), "custom_middleware", &bad)
        .unwrap_err();
    assert!(errs[0]
        .to_string()
        .starts_with("manifest.json: custom_middleware.driver: hooks are defined but no driver"));
}

#[test]
fn missing_app_path_is_a_clear_error() {
    let s = Scratch::new("noapps");
    let conf = s.conf(r#"{"app_path": "missing"}"#);
    let errs = load_snapshot(&conf).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "app_path");
    assert!(
        errs[0].reason.contains("create it or point app_path"),
        "{}",
        errs[0]
    );
}

#[test]
fn shipped_examples_load() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tyk.conf");
    let snap = load_snapshot(&conf).unwrap_or_else(|e| panic!("{}", messages(&e).join("\n")));
    let api = snap.route("/demo/get").expect("the demo API routes");
    assert_eq!(api.api_id, "httpbin-keyless");
    assert!(api.use_keyless && api.strip_listen_path);
    assert_eq!(api.target.authority, "127.0.0.1:8081");
    assert_eq!(up(api, "/demo/get"), "/get");
}
