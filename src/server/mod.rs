//! The server: listeners, worker threads, signals, reload and graceful shutdown.
//!
//! Each worker owns a mio event loop and its own listening socket bound with SO_REUSEPORT, so the
//! kernel spreads connections over workers and nothing on the request path is shared but the
//! read-only configuration snapshot (an `ArcSwap`, swapped whole on reload).

mod buffers;
mod conn;
mod worker;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use arc_swap::ArcSwap;
use mio::Waker;
use parking_lot::Mutex;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::bundle::{self, Applied};
use crate::config::{self, Snapshot};
use crate::coprocess::grpc::{GrpcClient, GrpcOptions};
use crate::coprocess::pipe::{PipeClient, PipeOptions};

/// Threads running Redis store operations (each blocks on one Redis round trip at a time).
const STORE_THREADS: usize = 8;

/// State shared by all workers.
pub struct Shared {
    /// The configuration in force; requests pick it up when they start.
    pub snapshot: ArcSwap<Snapshot>,
    /// Set once on SIGTERM/SIGINT: stop accepting, finish in-flight requests, exit.
    pub shutdown: AtomicBool,
    /// The tyk.conf path, for reloads.
    pub conf_path: PathBuf,
    /// Workers' wakers, to make them notice shutdown at once.
    pub wakers: Mutex<Vec<Arc<Waker>>>,
    /// The plugin process, when `coprocess_options.pipe_command` is set.
    pub pipe: Option<Arc<PipeClient>>,
    /// The gRPC plugin server client, when `coprocess_options.coprocess_grpc_server` is set.
    pub grpc: Option<Arc<GrpcClient>>,
    /// Sessions, keys, rate limits and quotas (embedded or Redis, from tyk.conf `storage`; a
    /// change of `storage` takes a restart).
    pub store: crate::store::Store,
    /// Job queue of the store threads (Redis only: its calls block, so they never run on a
    /// worker's event loop).
    pub store_jobs: Option<crossbeam_channel::Sender<worker::StoreJob>>,
}

impl Shared {
    /// True once shutdown has begun.
    #[inline]
    pub fn closing(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Re-reads tyk.conf and the API definitions and swaps them in. On error the running
    /// configuration stays and every problem is logged.
    pub fn reload(&self) -> Result<usize, String> {
        match load_config(&self.conf_path) {
            Ok((snap, bundles)) => {
                let n = snap.apis.len();
                // The plugin learns about new bundles before any request can use them.
                announce_bundles(self.pipe.as_deref(), &snap, &bundles);
                self.snapshot.store(Arc::new(snap));
                tracing::info!(apis = n, "configuration reloaded");
                Ok(n)
            }
            Err(msg) => {
                tracing::error!("reload failed, keeping the running configuration: {msg}");
                Err(msg)
            }
        }
    }

    fn wake_all(&self) {
        for w in self.wakers.lock().iter() {
            let _ = w.wake();
        }
    }
}

/// Loads tyk.conf and the API definitions, then their plugin bundles (which may download).
pub fn load_config(conf_path: &std::path::Path) -> Result<(Snapshot, Vec<Applied>), String> {
    let join = |errs: Vec<config::ConfigError>| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let gw = config::load_gateway_all(conf_path).map_err(join)?;
    let mut apis = config::load_apis(&gw).map_err(join)?;
    let applied = bundle::apply_bundles(&gw, &mut apis);
    // Metric label sets are resolved here, once per load, never per request.
    let metrics = crate::metrics::registry();
    for api in &mut apis {
        api.metrics_slot = metrics.api_slot(&api.api_id, &api.name);
    }
    Ok((
        Snapshot::new(Arc::new(gw), apis.into_iter().map(Arc::new).collect()),
        applied,
    ))
}

/// Sends `load_bundle` to the plugin process for every bundle of a pipe-driver API (the pipe
/// client re-sends them to a restarted child). A bundle the plugin refuses is logged; its hooks
/// then fail with the plugin's error like any other failed hook.
fn announce_bundles(pipe: Option<&PipeClient>, snap: &Snapshot, bundles: &[Applied]) {
    let Some(pipe) = pipe else { return };
    for b in bundles {
        let Some(api) = snap.api_by_id(&b.api_id) else {
            continue;
        };
        if api.custom_middleware.driver.eq_ignore_ascii_case("grpc") {
            continue;
        }
        if let Err(e) = pipe.load_bundle(
            &b.api_id,
            &b.bundle.hash,
            &b.bundle.dir,
            &b.bundle.manifest_json,
            std::time::Duration::from_secs(10),
        ) {
            tracing::error!(api = %b.api_id, dir = %b.bundle.dir.display(), "plugin did not load the bundle: {e}");
        }
    }
}

/// The body of `GET /hello`, Tyk's health check.
pub fn health_body(_shared: &Shared) -> String {
    serde_json::json!({
        "status": "pass",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "pipegate",
        "details": {}
    })
    .to_string()
}

/// The Prometheus exposition text: every worker's counters plus the plugin clients' counters.
pub fn metrics_text(shared: &Shared) -> String {
    let stats = crate::metrics::ProcessStats {
        plugin_restarts: shared.pipe.as_ref().map(|p| p.restarts()),
        grpc_reconnects: shared.grpc.as_ref().map(|g| g.reconnects()),
    };
    crate::metrics::render(crate::metrics::registry(), &stats)
}

/// Binds one listening socket with SO_REUSEPORT so that every worker can have its own.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A running gateway, as returned by [`start`].
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Running {
    /// Begins graceful shutdown.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake_all();
    }

