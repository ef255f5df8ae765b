//! Prometheus metrics: per-worker counters merged at scrape time.
//!
//! Cost on the request path is what drove the design: each worker owns a [`cells::Block`] of
//! counters that only it writes (relaxed load + store, no lock, no allocation, no formatting); the
//! scrape walks every worker's block and sums. Label sets are resolved to indices before any
//! request sees them: an API's series live at its *slot*, assigned by [`Registry::api_slot`] when
//! a configuration is loaded and stored in the [`ApiDefinition`](crate::config::ApiDefinition),
//! and hook / transport / status class are small array indices.
//!
//! Reloads: slots are keyed by `api_id` and never reused, so an API that survives a reload keeps
//! counting where it was (its `api_name` label follows the newest name). A removed API's counters
//! stay frozen and exported until the process restarts (counters must not go backwards, and a
//! re-added API continues them). Slot 0 is for requests no API matched (404s, `/hello`, the
//! Gateway API, the metrics endpoint itself); it carries `api_id=""`.
//!
//! The registry is process-wide (like the default registry of Prometheus client libraries):
//! one gateway per process.

mod cells;
pub mod listener;
mod render;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::coprocess::object::HookType;
use cells::Block;

pub use render::render;

/// Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How a hook call ended, for the timeout and failure counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOutcome {
    /// The plugin answered (whatever it answered).
    Ok,
    /// No answer within the hook's timeout.
    Timeout,
    /// The call failed otherwise: plugin error, protocol error, child died or unavailable.
    Failed,
}

/// Labels of one API slot.
struct ApiLabels {
    api_id: String,
    name: String,
}

struct Inner {
    /// Indexed by slot; slot 0 = no API.
    apis: Vec<ApiLabels>,
    by_id: HashMap<String, usize>,
    /// The current block of every worker (replaced when a worker grows its block).
    workers: Vec<Arc<Block>>,
}

/// Process-wide metric labels and the workers' counter blocks.
pub struct Registry {
    inner: Mutex<Inner>,
}

/// The process-wide registry.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        inner: Mutex::new(Inner {
            apis: vec![ApiLabels {
                api_id: String::new(),
                name: String::new(),
            }],
            by_id: HashMap::new(),
            workers: Vec::new(),
        }),
    })
}

impl Registry {
    /// The slot of `api_id`, assigning a new one the first time it is seen. Called while a
    /// configuration is loaded, never per request.
    pub fn api_slot(&self, api_id: &str, name: &str) -> usize {
        let mut g = self.inner.lock();
        if let Some(&slot) = g.by_id.get(api_id) {
            if g.apis[slot].name != name {
                g.apis[slot].name = name.to_string();
            }
            return slot;
        }
        let slot = g.apis.len();
        g.apis.push(ApiLabels {
            api_id: api_id.to_string(),
            name: name.to_string(),
        });
        g.by_id.insert(api_id.to_string(), slot);
        slot
    }

    fn slots(&self) -> usize {
        self.inner.lock().apis.len()
    }

    /// Registers a worker and hands it its counters.
    pub fn worker(&'static self) -> WorkerMetrics {
        let slots = self.slots();
        let block = Arc::new(Block::grown_from(None, slots));
        let mut g = self.inner.lock();
        let index = g.workers.len();
        g.workers.push(Arc::clone(&block));
        WorkerMetrics {
            registry: self,
            index,
            block,
        }
    }
}

/// A worker's handle on its own counters: the whole call surface of the request path.
pub struct WorkerMetrics {
    registry: &'static Registry,
    index: usize,
    block: Arc<Block>,
}

impl WorkerMetrics {
    /// Makes room for API slots added by a reload. The worker calls it when it picks up a new
    /// configuration snapshot; slots are assigned before a snapshot is published, so every API a
    /// request can reach then has its cells. The copy happens on the only writing thread, so no
    /// increment is lost between copying and publishing.
    pub fn sync(&mut self) {
        let slots = self.registry.slots();
        if slots <= self.block.apis.len() {
            return;
        }
        let grown = Arc::new(Block::grown_from(Some(&self.block), slots));
        self.registry.inner.lock().workers[self.index] = Arc::clone(&grown);
        self.block = grown;
    }

    /// A request began (head parsed, or a malformed head about to be answered).
    #[inline]
    pub fn request_begun(&self) {
        self.block.request_begun();
    }

    /// A request ended: `status` 0 when no response was sent.
    #[inline]
    pub fn request_ended(
        &self,
        slot: usize,
        status: u16,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        self.block.request_ended(slot, status, total, upstream);
    }

    /// A hook call ended.
    #[inline]
    pub fn hook_ended(
        &self,
        slot: usize,
        hook: HookType,
        grpc: bool,
        took: Duration,
        outcome: HookOutcome,
    ) {
        let h = match hook {
            HookType::Pre => 0,
            HookType::CustomKeyCheck => 1,
            HookType::PostKeyAuth => 2,
            HookType::Post => 3,
            HookType::Response => 4,
            HookType::Unknown => return,
        };
        self.block
            .hook_ended(slot, h, usize::from(grpc), took, outcome);
    }

    /// Sets this worker's open-connection gauge.
    #[inline]
    pub fn set_connections(&self, n: usize) {
        self.block.set_connections(n);
    }
}

/// Per-request timing kept on the connection, for the metrics and the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestMark {
    /// When the request began; `None` when no request is in progress.
    pub begun: Option<Instant>,
    /// The request head was parsed (method, path and headers can be read from it).
    pub head_parsed: bool,
    /// Status of the response queued for the client (0 = none yet).
    pub status: u16,
    /// When the request was sent upstream.
    pub upstream_sent: Option<Instant>,
    /// Upstream time: request sent to response head received.
    pub upstream: Option<Duration>,
    /// When the hook call in progress was sent.
    pub hook_sent: Option<Instant>,
    /// Total time spent in hook calls.
    pub hooks: Duration,
    /// Bytes written to the client for this request.
    pub bytes_out: u64,
}

/// Values from outside the workers that a scrape reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    /// Successful restarts of the pipe plugin child (`None`: no pipe child configured).
    pub plugin_restarts: Option<u64>,
    /// Connections opened to the gRPC plugin server after the first one.
    pub grpc_reconnects: Option<u64>,
}
