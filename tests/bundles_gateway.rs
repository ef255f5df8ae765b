//! Plugin bundles end to end: the real `pipegate` binary downloads bundles from an HTTP server
//! started by the test, verifies and unpacks them, and runs their Python hooks in the Python
//! runner (`python3 -m pipegate_plugin`), in front of the echo upstream.
//!
//! Bundles are built by the real CLI (`pipegate bundle build`) with RSA keys made by the openssl
//! CLI. The bad ones are derived from good ones by editing the zip the way an attacker, a broken
//! build or a broken server would. What the tests check is what a client, an upstream and an
//! operator reading the log see:
//! - a valid signed bundle replaces the API definition's hooks and its Python pre and response
//!   hooks run;
//! - a bundle that is missing, tampered with, badly signed, malformed, escapes its directory or is
//!   too large keeps only its own API out of service: that API answers a JSON 503, a log line names
//!   the API, the bundle and the reason, nothing of the bundle is left on disk, and the other APIs
//!   keep serving;
//! - a downloaded bundle is used from the cache when the bundle server is down at restart (while a
//!   cached copy tampered with on disk is refused);
//! - a reload that moves an API to a new bundle answers every request of a running load, each
//!   served entirely by one bundle version, and the new version's hooks take over;
//! - a gRPC-driver bundle (no files) loads.
//!
//! Nothing asserts on timing; every wait has a generous timeout.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{Cursor, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::{
    conf_with, keyless_api, pipegate_bin, req, wait_until, Client, EchoUpstream, Gateway, Response,
    Sandbox,
};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use zip::write::SimpleFileOptions;
use zip::{ZipArchive, ZipWriter};

/// Longest wait for a log line, a reload or a client thread. Generous: a busy two-core machine,
/// debug builds, a Python child, and bundle downloads that retry for several seconds.
const PATIENCE: Duration = Duration::from_secs(90);

/// How long to wait for a log line that must already have been written.
const LOGGED_ALREADY: Duration = Duration::from_secs(10);

/// The body of the 503 an API gets when its bundle failed (it names no internals).
const UNAVAILABLE_MESSAGE: &str = "This API is unavailable: its plugin bundle could not be loaded";

/// The Tyk-style plugin file every Python bundle of these tests carries.
const FIXTURE_MIDDLEWARE: &str = "tests/fixtures/bundles_gateway/middleware.py";

// ---------------------------------------------------------------------------------------------
// Small tools
// ---------------------------------------------------------------------------------------------

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn path_str(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("test path is not UTF-8: {}", p.display()))
        .to_string()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lowercase hex MD5, computed here independently of pipegate (the bundle directory name and
/// Tyk's checksum).
fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs a tool and fails the test, with its output, unless it succeeds.
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn write_file(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Keys and bundles
// ---------------------------------------------------------------------------------------------

/// An RSA key pair made by the openssl CLI: `genrsa` (PKCS#8 `PRIVATE KEY` with OpenSSL 3) and
/// `rsa -pubout` (PKIX `PUBLIC KEY`), as Tyk's docs tell operators to make them.
struct KeyPair {
    private: PathBuf,
    public: PathBuf,
}

fn openssl_keypair(dir: &Path, tag: &str) -> KeyPair {
    let private = dir.join(format!("{tag}-private.pem"));
    let public = dir.join(format!("{tag}-public.pem"));
    run_ok(
        Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&private)
            .arg("2048"),
    );
    run_ok(
        Command::new("openssl")
            .args(["rsa", "-in"])
            .arg(&private)
            .args(["-pubout", "-out"])
            .arg(&public),
    );
    KeyPair { private, public }
}

/// Builds a bundle with the real CLI (`pipegate bundle build`, signed with `key` or `-y`) from
/// `files` and a manifest holding `middleware`; returns the zip bytes. The CLI runs from `work`,
/// not from the manifest's folder, so the "files are read relative to the manifest" rule is used.
fn cli_build(
    work: &Path,
    tag: &str,
    files: &[(&str, Vec<u8>)],
    middleware: Value,
    key: Option<&Path>,
) -> Vec<u8> {
    let src = work.join(format!("src-{tag}"));
    for (name, data) in files {
        write_file(&src.join(name), data);
    }
    let list: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let manifest = src.join("manifest.json");
    write_file(
        &manifest,
        json!({"file_list": list, "custom_middleware": middleware})
            .to_string()
            .as_bytes(),
    );
    let out = work.join(format!("{tag}.zip"));
    let mut cmd = Command::new(pipegate_bin());
    cmd.current_dir(work)
        .args(["bundle", "build", "-m"])
        .arg(&manifest)
        .arg("-o")
        .arg(&out);
    match key {
        Some(k) => cmd.arg("-k").arg(k),
        None => cmd.arg("-y"),
    };
    run_ok(&mut cmd);
    read_file(&out)
}

/// The hooks of the Python fixture, as the manifest declares them.
fn python_middleware() -> Value {
    json!({
        "driver": "python",
        "pre": [{"name": "BundlePre"}],
        "response": [{"name": "BundleResponse"}]
    })
}

/// A Python bundle: the fixture `middleware.py` plus `bundle_version.py` saying `version`.
fn python_bundle(work: &Path, tag: &str, version: &str, key: Option<&Path>) -> Vec<u8> {
    let files = [
        ("middleware.py", read_file(&repo(FIXTURE_MIDDLEWARE))),
        (
            "bundle_version.py",
            format!("VERSION = {version:?}\n").into_bytes(),
        ),
    ];
    cli_build(work, tag, &files, python_middleware(), key)
}

/// The entries of a zip, in order, as (name as stored, contents).
fn zip_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = ZipArchive::new(Cursor::new(bytes))
        .unwrap_or_else(|e| panic!("the test's own zip does not open: {e}"));
    (0..archive.len())
        .map(|i| {
            let mut f = archive
                .by_index(i)
                .unwrap_or_else(|e| panic!("zip entry {i}: {e}"));
            let name = f
                .name()
                .unwrap_or_else(|e| panic!("zip entry {i} name: {e}"))
                .into_owned();
            let mut data = Vec::new();
            f.read_to_end(&mut data)
                .unwrap_or_else(|e| panic!("zip entry {name}: {e}"));
            (name, data)
        })
        .collect()
}

