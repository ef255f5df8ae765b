//! The plugin SDKs end to end: the real gateway runs each SDK's example plugin as its child and a
//! request through a hooked API shows the hook's effect at the upstream (or on the response).
//! Also runs each SDK's own test suite (Python unittest, `node --test`), so `cargo test` covers
//! them. Node and its `node_modules` are required: CI installs them, and a missing toolchain is
//! a failure with a message saying what to install, not a silent skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Longest a child command (an SDK test suite, a cargo build) may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// Absolute path below the repository root.
fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Runs `cmd` to completion (killing it after [`COMMAND_TIMEOUT`]) with its output captured in
/// files, so a chatty command can never block on a full pipe.
fn run(mut cmd: Command, what: &str) -> Output {
    let dir = Sandbox::new("sdk-run");
    let out_path = dir.dir().join("stdout");
    let err_path = dir.dir().join("stderr");
    let out = std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("{what}: {e}"));
    let err = std::fs::File::create(&err_path).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let end = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{what}: {cmd:?} did not finish within {COMMAND_TIMEOUT:?}; output:\n{}\n{}",
                    std::fs::read_to_string(&out_path).unwrap_or_default(),
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            Err(e) => panic!("{what}: waiting for {cmd:?}: {e}"),
        }
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// Panics with the command's output unless it succeeded.
fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails (never skips) when `node` or the Node SDK's dependencies are missing.
fn require_node() {
    require_node_binary();
    let deps = repo("protocol/node/node_modules/@msgpack/msgpack");
    assert!(
        deps.is_dir(),
        "{} is missing; run `npm ci` (or `npm install`) in protocol/node",
        deps.display()
    );
}

/// Fails (never skips) when `node` is missing.
fn require_node_binary() {
    let ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`node` (>= 20) is not on PATH; install Node.js to test the Node SDK"
    );
}

