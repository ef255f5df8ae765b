//! The `pipegate` command line.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pipegate::config;

/// A lean edge API gateway that runs Tyk-compatible plugins out of process.
#[derive(Parser)]
#[command(name = "pipegate", version, about, long_about = None)]
struct Cli {
    /// Path to the gateway configuration (Tyk's tyk.conf format). Runs the gateway.
    #[arg(long, global = true)]
    conf: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate tyk.conf and every API definition; print each problem with file, field and reason.
    Check,
    /// Start a self-contained demo on localhost (gateway + demo upstream) and print curl lines.
    Demo {
        /// Port for the demo gateway.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Build or verify plugin bundles (Tyk's `tyk bundle` format: manifest.json + zip).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Load-test a plugin by itself: drive its hooks over the pipe protocol (or gRPC) as the
    /// gateway does, and print throughput and latency percentiles.
    PluginBench(PluginBenchArgs),
    /// Run the demo plugin on stdin/stdout (the pipe child that `pipegate demo` starts).
    #[command(hide = true)]
    DemoPlugin,
    /// Run the demo echo upstream (used by the demo and the integration tests).
    #[command(hide = true)]
    EchoUpstream {
        /// Address to listen on, e.g. 127.0.0.1:0 (the bound address is printed on stdout).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

/// `pipegate plugin-bench`: see `pipegate::plugin_bench`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("plugin").required(true).args(["command", "grpc"])))]
struct PluginBenchArgs {
    /// The plugin's command line, run as a pipe child (e.g. "python3 -m pipegate_plugin my.py").
    #[arg(long)]
    command: Option<String>,
    /// A gRPC plugin server instead (tcp://host:port, unix:///path or host:port).
    #[arg(long)]
    grpc: Option<String>,
    /// Hook type: pre, auth_check, post_key_auth, post or response.
    #[arg(long, default_value = "pre")]
    hook: String,
    /// Hook (function) name, as in the API definition's custom_middleware section.
    #[arg(long, default_value = "MyPreHook")]
    name: String,
    /// Calls kept in flight at once.
    #[arg(short = 'c', long, default_value_t = 32)]
    concurrency: usize,
    /// Calls to measure.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    requests: u64,
    /// Calls made first and not measured.
    #[arg(long, default_value_t = 1000)]
    warmup: u64,
    /// Request body size in bytes.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    /// Per-call deadline in milliseconds (as hook_timeout_ms).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Extra request header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn plugin_bench(a: PluginBenchArgs) -> ExitCode {
    use pipegate::plugin_bench::{self, BenchOptions, BenchTarget};
    let hook = match plugin_bench::parse_hook(&a.hook) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("pipegate plugin-bench: --hook: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut headers = Vec::new();
    for h in &a.headers {
        match h.split_once(':') {
            Some((k, v)) => headers.push((k.trim().to_string(), v.trim().to_string())),
            None => {
                eprintln!("pipegate plugin-bench: --header {h:?}: expected \"Name: value\"");
                return ExitCode::FAILURE;
            }
        }
    }
    let target = match (a.command, a.grpc) {
        (Some(c), _) => BenchTarget::Pipe(c),
        (None, Some(g)) => BenchTarget::Grpc(g),
        (None, None) => {
            eprintln!("pipegate plugin-bench: give --command \"...\" or --grpc ADDRESS");
            return ExitCode::FAILURE;
        }
    };
    let opts = BenchOptions {
        target,
        hook,
        name: a.name,
        concurrency: a.concurrency,
        requests: a.requests,
        warmup: a.warmup,
        body_bytes: a.body_bytes,
        timeout: std::time::Duration::from_millis(a.timeout_ms),
        headers,
        progress: !a.json,
    };
    match plugin_bench::run(&opts) {
        Ok(report) => {
            if a.json {
                println!("{}", report.to_json());
            } else {
                print!("{report}");
            }
            if report.ok == 0 {
                eprintln!("pipegate plugin-bench: no call succeeded; see the errors above");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pipegate plugin-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Build a bundle zip from a manifest (files are read relative to the manifest's folder) and
    /// sign it with an RSA private key (PKCS#1 v1.5, SHA-256), as `tyk bundle build` does.
    Build {
        /// The manifest.
        #[arg(short = 'm', long = "manifest", default_value = "manifest.json")]
        manifest: PathBuf,
        /// RSA private key (PEM) to sign with.
        #[arg(short = 'k', long = "key")]
        key: Option<PathBuf>,
        /// Build an unsigned bundle.
        #[arg(short = 'y', long = "skip-signing")]
        skip_signing: bool,
        /// Output zip.
        #[arg(short = 'o', long = "output", default_value = "bundle.zip")]
        output: PathBuf,
    },
    /// Check a bundle's checksum and (with -k) its signature, printing what was checked.
    Verify {
        /// RSA public key (PEM) to verify the signature with.
        #[arg(short = 'k', long = "key")]
        key: Option<PathBuf>,
        /// The bundle zip.
        bundle: PathBuf,
    },
}

fn bundle_command(cmd: BundleCommand) -> ExitCode {
    let result = match cmd {
        BundleCommand::Build {
            manifest,
            key,
            skip_signing,
            output,
        } => pipegate::bundle::cli_build(&manifest, key.as_deref(), skip_signing, &output),
        BundleCommand::Verify { key, bundle } => {
            pipegate::bundle::cli_verify(key.as_deref(), &bundle)
        }
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pipegate bundle: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logging for the subcommands that have no tyk.conf (demo, echo upstream): text, `RUST_LOG`.
fn init_logging() {
    pipegate::logging::init(None);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => {
            let Some(conf) = cli.conf else {
                eprintln!("pipegate check: missing --conf PATH (the tyk.conf to validate)");
                return ExitCode::from(2);
            };
            check(&conf)
        }
        Some(Command::Demo { port }) => {
            init_logging();
            match demo(port) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pipegate demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Bundle(cmd)) => bundle_command(cmd),
        Some(Command::PluginBench(args)) => plugin_bench(args),
        Some(Command::DemoPlugin) => match pipegate::demo::run_demo_plugin() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo plugin: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::EchoUpstream { listen }) => {
            init_logging();
            let l = match TcpListener::bind(&listen) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("echo-upstream: cannot listen on {listen}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match l.local_addr() {
                Ok(a) => println!("listening on {a}"),
                Err(e) => {
                    eprintln!("echo-upstream: {e}");
                    return ExitCode::FAILURE;
                }
            }
            pipegate::demo::serve_echo(l);
            ExitCode::SUCCESS
        }
        None => {
            let Some(conf) = cli.conf else {
                eprintln!(
                    "pipegate: nothing to do. Run the gateway with `pipegate --conf tyk.conf`, \
                     validate a config with `pipegate check --conf tyk.conf`, or try `pipegate demo`."
                );
                return ExitCode::from(2);
            };
            run(&conf)
        }
    }
}

fn run(conf: &Path) -> ExitCode {
    // A tyk.conf that does not load still gets logging (the error is reported by `run`).
    let gw = config::load_gateway(conf).ok();
    pipegate::logging::init(gw.as_ref());
    match pipegate::server::run(conf.to_path_buf()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pipegate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(conf: &Path) -> ExitCode {
    match config::load_snapshot(conf) {
        Ok(snap) => {
            println!(
                "{}: OK ({} API definition{} from {})",
                conf.display(),
                snap.apis.len(),
                if snap.apis.len() == 1 { "" } else { "s" },
                snap.gateway.app_path.display()
            );
            if snap.gateway.tls.is_some() {
                println!("  TLS on (http_server_options.use_ssl): certificates loaded and matched with their keys");
            }
            for api in &snap.apis {
                println!(
                    "  {} {:?} {} -> {}",
                    api.api_id, api.name, api.listen_path, api.target.url
                );
            }
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for e in &errs {
                eprintln!("{e}");
            }
            eprintln!(
                "{} problem{} found; fix them and run `pipegate check --conf {}` again",
                errs.len(),
                if errs.len() == 1 { "" } else { "s" },
                conf.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn demo(port: u16) -> Result<(), String> {
    let upstream = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("demo upstream: {e}"))?;
    let up_addr = upstream.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || pipegate::demo::serve_echo(upstream));

    let dir = std::env::temp_dir().join(format!("pipegate-demo-{}", std::process::id()));
    let apps = dir.join("apps");
    std::fs::create_dir_all(&apps).map_err(|e| format!("{}: {e}", apps.display()))?;
    let conf = dir.join("tyk.conf");
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let tyk_conf = serde_json::json!({
        "listen_address": "127.0.0.1",
        "listen_port": port,
        "secret": "demo-secret",
        "app_path": "apps/",
        "middleware_path": "middleware",
        "coprocess_options": {
            "enable_coprocess": true,
            "pipe_command": [exe.to_string_lossy(), "demo-plugin"]
        }
    });
    std::fs::write(
        &conf,
        serde_json::to_vec_pretty(&tyk_conf).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", conf.display()))?;
    let api = serde_json::json!({
        "name": "Demo echo API",
        "api_id": "demo",
        "org_id": "default",
        "active": true,
        "use_keyless": true,
        "proxy": {
            "listen_path": "/demo/",
            "target_url": format!("http://{up_addr}/"),
            "strip_listen_path": true
        },
        "custom_middleware": {
            "driver": "pipe",
            "pre": [{"name": "DemoPre"}],
            "response": [{"name": "DemoResponse"}]
        }
    });
    std::fs::write(
        apps.join("demo.json"),
        serde_json::to_vec_pretty(&api).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", apps.display()))?;

    println!(
        "pipegate demo: gateway on http://127.0.0.1:{port}, demo upstream on http://{up_addr}"
    );
    println!("configuration written to {}", dir.display());
    println!("try:");
    println!("  curl -s http://127.0.0.1:{port}/hello");
    println!("  curl -s http://127.0.0.1:{port}/demo/anything?x=1");
    println!("  curl -s -X POST --data 'hello pipegate' http://127.0.0.1:{port}/demo/post");
    println!("  curl -s -i http://127.0.0.1:{port}/demo/get   # X-Pipegate-Demo (pre hook) reaches the upstream; X-Pipegate-Demo-Response comes back");
    println!("  curl -s -i -H 'X-Demo-Block: 1' http://127.0.0.1:{port}/demo/get   # the plugin answers 403 itself");
    println!("  curl -s -i http://127.0.0.1:{port}/nope   # 404 from the router");
    println!("press Ctrl-C to stop");
    pipegate::server::run(conf)
}