/// A zip of `entries` written by the zip crate, names stored exactly as given.
fn zip_from(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(name.as_str(), SimpleFileOptions::default())
            .unwrap_or_else(|e| panic!("zip start {name}: {e}"));
        w.write_all(data)
            .unwrap_or_else(|e| panic!("zip write {name}: {e}"));
    }
    w.finish()
        .unwrap_or_else(|e| panic!("zip finish: {e}"))
        .into_inner()
}

/// `bundle` with entry `name`'s contents replaced by `edit(old contents)`.
fn edit_entry(bundle: &[u8], name: &str, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut entries = zip_entries(bundle);
    let slot = entries
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("the bundle has no entry {name}"));
    slot.1 = edit(std::mem::take(&mut slot.1));
    zip_from(&entries)
}

/// The manifest.json inside `bundle`.
fn manifest_of(bundle: &[u8]) -> Value {
    let entries = zip_entries(bundle);
    let (_, data) = entries
        .iter()
        .find(|(n, _)| n == "manifest.json")
        .unwrap_or_else(|| panic!("the bundle has no manifest.json"));
    serde_json::from_slice(data).unwrap_or_else(|e| panic!("manifest.json is not JSON: {e}"))
}

/// `bundle` with its manifest.json changed by `edit`.
fn edit_manifest(bundle: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    edit_entry(bundle, "manifest.json", |old| {
        let mut m: Value = serde_json::from_slice(&old)
            .unwrap_or_else(|e| panic!("manifest.json is not JSON: {e}"));
        edit(&mut m);
        m.to_string().into_bytes()
    })
}

/// MD5 of the `file_list` files of `bundle`, concatenated in list order (Tyk's checksum), so a
/// tampered bundle can carry a checksum that matches its tampered files.
fn checksum_of(bundle: &[u8]) -> String {
    let entries: HashMap<String, Vec<u8>> = zip_entries(bundle).into_iter().collect();
    let manifest = manifest_of(bundle);
    let mut all = Vec::new();
    for f in manifest["file_list"].as_array().into_iter().flatten() {
        let name = f.as_str().unwrap_or_default();
        let data = entries
            .get(name)
            .unwrap_or_else(|| panic!("file_list names {name:?}, not in the zip"));
        all.extend_from_slice(data);
    }
    md5_hex(&all)
}

/// A zip whose `middleware.py` inflates to `size` bytes (deflated by Python's zlib, so building
/// it is quick), plus `manifest`.
fn zip_bomb(size: u64, manifest: &Value) -> Vec<u8> {
    let script = "import io, sys, zipfile\n\
                  buf = io.BytesIO()\n\
                  with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:\n\
                  \x20   z.writestr('middleware.py', b'#' * int(sys.argv[1]))\n\
                  \x20   z.writestr('manifest.json', sys.argv[2])\n\
                  sys.stdout.buffer.write(buf.getvalue())\n";
    let out = run_ok(
        Command::new("python3")
            .args(["-c", script])
            .arg(size.to_string())
            .arg(manifest.to_string()),
    );
    out.stdout
}

// ---------------------------------------------------------------------------------------------
// The bundle server
// ---------------------------------------------------------------------------------------------

/// Where bundle URLs live on the server; `bundle_base_url` is `http://<addr>/bundles` (no
/// trailing slash: the gateway path-joins the bundle name onto it, as Tyk does).
const SERVE_PREFIX: &str = "/bundles/";

struct ServerState {
    root: PathBuf,
    stop: AtomicBool,
    /// Names whose response declares this Content-Length but sends only a little.
    declared: Mutex<HashMap<String, u64>>,
    /// Request targets, in arrival order.
    hits: Mutex<Vec<String>>,
}

/// A tiny HTTP/1.1 file server on a std `TcpListener` thread: `GET /bundles/<name>` answers
/// `<root>/<name>` (200) or 404, one request per connection. [`BundleServer::stop`] closes the
/// listening socket, so later downloads get "connection refused".
struct BundleServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    acceptor: Option<JoinHandle<()>>,
}

impl BundleServer {
    fn start(root: PathBuf) -> BundleServer {
        fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let state = Arc::new(ServerState {
            root,
            stop: AtomicBool::new(false),
            declared: Mutex::new(HashMap::new()),
            hits: Mutex::new(Vec::new()),
        });
        let st = Arc::clone(&state);
        let acceptor = thread::Builder::new()
            .name("bundle-server".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(s) = stream {
                        serve_connection(&st, s);
                    }
                }
                // The listener drops here: the port refuses connections from now on.
            })
            .unwrap_or_else(|e| panic!("cannot spawn the bundle server: {e}"));
        BundleServer {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}{}", self.addr, SERVE_PREFIX.trim_end_matches('/'))
    }

    /// Makes `bytes` downloadable as `name`.
    fn publish(&self, name: &str, bytes: &[u8]) {
        write_file(&self.state.root.join(name), bytes);
    }

    /// Makes `name` answer 200 with `Content-Length: len` (and then only a few bytes).
    fn publish_declared_length(&self, name: &str, len: u64) {
        lock(&self.state.declared).insert(name.to_string(), len);
    }

    /// How many times `name` was requested.
    fn hits(&self, name: &str) -> usize {
        let target = format!("{SERVE_PREFIX}{name}");
        lock(&self.state.hits)
            .iter()
            .filter(|t| **t == target)
            .count()
    }

    /// Stops accepting and closes the listening socket.
    fn stop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BundleServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one request head and answers it.
fn serve_connection(st: &ServerState, mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.lines().next().unwrap_or_default().split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default().to_string();
    lock(&st.hits).push(target.clone());
    let name = target
        .strip_prefix(SERVE_PREFIX)
        .filter(|n| !n.is_empty() && !n.contains('/') && !n.contains(".."))
        .map(str::to_string);
    let reply = |status: &str, len: u64, body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/zip\r\nContent-Length: {len}\r\n\
             Connection: close\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    };
    let out = match (method.as_str(), name) {
        ("GET", Some(name)) => {
            let declared = lock(&st.declared).get(&name).copied();
            match declared {
                Some(len) => reply("200 OK", len, &[0u8; 1024]),
                None => match fs::read(st.root.join(&name)) {
                    Ok(bytes) => reply("200 OK", bytes.len() as u64, &bytes),
                    Err(_) => reply("404 Not Found", 9, b"not found"),
                },
            }
        }
        ("GET", None) => reply("404 Not Found", 9, b"not found"),
        _ => reply("405 Method Not Allowed", 0, b""),
    };
    let _ = s.write_all(&out);
    let _ = s.flush();
    let _ = s.shutdown(Shutdown::Write);
    // Let the client read to the end before the socket is dropped.
    let _ = s.read(&mut buf);
}