/// A gateway running `pipe_command` (with `pipe_env`) in front of an echo upstream, with `apis`
/// built from the upstream's URL.
fn start_env(
    tag: &str,
    pipe_command: Vec<String>,
    pipe_env: Value,
    apis: impl FnOnce(&str) -> Vec<(&'static str, Value)>,
) -> (Gateway, EchoUpstream, Sandbox) {
    let sb = Sandbox::new(tag);
    let echo = EchoUpstream::start();
    sb.write_conf(&conf_with(json!({"coprocess_options": {
        "enable_coprocess": true,
        "pipe_command": pipe_command,
        "pipe_env": pipe_env,
        "hook_timeout_ms": 30000,
    }})));
    for (name, api) in apis(&format!("{}/", echo.url())) {
        sb.write_api(name, &api);
    }
    let gw = Gateway::start(&sb);
    (gw, echo, sb)
}

/// A keyless API on `listen_path` whose pre hook is `hook` (driver as the SDK's docs say).
fn pre_hook_api(api_id: &str, listen_path: &str, target: &str, driver: &str, hook: &str) -> Value {
    let mut api = keyless_api(api_id, listen_path, target);
    api["custom_middleware"] = json!({"driver": driver, "pre": [{"name": hook}]});
    api
}

/// Asserts `r` is a 200 from the echo upstream and returns what the upstream saw.
fn upstream_saw(r: &Response) -> Echoed {
    assert_eq!(r.status, 200, "expected the upstream's 200: {r:?}");
    assert_eq!(
        r.header("x-echo-upstream"),
        Some("1"),
        "not from the upstream: {r:?}"
    );
    r.echoed()
}

// ---------------------------------------------------------------------------------------------
// Python
// ---------------------------------------------------------------------------------------------

/// The Tyk-style example (protocol/python/examples/tyk_style_plugin.py) unchanged under the
/// Python runner, configured as in its README: the pre hook adds a header, the auth hook accepts
/// `letmein` and refuses anything else with its own 403, the response hook adds a header.
#[test]
fn python_runner_runs_the_tyk_style_example() {
    let example = repo("protocol/python/examples/tyk_style_plugin.py");
    let (gw, _echo, _sb) = start_env(
        "sdk-python",
        vec![
            "python3".into(),
            "-m".into(),
            "pipegate_plugin".into(),
            path_str(&example),
        ],
        json!({"PYTHONPATH": path_str(&repo("protocol/python"))}),
        |up| {
            let mut api = keyless_api("py-example", "/py/", up);
            merge(
                &mut api,
                json!({
                    "use_keyless": false,
                    "custom_plugin_auth_enabled": true,
                    "auth": {"auth_header_name": "Authorization"},
                    "custom_middleware": {
                        "driver": "python",
                        "pre": [{"name": "MyPreHook"}],
                        "auth_check": {"name": "MyAuthCheck"},
                        "response": [{"name": "MyResponseHook"}],
                    },
                }),
            );
            vec![("py", api)]
        },
    );
    let r = gw.send(
        &req("GET", "/py/anything?x=1")
            .header("Authorization", "letmein")
            .token("py-1")
            .close()
            .to_bytes(),
    );
    let e = upstream_saw(&r);
    assert_eq!(e.path, "/anything", "{r:?}");
    assert_eq!(
        e.header("X-Pipegate-Example"),
        Some("pre"),
        "pre hook: {r:?}"
    );
    assert_eq!(
        r.header("X-Pipegate-Example-Response"),
        Some("1"),
        "response hook: {r:?}"
    );
    assert_eq!(r.header("X-Echo-Token"), Some("py-1"), "{r:?}");

    let r = gw.send(
        &req("GET", "/py/anything")
            .header("Authorization", "nope")
            .close()
            .to_bytes(),
    );
    assert_eq!(
        r.assert_tyk_error(403),
        "Access denied: wrong credentials",
        "auth hook: {r:?}"
    );
}

/// The Python SDK's own unit and end-to-end tests.
#[test]
fn python_sdk_unittests_pass() {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "unittest", "discover", "-s", "protocol/python/tests"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = run(cmd, "python3 -m unittest discover -s protocol/python/tests");
    assert_success(&out, "the Python SDK's unittest suite");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\nOK"), "unittest did not report OK:\n{err}");
}

/// Packaging: `pip install` of protocol/python into a private directory (no dependencies fetched:
/// msgpack is already there) gives the `pipegate-python-runner` script, and the Tyk-style example
/// runs under it through the gateway with only that directory on PYTHONPATH.
#[test]
fn pip_installed_python_sdk_runs_a_plugin() {
    let target = Sandbox::new("sdk-pip");
    let site = target.dir().join("site");
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--disable-pip-version-check",
        "--target",
    ])
    .arg(&site)
    .arg(repo("protocol/python"))
    .current_dir(target.dir());
    let out = run(cmd, "pip install --target <dir> protocol/python");
    assert_success(&out, "pip install of the Python SDK");
    let runner = site.join("bin").join("pipegate-python-runner");
    assert!(
        runner.is_file(),
        "no console script at {}",
        runner.display()
    );
    for module in [
        "pipegate_plugin/runner.py",
        "tyk/decorators.py",
        "gateway.py",
    ] {
        assert!(site.join(module).is_file(), "{module} not installed");
    }
    let (gw, _echo, _sb) = start_env(
        "sdk-pip-gw",
        vec![
            "python3".into(),
            path_str(&runner),
            path_str(&repo("protocol/python/examples/tyk_style_plugin.py")),
        ],
        json!({"PYTHONPATH": path_str(&site)}),
        |up| {
            vec![(
                "pip",
                pre_hook_api("pip", "/pip/", up, "python", "MyPreHook"),
            )]
        },
    );
    let e = upstream_saw(&gw.get("/pip/x"));
    assert_eq!(e.header("X-Pipegate-Example"), Some("pre"), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------------------------

/// protocol/node/examples/add_header.js: a pre hook `AddHeader` adding `X-Pipegate-Node: 1`.
#[test]
fn node_example_adds_its_header() {
    require_node();
    let (gw, _echo, _sb) = start_env(
        "sdk-node",
        vec![
            "node".into(),
            path_str(&repo("protocol/node/examples/add_header.js")),
        ],
        json!({}),
        |up| {
            vec![(
                "node",
                pre_hook_api("node", "/node/", up, "pipe", "AddHeader"),
            )]
        },
    );
    for i in 0..3 {
        let e = upstream_saw(&gw.get(&format!("/node/n{i}")));
        assert_eq!(e.path, format!("/n{i}"), "{e:?}");
        assert_eq!(e.header("X-Pipegate-Node"), Some("1"), "{e:?}");
    }
}

/// The Node SDK's own tests (`node --test test/` in protocol/node).
#[test]
fn node_sdk_tests_pass() {
    require_node();
    let mut cmd = Command::new("node");
    cmd.args(["--test", "test/"])
        .current_dir(repo("protocol/node"));
    let out = run(cmd, "node --test test/");
    assert_success(&out, "the Node SDK's test suite");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# fail 0"),
        "node --test reported failures:\n{text}"
    );
}

