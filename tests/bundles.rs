//! Plugin bundles: build, verify, unpack, fetch and the gateway-level loader, called as a library.
//!
//! Byte compatibility with Tyk is shown with independent tools: keys come from the `openssl` CLI,
//! signatures made by pipegate are checked by `openssl dgst -verify` over the concatenated files,
//! signatures made by `openssl dgst -sign` are accepted by pipegate, and a bundle zipped by
//! Python's `zipfile` (another independent zip writer, like Go's `archive/zip`) verifies.
//! Downloads go to HTTP servers started here on 127.0.0.1.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use base64::Engine as _;
use pipegate::bundle::{
    self, BundleConfig, BundleError, BundleManifest, FetchOptions, Limits, SignatureCheck,
    VerifyMode,
};
use serde_json::{json, Value};
use zip::write::SimpleFileOptions;
use zip::ZipWriter;

const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A private scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pipegate-bundles-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("spawn tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// RSA key files made by the openssl CLI.
struct Keys {
    /// `PRIVATE KEY` (PKCS#8, OpenSSL 3's default).
    pkcs8: PathBuf,
    /// `RSA PRIVATE KEY` (PKCS#1).
    pkcs1: PathBuf,
    /// `PUBLIC KEY` (PKIX).
    public: PathBuf,
    /// `RSA PUBLIC KEY` (PKCS#1).
    rsa_public: PathBuf,
}

fn openssl_keys(s: &Scratch, tag: &str) -> Keys {
    let k = |n: &str| s.path(&format!("{tag}-{n}"));
    run(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(k("key.pem"))
        .arg("2048"));
    run(Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(k("key.pem"))
        .arg("-out")
        .arg(k("key-pkcs1.pem")));
    run(Command::new("openssl")
        .args(["rsa", "-in"])
        .arg(k("key.pem"))
        .args(["-pubout", "-out"])
        .arg(k("pub.pem")));
    run(Command::new("openssl")
        .args(["rsa", "-in"])
        .arg(k("key.pem"))
        .args(["-RSAPublicKey_out", "-out"])
        .arg(k("rsapub.pem")));
    let keys = Keys {
        pkcs8: k("key.pem"),
        pkcs1: k("key-pkcs1.pem"),
        public: k("pub.pem"),
        rsa_public: k("rsapub.pem"),
    };
    let head = |p: &Path| fs::read_to_string(p).unwrap();
    assert!(head(&keys.pkcs8).starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(head(&keys.pkcs1).starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(head(&keys.public).starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(head(&keys.rsa_public).starts_with("-----BEGIN RSA PUBLIC KEY-----"));
    keys
}

fn grpc_middleware() -> Value {
    json!({"driver": "grpc", "auth_check": {"name": "MyAuthHook"}})
}

/// Writes `files` and a manifest listing them into `s`; returns the manifest path.
fn plugin_dir(s: &Scratch, files: &[(&str, &[u8])], middleware: Value) -> PathBuf {
    for (name, data) in files {
        s.write(name, data);
    }
    let list: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let manifest = json!({"file_list": list, "custom_middleware": middleware});
    s.write("manifest.json", manifest.to_string().as_bytes())
}

/// Unpacks a built bundle with the default limits into `s/<name>` and reads its manifest.
fn unpacked(s: &Scratch, zip_path: &Path, name: &str) -> (PathBuf, BundleManifest) {
    let dest = s.path(name);
    bundle::unpack(&fs::read(zip_path).unwrap(), &dest, &Limits::default()).unwrap();
    let mpath = dest.join("manifest.json");
    let (m, _) = BundleManifest::parse(&fs::read(&mpath).unwrap(), &mpath).unwrap();
    (dest, m)
}

/// A zip with the given (name, contents) entries, written by the zip crate.
fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, SimpleFileOptions::default()).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A signed/unsigned test bundle as bytes, built by pipegate's own builder.
fn built_bundle(s: &Scratch, key: Option<&Path>, files: &[(&str, &[u8])]) -> Vec<u8> {
    let sub = Scratch::new("src");
    let manifest = plugin_dir(&sub, files, grpc_middleware());
    let out = s.path("built.zip");
    bundle::build(&manifest, key, &out).unwrap();
    fs::read(out).unwrap()
}

fn fast_fetch() -> FetchOptions {
    FetchOptions {
        timeout: Duration::from_secs(5),
        max_retries: 4,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_size: 100 * 1024 * 1024,
        insecure_skip_verify: false,
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP server
// ---------------------------------------------------------------------------------------------

/// What the test server sends for the n-th request (0-based).
enum Reply {
    Ok(Vec<u8>),
    Status(u16),
    /// Bytes written as they are, then the connection is closed.
    Raw(Vec<u8>),
}

struct Server {
    addr: String,
    hits: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Server {
        Server::start_slow(Duration::ZERO, reply)
    }

    /// Like `start`, sleeping `delay` before answering (to overlap concurrent loaders).
    fn start_slow(
        delay: Duration,
        reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reply = Arc::new(reply);
        let (h, p, st) = (hits.clone(), paths.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let n = h.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                let p = p.clone();
                thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split(' ').nth(1).unwrap_or("").to_string();
                    p.lock().unwrap().push(path);
                    thread::sleep(delay);
                    let bytes = match reply(n) {
                        Reply::Ok(body) => {
                            let mut b = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            b.extend_from_slice(&body);
                            b
                        }
                        Reply::Status(code) => format!(
                            "HTTP/1.1 {code} Oops\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops"
                        )
                        .into_bytes(),
                        Reply::Raw(b) => b,
                    };
                    let _ = conn.write_all(&bytes);
                    let _ = conn.flush();
                });
            }
        });
        Server {
            addr,
            hits,
            paths,
            stop,
            thread: Some(thread),
        }
    }

    fn base(&self) -> String {
        format!("http://{}/bundles/", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Manifest, checksum, build
// ---------------------------------------------------------------------------------------------

#[test]
fn checksum_of_an_empty_file_list_is_md5_of_nothing() {
    let s = Scratch::new("empty");
    let manifest = plugin_dir(&s, &[], grpc_middleware());
    let out = s.path("bundle.zip");
    let report = bundle::build(&manifest, None, &out).unwrap();
    assert_eq!(report.checksum, EMPTY_MD5);
    assert!(report.files.is_empty());
    assert!(!report.signed);
    let v = bundle::verify(&out, None).unwrap();
    assert_eq!(v.checksum.as_deref(), Some(EMPTY_MD5));
    assert_eq!(v.signature, SignatureCheck::Unsigned);
}

#[test]
fn checksum_covers_files_concatenated_in_order() {
    let s = Scratch::new("two");
    let manifest = plugin_dir(
        &s,
        &[("file1", b"file1 content"), ("file2", b"file2 content")],
        grpc_middleware(),
    );
    let report = bundle::build(&manifest, None, &s.path("b.zip")).unwrap();
    assert_eq!(report.checksum, "1510d0e71b31de1c78fd9e823a7c6de9");
    assert_eq!(
        bundle::md5_hex(b"file1 contentfile2 content"),
        report.checksum
    );
    // The order matters: the same files listed the other way round hash differently.
    let swapped = json!({"file_list": ["file2", "file1"], "custom_middleware": grpc_middleware()});
    fs::write(&manifest, swapped.to_string()).unwrap();
    let report = bundle::build(&manifest, None, &s.path("c.zip")).unwrap();
    assert_eq!(
        report.checksum,
        bundle::md5_hex(b"file2 contentfile1 content")
    );
}

#[test]
fn simple_build_has_the_listed_entries_then_the_manifest_in_go_field_order() {
    // Tyk's bundler_test.go: an empty middleware.py gives 2 entries and the md5 of "".
    let s = Scratch::new("simple");
    let mw = json!({"driver": "python", "pre": [{"name": "MyPreHook"}]});
    let manifest = plugin_dir(&s, &[("middleware.py", b"")], mw.clone());
    let out = s.path("bundle.zip");
    let report = bundle::build(&manifest, None, &out).unwrap();
    assert_eq!(report.checksum, EMPTY_MD5);

    let mut archive = zip::ZipArchive::new(fs::File::open(&out).unwrap()).unwrap();
    let names: Vec<String> = (0..archive.len())
        .map(|i| archive.by_index(i).unwrap().name().unwrap().into_owned())
        .collect();
    assert_eq!(names, ["middleware.py", "manifest.json"]);
    let mut text = String::new();
    archive
        .by_name("manifest.json")
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(
        text,
        format!(
            "{{\"file_list\":[\"middleware.py\"],\"custom_middleware\":{mw},\"checksum\":\"{EMPTY_MD5}\",\"signature\":\"\"}}"
        )
    );
    // Entries are deflated, as Go's zip.Writer.Create does.
    assert_eq!(
        archive.by_name("middleware.py").unwrap().compression(),
        zip::CompressionMethod::Deflated
    );
    // An independent zip reader accepts it.
    run(Command::new("python3")
        .args(["-m", "zipfile", "-t"])
        .arg(&out));
}

#[test]
fn nested_files_are_stored_under_their_listed_names() {
    let s = Scratch::new("nested");
    let manifest = plugin_dir(
        &s,
        &[("lib/helpers.py", b"x = 1\n"), ("./main.py", b"print(1)\n")],
        grpc_middleware(),
    );
    let out = s.path("bundle.zip");
    bundle::build(&manifest, None, &out).unwrap();
    let mut archive = zip::ZipArchive::new(fs::File::open(&out).unwrap()).unwrap();
    let names: Vec<String> = (0..archive.len())
        .map(|i| archive.by_index(i).unwrap().name().unwrap().into_owned())
        .collect();
    assert_eq!(names, ["lib/helpers.py", "./main.py", "manifest.json"]);
    let (dir, m) = unpacked(&s, &out, "x");
    assert_eq!(fs::read(dir.join("lib/helpers.py")).unwrap(), b"x = 1\n");
    assert_eq!(m.checksum, bundle::md5_hex(b"x = 1\nprint(1)\n"));
    bundle::verify_dir(&dir, &m, None, VerifyMode::Deep).unwrap();
}

#[test]
fn files_are_read_relative_to_the_manifest_directory() {
    let s = Scratch::new("reldir");
    let sub = s.path("plugin");
    fs::create_dir_all(&sub).unwrap();
    s.write("plugin/a.py", b"A");
    s.write("a.py", b"WRONG");
    let manifest = s.write(
        "plugin/manifest.json",
        json!({"file_list": ["a.py"], "custom_middleware": grpc_middleware()})
            .to_string()
            .as_bytes(),
    );
    let r = bundle::build(&manifest, None, &s.path("b.zip")).unwrap();
    assert_eq!(r.checksum, bundle::md5_hex(b"A"));
}

#[test]
fn build_validation_matches_tyk() {
    let s = Scratch::new("validate");
    let out = s.path("b.zip");
    let build = |m: &Value| {
        let p = s.write("manifest.json", m.to_string().as_bytes());
        bundle::build(&p, None, &out)
    };

    let e = bundle::build(&s.path("missing.json"), None, &out).unwrap_err();
    assert!(matches!(e, BundleError::ManifestLoad { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with("Couldn't load manifest file"),
        "{e}"
    );

    let p = s.write("broken.json", b"{");
    let e = bundle::build(&p, None, &out).unwrap_err();
    assert!(matches!(e, BundleError::ManifestJson { .. }), "{e:?}");
    assert!(e.to_string().contains("EOF"), "{e}");

    let e = build(&json!({"file_list": 3, "custom_middleware": grpc_middleware()})).unwrap_err();
    assert!(e.to_string().contains("file_list must be an array"), "{e}");

    let e = build(&json!({"file_list": [], "custom_middleware": {"auth_check": {"name": "A"}}}))
        .unwrap_err();
    assert!(matches!(e, BundleError::NoDriver { .. }), "{e:?}");
    assert!(e.to_string().starts_with("No driver specified"), "{e}");

    let e = build(&json!({"file_list": [], "custom_middleware": {"driver": "grpc"}})).unwrap_err();
    assert!(matches!(e, BundleError::NoHooks { .. }), "{e:?}");
    assert!(e.to_string().starts_with("No hooks defined"), "{e}");
    // An auth_check without a name does not count as a hook.
    let e = build(&json!({"file_list": [], "custom_middleware":
        {"driver": "grpc", "auth_check": {"name": ""}}}))
    .unwrap_err();
    assert!(matches!(e, BundleError::NoHooks { .. }), "{e:?}");
    // Tyk checks the hooks before the driver.
    let e = build(&json!({"file_list": [], "custom_middleware": {}})).unwrap_err();
    assert!(matches!(e, BundleError::NoHooks { .. }), "{e:?}");

    let e = build(&json!({"file_list": ["nope.py"], "custom_middleware": grpc_middleware()}))
        .unwrap_err();
    assert!(matches!(e, BundleError::NonexistentFile { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("Referencing a nonexistent file: nope.py"),
        "{e}"
    );

    for (entry, why) in [
        ("../outside.py", ".."),
        ("/etc/passwd", "absolute"),
        ("manifest.json", "added by the bundler"),
    ] {
        let e = build(&json!({"file_list": [entry], "custom_middleware": grpc_middleware()}))
            .unwrap_err();
        assert!(matches!(e, BundleError::InvalidFileList { .. }), "{e:?}");
        assert!(e.to_string().contains(why), "{entry}: {e}");
    }
    s.write("dup.py", b"x");
    let e = build(
        &json!({"file_list": ["dup.py", "./dup.py"], "custom_middleware": grpc_middleware()}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("listed twice"), "{e}");

    // pipegate's own loader would refuse a hook without a name; so does the builder.
    let e = build(&json!({"file_list": [], "custom_middleware":
        {"driver": "python", "pre": [{"path": "x.py"}]}}))
    .unwrap_err();
    assert!(matches!(e, BundleError::InvalidMiddleware { .. }), "{e:?}");
    assert!(
        e.to_string().contains("custom_middleware.pre[0].name"),
        "{e}"
    );

    // Nothing was written by any failed build.
    assert!(!out.exists());
    let leftovers: Vec<_> = fs::read_dir(&s.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn manifest_parsing_follows_go_unmarshal() {
    let p = Path::new("m.json");
    let (m, raw) = BundleManifest::parse(
        br#"{"File_List": ["a"], "CHECKSUM": "abc", "signature": null, "extra": 1}"#,
        p,
    )
    .unwrap();
    assert_eq!(m.file_list, ["a"]);
    assert_eq!(m.checksum, "abc");
    assert_eq!(m.signature, "");
    assert_eq!(m.custom_middleware, json!({}));
    assert_eq!(raw["extra"], 1);
    let (m, _) = BundleManifest::parse(b"null", p).unwrap();
    assert!(m.file_list.is_empty());
    assert!(BundleManifest::parse(b"[]", p).is_err());
    assert!(BundleManifest::parse(br#"{"checksum": 5}"#, p).is_err());
    assert!(BundleManifest::parse(br#"{"custom_middleware": "x"}"#, p).is_err());
}

#[test]
fn cli_build_never_prompts() {
    let s = Scratch::new("cli");
    let manifest = plugin_dir(&s, &[("a.py", b"a")], grpc_middleware());
    let out = s.path("bundle.zip");
    let e = bundle::cli_build(&manifest, None, false, &out).unwrap_err();
    assert!(matches!(e, BundleError::SigningChoiceRequired));
    let msg = e.to_string();
    assert!(
        msg.contains("-k") && msg.contains("-y") && msg.contains("never prompts"),
        "{msg}"
    );
    assert!(!out.exists());

    let text = bundle::cli_build(&manifest, None, true, &out).unwrap();
    assert!(text.contains("a.py (1 bytes)"), "{text}");
    assert!(text.contains(&bundle::md5_hex(b"a")), "{text}");
    assert!(text.contains("unsigned"), "{text}");
    let text = bundle::cli_verify(None, &out).unwrap();
    assert!(
        text.contains("checksum: ok") && text.contains("signature: unsigned"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Signatures and keys
// ---------------------------------------------------------------------------------------------

#[test]
fn signed_round_trip_is_byte_compatible_with_openssl() {
    let s = Scratch::new("sign");
    let keys = openssl_keys(&s, "k");
    let files: &[(&str, &[u8])] = &[
        ("middleware.py", b"def hook():\n    pass\n"),
        ("data.bin", &[0, 1, 2, 255]),
    ];
    let manifest = plugin_dir(&s, files, grpc_middleware());
    let concat: Vec<u8> = files.iter().flat_map(|(_, d)| d.to_vec()).collect();
    let concat_path = s.write("concat.bin", &concat);

    for (i, private) in [&keys.pkcs8, &keys.pkcs1].into_iter().enumerate() {
        let out = s.path(&format!("signed{i}.zip"));
        let text = bundle::cli_build(&manifest, Some(private), false, &out).unwrap();
        assert!(text.contains("RSA PKCS#1 v1.5 SHA-256"), "{text}");
        let (_, m) = unpacked(&s, &out, &format!("u{i}"));
        assert_eq!(m.checksum, bundle::md5_hex(&concat));
        assert!(!m.signature.is_empty());

        // openssl accepts pipegate's signature over the concatenated files.
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&m.signature)
            .unwrap();
        assert_eq!(sig.len(), 256);
        let sig_path = s.write(&format!("sig{i}.bin"), &sig);
        let out_v = run(Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&keys.public)
            .arg("-signature")
            .arg(&sig_path)
            .arg(&concat_path));
        assert!(String::from_utf8_lossy(&out_v.stdout).contains("Verified OK"));

        // PKCS#1 v1.5 is deterministic: openssl's own signature is the same bytes.
        let openssl_sig = s.path(&format!("osig{i}.bin"));
        run(Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(private)
            .arg("-out")
            .arg(&openssl_sig)
            .arg(&concat_path));
        assert_eq!(fs::read(&openssl_sig).unwrap(), sig);

        // pipegate verifies with both public key formats.
        for public in [&keys.public, &keys.rsa_public] {
            let r = bundle::verify(&out, Some(public)).unwrap();
            assert_eq!(r.signature, SignatureCheck::Verified);
            assert_eq!(r.files.len(), 2);
            let text = bundle::cli_verify(Some(public), &out).unwrap();
            assert!(text.contains("signature: ok"), "{text}");
        }
        // Without a key, the signature is reported as present but unchecked.
        let r = bundle::verify(&out, None).unwrap();
        assert_eq!(r.signature, SignatureCheck::NoKey);
    }
}

#[test]
fn a_bundle_from_another_zip_writer_signed_by_openssl_verifies() {
    // What `tyk bundle build -k` produces, assembled with independent tools: openssl signs the
    // concatenated files, Python's zipfile writes the zip, the manifest is Go-shaped JSON.
    let s = Scratch::new("foreign");
    let keys = openssl_keys(&s, "k");
    s.write("src/a.py", b"first file\n");
    s.write("src/b.py", b"second file\n");
    let concat = s.write("concat.bin", b"first file\nsecond file\n");
    let sig = s.path("sig.bin");
    run(Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&keys.pkcs1)
        .arg("-out")
        .arg(&sig)
        .arg(&concat));
    let b64 = base64::engine::general_purpose::STANDARD.encode(fs::read(&sig).unwrap());
    let manifest = format!(
        r#"{{"file_list":["a.py","b.py"],"custom_middleware":{{"pre":null,"post":null,"post_key_auth":null,"auth_check":{{"disabled":false,"name":"MyAuthHook","path":"","require_session":false,"raw_body_only":false}},"response":null,"driver":"grpc","id_extractor":{{"disabled":false,"extract_from":"","extract_with":"","extractor_config":null}}}},"checksum":"{}","signature":"{b64}"}}"#,
        bundle::md5_hex(b"first file\nsecond file\n")
    );
    s.write("src/manifest.json", manifest.as_bytes());
    let zip_path = s.path("tyk.zip");
    let script = "import sys, zipfile\n\
        src, out = sys.argv[1], sys.argv[2]\n\
        with zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as z:\n\
        \x20   for n in ['a.py', 'b.py', 'manifest.json']:\n\
        \x20       z.write(src + '/' + n, n)\n";
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(s.path("src"))
        .arg(&zip_path));
    let r = bundle::verify(&zip_path, Some(&keys.public)).unwrap();
    assert_eq!(r.signature, SignatureCheck::Verified);
    assert_eq!(
        r.checksum.as_deref(),
        Some(bundle::md5_hex(b"first file\nsecond file\n").as_str())
    );

    // And the other key rejects it.
    let other = openssl_keys(&s, "other");
    let e = bundle::verify(&zip_path, Some(&other.public)).unwrap_err();
    assert!(matches!(e, BundleError::BadSignature { .. }), "{e:?}");
}

#[test]
fn deep_verification_rules() {
    let s = Scratch::new("deep");
    let keys = openssl_keys(&s, "k");
    let wrong = openssl_keys(&s, "wrong");
    let manifest = plugin_dir(
        &s,
        &[("a.py", b"alpha"), ("b.py", b"beta")],
        grpc_middleware(),
    );
    let signed = s.path("signed.zip");
    let unsigned = s.path("unsigned.zip");
    bundle::build(&manifest, Some(&keys.pkcs8), &signed).unwrap();
    bundle::build(&manifest, None, &unsigned).unwrap();
    let deep = VerifyMode::Deep;

    // Valid signed bundle.
    let (dir, m) = unpacked(&s, &signed, "ok");
    let r = bundle::verify_dir(&dir, &m, Some(&keys.public), deep).unwrap();
    assert_eq!(r.signature, SignatureCheck::Verified);
    assert_eq!(
        r.checksum.as_deref(),
        Some(bundle::md5_hex(b"alphabeta").as_str())
    );

    // Wrong key.
    let e = bundle::verify_dir(&dir, &m, Some(&wrong.public), deep).unwrap_err();
    assert!(matches!(e, BundleError::BadSignature { .. }), "{e:?}");
    assert!(e.to_string().contains("invalid signature"), "{e}");

    // Tampered file: the checksum catches it first.
    let (tdir, tm) = unpacked(&s, &signed, "tampered");
    fs::write(tdir.join("b.py"), b"BETA").unwrap();
    let e = bundle::verify_dir(&tdir, &tm, Some(&keys.public), deep).unwrap_err();
    assert!(matches!(e, BundleError::ChecksumMismatch { .. }), "{e:?}");
    assert!(e.to_string().starts_with("invalid checksum"), "{e}");
    // Tampered file with a forged checksum: the signature catches it.
    let mut forged = tm.clone();
    forged.checksum = bundle::md5_hex(b"alphaBETA");
    let e = bundle::verify_dir(&tdir, &forged, Some(&keys.public), deep).unwrap_err();
    assert!(matches!(e, BundleError::BadSignature { .. }), "{e:?}");
    // Without a key only the checksum protects, and the forged one passes (Tyk's semantics).
    let r = bundle::verify_dir(&tdir, &forged, None, deep).unwrap();
    assert_eq!(r.signature, SignatureCheck::NoKey);

    // Unsigned bundle while a key is configured.
    let (udir, um) = unpacked(&s, &unsigned, "unsigned");
    let e = bundle::verify_dir(&udir, &um, Some(&keys.public), deep).unwrap_err();
    assert!(matches!(e, BundleError::NotSigned), "{e:?}");
    assert!(e.to_string().starts_with("Bundle isn't signed"), "{e}");
    // ... and without a key it is fine.
    let r = bundle::verify_dir(&udir, &um, None, deep).unwrap();
    assert_eq!(r.signature, SignatureCheck::Unsigned);

    // Checksum mismatch with no key.
    let mut bad = um.clone();
    bad.checksum = "0123".into();
    let e = bundle::verify_dir(&udir, &bad, None, deep).unwrap_err();
    assert!(matches!(e, BundleError::ChecksumMismatch { .. }), "{e:?}");

    // Invalid base64, and Tyk's test value that is base64 but not a signature.
    let mut b = m.clone();
    b.signature = "not base64!!".into();
    let e = bundle::verify_dir(&dir, &b, Some(&keys.public), deep).unwrap_err();
    assert!(matches!(e, BundleError::SignatureEncoding { .. }), "{e:?}");
    b.signature = "dGVzdC1wdWJsaWMta2V5".into();
    let e = bundle::verify_dir(&dir, &b, Some(&keys.public), deep).unwrap_err();
    assert!(matches!(e, BundleError::BadSignature { .. }), "{e:?}");
    // Line breaks inside the base64 are ignored, as by Go's decoder.
    let mut wrapped = m.clone();
    wrapped.signature = m
        .signature
        .chars()
        .enumerate()
        .fold(String::new(), |mut acc, (i, c)| {
            if i > 0 && i % 64 == 0 {
                acc.push('\n');
            }
            acc.push(c);
            acc
        });
    bundle::verify_dir(&dir, &wrapped, Some(&keys.public), deep).unwrap();

    // A listed file that is missing says which one.
    fs::remove_file(dir.join("a.py")).unwrap();
    let e = bundle::verify_dir(&dir, &m, Some(&keys.public), deep).unwrap_err();
    assert!(
        matches!(&e, BundleError::FileUnreadable { name, .. } if name == "a.py"),
        "{e:?}"
    );

    // A hostile manifest cannot make the verifier hash files outside the bundle.
    let mut escape = um.clone();
    escape.file_list = vec!["../ok/a.py".into()];
    let e = bundle::verify_dir(&udir, &escape, None, deep).unwrap_err();
    assert!(matches!(e, BundleError::UnsafeEntry { .. }), "{e:?}");
}

#[test]
fn partial_verification_rules() {
    let s = Scratch::new("partial");
    let keys = openssl_keys(&s, "k");
    let manifest = plugin_dir(&s, &[("a.py", b"alpha")], grpc_middleware());
    let signed = s.path("signed.zip");
    let unsigned = s.path("unsigned.zip");
    bundle::build(&manifest, Some(&keys.pkcs1), &signed).unwrap();
    bundle::build(&manifest, None, &unsigned).unwrap();
    let partial = VerifyMode::Partial {
        skip_existing: false,
    };
    let skip = VerifyMode::Partial {
        skip_existing: true,
    };

    let (sdir, sm) = unpacked(&s, &signed, "s");
    let (udir, um) = unpacked(&s, &unsigned, "u");
    fs::write(sdir.join("a.py"), b"tampered").unwrap();
    fs::write(udir.join("a.py"), b"tampered").unwrap();

    // skip_verify_existing_plugin_bundle: nothing is checked.
    let r = bundle::verify_dir(&sdir, &sm, Some(&keys.public), skip).unwrap();
    assert_eq!((r.checksum, r.signature), (None, SignatureCheck::Skipped));
    // Unsigned: nothing is checked, even with a key.
    let r = bundle::verify_dir(&udir, &um, Some(&keys.public), partial).unwrap();
    assert_eq!((r.checksum, r.signature), (None, SignatureCheck::Unsigned));
    // Signed: the checksum is checked, with or without a key.
    for key in [None, Some(keys.public.as_path())] {
        let e = bundle::verify_dir(&sdir, &sm, key, partial).unwrap_err();
        assert!(matches!(e, BundleError::ChecksumMismatch { .. }), "{e:?}");
    }
    fs::write(sdir.join("a.py"), b"alpha").unwrap();
    let r = bundle::verify_dir(&sdir, &sm, None, partial).unwrap();
    assert_eq!(r.signature, SignatureCheck::NoKey);
    let r = bundle::verify_dir(&sdir, &sm, Some(&keys.rsa_public), partial).unwrap();
    assert_eq!(r.signature, SignatureCheck::Verified);
}

#[test]
fn unsupported_keys_are_rejected_clearly() {
    let s = Scratch::new("keytypes");
    let manifest = plugin_dir(&s, &[("a.py", b"a")], grpc_middleware());
    let ec = s.path("ec.pem");
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&ec));
    let ec_pub = s.path("ec-pub.pem");
    run(Command::new("openssl")
        .args(["pkey", "-in"])
        .arg(&ec)
        .args(["-pubout", "-out"])
        .arg(&ec_pub));
    let cert = s.write(
        "cert.pem",
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    let junk = s.write("junk.pem", b"hello");

    let e = bundle::build(&manifest, Some(&ec), &s.path("x.zip")).unwrap_err();
    assert!(matches!(e, BundleError::Key { .. }), "{e:?}");
    assert!(e.to_string().contains("only RSA"), "{e}");
    let e = bundle::build(&manifest, Some(&cert), &s.path("x.zip")).unwrap_err();
    assert!(
        e.to_string()
            .contains("unsupported key type \"CERTIFICATE\""),
        "{e}"
    );
    let e = bundle::build(&manifest, Some(&junk), &s.path("x.zip")).unwrap_err();
    assert!(e.to_string().contains("no PEM block"), "{e}");
    let e = bundle::build(&manifest, Some(&s.path("absent.pem")), &s.path("x.zip")).unwrap_err();
    assert!(e.to_string().contains("cannot read the key file"), "{e}");
    assert!(!s.path("x.zip").exists());

    let out = s.path("ok.zip");
    bundle::build(&manifest, None, &out).unwrap();
    let e = bundle::verify(&out, Some(&ec_pub)).unwrap_err();
    assert!(e.to_string().contains("only RSA"), "{e}");
    // A private key where a public key belongs.
    let keys = openssl_keys(&s, "k");
    let e = bundle::verify(&out, Some(&keys.pkcs8)).unwrap_err();
    assert!(
        e.to_string()
            .contains("unsupported key type \"PRIVATE KEY\""),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Unpacking
// ---------------------------------------------------------------------------------------------

fn assert_nothing_left(parent: &Path, dest: &Path) {
    assert!(!dest.exists(), "{} must not exist", dest.display());
    let left: Vec<_> = fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "staging leftovers: {left:?}");
}

#[test]
fn unpack_extracts_files_and_dirs_with_private_modes() {
    let s = Scratch::new("unpack");
    let mut w = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.add_directory("lib/", SimpleFileOptions::default())
        .unwrap();
    w.start_file("lib/a.py", SimpleFileOptions::default())
        .unwrap();
    w.write_all(b"A").unwrap();
    w.start_file("deep/er/b.py", SimpleFileOptions::default())
        .unwrap();
    w.write_all(b"B").unwrap();
    w.start_file("./c.py", SimpleFileOptions::default())
        .unwrap();
    w.write_all(b"C").unwrap();
    let bytes = w.finish().unwrap().into_inner();
    let dest = s.path("out/bundle");
    bundle::unpack(&bytes, &dest, &Limits::default()).unwrap();
    assert_eq!(fs::read(dest.join("lib/a.py")).unwrap(), b"A");
    assert_eq!(fs::read(dest.join("deep/er/b.py")).unwrap(), b"B");
    assert_eq!(fs::read(dest.join("c.py")).unwrap(), b"C");
    for d in [&dest, &dest.join("lib"), &dest.join("deep/er")] {
        let mode = fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    let e = bundle::unpack(&bytes, &dest, &Limits::default()).unwrap_err();
    assert!(matches!(e, BundleError::AlreadyExists { .. }), "{e:?}");
    assert_nothing_left(&s.path("out"), &s.path("out/none"));
}

#[test]
fn unpack_refuses_path_escapes_and_absolute_paths() {
    let s = Scratch::new("slip");
    for name in [
        "../evil",
        "a/../../evil",
        "/tmp/pipegate-evil-abs",
        "a/../b",
    ] {
        let bytes = zip_of(&[("ok.py", b"fine"), (name, b"evil")]);
        let dest = s.path("dest");
        let e = bundle::unpack(&bytes, &dest, &Limits::default()).unwrap_err();
        assert!(
            matches!(&e, BundleError::UnsafeEntry { name: n, .. } if n == name),
            "{name}: {e:?}"
        );
        assert_nothing_left(&s.0, &dest);
        assert!(!s.path("evil").exists());
    }
    assert!(!Path::new("/tmp/pipegate-evil-abs").exists());
}

#[test]
fn unpack_refuses_symlinks() {
    let s = Scratch::new("symlink");
    let mut w = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.add_symlink("link", "/etc/passwd", SimpleFileOptions::default())
        .unwrap();
    let bytes = w.finish().unwrap().into_inner();
    let dest = s.path("dest");
    let e = bundle::unpack(&bytes, &dest, &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("symbolic links"), "{e}");
    assert_nothing_left(&s.0, &dest);
}

#[test]
fn unpack_enforces_limits() {
    let s = Scratch::new("limits");
    let dest = s.path("dest");
    let ten: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("f{i}"), vec![b'x'; 100]))
        .collect();
    let entries: Vec<(&str, &[u8])> = ten
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let bytes = zip_of(&entries);

    let limits = Limits {
        max_files: 9,
        ..Limits::default()
    };
    let e = bundle::unpack(&bytes, &dest, &limits).unwrap_err();
    assert!(e.to_string().contains("10 entries"), "{e}");
    let limits = Limits {
        max_total_size: 999,
        ..Limits::default()
    };
    let e = bundle::unpack(&bytes, &dest, &limits).unwrap_err();
    assert!(matches!(e, BundleError::LimitExceeded { .. }), "{e:?}");
    let limits = Limits {
        max_file_size: 99,
        ..Limits::default()
    };
    let e = bundle::unpack(&bytes, &dest, &limits).unwrap_err();
    assert!(e.to_string().contains("per-file limit"), "{e}");
    assert_nothing_left(&s.0, &dest);

    // Exactly at every limit is fine.
    let limits = Limits {
        max_files: 10,
        max_total_size: 1000,
        max_file_size: 100,
    };
    bundle::unpack(&bytes, &dest, &limits).unwrap();

    // A highly compressible bomb is measured by its inflated size.
    let bomb_data = vec![0u8; 5 * 1024 * 1024];
    let bomb = zip_of(&[("bomb", &bomb_data)]);
    assert!(bomb.len() < 100 * 1024);
    let limits = Limits {
        max_total_size: 1024 * 1024,
        ..Limits::default()
    };
    let e = bundle::unpack(&bomb, &s.path("bomb"), &limits).unwrap_err();
    assert!(matches!(e, BundleError::LimitExceeded { .. }), "{e:?}");
}

#[test]
fn unpack_rejects_garbage_and_duplicates() {
    let s = Scratch::new("garbage");
    let e = bundle::unpack(b"this is not a zip", &s.path("d"), &Limits::default()).unwrap_err();
    assert!(matches!(e, BundleError::Zip { .. }), "{e:?}");
    let bytes = zip_of(&[("a.py", b"1"), ("./a.py", b"2")]);
    let e = bundle::unpack(&bytes, &s.path("d"), &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("duplicate"), "{e}");
    assert_nothing_left(&s.0, &s.path("d"));
}

// ---------------------------------------------------------------------------------------------
// Fetching
// ---------------------------------------------------------------------------------------------

#[test]
fn fetch_joins_the_name_onto_the_base_path() {
    let server = Server::start(|_| Reply::Ok(b"zipbytes".to_vec()));
    let got = bundle::fetch(&server.base(), "b-1.zip", &fast_fetch()).unwrap();
    assert_eq!(got, b"zipbytes");
    let base_no_slash = format!("http://{}/deep/dir", server.addr);
    bundle::fetch(&base_no_slash, "../x.zip", &fast_fetch()).unwrap();
    let paths = server.paths.lock().unwrap().clone();
    assert_eq!(paths, ["/bundles/b-1.zip", "/deep/x.zip"]);
}

#[test]
fn fetch_retries_until_the_server_answers() {
    let server = Server::start(|n| {
        if n < 2 {
            Reply::Status(503)
        } else {
            Reply::Ok(b"third".to_vec())
        }
    });
    let got = bundle::fetch(&server.base(), "b.zip", &fast_fetch()).unwrap();
    assert_eq!(got, b"third");
    assert_eq!(server.hits(), 3);

    // A connection that closes without a response counts as a failed attempt too.
    let server = Server::start(|n| {
        if n == 0 {
            Reply::Raw(Vec::new())
        } else {
            Reply::Ok(b"ok".to_vec())
        }
    });
    assert_eq!(
        bundle::fetch(&server.base(), "b.zip", &fast_fetch()).unwrap(),
        b"ok"
    );
    assert_eq!(server.hits(), 2);
}

#[test]
fn fetch_gives_up_after_four_retries_with_the_status() {
    let server = Server::start(|_| Reply::Status(404));
    let e = bundle::fetch(&server.base(), "b.zip", &fast_fetch()).unwrap_err();
    assert_eq!(server.hits(), 5);
    match &e {
        BundleError::Fetch { attempts, last, .. } => {
            assert_eq!(*attempts, 5);
            assert!(
                matches!(**last, BundleError::HttpStatus { code: 404, .. }),
                "{last:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        e.to_string().contains("HTTP Error, got status code 404"),
        "{e}"
    );

    let opts = FetchOptions {
        max_retries: 1,
        ..fast_fetch()
    };
    let server = Server::start(|_| Reply::Status(500));
    let e = bundle::fetch(&server.base(), "b.zip", &opts).unwrap_err();
    assert_eq!(server.hits(), 2);
    assert!(e.to_string().contains("status code 500"), "{e}");
}

#[test]
fn fetch_backoff_doubles_up_to_the_max_delay() {
    let server = Server::start(|_| Reply::Status(500));
    let opts = FetchOptions {
        base_delay: Duration::from_millis(40),
        max_delay: Duration::from_millis(80),
        ..fast_fetch()
    };
    let start = std::time::Instant::now();
    bundle::fetch(&server.base(), "b.zip", &opts).unwrap_err();
    // Waits 40 + 80 + 80 + 80 ms (the doubling is capped at 80).
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(280), "{took:?}");
}

#[test]
fn fetch_caps_the_size_whatever_the_server_claims() {
    let opts = FetchOptions {
        max_size: 1000,
        ..fast_fetch()
    };
    // Declared too large: refused at once, without retrying.
    let server = Server::start(|_| Reply::Ok(vec![b'x'; 1001]));
    let e = bundle::fetch(&server.base(), "b.zip", &opts).unwrap_err();
    assert!(matches!(e, BundleError::LimitExceeded { .. }), "{e:?}");
    assert_eq!(server.hits(), 1);
    // No Content-Length, body runs until close: cut off at the cap.
    let server = Server::start(|_| {
        let mut b = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        b.extend(std::iter::repeat_n(b'y', 5000));
        Reply::Raw(b)
    });
    let e = bundle::fetch(&server.base(), "b.zip", &opts).unwrap_err();
    assert!(matches!(e, BundleError::LimitExceeded { .. }), "{e:?}");
    // Exactly at the cap is fine.
    let server = Server::start(|_| Reply::Ok(vec![b'x'; 1000]));
    assert_eq!(
        bundle::fetch(&server.base(), "b.zip", &opts).unwrap().len(),
        1000
    );
}

#[test]
fn fetch_from_files_and_unknown_schemes() {
    let s = Scratch::new("filefetch");
    s.write("bundles/b.zip", b"local zip");
    let base = format!("file://{}/bundles/", s.0.display());
    assert_eq!(
        bundle::fetch(&base, "b.zip", &fast_fetch()).unwrap(),
        b"local zip"
    );
    let e = bundle::fetch(&base, "missing.zip", &fast_fetch()).unwrap_err();
    assert!(e.to_string().contains("missing.zip"), "{e}");
    let e = bundle::fetch("ftp://example/", "b.zip", &fast_fetch()).unwrap_err();
    assert!(matches!(e, BundleError::UnknownScheme { .. }), "{e:?}");
    assert!(e.to_string().starts_with("Unknown URL scheme"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Gateway-level loader
// ---------------------------------------------------------------------------------------------

fn loader_cfg(s: &Scratch, base: &str) -> BundleConfig {
    BundleConfig {
        middleware_path: s.path("middleware"),
        enable_bundle_downloader: true,
        bundle_base_url: base.to_string(),
        public_key_path: None,
        skip_verify_existing: false,
        limits: Limits::default(),
        fetch: fast_fetch(),
    }
}

fn bundles_dir_entries(cfg: &BundleConfig) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(cfg.middleware_path.join("bundles"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn loader_downloads_once_then_uses_the_cache_when_the_server_is_down() {
    let s = Scratch::new("loader");
    let zip = built_bundle(&s, None, &[("mw.py", b"code")]);
    let server = Server::start(move |_| Reply::Ok(zip.clone()));
    let cfg = loader_cfg(&s, &server.base());

    let first = bundle::load_for_api("auth-bundle.zip", &cfg).unwrap();
    let hash = bundle::md5_hex(b"auth-bundle.zip");
    assert_eq!(first.hash, hash);
    assert!(first.dir.is_absolute());
    assert_eq!(first.dir, cfg.middleware_path.join("bundles").join(&hash));
    assert_eq!(fs::read(first.dir.join("mw.py")).unwrap(), b"code");
    assert!(!first.from_cache);
    assert_eq!(first.manifest.custom_middleware, grpc_middleware());
    assert_eq!(
        first.manifest_json["custom_middleware"]["auth_check"]["name"],
        "MyAuthHook"
    );
    assert_eq!(
        first.report.checksum.as_deref(),
        Some(bundle::md5_hex(b"code").as_str())
    );
    // The lead's config parser accepts the manifest's section.
    let section = pipegate::config::parse_middleware_section(
        Path::new("manifest.json"),
        "custom_middleware",
        &first.manifest.custom_middleware,
    )
    .unwrap();
    assert_eq!(
        section.auth_check.map(|h| h.name).as_deref(),
        Some("MyAuthHook")
    );
    assert_eq!(
        server.paths.lock().unwrap().as_slice(),
        ["/bundles/auth-bundle.zip"]
    );

    // Another API using the same bundle shares the directory; no second download.
    let second = bundle::load_for_api("auth-bundle.zip", &cfg).unwrap();
    assert!(second.from_cache);
    assert_eq!(second.dir, first.dir);
    assert_eq!(server.hits(), 1);

    // The bundle server goes away; a restart still loads the API from the cache, even with the
    // downloader switched off.
    drop(server);
    let third = bundle::load_for_api("auth-bundle.zip", &cfg).unwrap();
    assert!(third.from_cache);
    let off = BundleConfig {
        enable_bundle_downloader: false,
        ..cfg.clone()
    };
    assert!(
        bundle::load_for_api("auth-bundle.zip", &off)
            .unwrap()
            .from_cache
    );
    // A bundle that is not cached cannot be loaded while the server is down.
    let e = bundle::load_for_api("other.zip", &cfg).unwrap_err();
    assert!(matches!(e, BundleError::Fetch { .. }), "{e:?}");
    assert_eq!(bundles_dir_entries(&cfg), [hash]);
}

#[test]
fn loader_configuration_errors() {
    let s = Scratch::new("loadercfg");
    let cfg = loader_cfg(&s, "");
    let e = bundle::load_for_api("b.zip", &cfg).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("No bundle base URL set, skipping bundle"),
        "{e}"
    );
    let cfg = BundleConfig {
        enable_bundle_downloader: false,
        ..loader_cfg(&s, "http://127.0.0.1:9/")
    };
    let e = bundle::load_for_api("b.zip", &cfg).unwrap_err();
    assert!(
        e.to_string().starts_with("Bundle downloader is disabled"),
        "{e}"
    );
    let e = bundle::load_for_api("", &cfg).unwrap_err();
    assert!(matches!(e, BundleError::EmptyName), "{e:?}");
}

#[test]
fn loader_rejects_bad_downloads_and_leaves_nothing_behind() {
    let s = Scratch::new("loaderbad");
    let keys = openssl_keys(&s, "k");
    let unsigned = built_bundle(&s, None, &[("mw.py", b"code")]);

    // Unsigned bundle while public_key_path is set.
    let u = unsigned.clone();
    let server = Server::start(move |_| Reply::Ok(u.clone()));
    let cfg = BundleConfig {
        public_key_path: Some(keys.public.clone()),
        ..loader_cfg(&s, &server.base())
    };
    let e = bundle::load_for_api("b.zip", &cfg).unwrap_err();
    assert!(matches!(e, BundleError::NotSigned), "{e:?}");
    assert!(
        bundles_dir_entries(&cfg).is_empty(),
        "{:?}",
        bundles_dir_entries(&cfg)
    );

    // Wrong checksum in the manifest.
    let bad = zip_of(&[
        ("mw.py", b"code"),
        ("manifest.json", br#"{"file_list":["mw.py"],"custom_middleware":{"driver":"grpc","auth_check":{"name":"A"}},"checksum":"00","signature":""}"#),
    ]);
    let server = Server::start(move |_| Reply::Ok(bad.clone()));
    let cfg = loader_cfg(&s, &server.base());
    let e = bundle::load_for_api("c.zip", &cfg).unwrap_err();
    assert!(matches!(e, BundleError::ChecksumMismatch { .. }), "{e:?}");
    assert!(bundles_dir_entries(&cfg).is_empty());

    // No manifest at all.
    let nomanifest = zip_of(&[("mw.py", b"code")]);
    let server = Server::start(move |_| Reply::Ok(nomanifest.clone()));
    let cfg = loader_cfg(&s, &server.base());
    let e = bundle::load_for_api("d.zip", &cfg).unwrap_err();
    assert!(e.to_string().contains("no manifest.json"), "{e}");

    // Path escape inside the downloaded zip.
    let evil = zip_of(&[("../../evil.py", b"x")]);
    let server = Server::start(move |_| Reply::Ok(evil.clone()));
    let cfg = loader_cfg(&s, &server.base());
    let e = bundle::load_for_api("e.zip", &cfg).unwrap_err();
    assert!(matches!(e, BundleError::UnsafeEntry { .. }), "{e:?}");
    assert!(bundles_dir_entries(&cfg).is_empty());
    assert!(!s.path("evil.py").exists() && !s.path("middleware/evil.py").exists());
}

#[test]
fn loader_signed_bundles_and_tampered_cache() {
    let s = Scratch::new("loadersigned");
    let keys = openssl_keys(&s, "k");
    let signed = built_bundle(&s, Some(&keys.pkcs8), &[("mw.py", b"code")]);
    let z = signed.clone();
    let server = Server::start(move |_| Reply::Ok(z.clone()));
    let cfg = BundleConfig {
        public_key_path: Some(keys.public.clone()),
        ..loader_cfg(&s, &server.base())
    };

    let b = bundle::load_for_api("signed.zip", &cfg).unwrap();
    assert_eq!(b.report.signature, SignatureCheck::Verified);

    // Someone edits the cached copy: the partial check catches it and a fresh copy replaces it.
    fs::write(b.dir.join("mw.py"), b"evil").unwrap();
    let again = bundle::load_for_api("signed.zip", &cfg).unwrap();
    assert!(!again.from_cache);
    assert_eq!(fs::read(again.dir.join("mw.py")).unwrap(), b"code");
    assert_eq!(server.hits(), 2);
    assert_eq!(bundles_dir_entries(&cfg), vec![b.hash.clone()]);

    // With skip_verify_existing the edit is not noticed (Tyk's opt-out).
    fs::write(b.dir.join("mw.py"), b"evil").unwrap();
    let skip = BundleConfig {
        skip_verify_existing: true,
        ..cfg.clone()
    };
    let r = bundle::load_for_api("signed.zip", &skip).unwrap();
    assert!(r.from_cache);
    assert_eq!(r.report.signature, SignatureCheck::Skipped);

    // Tampered cache and the server down: the API fails, saying both reasons.
    drop(server);
    let e = bundle::load_for_api("signed.zip", &cfg).unwrap_err();
    assert!(matches!(e, BundleError::CachedInvalid { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("invalid checksum") && msg.contains("could not download"),
        "{msg}"
    );

    // A cached directory without a manifest is an error too (TT-14814), never used as is.
    let off = BundleConfig {
        enable_bundle_downloader: false,
        ..cfg.clone()
    };
    fs::remove_file(b.dir.join("manifest.json")).unwrap();
    let e = bundle::load_for_api("signed.zip", &off).unwrap_err();
    assert!(e.to_string().contains("no manifest.json"), "{e}");
}

#[test]
fn concurrent_loads_of_one_bundle_download_once() {
    let s = Scratch::new("concurrent");
    let zip = built_bundle(&s, None, &[("mw.py", b"shared code"), ("lib/x.py", b"x")]);
    let server = Server::start_slow(Duration::from_millis(200), move |_| Reply::Ok(zip.clone()));
    let cfg = Arc::new(loader_cfg(&s, &server.base()));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let cfg = cfg.clone();
            thread::spawn(move || bundle::load_for_api("shared.zip", &cfg))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let dirs: Vec<PathBuf> = results.into_iter().map(|r| r.unwrap().dir).collect();
    assert!(dirs.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(server.hits(), 1);
    assert_eq!(fs::read(dirs[0].join("mw.py")).unwrap(), b"shared code");
    assert_eq!(bundles_dir_entries(&cfg), [bundle::md5_hex(b"shared.zip")]);
}

/// An https bundle server: Python's http.server wrapped in TLS with a self-signed certificate made
/// by the openssl CLI. Returns the child and its base URL.
fn https_server(s: &Scratch) -> (std::process::Child, String) {
    let key = s.path("tls.key");
    let cert = s.path("tls.crt");
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg("/CN=127.0.0.1")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let script = r#"
import http.server, ssl, sys, functools
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
srv = http.server.HTTPServer(("127.0.0.1", 0), h)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(s.path("www"))
        .arg(&cert)
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start python https server");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut out, &mut line).expect("port line");
    let port: u16 = line.trim().parse().expect("port number");
    (child, format!("https://127.0.0.1:{port}/"))
}

#[test]
fn https_bundle_urls_verify_certificates_unless_told_not_to() {
    let s = Scratch::new("https");
    s.write("www/b.zip", b"zip bytes over tls");
    let (mut child, base) = https_server(&s);
    let mut opts = fast_fetch();
    opts.max_retries = 0;
    // A self-signed certificate is refused by default...
    let err = pipegate::bundle::fetch(&base, "b.zip", &opts)
        .expect_err("self-signed certificate accepted");
    assert!(err.to_string().contains(&base), "{err}");
    // ...and accepted with bundle_insecure_skip_verify.
    opts.insecure_skip_verify = true;
    let bytes =
        pipegate::bundle::fetch(&base, "b.zip", &opts).expect("https fetch with verification off");
    assert_eq!(bytes, b"zip bytes over tls");
    let _ = child.kill();
    let _ = child.wait();
}