// ---------------------------------------------------------------------------------------------
// Gateway configuration and checks
// ---------------------------------------------------------------------------------------------

fn middleware_dir(sb: &Sandbox) -> PathBuf {
    sb.dir().join("middleware")
}

/// Where the gateway must unpack bundle `name`: `<middleware_path>/bundles/<md5 of name>`.
fn bundle_dir(sb: &Sandbox, name: &str) -> PathBuf {
    middleware_dir(sb)
        .join("bundles")
        .join(md5_hex(name.as_bytes()))
}

/// Every entry of `<middleware_path>/bundles/` (hidden staging leftovers included).
fn bundles_on_disk(sb: &Sandbox) -> BTreeSet<String> {
    let dir = middleware_dir(sb).join("bundles");
    match fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The Python runner as the plugin child, with no command-line module: every hook comes from
/// bundles, announced with `load_bundle`.
fn python_coprocess() -> Value {
    json!({
        "enable_coprocess": true,
        "pipe_command": ["python3", "-m", "pipegate_plugin"],
        "pipe_env": {"PYTHONPATH": path_str(&repo("protocol/python"))},
        "hook_timeout_ms": 30000
    })
}

/// tyk.conf downloading from `server` into `<sandbox>/middleware`, with `public_key_path` when
/// given and `coprocess_options` when given.
fn gateway_conf(
    sb: &Sandbox,
    server: &BundleServer,
    public_key: Option<&Path>,
    coprocess: Option<Value>,
) -> Value {
    let mut patch = json!({
        "enable_bundle_downloader": true,
        "bundle_base_url": server.base_url(),
        "middleware_path": path_str(&middleware_dir(sb)),
    });
    if let Some(k) = public_key {
        patch["public_key_path"] = json!(path_str(k));
    }
    if let Some(c) = coprocess {
        patch["coprocess_options"] = c;
    }
    conf_with(patch)
}

/// A keyless API on `/<api_id>/` using `bundle`. Its own `custom_middleware` names a hook no
/// module defines: the manifest's hooks must replace it (Tyk's `AddToSpec`), else the runner
/// fails that hook and the request gets a 500.
fn bundle_api(api_id: &str, upstream: &str, bundle: &str) -> Value {
    let mut api = keyless_api(api_id, &format!("/{api_id}/"), upstream);
    api["custom_middleware_bundle"] = json!(bundle);
    api["custom_middleware"] = json!({
        "driver": "python",
        "pre": [{"name": "DefinitionOnlyHook"}]
    });
    api
}

/// Asserts `r` is the echo upstream's 200 with the Python bundle's hooks applied: the pre hook's
/// header (carrying `version` and the hash the runner dispatched on) reached the upstream and the
/// response hook's header reached the client.
fn assert_bundle_hooks(r: &Response, version: &str, bundle: &str) {
    assert_eq!(r.status, 200, "expected the upstream's 200: {r:?}");
    assert_eq!(
        r.header("x-echo-upstream"),
        Some("1"),
        "not from the upstream: {r:?}"
    );
    let e = r.echoed();
    assert_eq!(
        e.header("X-Bundle-Pre"),
        Some(version),
        "the bundle's pre hook did not run (or another version did): {r:?}"
    );
    let hash = md5_hex(bundle.as_bytes());
    assert_eq!(
        e.header("X-Bundle-Hash"),
        Some(hash.as_str()),
        "the hook saw another spec[\"bundle_hash\"] than md5({bundle:?}): {r:?}"
    );
    assert_eq!(
        r.header("x-bundle-response"),
        Some(version),
        "the bundle's response hook did not run: {r:?}"
    );
}

/// Whether a log line carries the field `key=value` (tracing's text format; string values
/// recorded as `&str` are printed quoted, `%`-formatted ones are not).
fn has_field(line: &str, key: &str, value: &str) -> bool {
    let plain = format!("{key}={value}");
    let quoted = format!("{key}={value:?}");
    line.split_whitespace().any(|t| t == plain || t == quoted)
}

/// Waits for a log line (from line `from` on) naming `api` (when given) and `bundle` and holding
/// every one of `needles`.
fn wait_log(
    gw: &Gateway,
    from: usize,
    api: Option<&str>,
    bundle: &str,
    needles: &[&str],
) -> Option<String> {
    wait_log_within(PATIENCE, gw, from, api, bundle, needles)
}

/// [`wait_log`] with its own timeout.
fn wait_log_within(
    timeout: Duration,
    gw: &Gateway,
    from: usize,
    api: Option<&str>,
    bundle: &str,
    needles: &[&str],
) -> Option<String> {
    let mut found = None;
    wait_until(timeout, || {
        found = gw.log().lines().into_iter().skip(from).find(|l| {
            api.is_none_or(|a| has_field(l, "api", a))
                && has_field(l, "bundle", bundle)
                && needles.iter().all(|n| l.contains(n))
        });
        found.is_some()
    });
    found
}

/// Checks one API kept out of service by its bundle; returns the problems found.
fn out_of_service_problems(
    gw: &Gateway,
    sb: &Sandbox,
    api: &str,
    bundle: &str,
    reason: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let r = gw.get(&format!("/{api}/anything"));
    let ok = r.status == 503
        && r.header("content-type") == Some("application/json")
        && serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .is_some_and(|m| m == UNAVAILABLE_MESSAGE);
    if !ok {
        problems.push(format!(
            "{api} ({bundle}): expected a JSON 503 {UNAVAILABLE_MESSAGE:?}, got {r:?}"
        ));
    }
    // Bundles load before the gateway listens (or before a reload is reported), so the line is
    // normally there already; the short wait only covers the log pipe.
    let logged = wait_log_within(
        LOGGED_ALREADY,
        gw,
        0,
        Some(api),
        bundle,
        &["out of service", reason],
    );
    if logged.is_none() {
        let related: Vec<String> = gw
            .log()
            .lines()
            .into_iter()
            .filter(|l| l.contains(bundle))
            .collect();
        problems.push(format!(
            "{api} ({bundle}): no log line with api={api}, bundle={bundle}, \"out of service\" \
             and {reason:?}; lines naming the bundle: {related:#?}"
        ));
    }
    let dir = bundle_dir(sb, bundle);
    if dir.exists() {
        problems.push(format!(
            "{api} ({bundle}): the refused bundle was left at {}",
            dir.display()
        ));
    }
    problems
}

/// Files anywhere below `dir` whose name starts with `prefix`.
fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(prefix) {
            out.push(p.clone());
        }
        if p.is_dir() && !p.is_symlink() {
            out.extend(files_named(&p, prefix));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A signed bundle built by the CLI is downloaded, verified with the openssl-made public key,
/// unpacked to `<middleware_path>/bundles/<md5>/`, announced to the Python runner, and its
/// Tyk-style hooks replace the definition's: the pre hook's header reaches the upstream and the
/// response hook's header reaches the client, on every request of a keep-alive connection. An API
/// without a bundle is untouched.
#[test]
fn a_signed_bundle_replaces_the_hooks_and_runs_its_python_hooks() {
    let sb = Sandbox::new("bgw-signed");
    let keys = openssl_keypair(sb.dir(), "gw");
    let server = BundleServer::start(sb.dir().join("served"));
    let zip = python_bundle(sb.dir(), "plugin-v1", "v1", Some(&keys.private));
    let manifest = manifest_of(&zip);
    assert!(
        manifest["signature"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "the CLI did not sign the bundle: {manifest}"
    );
    // The CLI's own verifier accepts it with the public key.
    run_ok(
        Command::new(pipegate_bin())
            .args(["bundle", "verify", "-k"])
            .arg(&keys.public)
            .arg(sb.dir().join("plugin-v1.zip")),
    );
    server.publish("plugin-v1.zip", &zip);

    let echo = EchoUpstream::start();
    let up = format!("{}/", echo.url());
    sb.write_conf(&gateway_conf(
        &sb,
        &server,
        Some(&keys.public),
        Some(python_coprocess()),
    ));
    sb.write_api("py", &bundle_api("py", &up, "plugin-v1.zip"));
    sb.write_api("plain", &keyless_api("plain", "/plain/", &up));
    let gw = Gateway::start(&sb);

    let loaded = wait_log(&gw, 0, Some("py"), "plugin-v1.zip", &["bundle loaded"]);
    assert!(
        loaded.is_some(),
        "no \"bundle loaded\" line for api=py:\n{}",
        gw.log().text()
    );
    let dir = bundle_dir(&sb, "plugin-v1.zip");
    for f in ["middleware.py", "bundle_version.py", "manifest.json"] {
        assert!(
            dir.join(f).is_file(),
            "{f} is not unpacked at {}",
            dir.display()
        );
    }
    assert_eq!(
        read_file(&dir.join("middleware.py")),
        read_file(&repo(FIXTURE_MIDDLEWARE)),
        "middleware.py unpacked with other contents"
    );

    let mut c = gw.client();
    for i in 0..3 {
        let r = c.request(&req("GET", &format!("/py/item/{i}")).token("t").to_bytes());
        assert_bundle_hooks(&r, "v1", "plugin-v1.zip");
        assert_eq!(r.echoed().path, format!("/item/{i}"), "{r:?}");
    }

    let r = gw.get("/plain/x");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed().header("X-Bundle-Pre"), None, "{r:?}");
    assert_eq!(r.header("x-bundle-response"), None, "{r:?}");

    assert_eq!(
        server.hits("plugin-v1.zip"),
        1,
        "the bundle should be downloaded exactly once"
    );
    assert_eq!(
        gw.log().count("plugin did not load the bundle"),
        0,
        "{}",
        gw.log().text()
    );
}

/// One gateway, one bundle server, many APIs each naming a broken bundle: tampered files (with
/// and without a matching checksum), another signer's key, no signature while public_key_path is
/// set, a wrong checksum, a signature that is not base64, zip entries escaping the bundle
/// directory (`../..`, an absolute path, a symlink), a download and an unpacked size over the
/// limits, a bundle the server does not have, a file that is no zip, and manifests that are
/// missing, not JSON, or whose hooks have no driver. Each keeps only its own API out of service
/// (JSON 503 and a log line with the API, the bundle and the reason) and leaves nothing on disk;
/// an API without a bundle and one with a valid bundle keep serving.
#[test]
fn broken_bundles_keep_only_their_own_api_out_of_service() {
    let sb = Sandbox::new("bgw-refused");
    let keys = openssl_keypair(sb.dir(), "gw");
    let other_keys = openssl_keypair(sb.dir(), "other");
    let server = BundleServer::start(sb.dir().join("served"));
    let good = python_bundle(sb.dir(), "good", "v1", Some(&keys.private));
    let wrong_key = python_bundle(sb.dir(), "wrong-key", "v1", Some(&other_keys.private));
    let unsigned = python_bundle(sb.dir(), "unsigned", "v1", None);

    let inject = |old: Vec<u8>| {
        let mut v = old;
        v.extend_from_slice(b"\nimport os  # injected after signing\n");
        v
    };
    let tampered_file = edit_entry(&good, "middleware.py", inject);
    let sum = checksum_of(&tampered_file);
    let tampered_resummed = edit_manifest(&tampered_file, |m| m["checksum"] = json!(sum));
    let bad_checksum = edit_manifest(&good, |m| m["checksum"] = json!("0".repeat(32)));
    let bad_signature = edit_manifest(&good, |m| {
        m["signature"] = json!("%%% this is not base64 %%%")
    });

    let good_entries = zip_entries(&good);
    let with_extra = |name: &str| {
        let mut entries = good_entries.clone();
        // In the middle, so some files are already extracted when the bad one comes.
        entries.insert(1, (name.to_string(), b"print('escaped')\n".to_vec()));
        zip_from(&entries)
    };
    let escape_parent = with_extra("../../escaped-parent.py");
    let absolute_target = std::env::temp_dir().join(format!(
        "escaped-absolute-{}-{}.py",
        std::process::id(),
        md5_hex(sb.dir().to_string_lossy().as_bytes())
    ));
    let escape_absolute = with_extra(&path_str(&absolute_target));
    for (zip, name) in [
        (&escape_parent, "../../escaped-parent.py".to_string()),
        (&escape_absolute, path_str(&absolute_target)),
    ] {
        assert!(
            zip_entries(zip).iter().any(|(n, _)| *n == name),
            "precondition: the zip writer did not store the entry name {name:?} as given"
        );
    }
    let symlink = {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in &good_entries {
            w.start_file(name.as_str(), SimpleFileOptions::default())
                .unwrap_or_else(|e| panic!("zip: {e}"));
            w.write_all(data).unwrap_or_else(|e| panic!("zip: {e}"));
        }
        w.add_symlink("escaped-link", "../../..", SimpleFileOptions::default())
            .unwrap_or_else(|e| panic!("zip symlink: {e}"));
        w.finish()
            .unwrap_or_else(|e| panic!("zip: {e}"))
            .into_inner()
    };
    let bomb = zip_bomb(101 * 1024 * 1024, &manifest_of(&good));
    let no_manifest = zip_from(
        &good_entries
            .iter()
            .filter(|(n, _)| n != "manifest.json")
            .cloned()
            .collect::<Vec<_>>(),
    );
    let manifest_not_json = edit_entry(&good, "manifest.json", |_| b"{".to_vec());
    let no_driver = edit_manifest(&good, |m| {
        if let Some(cm) = m["custom_middleware"].as_object_mut() {
            cm.remove("driver");
        }
    });

    // (api id, bundle name, zip served or None, what the log must say)
    let cases: Vec<(&str, &str, Option<Vec<u8>>, &str)> = vec![
        (
            "tampered-file",
            "tampered-file.zip",
            Some(tampered_file),
            "invalid checksum",
        ),
        (
            "tampered-resummed",
            "tampered-resummed.zip",
            Some(tampered_resummed),
            "invalid signature",
        ),
        (
            "wrong-key",
            "wrong-key.zip",
            Some(wrong_key),
            "invalid signature",
        ),
        (
            "unsigned",
            "unsigned.zip",
            Some(unsigned),
            "Bundle isn't signed",
        ),
        (
            "bad-checksum",
            "bad-checksum.zip",
            Some(bad_checksum),
            "invalid checksum",
        ),
        (
            "bad-signature",
            "bad-signature.zip",
            Some(bad_signature),
            "not standard base64",
        ),
        (
            "escape-parent",
            "escape-parent.zip",
            Some(escape_parent),
            "refusing zip entry",
        ),
        (
            "escape-absolute",
            "escape-absolute.zip",
            Some(escape_absolute),
            "refusing zip entry",
        ),
        (
            "escape-symlink",
            "escape-symlink.zip",
            Some(symlink),
            "refusing zip entry",
        ),
        (
            "too-large-download",
            "too-large-download.zip",
            None,
            "bundle too large",
        ),
        (
            "too-large-unpacked",
            "too-large-unpacked.zip",
            Some(bomb),
            "bundle too large",
        ),
        (
            "missing",
            "missing.zip",
            None,
            "HTTP Error, got status code 404",
        ),
        (
            "not-a-zip",
            "not-a-zip.zip",
            Some(b"this is not a zip archive".to_vec()),
            "bad zip archive",
        ),
        (
            "no-manifest",
            "no-manifest.zip",
            Some(no_manifest),
            "Couldn't load manifest file",
        ),
        (
            "manifest-not-json",
            "manifest-not-json.zip",
            Some(manifest_not_json),
            "invalid manifest JSON",
        ),
        ("no-driver", "no-driver.zip", Some(no_driver), "driver"),
    ];
    server.publish("good.zip", &good);
    server.publish_declared_length("too-large-download.zip", 101 * 1024 * 1024);
    for (_, name, zip, _) in &cases {
        if let Some(z) = zip {
            server.publish(name, z);
        }
    }

    let echo = EchoUpstream::start();
    let up = format!("{}/", echo.url());
    sb.write_conf(&gateway_conf(
        &sb,
        &server,
        Some(&keys.public),
        Some(python_coprocess()),
    ));
    sb.write_api("plain", &keyless_api("plain", "/plain/", &up));
    sb.write_api("good", &bundle_api("good", &up, "good.zip"));
    for (api, name, _, _) in &cases {
        sb.write_api(api, &bundle_api(api, &up, name));
    }
    let gw = Gateway::start(&sb);

    let mut problems = Vec::new();
    for (api, name, _, reason) in &cases {
        problems.extend(out_of_service_problems(&gw, &sb, api, name, reason));
    }

    // The others are unaffected.
    let r = gw.get("/plain/x");
    if r.status != 200 || r.header("x-echo-upstream") != Some("1") {
        problems.push(format!("plain: expected the upstream's 200, got {r:?}"));
    }
    let r = gw.get("/good/x");
    assert_bundle_hooks(&r, "v1", "good.zip");

    // Only the good bundle is on disk: no refused bundle, no staging leftovers, nothing escaped.
    let on_disk = bundles_on_disk(&sb);
    let expected: BTreeSet<String> = [md5_hex(b"good.zip")].into_iter().collect();
    if on_disk != expected {
        problems.push(format!(
            "{}/bundles holds {on_disk:?}, expected only the good bundle {expected:?}",
            middleware_dir(&sb).display()
        ));
    }
    let escaped = files_named(sb.dir(), "escaped");
    if !escaped.is_empty() || absolute_target.exists() {
        problems.push(format!(
            "zip entries escaped the bundle directory: {escaped:?} {}",
            if absolute_target.exists() {
                absolute_target.display().to_string()
            } else {
                String::new()
            }
        ));
    }
    let _ = fs::remove_file(&absolute_target);

    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\ngateway log:\n{}",
        problems.len(),
        problems.join("\n"),
        gw.log().text()
    );
}

/// Gateway 1 downloads two bundles. It stops, and so does the bundle server; one cached bundle is
/// then tampered with on disk, and a third API naming a bundle never downloaded is added. Gateway
/// 2, on the same middleware_path, serves the intact bundle from its cache (hooks run, nothing
/// fetched), refuses the tampered cached copy (signed bundles are re-checked on disk), and keeps
/// the never-downloaded one's API out of service because the server is unreachable.
#[test]
fn a_cached_bundle_serves_when_the_bundle_server_is_down_at_restart() {
    let sb = Sandbox::new("bgw-cache");
    let keys = openssl_keypair(sb.dir(), "gw");
    let mut server = BundleServer::start(sb.dir().join("served"));
    server.publish(
        "cached.zip",
        &python_bundle(sb.dir(), "cached", "cached-v1", Some(&keys.private)),
    );
    server.publish(
        "tampered-later.zip",
        &python_bundle(sb.dir(), "tampered", "t-v1", Some(&keys.private)),
    );
    server.publish(
        "late.zip",
        &python_bundle(sb.dir(), "late", "late-v1", Some(&keys.private)),
    );
    let echo = EchoUpstream::start();
    let up = format!("{}/", echo.url());
    sb.write_conf(&gateway_conf(
        &sb,
        &server,
        Some(&keys.public),
        Some(python_coprocess()),
    ));
    sb.write_api("cached", &bundle_api("cached", &up, "cached.zip"));
    sb.write_api(
        "tampered",
        &bundle_api("tampered", &up, "tampered-later.zip"),
    );

    let mut gw1 = Gateway::start(&sb);
    assert_bundle_hooks(&gw1.get("/cached/a"), "cached-v1", "cached.zip");
    assert_bundle_hooks(&gw1.get("/tampered/a"), "t-v1", "tampered-later.zip");
    assert!(
        wait_log(
            &gw1,
            0,
            None,
            "cached.zip",
            &["bundle downloaded and verified"]
        )
        .is_some(),
        "gateway 1 did not download cached.zip:\n{}",
        gw1.log().text()
    );
    gw1.terminate();
    let _ = gw1.wait_exit(PATIENCE);
    drop(gw1);

    server.stop();
    assert!(
        TcpStream::connect_timeout(&server.addr, Duration::from_secs(5)).is_err(),
        "precondition: the bundle server still accepts connections"
    );
    let cached_file = bundle_dir(&sb, "tampered-later.zip").join("middleware.py");
    let mut tampered = read_file(&cached_file);
    tampered.extend_from_slice(b"\n# changed on disk\n");
    write_file(&cached_file, &tampered);
    sb.write_api("late", &bundle_api("late", &up, "late.zip"));

    let gw2 = Gateway::start(&sb);
    assert_bundle_hooks(&gw2.get("/cached/b"), "cached-v1", "cached.zip");
    let line = wait_log(&gw2, 0, Some("cached"), "cached.zip", &["bundle loaded"]);
    assert!(
        line.as_deref()
            .is_some_and(|l| has_field(l, "cached", "true")),
        "gateway 2 should report cached.zip loaded from the cache (cached=true), got {line:?}:\n{}",
        gw2.log().text()
    );
    assert_eq!(
        gw2.log().count("bundle downloaded and verified"),
        0,
        "gateway 2 cannot have downloaded anything:\n{}",
        gw2.log().text()
    );

    let mut problems = out_of_service_problems(
        &gw2,
        &sb,
        "tampered",
        "tampered-later.zip",
        "failed verification",
    );
    // The rejected cached copy may stay on disk for inspection (Tyk leaves it too); only the
    // service and the log matter here.
    problems.retain(|p| !p.contains("was left at"));
    problems.extend(out_of_service_problems(
        &gw2,
        &sb,
        "late",
        "late.zip",
        "could not download bundle",
    ));
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\ngateway 2 log:\n{}",
        problems.len(),
        problems.join("\n"),
        gw2.log().text()
    );
    assert_eq!(
        server.hits("cached.zip"),
        1,
        "cached.zip downloaded more than once"
    );
    assert_eq!(
        server.hits("late.zip"),
        0,
        "late.zip fetched while the server was down?"
    );

    // With skip_verify_existing_plugin_bundle the operator vouches for what is on disk: the
    // tampered cached copy is then used as it is (Tyk's TT-16532 option).
    drop(gw2);
    sb.remove_api("late");
    let mut conf = gateway_conf(&sb, &server, Some(&keys.public), Some(python_coprocess()));
    conf["skip_verify_existing_plugin_bundle"] = json!(true);
    sb.write_conf(&conf);
    let gw3 = Gateway::start(&sb);
    assert_bundle_hooks(&gw3.get("/tampered/c"), "t-v1", "tampered-later.zip");
    assert_bundle_hooks(&gw3.get("/cached/c"), "cached-v1", "cached.zip");
}