    /// Shared state (for reloads from the admin API and signals).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Waits for every worker to finish.
    pub fn join(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// Loads the configuration at `conf_path` and starts the workers.
pub fn start(
    conf_path: PathBuf,
    snapshot: Snapshot,
    bundles: Vec<Applied>,
) -> Result<Running, String> {
    let gw = Arc::clone(&snapshot.gateway);
    let host = if gw.listen_address.is_empty() {
        "0.0.0.0"
    } else {
        gw.listen_address.as_str()
    };
    let addr: SocketAddr = format!("{host}:{}", gw.listen_port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (host, gw.listen_port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(())
        })
        .map_err(|_| {
            format!(
                "{}: listen_address: cannot resolve {host:?}",
                conf_path.display()
            )
        })?;
    let first = bind(addr).map_err(|e| {
        format!(
            "cannot listen on {addr}: {e} (is another process using listen_port {}?)",
            gw.listen_port
        )
    })?;
    let bound = first.local_addr().map_err(|e| e.to_string())?;
    // The plugin child starts before the listener accepts, so no request finds it missing.
    let pipe = if gw.coprocess.enable_coprocess && !gw.coprocess.pipe_command.is_empty() {
        let opts = PipeOptions::from(&gw.coprocess);
        Some(PipeClient::start(opts).map_err(|e| e.to_string())?)
    } else {
        None
    };
    announce_bundles(pipe.as_deref(), &snapshot, &bundles);
    // A gRPC server that is down at start is not an error: calls fail cleanly until it is up.
    let grpc = match gw.coprocess.grpc_server.as_deref() {
        Some(t) if gw.coprocess.enable_coprocess && !t.is_empty() => {
            Some(GrpcClient::start(GrpcOptions::from(&gw.coprocess)).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let store = crate::store::Store::from_config(&gw)
        .map_err(|e| format!("{}: storage: {e}", conf_path.display()))?;
    let store_jobs = (store.kind() == crate::store::BackendKind::Redis).then(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<worker::StoreJob>();
        for i in 0..STORE_THREADS {
            let rx = rx.clone();
            let _ = thread::Builder::new()
                .name(format!("pipegate-store-{i}"))
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                });
        }
        tx
    });
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        shutdown: AtomicBool::new(false),
        conf_path,
        wakers: Mutex::new(Vec::new()),
        pipe,
        grpc,
        store_jobs,
        store,
    });
    if let (true, Some(maddr)) = (gw.metrics.enabled, gw.metrics.listen_address) {
        let l = TcpListener::bind(maddr).map_err(|e| {
            format!(
                "{}: pipegate.metrics.listen_address: cannot listen on {maddr}: {e}",
                shared.conf_path.display()
            )
        })?;
        let bound_metrics = l.local_addr().map_err(|e| e.to_string())?;
        let sh = Arc::clone(&shared);
        crate::metrics::listener::spawn(
            l,
            gw.metrics.path.clone(),
            Arc::new(move || metrics_text(&sh)),
        )
        .map_err(|e| format!("cannot start the metrics listener: {e}"))?;
        tracing::info!("metrics on http://{bound_metrics}{}", gw.metrics.path);
    }
    let mut listeners = vec![first];
    for _ in 1..gw.workers {
        listeners.push(bind(bound).map_err(|e| format!("cannot listen on {bound}: {e}"))?);
    }
    let mut workers = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let (w, waker) = worker::Worker::new(i, l, Arc::clone(&shared))
            .map_err(|e| format!("cannot start worker {i}: {e}"))?;
        shared.wakers.lock().push(waker);
        workers.push(
            thread::Builder::new()
                .name(format!("pipegate-worker-{i}"))
                .spawn(move || w.run())
                .map_err(|e| format!("cannot spawn worker thread: {e}"))?,
        );
    }
    tracing::info!(
        "pipegate listening on {bound} with {} workers",
        workers.len()
    );
    Ok(Running {
        addr: bound,
        shared,
        workers,
    })
}

/// Runs the gateway until SIGTERM/SIGINT, reloading on SIGHUP. Returns once every in-flight
/// request has finished or the grace period ran out.
pub fn run(conf_path: PathBuf) -> Result<(), String> {
    let (snapshot, bundles) = load_config(&conf_path)?;
    let mut signals = Signals::new([SIGHUP, SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let running = start(conf_path, snapshot, bundles)?;
    let shared = Arc::clone(running.shared());
    let handle = signals.handle();
    let sig_thread = thread::spawn(move || {
        for sig in signals.forever() {
            match sig {
                SIGHUP => {
                    let _ = shared.reload();
                }
                _ => {
                    tracing::info!("shutting down: finishing in-flight requests");
                    shared.shutdown.store(true, Ordering::Release);
                    shared.wake_all();
                    break;
                }
            }
        }
    });
    let pipe = running.shared().pipe.clone();
    let grpc = running.shared().grpc.clone();
    let grace = running.shared().snapshot.load().gateway.shutdown_grace;
    running.join();
    if let Some(p) = pipe {
        p.shutdown(grace.min(std::time::Duration::from_secs(5)));
    }
    if let Some(g) = grpc {
        g.shutdown();
    }
    handle.close();
    let _ = sig_thread.join();
    tracing::info!("pipegate stopped");
    Ok(())
}