/// Packaging: `npm pack` of protocol/node makes a tarball that installs into an empty directory
/// (its one dependency from the npm cache or registry), and the example shipped in it runs
/// through the gateway from there.
#[test]
fn npm_packed_node_sdk_installs_and_its_example_runs() {
    require_node_binary();
    let dir = Sandbox::new("sdk-npm");
    let mut cmd = Command::new("npm");
    cmd.args(["pack", "--silent", "--pack-destination"])
        .arg(dir.dir())
        .current_dir(repo("protocol/node"));
    let out = run(cmd, "npm pack");
    assert_success(&out, "npm pack in protocol/node");
    let tarball = dir.dir().join("pipegate-plugin-0.1.0.tgz");
    assert!(tarball.is_file(), "npm pack made no {}", tarball.display());
    let app = dir.dir().join("app");
    std::fs::create_dir_all(&app).unwrap_or_else(|e| panic!("{}: {e}", app.display()));
    let mut cmd = Command::new("npm");
    cmd.args([
        "install",
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
        "--silent",
    ])
    .arg(&tarball)
    .current_dir(&app);
    let out = run(cmd, "npm install <tarball>");
    assert_success(&out, "npm install of the packed Node SDK");
    let pkg = app.join("node_modules").join("pipegate-plugin");
    for f in [
        "package.json",
        "README.md",
        "lib/index.js",
        "lib/frame.js",
        "examples/add_header.js",
    ] {
        assert!(pkg.join(f).is_file(), "{f} missing from the package");
    }
    assert!(
        !pkg.join("test").exists() && !pkg.join("fixtures").exists(),
        "tests are not shipped"
    );
    let (gw, _echo, _sb) = start_env(
        "sdk-npm-gw",
        vec!["node".into(), path_str(&pkg.join("examples/add_header.js"))],
        json!({}),
        |up| vec![("npm", pre_hook_api("npm", "/npm/", up, "pipe", "AddHeader"))],
    );
    let e = upstream_saw(&gw.get("/npm/x"));
    assert_eq!(e.header("X-Pipegate-Node"), Some("1"), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Rust
// ---------------------------------------------------------------------------------------------

/// `target/<profile>`, the directory holding this test binary's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()))
}

/// The Rust SDK's `add_header` example binary, built with cargo (same profile and target
/// directory as this test). It is built every time, not only when missing, so the test never runs
/// a stale binary; when it is up to date this costs cargo's freshness check only.
fn rust_example() -> PathBuf {
    let dir = profile_dir();
    let bin = dir.join("examples").join("add_header");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "pipegate-plugin", "--example", "add_header"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    // Build into this test's own target directory (it holds CACHEDIR.TAG at its root; with a
    // `--target <triple>` layout it does not, and cargo's default is left alone).
    if let Some(target_dir) = dir.parent().filter(|d| d.join("CACHEDIR.TAG").is_file()) {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let out = run(cmd, "cargo build -p pipegate-plugin --example add_header");
    assert_success(&out, "building the Rust SDK's add_header example");
    assert!(
        bin.is_file(),
        "cargo built the example, but {} is missing",
        bin.display()
    );
    bin
}

/// protocol/rust/examples/add_header.rs: a pre hook `AddHeader` adding `X-Pipegate-Rust: 1`; its
/// hello lists only that hook, so a hook of another name is not dispatched to it at all.
#[test]
fn rust_example_adds_its_header() {
    let bin = rust_example();
    let (gw, _echo, _sb) = start_env("sdk-rust", vec![path_str(&bin)], json!({}), |up| {
        vec![
            (
                "rust",
                pre_hook_api("rust", "/rust/", up, "pipe", "AddHeader"),
            ),
            (
                "other",
                pre_hook_api("other", "/other/", up, "pipe", "NotImplemented"),
            ),
        ]
    });
    for i in 0..3 {
        let e = upstream_saw(&gw.get(&format!("/rust/r{i}?q={i}")));
        assert_eq!(e.path, format!("/r{i}"), "{e:?}");
        assert_eq!(e.query, format!("q={i}"), "{e:?}");
        assert_eq!(e.header("X-Pipegate-Rust"), Some("1"), "{e:?}");
    }
    let e = upstream_saw(&gw.get("/other/"));
    assert!(e.header("X-Pipegate-Rust").is_none(), "{e:?}");
}