/// What one load-client request saw.
#[derive(Debug)]
struct Seen {
    status: u16,
    pre: Option<String>,
    hash: Option<String>,
    response_hook: Option<String>,
    /// Set when the request failed at the socket level.
    error: Option<String>,
}

#[derive(Default)]
struct Progress {
    done: AtomicUsize,
    v2: AtomicUsize,
}

/// Sends `GET /live/...` in a loop until `stop`, on one keep-alive connection (reconnecting only
/// when the gateway says close) or on a new connection per request.
fn load_client(
    addr: SocketAddr,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut conn: Option<Client> = None;
    let mut i = 0u64;
    let failed = |e: String| Seen {
        status: 0,
        pre: None,
        hash: None,
        response_hook: None,
        error: Some(e),
    };
    while !stop.load(Ordering::SeqCst) {
        let mut c = match conn.take() {
            Some(c) => c,
            None => match Client::try_connect(addr) {
                Ok(c) => c,
                Err(e) => {
                    seen.push(failed(format!("connect: {e}")));
                    break;
                }
            },
        };
        let mut r = req("GET", &format!("/live/n/{i}"));
        if !keep_alive {
            r = r.close();
        }
        if let Err(e) = c.try_send(&r.to_bytes()) {
            seen.push(failed(format!("request {i}: send: {e}")));
            break;
        }
        let resp = match c.try_read_response(false) {
            Ok(resp) => resp,
            Err(e) => {
                seen.push(failed(format!("request {i}: read: {e}")));
                break;
            }
        };
        let echoed = (resp.status == 200 && resp.header("x-echo-upstream") == Some("1"))
            .then(|| resp.echoed());
        let s = Seen {
            status: resp.status,
            pre: echoed
                .as_ref()
                .and_then(|e| e.header("X-Bundle-Pre").map(str::to_string)),
            hash: echoed
                .as_ref()
                .and_then(|e| e.header("X-Bundle-Hash").map(str::to_string)),
            response_hook: resp.header("x-bundle-response").map(str::to_string),
            error: (resp.status != 200).then(|| format!("request {i}: {resp:?}")),
        };
        if s.pre.as_deref() == Some("v2") {
            progress.v2.fetch_add(1, Ordering::SeqCst);
        }
        seen.push(s);
        progress.done.fetch_add(1, Ordering::SeqCst);
        if keep_alive && !resp.says_close() {
            conn = Some(c);
        }
        i += 1;
    }
    seen
}

/// Two client threads (keep-alive, and a new connection per request) keep sending while the API
/// definition is changed to name bundle-v2.zip and the gateway gets SIGHUP. Every request is
/// answered 200; each is served wholly by one bundle version (pre and response hooks agree, and
/// the runner dispatched on that version's hash); per client the version switches once, from v1
/// to v2; and after the reload v2's hooks serve.
#[test]
fn reload_swaps_bundles_under_load_without_dropping_requests() {
    let sb = Sandbox::new("bgw-reload");
    let keys = openssl_keypair(sb.dir(), "gw");
    let server = BundleServer::start(sb.dir().join("served"));
    server.publish(
        "bundle-v1.zip",
        &python_bundle(sb.dir(), "v1", "v1", Some(&keys.private)),
    );
    server.publish(
        "bundle-v2.zip",
        &python_bundle(sb.dir(), "v2", "v2", Some(&keys.private)),
    );
    let echo = EchoUpstream::start();
    let up = format!("{}/", echo.url());
    sb.write_conf(&gateway_conf(
        &sb,
        &server,
        Some(&keys.public),
        Some(python_coprocess()),
    ));
    sb.write_api("live", &bundle_api("live", &up, "bundle-v1.zip"));
    let gw = Gateway::start(&sb);
    assert_bundle_hooks(&gw.get("/live/first"), "v1", "bundle-v1.zip");

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<(bool, Arc<Progress>, JoinHandle<Vec<Seen>>)> = [true, false]
        .into_iter()
        .map(|keep_alive| {
            let progress = Arc::new(Progress::default());
            let (st, pr, addr) = (Arc::clone(&stop), Arc::clone(&progress), gw.addr());
            let handle = thread::Builder::new()
                .name(format!("load-keepalive-{keep_alive}"))
                .spawn(move || load_client(addr, keep_alive, st, pr))
                .unwrap_or_else(|e| panic!("cannot spawn a load client: {e}"));
            (keep_alive, progress, handle)
        })
        .collect();
    let all_past = |n: usize, f: fn(&Progress) -> usize| {
        wait_until(PATIENCE, || {
            clients.iter().all(|(_, p, h)| f(p) >= n || h.is_finished())
        })
    };
    all_past(5, |p| p.done.load(Ordering::SeqCst));

    let mark = gw.log().mark();
    sb.write_api("live", &bundle_api("live", &up, "bundle-v2.zip"));
    gw.reload();
    let reloaded = gw.log().wait_for(mark, "configuration reloaded", PATIENCE);
    let v2_loaded = wait_log(&gw, mark, Some("live"), "bundle-v2.zip", &["bundle loaded"]);
    // Keep the load running until every client has had several v2 answers.
    all_past(5, |p| p.v2.load(Ordering::SeqCst));
    let after_reload: Vec<usize> = clients
        .iter()
        .map(|(_, p, _)| p.done.load(Ordering::SeqCst))
        .collect();
    wait_until(PATIENCE, || {
        clients
            .iter()
            .zip(&after_reload)
            .all(|((_, p, h), &n)| p.done.load(Ordering::SeqCst) >= n + 5 || h.is_finished())
    });
    stop.store(true, Ordering::SeqCst);
    let results: Vec<(bool, Vec<Seen>)> = clients
        .into_iter()
        .map(|(k, _, h)| {
            (
                k,
                h.join()
                    .unwrap_or_else(|_| panic!("a load client thread panicked")),
            )
        })
        .collect();

    assert!(
        reloaded.is_some(),
        "no \"configuration reloaded\" after SIGHUP:\n{}",
        gw.log().text()
    );
    assert!(
        v2_loaded.is_some(),
        "no \"bundle loaded\" line for bundle-v2.zip after the reload:\n{}",
        gw.log().text()
    );
    let hash = |v: &str| md5_hex(format!("bundle-{v}.zip").as_bytes());
    let mut problems = Vec::new();
    for (keep_alive, seen) in &results {
        let who = if *keep_alive {
            "keep-alive client"
        } else {
            "connection-per-request client"
        };
        let mut versions = Vec::new();
        for (i, s) in seen.iter().enumerate() {
            if let Some(e) = &s.error {
                problems.push(format!("{who} #{i}: {e}"));
                continue;
            }
            let v = s.pre.clone().unwrap_or_default();
            let consistent = (v == "v1" || v == "v2")
                && s.response_hook.as_deref() == Some(v.as_str())
                && s.hash.as_deref() == Some(hash(&v).as_str());
            if !consistent {
                problems.push(format!(
                    "{who} #{i}: not served by one bundle version: status {}, pre {:?}, \
                     response hook {:?}, hash {:?}",
                    s.status, s.pre, s.response_hook, s.hash
                ));
            }
            versions.push(v);
        }
        let first_v2 = versions.iter().position(|v| v == "v2");
        match first_v2 {
            None => problems.push(format!("{who}: never saw v2 ({} requests)", seen.len())),
            Some(0) => problems.push(format!("{who}: saw v2 before the reload")),
            Some(p) => {
                if let Some(back) = versions[p..].iter().position(|v| v == "v1") {
                    problems.push(format!(
                        "{who}: v1 again at request #{} after v2 at #{p}",
                        p + back
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\ngateway log:\n{}",
        problems.len(),
        problems.join("\n"),
        gw.log().text()
    );
    assert_bundle_hooks(&gw.get("/live/last"), "v2", "bundle-v2.zip");
}

/// A gRPC-driver bundle as Tyk's tests build it (`file_list: []`, checksum = MD5 of nothing,
/// an auth_check and a pre hook) loads: the gateway logs "bundle loaded" for the API, the unpacked
/// manifest carries the hook names, and the API is in service (not the bundle 503). Whether the
/// gRPC hooks then run is the gRPC transport's business and not checked here.
#[test]
fn a_grpc_bundle_without_files_loads_its_hooks() {
    let sb = Sandbox::new("bgw-grpc");
    let server = BundleServer::start(sb.dir().join("served"));
    let zip = cli_build(
        sb.dir(),
        "grpc",
        &[],
        json!({
            "driver": "grpc",
            "pre": [{"name": "MyPreHook"}],
            "auth_check": {"name": "MyAuthHook"}
        }),
        None,
    );
    let names: Vec<String> = zip_entries(&zip).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["manifest.json"],
        "a gRPC bundle holds only its manifest"
    );
    assert_eq!(
        manifest_of(&zip)["checksum"],
        json!("d41d8cd98f00b204e9800998ecf8427e"),
        "checksum of an empty file_list is MD5 of nothing"
    );
    server.publish("grpc-auth.zip", &zip);

    let echo = EchoUpstream::start();
    let up = format!("{}/", echo.url());
    sb.write_conf(&gateway_conf(&sb, &server, None, None));
    let mut api = keyless_api("grpc", "/grpc/", &up);
    api["custom_middleware_bundle"] = json!("grpc-auth.zip");
    sb.write_api("grpc", &api);
    sb.write_api("plain", &keyless_api("plain", "/plain/", &up));
    let gw = Gateway::start(&sb);

    assert!(
        wait_log(&gw, 0, Some("grpc"), "grpc-auth.zip", &["bundle loaded"]).is_some(),
        "no \"bundle loaded\" line for the gRPC bundle:\n{}",
        gw.log().text()
    );
    let unpacked: Value = serde_json::from_slice(&read_file(
        &bundle_dir(&sb, "grpc-auth.zip").join("manifest.json"),
    ))
    .unwrap_or_else(|e| panic!("unpacked manifest.json is not JSON: {e}"));
    let cm = &unpacked["custom_middleware"];
    assert_eq!(cm["driver"], json!("grpc"), "{unpacked}");
    assert_eq!(cm["auth_check"]["name"], json!("MyAuthHook"), "{unpacked}");
    assert_eq!(cm["pre"][0]["name"], json!("MyPreHook"), "{unpacked}");

    let r = gw.get("/grpc/x");
    let is_bundle_503 = r.status == 503 && r.text().contains("plugin bundle");
    assert!(
        !is_bundle_503,
        "the gRPC bundle's API is out of service: {r:?}"
    );
    assert_eq!(gw.get("/plain/x").status, 200);
}

/// A reload that points an API at a broken bundle takes only that API out of service (another API
/// sharing its previous bundle keeps serving with it); a later reload to a good bundle brings the
/// API back with the new bundle's hooks.
#[test]
fn a_reload_to_a_broken_bundle_and_back_to_a_good_one() {
    let sb = Sandbox::new("bgw-reload-broken");
    let keys = openssl_keypair(sb.dir(), "gw");
    let server = BundleServer::start(sb.dir().join("served"));
    server.publish(
        "good-v1.zip",
        &python_bundle(sb.dir(), "v1", "v1", Some(&keys.private)),
    );
    let v2 = python_bundle(sb.dir(), "v2", "v2", Some(&keys.private));
    server.publish("good-v2.zip", &v2);
    let broken = edit_entry(&v2, "bundle_version.py", |_| b"VERSION = 'evil'\n".to_vec());
    server.publish("broken.zip", &broken);
    let echo = EchoUpstream::start();
    let up = format!("{}/", echo.url());
    sb.write_conf(&gateway_conf(
        &sb,
        &server,
        Some(&keys.public),
        Some(python_coprocess()),
    ));
    sb.write_api("swap", &bundle_api("swap", &up, "good-v1.zip"));
    sb.write_api("steady", &bundle_api("steady", &up, "good-v1.zip"));
    let gw = Gateway::start(&sb);
    assert_bundle_hooks(&gw.get("/swap/a"), "v1", "good-v1.zip");
    assert_bundle_hooks(&gw.get("/steady/a"), "v1", "good-v1.zip");
    assert_eq!(
        server.hits("good-v1.zip"),
        1,
        "two APIs naming one bundle share one download"
    );

    let reload = |api: Value| {
        let mark = gw.log().mark();
        sb.write_api("swap", &api);
        gw.reload();
        assert!(
            gw.log()
                .wait_for(mark, "configuration reloaded", PATIENCE)
                .is_some(),
            "no \"configuration reloaded\" after SIGHUP:\n{}",
            gw.log().text()
        );
    };
    reload(bundle_api("swap", &up, "broken.zip"));
    let problems = out_of_service_problems(&gw, &sb, "swap", "broken.zip", "invalid checksum");
    assert!(
        problems.is_empty(),
        "{}\n\ngateway log:\n{}",
        problems.join("\n"),
        gw.log().text()
    );
    assert_bundle_hooks(&gw.get("/steady/b"), "v1", "good-v1.zip");

    reload(bundle_api("swap", &up, "good-v2.zip"));
    assert_bundle_hooks(&gw.get("/swap/c"), "v2", "good-v2.zip");
    assert_bundle_hooks(&gw.get("/steady/c"), "v1", "good-v1.zip");
}

/// The plugin process is killed: the gateway restarts it and announces the bundles again, so the
/// bundle's hooks serve again (a 200 without them would mean hooks were skipped).
#[test]
fn bundle_hooks_survive_a_plugin_process_restart() {
    let sb = Sandbox::new("bgw-restart");
    let keys = openssl_keypair(sb.dir(), "gw");
    let server = BundleServer::start(sb.dir().join("served"));
    server.publish(
        "plugin.zip",
        &python_bundle(sb.dir(), "plugin", "v1", Some(&keys.private)),
    );
    let echo = EchoUpstream::start();
    let up = format!("{}/", echo.url());
    sb.write_conf(&gateway_conf(
        &sb,
        &server,
        Some(&keys.public),
        Some(python_coprocess()),
    ));
    sb.write_api("py", &bundle_api("py", &up, "plugin.zip"));
    let gw = Gateway::start(&sb);
    assert_bundle_hooks(&gw.get("/py/a"), "v1", "plugin.zip");

    let ready = gw
        .log()
        .wait_for(0, "plugin ready", PATIENCE)
        .unwrap_or_else(|| panic!("no \"plugin ready\" line:\n{}", gw.log().text()));
    let pid = plugin_pid(&ready)
        .unwrap_or_else(|| panic!("no [name:pid] in the plugin ready line {ready:?}"));
    let mark = gw.log().mark();
    run_ok(Command::new("kill").args(["-KILL", &pid]));
    let again = gw.log().wait_for(mark, "plugin ready", PATIENCE);
    assert!(
        again
            .as_deref()
            .and_then(plugin_pid)
            .is_some_and(|p| p != pid),
        "the plugin process was not restarted:\n{}",
        gw.log().text()
    );

    let mut last = None;
    let served = wait_until(PATIENCE, || {
        let r = gw.get("/py/b");
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    let r = last.unwrap_or_else(|| panic!("no request was sent"));
    assert!(served, "no 200 after the plugin restart; last answer {r:?}");
    assert_bundle_hooks(&r, "v1", "plugin.zip");
    assert_bundle_hooks(&gw.get("/py/c"), "v1", "plugin.zip");
}

/// The pid in a plugin log line `[name:pid] ...`.
fn plugin_pid(line: &str) -> Option<String> {
    let inner = line.split('[').nth(1)?.split(']').next()?;
    let pid = inner.rsplit(':').next()?;
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then(|| pid.to_string())
}
