//! [`PipeClient`]: the supervised plugin child spoken to over its stdin/stdout.
//!
//! Threads and data flow (one set of reader/writer/stderr threads per child generation):
//! ```text
//! worker ──dispatch()──▶ pending table (id → worker, tag, deadline)      ┌─ supervisor: deadlines,
//!    │                   out buffer ──▶ writer ──write()──▶ child stdin   │  hung child, death,
//!    ▲                                                                   │  restart with backoff
//!    └── reply channel + Waker ◀── reader ◀──read()── child stdout       └─ stderr: log lines
//!                            (first worker's event loop, or the reader thread)
//! ```
//! - **Workers never block on the pipe.** `dispatch` encodes the frame straight into the current
//!   child's shared out buffer (one short lock, no allocation once the buffers have grown). Frames
//!   queued while a write is in progress are coalesced and written together by the next `write`.
//! - **Inline writes** (`inline_write`, on by default): if nobody is writing, the dispatching thread
//!   takes the write token and writes the queue itself with a *non-blocking* `write`; whatever the
//!   pipe does not take goes to the writer thread, which waits for room with `poll(2)`. This skips
//!   waking the writer thread, which is most of a call's latency when calls come one at a time
//!   (measured here with `cat` as the child: ~17-20 µs vs ~22-33 µs per call; with a Python child
//!   ~57 vs ~95 µs). A worker thread still never waits for the child.
//! - **One reader** reads large chunks (at least 256 KiB) into a [`FrameDecoder`], decodes every
//!   complete frame, takes the pending table lock once per chunk, sends each reply on its worker's
//!   channel and wakes each worker once per chunk.
//! - **The reader is a worker when it can.** The gateway's first worker takes the child's stdout
//!   into its own event loop ([`ReplyPipe`]) and reads the replies there, routing the other
//!   workers' replies as above; its own need no wake-up. A reply then crosses two threads (child,
//!   worker) instead of three. The reader thread stays off the pipe while a worker holds it, and
//!   reads again when the worker lets go (restart, shutdown) or the child is reaped.
//! - **Spin, then park.** Waking a parked thread on the other vCPU costs ~70-110 µs here while a
//!   pipe hop between two running threads costs ~2 µs. While replies are still outstanding, the
//!   reader keeps polling for `reader_spin` (default 20 µs) before it blocks in `poll(2)`. After
//!   the last outstanding reply it parks at once: on 2 vCPUs a spinning reader would hold the CPU
//!   the worker it just woke needs. An idle gateway sleeps and costs no CPU. (On the loaded CI-like
//!   machine the spin measured neither better nor worse than none; it is configurable.)
//! - **Exactly one answer per call.** Whoever removes a call from the pending table (reader,
//!   supervisor on timeout or death, `dispatch` itself on a failed enqueue) is the only one who
//!   answers it, so a call is answered once and only once.
//! - **Supervision.** A child that exits, closes stdout, writes garbage or an oversized frame, or
//!   stops answering after calls timed out (`hung_after`) is killed and reaped; every pending call
//!   gets [`CallError::ChildDied`] at once, and the child is restarted: immediately the first time,
//!   then with exponential backoff up to `restart_backoff_max`. While it is down `dispatch` answers
//!   [`CallError::Unavailable`] immediately.

pub use super::{CallError, CoprocessError, HookReply};

use super::frame::{
    decode_child_message, encode_dispatch, encode_event, encode_frame, encode_hello, ChildMessage,
    FrameDecoder, FrameError, HelloReply, LoadBundle, ReplyOutcome, DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
};
use super::object::Object;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long the supervisor sleeps when nothing is due (a safety net; it is woken by events).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// A child that stayed up this long has its restart backoff reset.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// First non-immediate restart delay; doubled per consecutive death.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// How long a dying child may take to exit on its own before it is killed.
const EXIT_WAIT: Duration = Duration::from_millis(200);
/// Timed-out and cancelled ids remembered so that their late replies are recognised.
const FORGOTTEN_CAP: usize = 65_536;
/// Timeout for re-sending remembered bundles to a restarted child.
const BUNDLE_RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest stderr line logged as one line.
const MAX_STDERR_LINE: u64 = 16 << 10;
/// Requested pipe buffer size (F_SETPIPE_SZ); larger pipes mean fewer, larger writes and reads.
const PIPE_SIZE: i32 = 1 << 20;
/// `Generation::attached` when no worker reads the child's stdout (the reader thread does).
const NO_WORKER: usize = usize::MAX;

/// The worker reading the pipe (see [`ReplyPipe`]) and the list its own replies go to.
type OwnReplies<'a> = Option<(usize, &'a mut Vec<HookReply>)>;

/// Settings of the pipe transport (built from `coprocess_options`, or by hand in tests).
#[derive(Debug, Clone)]
pub struct PipeOptions {
    /// Plugin name used in log lines (`[name:pid]`).
    pub name: String,
    /// argv of the child; `command[0]` is looked up on `PATH`.
    pub command: Vec<String>,
    /// Extra environment variables for the child (on top of the gateway's).
    pub env: Vec<(String, String)>,
    /// Working directory of the child; `None` = the gateway's.
    pub workdir: Option<PathBuf>,
    /// Largest frame accepted from or sent to the child.
    pub max_frame_bytes: usize,
    /// Upper bound of the restart backoff.
    pub restart_backoff_max: Duration,
    /// A child that has had calls time out and sent nothing for this long is killed and restarted.
    pub hung_after: Duration,
    /// How long the child has to answer `hello`.
    pub handshake_timeout: Duration,
    /// How long the reader keeps polling the pipe, while replies are outstanding, before it blocks
    /// (0 = never spin).
    pub reader_spin: Duration,
    /// How long the writer keeps polling its queue after a write before it blocks (0 = never spin).
    pub writer_spin: Duration,
    /// Let the dispatching thread write queued frames itself (non-blocking) when no write is in
    /// progress, instead of always waking the writer thread (see `OutQueue`).
    pub inline_write: bool,
}

impl PipeOptions {
    /// Defaults for `command`: 64 MiB frames, 30 s max backoff, hung after 5 s, 10 s handshake,
    /// 20 µs reader spin, no writer spin.
    pub fn new(command: Vec<String>) -> PipeOptions {
        PipeOptions {
            name: default_name(&command),
            command,
            env: Vec::new(),
            workdir: None,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            restart_backoff_max: Duration::from_secs(30),
            hung_after: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            reader_spin: Duration::from_micros(20),
            writer_spin: Duration::ZERO,
            inline_write: true,
        }
    }
}

impl From<&crate::config::CoprocessOptions> for PipeOptions {
    fn from(c: &crate::config::CoprocessOptions) -> PipeOptions {
        let mut o = PipeOptions::new(c.pipe_command.clone());
        o.env = c.pipe_env.clone();
        o.workdir = c.pipe_workdir.clone();
        if c.max_frame_bytes > 0 {
            o.max_frame_bytes = c.max_frame_bytes;
        }
        if !c.restart_backoff_max.is_zero() {
            o.restart_backoff_max = c.restart_backoff_max;
        }
        // A slow hook alone must not look like a hung child.
        o.hung_after = o.hung_after.max(c.hook_timeout * 2);
        o
    }
}

/// The file stem of the script (or program) a command runs: `python3 plugins/auth.py` → `auth`.
fn default_name(command: &[String]) -> String {
    let pick = command
        .iter()
        .skip(1)
        .rev()
        .find(|a| !a.starts_with('-') && (a.contains('.') || a.contains('/')))
        .or_else(|| command.first());
    pick.and_then(|a| Path::new(a).file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "plugin".to_string())
}

/// A worker's registration: its id for `dispatch`, and the channel its replies arrive on.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Pass as `worker` to [`PipeClient::dispatch`].
    pub id: usize,
    /// Replies to this worker's calls; the client wakes the worker's `Waker` after sending.
    pub replies: Receiver<HookReply>,
}

/// The supervised plugin child. See the module docs for the design.
pub struct PipeClient {
    inner: Arc<Inner>,
}

struct WorkerSlot {
    tx: Sender<HookReply>,
    waker: Arc<mio::Waker>,
}

enum Target {
    Hook { worker: usize, tag: u64 },
    Bundle(Sender<Result<(), CallError>>),
}

struct Pending {
    gen: u64,
    deadline: Instant,
    target: Target,
}

/// Ids whose calls were timed out or cancelled, so their late replies are not "unknown".
#[derive(Default)]
struct Forgotten {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Forgotten {
    fn add(&mut self, id: u64) {
        if self.order.len() >= FORGOTTEN_CAP {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id);
        self.order.push_back(id);
    }

    fn take(&mut self, id: u64) -> bool {
        self.set.remove(&id)
    }
}

#[derive(Debug, Clone)]
enum DeathCause {
    /// stdout closed (the child exited or closed it).
    Eof,
    /// Reading stdout failed.
    ReadError(String),
    /// Writing stdin failed (the child closed it or died).
    WriteError(String),
    /// Garbage or an oversized frame: the stream cannot be trusted.
    Protocol(String),
    /// Calls timed out and the child sent nothing for `hung_after`.
    Hung(Duration),
}

impl DeathCause {
    /// Whether the child should be killed at once rather than given time to exit.
    fn kill_now(&self) -> bool {
        matches!(self, DeathCause::Protocol(_) | DeathCause::Hung(_))
    }
}

impl std::fmt::Display for DeathCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeathCause::Eof => f.write_str("closed its stdout"),
            DeathCause::ReadError(e) => write!(f, "could not be read from ({e})"),
            DeathCause::WriteError(e) => write!(f, "could not be written to ({e})"),
            DeathCause::Protocol(e) => write!(f, "broke the protocol ({e}); killed"),
            DeathCause::Hung(d) => write!(
                f,
                "is hung (calls timed out and nothing received for {d:?}); killed"
            ),
        }
    }
}

struct State {
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
    forgotten: Forgotten,
    /// When the sleeping supervisor wakes on its own; `None` while it is busy.
    sup_wake_at: Option<Instant>,
    deaths: Vec<(Arc<Generation>, DeathCause)>,
    /// First timeout since the last frame from the child.
    stall_since: Option<Instant>,
    shutdown: bool,
}

impl State {
    fn take(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        self.deadlines.remove(&(p.deadline, id));
        Some(p)
    }
}

/// The frames waiting to be written, and who is writing.
struct OutBuf {
    buf: Vec<u8>,
    /// An empty buffer with capacity, swapped in when `buf` is taken for writing.
    spare: Vec<u8>,
    /// Someone (the writer thread or an inline writer) holds the write token. Only the holder
    /// writes to stdin, so frames are never interleaved.
    writing: bool,
    /// No more frames are accepted; the writer closes stdin once `buf` is written.
    closed: bool,
    /// The writer has exited (or stdin failed); nothing will be written any more.
    gone: bool,
    /// The writer thread is blocked on the condvar.
    parked: bool,
}

/// The child's stdin and the frames queued for it.
///
/// With `inline` set, the thread that queues a frame while nobody is writing takes the write token
/// and writes the queue itself with a non-blocking `write` (it never waits: whatever the pipe does
/// not take is left for the writer thread, which waits for `POLLOUT`). This saves waking the writer
/// thread, which on an idle 2-vCPU machine costs tens of microseconds per call.
struct OutQueue {
    m: Mutex<OutBuf>,
    cv: Condvar,
    has_data: AtomicBool,
    /// Beyond this many queued bytes the child is not keeping up and calls are refused.
    backlog_limit: usize,
    inline: bool,
    /// Read-locked while writing; taken (closed) by the writer thread on shutdown, under the write
    /// lock, so no write can use a closed (or reused) descriptor.
    stdin: RwLock<Option<File>>,
}

enum EnqueueError {
    Closed,
    Backlog,
    Frame(FrameError),
}

/// How many times an inline writer writes frames other threads queued meanwhile before it hands
/// the rest to the writer thread.
const INLINE_ROUNDS: usize = 4;

impl OutQueue {
    fn new(backlog_limit: usize, inline: bool, stdin: File) -> OutQueue {
        OutQueue {
            m: Mutex::new(OutBuf {
                buf: Vec::with_capacity(64 << 10),
                spare: Vec::with_capacity(64 << 10),
                writing: false,
                closed: false,
                gone: false,
                parked: false,
            }),
            cv: Condvar::new(),
            has_data: AtomicBool::new(false),
            backlog_limit,
            inline,
            stdin: RwLock::new(Some(stdin)),
        }
    }

    fn enqueue(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<usize, FrameError>,
    ) -> Result<(), EnqueueError> {
        let ob = self.push(encode)?;
        self.write_queued(ob);
        Ok(())
    }

    /// Appends a frame without writing it: the caller batches the frames of one event-loop round
    /// and writes them with one [`OutQueue::flush`] (one write for the child to read, one batch
    /// of replies back), instead of one write per call.
    fn enqueue_deferred(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<usize, FrameError>,
    ) -> Result<(), EnqueueError> {
        let _ob = self.push(encode)?;
        self.has_data.store(true, Ordering::Release);
        Ok(())
    }

    /// Appends one frame to the queue (refused when closed or over the backlog limit) and
    /// returns the still-held lock, so the caller decides whether it is written now.
    fn push(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<usize, FrameError>,
    ) -> Result<parking_lot::MutexGuard<'_, OutBuf>, EnqueueError> {
        let mut ob = self.m.lock();
        if ob.closed || ob.gone {
            return Err(EnqueueError::Closed);
        }
        if ob.buf.len() > self.backlog_limit {
            return Err(EnqueueError::Backlog);
        }
        encode(&mut ob.buf).map_err(EnqueueError::Frame)?;
        Ok(ob)
    }

    /// Writes what [`OutQueue::enqueue_deferred`] queued (nothing to do when the queue is empty,
    /// which costs one atomic load).
    fn flush(&self) {
        if !self.has_data.load(Ordering::Acquire) {
            return;
        }
        let ob = self.m.lock();
        if ob.buf.is_empty() || ob.closed || ob.gone {
            return;
        }
        self.write_queued(ob);
    }

    /// Gets the queued frames written: inline (non-blocking, by this thread) when inline writes
    /// are on and no write is in progress, else by waking the writer thread.
    fn write_queued<'a>(&'a self, mut ob: parking_lot::MutexGuard<'a, OutBuf>) {
        if !self.inline || ob.writing {
            self.has_data.store(true, Ordering::Release);
            let wake = ob.parked && !ob.writing;
            drop(ob);
            if wake {
                self.cv.notify_one();
            }
            return;
        }
        // Inline write: take the token and the queue.
        ob.writing = true;
        for _ in 0..INLINE_ROUNDS {
            let spare = std::mem::take(&mut ob.spare);
            let mut data = std::mem::replace(&mut ob.buf, spare);
            self.has_data.store(false, Ordering::Release);
            drop(ob);
            let written = self.write_some(&data);
            ob = self.m.lock();
            if written < data.len() {
                // The pipe is full (or failed): put the rest back in front of newer frames.
                data.drain(..written);
                data.extend_from_slice(&ob.buf);
                ob.buf.clear();
                std::mem::swap(&mut ob.buf, &mut data);
                data.clear();
                ob.spare = data;
                self.has_data.store(true, Ordering::Release);
                break;
            }
            data.clear();
            ob.spare = data;
            if ob.buf.is_empty() || ob.closed || ob.gone {
                break;
            }
            self.has_data.store(true, Ordering::Release);
        }
        ob.writing = false;
        let wake = ob.parked && (!ob.buf.is_empty() || ob.closed);
        drop(ob);
        if wake {
            self.cv.notify_one();
        }
    }

    /// Writes as much of `data` as the pipe takes without blocking; errors count as "nothing
    /// written" (the writer thread retries, and reports the error).
    fn write_some(&self, data: &[u8]) -> usize {
        let guard = self.stdin.read();
        let Some(mut f) = guard.as_ref() else {
            return 0;
        };
        let mut done = 0;
        while done < data.len() {
            match f.write(&data[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        done
    }

    fn close(&self) {
        let mut ob = self.m.lock();
        ob.closed = true;
        drop(ob);
        self.cv.notify_one();
    }
}

/// One child process and its threads.
struct Generation {
    gen: u64,
    pid: u32,
    hello: HelloReply,
    out: OutQueue,
    dead: AtomicBool,
    death_reported: AtomicBool,
    handled: AtomicBool,
    /// The child has been waited for: all its output is in the pipe.
    reaped: AtomicBool,
    /// The reader thread has exited (after delivering everything it read).
    reader_done: AtomicBool,
    /// The child's stdout and the replies read from it; locked by whoever reads.
    reader: Mutex<ReplyReader>,
    /// `reader`'s descriptor, for a worker's event loop (valid while this generation lives).
    stdout_fd: RawFd,
    /// The worker that reads stdout in its event loop ([`ReplyPipe`]), or [`NO_WORKER`].
    attached: AtomicUsize,
    /// The reader thread, unparked when it must read again (detach, death).
    reader_thread: OnceLock<thread::Thread>,
    child: Mutex<Option<Child>>,
    started: Instant,
}

impl Generation {
    /// Records that the child was waited for, and wakes the reader thread to read what it left.
    fn mark_reaped(&self) {
        self.reaped.store(true, Ordering::Release);
        self.unpark_reader();
    }

    fn unpark_reader(&self) {
        if let Some(t) = self.reader_thread.get() {
            t.unpark();
        }
    }
}

/// The child's stdout, the decoder holding what was read from it, and scratch space for routing
/// replies (kept to avoid allocating per batch).
struct ReplyReader {
    stdout: File,
    dec: FrameDecoder,
    replies: Vec<(u64, Result<Object, CallError>)>,
    routed: Vec<(u64, Pending, Result<Object, CallError>)>,
    unknown_log: RateLimit,
    /// Calls were still pending after the last replies: more data is expected soon.
    expecting: bool,
}

/// A worker's hold on the current child's stdout: the worker registers [`ReplyPipe::fd`] in its
/// event loop and calls [`PipeClient::read_replies`] when it is readable.
///
/// Why: otherwise a reply crosses three threads (child, reader thread, worker), and waking a
/// sleeping thread on another vCPU costs tens of microseconds here; reading in the worker takes
/// the reader thread off the path. One worker at a time holds a generation's pipe; it routes the
/// other workers' replies as the reader thread would. Dropping the hold hands reading back to
/// the reader thread. Deregister the fd before dropping: the hold keeps the descriptor open, so
/// its number cannot be reused while it is registered.
pub struct ReplyPipe {
    gen: Arc<Generation>,
    worker: usize,
}

impl ReplyPipe {
    /// The read end of the child's stdout (non-blocking), to register for readable events.
    pub fn fd(&self) -> RawFd {
        self.gen.stdout_fd
    }

    /// Which child generation this is (compare with [`PipeClient::generation`]).
    pub fn generation(&self) -> u64 {
        self.gen.gen
    }
}

impl Drop for ReplyPipe {
    fn drop(&mut self) {
        self.gen.attached.store(NO_WORKER, Ordering::Release);
        self.gen.unpark_reader();
    }
}

#[derive(Clone)]
struct BundleEntry {
    api_id: String,
    bundle_hash: String,
    path: String,
    manifest: serde_json::Value,
}

#[derive(Default)]
struct Bundles {
    list: Vec<BundleEntry>,
    version: u64,
}

struct Inner {
    opts: PipeOptions,
    command_line: String,
    state: Mutex<State>,
    sup_cv: Condvar,
    current: RwLock<Option<Arc<Generation>>>,
    /// `current`'s generation number, 0 while none: one atomic load for workers to notice a
    /// restarted child.
    published: AtomicU64,
    workers: RwLock<Vec<WorkerSlot>>,
    next_id: AtomicU64,
    next_gen: AtomicU64,
    restarts: AtomicU64,
    last_hello: RwLock<HelloReply>,
    bundles: Mutex<Bundles>,
    shutting_down: AtomicBool,
}

impl PipeClient {
    /// Spawns the child, does the hello handshake (bounded by `handshake_timeout`) and starts the
    /// reader, writer, stderr and supervisor threads.
    ///
    /// An error names the command and the reason: not found, exited with status N (with its last
    /// stderr line), no hello in time, or a bad hello.
    pub fn start(opts: PipeOptions) -> Result<Arc<PipeClient>, CoprocessError> {
        if opts.command.is_empty() || opts.command[0].is_empty() {
            return Err(CoprocessError::Config(
                "coprocess_options.pipe_command is empty; set it to the plugin's argv, e.g. [\"python3\", \"plugin.py\"]"
                    .into(),
            ));
        }
        if opts.max_frame_bytes < 1024 {
            return Err(CoprocessError::Config(format!(
                "max_frame_bytes {} is too small; use at least 1024 (default 64 MiB)",
                opts.max_frame_bytes
            )));
        }
        let command_line = opts.command.join(" ");
        let inner = Arc::new(Inner {
            command_line,
            state: Mutex::new(State {
                pending: HashMap::with_capacity(1024),
                deadlines: BTreeSet::new(),
                forgotten: Forgotten::default(),
                sup_wake_at: None,
                deaths: Vec::new(),
                stall_since: None,
                shutdown: false,
            }),
            sup_cv: Condvar::new(),
            current: RwLock::new(None),
            published: AtomicU64::new(0),
            workers: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            next_gen: AtomicU64::new(1),
            restarts: AtomicU64::new(0),
            last_hello: RwLock::new(HelloReply::default()),
            bundles: Mutex::new(Bundles::default()),
            shutting_down: AtomicBool::new(false),
            opts,
        });
        let gen = spawn_generation(&inner)?;
        inner.publish(Arc::clone(&gen));
        let sup = Arc::clone(&inner);
        let spawned = thread::Builder::new()
            .name("pipegate-plugin-supervisor".into())
            .spawn(move || supervisor_loop(sup));
        if let Err(e) = spawned {
            inner.current.write().take();
            inner.published.store(0, Ordering::Release);
            gen.dead.store(true, Ordering::Release);
            gen.out.close();
            kill_and_reap(&gen);
            return Err(CoprocessError::Spawn {
                command: inner.command_line.clone(),
                reason: format!("cannot start the supervisor thread: {e}"),
            });
        }
        Ok(Arc::new(PipeClient { inner }))
    }

    /// Registers a gateway worker (a mio event loop). Replies to its calls arrive on the returned
    /// channel, after which the client calls `waker.wake()` (once per batch of replies).
    pub fn register_worker(&self, waker: Arc<mio::Waker>) -> WorkerHandle {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut w = self.inner.workers.write();
        w.push(WorkerSlot { tx, waker });
        WorkerHandle {
            id: w.len() - 1,
            replies: rx,
        }
    }

    /// Queues a hook call and returns its id at once; the answer (exactly one [`HookReply`]) comes
    /// on the worker's channel. `tag` is opaque and comes back in the reply. Never blocks on the
    /// pipe: while the child is down the answer is [`CallError::Unavailable`], sent immediately.
    pub fn dispatch<T: serde::Serialize + ?Sized>(
        &self,
        worker: usize,
        tag: u64,
        deadline: Instant,
        object: &T,
    ) -> u64 {
        let encode = |buf: &mut Vec<u8>, id, max| encode_dispatch(buf, id, object, max);
        self.dispatch_to(worker, tag, deadline, encode, false)
    }

    /// Like [`PipeClient::dispatch`], but the frame is only queued: it reaches the child at the
    /// caller's next [`PipeClient::flush`]. An event loop dispatches every call of one round
    /// this way and flushes once before it waits, so the child gets the round's calls in one
    /// write and answers them in one batch. The caller must flush before it blocks.
    pub fn dispatch_deferred<T: serde::Serialize + ?Sized>(
        &self,
        worker: usize,
        tag: u64,
        deadline: Instant,
        object: &T,
    ) -> u64 {
        let encode = |buf: &mut Vec<u8>, id, max| encode_dispatch(buf, id, object, max);
        self.dispatch_to(worker, tag, deadline, encode, true)
    }

    /// [`PipeClient::dispatch_deferred`] for an object that writes its own `dispatch` frame:
    /// `encode(buf, id, max_frame_bytes)` appends it (as
    /// [`RequestHookObject::encode_dispatch`](crate::middleware::hook_object::RequestHookObject::encode_dispatch)
    /// does, without serde).
    pub fn dispatch_encoded_deferred(
        &self,
        worker: usize,
        tag: u64,
        deadline: Instant,
        encode: impl FnOnce(&mut Vec<u8>, u64, usize) -> Result<usize, FrameError>,
    ) -> u64 {
        self.dispatch_to(worker, tag, deadline, encode, true)
    }

    /// The current child's generation number (0 while none is up). A worker holding a
    /// [`ReplyPipe`] of another generation drops it and attaches the new one.
    pub fn generation(&self) -> u64 {
        self.inner.published.load(Ordering::Acquire)
    }

    /// Hands the current child's stdout to `worker`'s event loop (see [`ReplyPipe`]). `None`
    /// while no child is up or while another worker holds it.
    pub fn attach_replies(&self, worker: usize) -> Option<ReplyPipe> {
        let gen = self.inner.current.read().clone()?;
        if gen.dead.load(Ordering::Acquire) {
            return None;
        }
        gen.attached
            .compare_exchange(NO_WORKER, worker, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(ReplyPipe { gen, worker })
    }

    /// Reads and routes every reply waiting on the pipe. The holder's own replies are appended
    /// to `own` (no channel, no wake-up: a channel would copy each reply twice more and allocate
    /// a block per 31 replies); other workers get theirs on their channels as usual. Returns
    /// false once the stream is finished (EOF, read error or garbage: the death is reported to
    /// the supervisor); then deregister and drop the hold.
    pub fn read_replies(&self, pipe: &ReplyPipe, own: &mut Vec<HookReply>) -> bool {
        let g = &pipe.gen;
        let own = Some((pipe.worker, own));
        let res = read_available(&self.inner, g, &mut g.reader.lock(), own);
        match res {
            Ok(_) => true,
            Err(cause) => {
                self.inner.report_death(g, cause);
                false
            }
        }
    }

    /// Writes the frames queued by [`PipeClient::dispatch_deferred`] (cheap when there are none).
    pub fn flush(&self) {
        if let Some(g) = self.inner.current.read().as_ref() {
            g.out.flush();
        }
    }

    fn dispatch_to(
        &self,
        worker: usize,
        tag: u64,
        deadline: Instant,
        encode: impl FnOnce(&mut Vec<u8>, u64, usize) -> Result<usize, FrameError>,
        deferred: bool,
    ) -> u64 {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let gen = inner.current.read().clone();
        let Some(gen) = gen.filter(|g| !g.dead.load(Ordering::Acquire)) else {
            inner.answer_now(worker, id, tag, Err(CallError::Unavailable));
            return id;
        };
        inner.add_pending(
            id,
            Pending {
                gen: gen.gen,
                deadline,
                target: Target::Hook { worker, tag },
            },
        );
        let max = inner.opts.max_frame_bytes;
        let encode = |buf: &mut Vec<u8>| encode(buf, id, max);
        let queued = if deferred {
            gen.out.enqueue_deferred(encode)
        } else {
            gen.out.enqueue(encode)
        };
        if let Err(e) = queued {
            let err = match e {
                EnqueueError::Closed => CallError::ChildDied,
                EnqueueError::Backlog => {
                    tracing::warn!(
                        "[{}] plugin is not reading its stdin fast enough; call refused",
                        inner.opts.name
                    );
                    CallError::Unavailable
                }
                EnqueueError::Frame(f) => CallError::Protocol(f.to_string()),
            };
            if inner.state.lock().take(id).is_some() {
                inner.answer_now(worker, id, tag, Err(err));
            }
            return id;
        }
        // The child may have died between the check above and the insert: its death handler may
        // have swept the table before our entry was in it. Whoever removes the entry answers it.
        if gen.dead.load(Ordering::Acquire) && inner.state.lock().take(id).is_some() {
            inner.answer_now(worker, id, tag, Err(CallError::ChildDied));
        }
        id
    }

    /// Forgets a call the worker gave up on (the client went away). No reply is sent for it; a
    /// late reply from the plugin is discarded.
    pub fn cancel(&self, call_id: u64) {
        let mut st = self.inner.state.lock();
        if st.take(call_id).is_some() {
            st.forgotten.add(call_id);
        }
    }

    /// Sends an event (Tyk's DispatchEvent; JSON text) to the child. Fire and forget: dropped,
    /// with a debug log, while the child is down.
    pub fn send_event(&self, payload: &str) {
        let inner = &self.inner;
        let gen = inner.current.read().clone();
        let max = inner.opts.max_frame_bytes;
        let sent =
            gen.is_some_and(|g| g.out.enqueue(|buf| encode_event(buf, payload, max)).is_ok());
        if !sent {
            tracing::debug!(
                "[{}] plugin down or event too large; event dropped",
                inner.opts.name
            );
        }
    }

    /// Tells the child to load an API's bundle and waits (up to `timeout`) for its answer. Blocking:
    /// for load time, not the request path. The bundle is remembered and sent again to every
    /// restarted child (unless the plugin rejected it).
    pub fn load_bundle(
        &self,
        api_id: &str,
        bundle_hash: &str,
        path: &Path,
        manifest: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(), CoprocessError> {
        let inner = &self.inner;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let entry = BundleEntry {
            api_id: api_id.to_string(),
            bundle_hash: bundle_hash.to_string(),
            path: abs.to_string_lossy().into_owned(),
            manifest: manifest.clone(),
        };
        let gen = {
            let mut b = inner.bundles.lock();
            b.list.retain(|e| e.api_id != api_id);
            b.list.push(entry.clone());
            b.version += 1;
            inner.current.read().clone()
        };
        let Some(gen) = gen else {
            return Err(CallError::Unavailable.into());
        };
        let res = inner.send_bundle(&gen, &entry, timeout);
        if let Err(CallError::PluginError(_)) = &res {
            let mut b = inner.bundles.lock();
            b.list
                .retain(|e| e.api_id != api_id || e.bundle_hash != bundle_hash);
            b.version += 1;
        }
        res.map_err(CoprocessError::from)
    }

    /// Whether the child implements `hook_name` (from its hello; no list = every hook).
    pub fn implements(&self, hook_name: &str) -> bool {
        match &self.inner.last_hello.read().hooks {
            None => true,
            Some(list) => list.iter().any(|h| h == hook_name),
        }
    }

    /// Whether a child is up, handshaken and not known to be dying.
    pub fn is_healthy(&self) -> bool {
        self.inner
            .current
            .read()
            .as_ref()
            .is_some_and(|g| !g.dead.load(Ordering::Acquire))
    }

    /// How many times the child has been restarted successfully.
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }

    /// Whether the child accepts bodies as files (`"mmap": true` in its hello).
    pub fn supports_mmap(&self) -> bool {
        self.inner.last_hello.read().mmap
    }

    /// The plugin name used in logs.
    pub fn name(&self) -> &str {
        &self.inner.opts.name
    }

    /// The current child's pid, if one is up.
    pub fn pid(&self) -> Option<u32> {
        self.inner.current.read().as_ref().map(|g| g.pid)
    }

    /// Graceful stop: no more restarts; close the child's stdin (EOF = stop), wait up to `grace`,
    /// then SIGTERM, wait up to `grace`, then SIGKILL. Pending calls get `ChildDied`. Idempotent.
    pub fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        if inner.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut st = inner.state.lock();
            st.shutdown = true;
        }
        inner.sup_cv.notify_all();
        let gen = inner.current.write().take();
        inner.published.store(0, Ordering::Release);
        if let Some(g) = gen {
            g.dead.store(true, Ordering::Release);
            g.out.close();
            if let Some(mut child) = g.child.lock().take() {
                let status = stop_child(&mut child, grace);
                g.mark_reaped();
                tracing::info!(
                    "[{}:{}] plugin stopped ({})",
                    inner.opts.name,
                    g.pid,
                    describe_status(status)
                );
            }
        }
        let all: Vec<(u64, Pending)> = {
            let mut st = inner.state.lock();
            st.deadlines.clear();
            st.pending.drain().collect()
        };
        inner.deliver(
            all.into_iter()
                .map(|(id, p)| (id, p, Err(CallError::ChildDied))),
            None,
        );
    }
}

impl Drop for PipeClient {
    fn drop(&mut self) {
        self.shutdown(Duration::from_millis(500));
    }
}

impl Inner {
    fn add_pending(&self, id: u64, p: Pending) {
        let deadline = p.deadline;
        let mut st = self.state.lock();
        st.deadlines.insert((deadline, id));
        st.pending.insert(id, p);
        let notify = st.sup_wake_at.is_some_and(|w| deadline < w);
        drop(st);
        if notify {
            self.sup_cv.notify_one();
        }
    }

    /// Answers a call that never reached the pending table (or was just taken out of it).
    fn answer_now(&self, worker: usize, call_id: u64, tag: u64, result: Result<Object, CallError>) {
        let workers = self.workers.read();
        match workers.get(worker) {
            Some(w) => {
                let _ = w.tx.send(HookReply {
                    call_id,
                    tag,
                    result,
                });
                if let Err(e) = w.waker.wake() {
                    tracing::debug!("waking worker {worker} failed: {e}");
                }
            }
            None => tracing::error!(
                "dispatch from unregistered worker {worker}; call {call_id} dropped"
            ),
        }
    }

    /// Sends answers for calls already removed from the pending table, waking each worker once;
    /// `own` is the reading worker, whose replies go straight into its list.
    fn deliver(
        &self,
        items: impl IntoIterator<Item = (u64, Pending, Result<Object, CallError>)>,
        mut own: OwnReplies<'_>,
    ) {
        let workers = self.workers.read();
        // Which workers to wake, as a bit set (no allocation per batch of replies); workers past
        // the 128th are woken per reply.
        let mut wake: u128 = 0;
        for (call_id, p, result) in items {
            match p.target {
                Target::Hook { worker, tag } => {
                    let reply = HookReply {
                        call_id,
                        tag,
                        result,
                    };
                    if let Some((_, list)) = own.as_mut().filter(|(w, _)| *w == worker) {
                        list.push(reply);
                    } else if let Some(w) = workers.get(worker) {
                        let _ = w.tx.send(reply);
                        if worker < 128 {
                            wake |= 1 << worker;
                        } else if let Err(e) = w.waker.wake() {
                            tracing::debug!("waking worker {worker} failed: {e}");
                        }
                    }
                }
                Target::Bundle(tx) => {
                    let _ = tx.send(result.map(|_| ()));
                }
            }
        }
        for (i, w) in workers.iter().enumerate().take(128) {
            if wake & (1 << i) != 0 {
                if let Err(e) = w.waker.wake() {
                    tracing::debug!("waking worker {i} failed: {e}");
                }
            }
        }
    }

    fn report_death(&self, g: &Arc<Generation>, cause: DeathCause) {
        g.dead.store(true, Ordering::Release);
        if g.death_reported.swap(true, Ordering::AcqRel) {
            return;
        }
        self.state.lock().deaths.push((Arc::clone(g), cause));
        self.sup_cv.notify_one();
    }

    /// Makes `g` the child that receives calls (after re-sending remembered bundles).
    fn publish(&self, g: Arc<Generation>) {
        *self.last_hello.write() = g.hello.clone();
        let gen = g.gen;
        *self.current.write() = Some(g);
        self.published.store(gen, Ordering::Release);
    }

    fn send_bundle(
        &self,
        g: &Arc<Generation>,
        b: &BundleEntry,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let deadline = Instant::now() + timeout;
        self.add_pending(
            id,
            Pending {
                gen: g.gen,
                deadline,
                target: Target::Bundle(tx),
            },
        );
        let msg = LoadBundle {
            id,
            api_id: &b.api_id,
            bundle_hash: &b.bundle_hash,
            path: &b.path,
            manifest: &b.manifest,
        };
        let max = self.opts.max_frame_bytes;
        if let Err(e) = g.out.enqueue(|buf| encode_frame(buf, &msg, max)) {
            self.state.lock().take(id);
            return Err(match e {
                EnqueueError::Closed => CallError::ChildDied,
                EnqueueError::Backlog => CallError::Unavailable,
                EnqueueError::Frame(f) => CallError::Protocol(f.to_string()),
            });
        }
        // Poll in slices: this may run on the supervisor thread, which then is not expiring
        // deadlines or handling deaths, so check both here.
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => return r,
                Err(RecvTimeoutError::Disconnected) => return Err(CallError::ChildDied),
                Err(RecvTimeoutError::Timeout) => {
                    let dead = g.dead.load(Ordering::Acquire);
                    if dead || Instant::now() >= deadline {
                        let mut st = self.state.lock();
                        if st.take(id).is_some() {
                            st.forgotten.add(id);
                            return Err(if dead {
                                CallError::ChildDied
                            } else {
                                CallError::Timeout
                            });
                        }
                        // Someone else answered; the answer is in the channel.
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spawning and the handshake
// ---------------------------------------------------------------------------------------------

fn spawn_generation(inner: &Arc<Inner>) -> Result<Arc<Generation>, CoprocessError> {
    let opts = &inner.opts;
    let spawn_err = |reason: String| CoprocessError::Spawn {
        command: inner.command_line.clone(),
        reason,
    };
    if let Some(dir) = &opts.workdir {
        if !dir.is_dir() {
            return Err(spawn_err(format!(
                "working directory {} does not exist; check coprocess_options.pipe_workdir",
                dir.display()
            )));
        }
    }
    let mut cmd = Command::new(&opts.command[0]);
    cmd.args(&opts.command[1..])
        .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = &opts.workdir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|e| {
        spawn_err(match e.kind() {
            io::ErrorKind::NotFound => format!(
                "{} not found ({e}); check coprocess_options.pipe_command and PATH",
                opts.command[0]
            ),
            io::ErrorKind::PermissionDenied => {
                format!("{} is not executable ({e})", opts.command[0])
            }
            _ => e.to_string(),
        })
    })?;
    let pid = child.id();
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(spawn_err("the child's stdio pipes are missing".into()));
    };
    let mut stdin = File::from(OwnedFd::from(stdin));
    let mut stdout = File::from(OwnedFd::from(stdout));
    set_pipe_size(stdin.as_raw_fd());
    set_pipe_size(stdout.as_raw_fd());
    let last_stderr = Arc::new(Mutex::new(String::new()));
    let (stderr_done_tx, stderr_done) = crossbeam_channel::bounded::<()>(0);
    {
        let name = opts.name.clone();
        let last = Arc::clone(&last_stderr);
        let spawned = thread::Builder::new()
            .name("pipegate-plugin-stderr".into())
            .spawn(move || stderr_loop(&name, pid, stderr, &last, stderr_done_tx));
        if let Err(e) = spawned {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_err(format!("cannot start the stderr thread: {e}")));
        }
    }

    let handshake = handshake(inner, &mut stdin, &mut stdout);
    let hello = match handshake {
        Ok((hello, decoder)) => (hello, decoder),
        Err(HandshakeFail::ChildGone(detail)) => {
            // Give the child a moment to finish exiting so the status and last stderr line are known.
            let status = wait_exit(&mut child, Duration::from_secs(2)).or_else(|| {
                let _ = child.kill();
                child.wait().ok()
            });
            let _ = stderr_done.recv_timeout(Duration::from_millis(500));
            let last = last_stderr.lock().clone();
            let mut reason = format!("{} before answering hello", describe_exit(status));
            if !detail.is_empty() {
                reason.push_str(&format!(" ({detail})"));
            }
            if !last.is_empty() {
                reason.push_str(&format!("; its last stderr line: {last:?}"));
            } else {
                reason.push_str("; it wrote nothing to stderr");
            }
            return Err(CoprocessError::Handshake {
                command: inner.command_line.clone(),
                reason,
            });
        }
        Err(HandshakeFail::Bad(reason)) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = stderr_done.recv_timeout(Duration::from_millis(200));
            let last = last_stderr.lock().clone();
            let mut reason = reason;
            if !last.is_empty() {
                reason.push_str(&format!("; its last stderr line: {last:?}"));
            }
            return Err(CoprocessError::Handshake {
                command: inner.command_line.clone(),
                reason,
            });
        }
    };
    let (hello, decoder) = hello;
    let stdin_fd = stdin.as_raw_fd();
    if let Err(e) = set_nonblocking(stdout.as_raw_fd()).and_then(|_| set_nonblocking(stdin_fd)) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(spawn_err(format!(
            "cannot make the child's pipes non-blocking: {e}"
        )));
    }
    let gen = Arc::new(Generation {
        gen: inner.next_gen.fetch_add(1, Ordering::Relaxed),
        pid,
        hello,
        out: OutQueue::new(
            opts.max_frame_bytes.max(64 << 20).saturating_mul(2),
            opts.inline_write,
            stdin,
        ),
        dead: AtomicBool::new(false),
        death_reported: AtomicBool::new(false),
        handled: AtomicBool::new(false),
        reaped: AtomicBool::new(false),
        reader_done: AtomicBool::new(false),
        stdout_fd: stdout.as_raw_fd(),
        reader: Mutex::new(ReplyReader {
            stdout,
            dec: decoder,
            replies: Vec::with_capacity(256),
            routed: Vec::with_capacity(256),
            unknown_log: RateLimit::default(),
            expecting: false,
        }),
        attached: AtomicUsize::new(NO_WORKER),
        reader_thread: OnceLock::new(),
        child: Mutex::new(Some(child)),
        started: Instant::now(),
    });
    let started = start_io_threads(inner, &gen, stdin_fd);
    if let Err(e) = started {
        kill_and_reap(&gen);
        return Err(spawn_err(format!("cannot start the pipe threads: {e}")));
    }
    tracing::info!(
        "[{}:{}] plugin ready{} (protocol {}, hooks: {}, mmap: {})",
        opts.name,
        pid,
        gen.hello
            .name
            .as_deref()
            .map(|n| format!(" as {n:?}"))
            .unwrap_or_default(),
        PROTOCOL_VERSION,
        gen.hello
            .hooks
            .as_ref()
            .map_or_else(|| "all".to_string(), |h| h.join(", ")),
        gen.hello.mmap
    );
    Ok(gen)
}

fn start_io_threads(inner: &Arc<Inner>, gen: &Arc<Generation>, stdin_fd: RawFd) -> io::Result<()> {
    let (i, g) = (Arc::clone(inner), Arc::clone(gen));
    thread::Builder::new()
        .name("pipegate-plugin-writer".into())
        .spawn(move || writer_loop(&i, &g, stdin_fd))?;
    let (i, g) = (Arc::clone(inner), Arc::clone(gen));
    let spawned = thread::Builder::new()
        .name("pipegate-plugin-reader".into())
        .spawn(move || reader_loop(&i, &g));
    if let Err(e) = spawned {
        gen.out.close();
        return Err(e);
    }
    Ok(())
}

enum HandshakeFail {
    /// EOF or EPIPE: the child exited (or closed its pipes) before answering.
    ChildGone(String),
    /// The child answered something that is not a valid hello, or nothing in time.
    Bad(String),
}

fn handshake(
    inner: &Inner,
    stdin: &mut File,
    stdout: &mut File,
) -> Result<(HelloReply, FrameDecoder), HandshakeFail> {
    let opts = &inner.opts;
    let mut buf = Vec::with_capacity(128);
    let gateway = format!("pipegate/{}", env!("CARGO_PKG_VERSION"));
    encode_hello(&mut buf, &gateway, opts.max_frame_bytes)
        .map_err(|e| HandshakeFail::Bad(e.to_string()))?;
    if let Err(e) = stdin.write_all(&buf) {
        return Err(HandshakeFail::ChildGone(format!(
            "writing hello failed: {e}"
        )));
    }
    set_nonblocking(stdout.as_raw_fd())
        .map_err(|e| HandshakeFail::Bad(format!("cannot poll stdout: {e}")))?;
    let mut dec = FrameDecoder::new(opts.max_frame_bytes);
    let deadline = Instant::now() + opts.handshake_timeout;
    let printed_hint = "is the plugin printing to stdout? Logs must go to stderr";
    loop {
        match dec.next_frame() {
            Ok(Some(frame)) => {
                let hello = match decode_child_message(frame) {
                    Ok(ChildMessage::Hello(h)) => h,
                    Ok(ChildMessage::Ignored(_)) => continue,
                    Ok(ChildMessage::Reply(r)) => {
                        return Err(HandshakeFail::Bad(format!(
                            "bad hello: the first message answers request {} instead of hello",
                            r.id
                        )))
                    }
                    Err(e) => {
                        return Err(HandshakeFail::Bad(format!(
                            "bad hello: {e} ({printed_hint})"
                        )))
                    }
                };
                if hello.protocol != Some(PROTOCOL_VERSION) {
                    return Err(HandshakeFail::Bad(format!(
                        "bad hello: the plugin speaks protocol {}, pipegate speaks {PROTOCOL_VERSION}",
                        hello.protocol.map_or_else(|| "(none given)".to_string(), |p| p.to_string())
                    )));
                }
                return Ok((hello, dec));
            }
            Ok(None) => {}
            Err(e) => return Err(HandshakeFail::Bad(format!("bad hello: {e}"))),
        }
        match dec.read_from(stdout) {
            Ok(0) => return Err(HandshakeFail::ChildGone(String::new())),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(HandshakeFail::ChildGone(format!(
                    "reading stdout failed: {e}"
                )))
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HandshakeFail::Bad(format!(
                "no hello within {:?}; the plugin must read frames from stdin and answer the hello \
                 (see protocol/PROTOCOL.md)",
                opts.handshake_timeout
            )));
        }
        if let Err(e) = poll_readable(stdout.as_raw_fd(), deadline - now) {
            return Err(HandshakeFail::Bad(format!("cannot poll stdout: {e}")));
        }
    }
}

fn stderr_loop(name: &str, pid: u32, stderr: ChildStderr, last: &Mutex<String>, _done: Sender<()>) {
    let mut r = BufReader::with_capacity(8 << 10, stderr);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match (&mut r).take(MAX_STDERR_LINE).read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let text = String::from_utf8_lossy(&line);
                tracing::info!(target: "pipegate::plugin", "[{name}:{pid}] {text}");
                *last.lock() = text.into_owned();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("[{name}:{pid}] reading stderr failed: {e}");
                break;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writer and reader
// ---------------------------------------------------------------------------------------------

fn writer_loop(inner: &Inner, g: &Arc<Generation>, fd: RawFd) {
    if let Err(e) = drain_out(&g.out, inner.opts.writer_spin, &g.dead, fd) {
        if !g.dead.load(Ordering::Acquire) {
            inner.report_death(g, DeathCause::WriteError(e.to_string()));
        }
    }
}

/// The writer thread's work: writes whatever is queued (when no inline writer holds the token)
/// until the queue is closed and drained, then closes stdin. Returns the write error that ended
/// it early, if any; `dead` makes it give up instead of waiting for a full pipe.
fn drain_out(out: &OutQueue, spin: Duration, dead: &AtomicBool, fd: RawFd) -> io::Result<()> {
    let mut local: Vec<u8> = Vec::with_capacity(64 << 10);
    loop {
        if !spin.is_zero() && !out.has_data.load(Ordering::Acquire) {
            let until = Instant::now() + spin;
            while !out.has_data.load(Ordering::Acquire) && Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        {
            let mut ob = out.m.lock();
            loop {
                if !ob.writing {
                    if !ob.buf.is_empty() {
                        break;
                    }
                    if ob.closed {
                        // Closed and drained: closing stdin tells the child to stop.
                        ob.gone = true;
                        drop(ob);
                        out.stdin.write().take();
                        return Ok(());
                    }
                }
                ob.parked = true;
                out.cv.wait(&mut ob);
                ob.parked = false;
            }
            ob.writing = true;
            std::mem::swap(&mut ob.buf, &mut local);
            out.has_data.store(false, Ordering::Release);
        }
        let res = write_all_polling(out, dead, fd, &local);
        let mut ob = out.m.lock();
        ob.writing = false;
        if let Err(e) = res {
            ob.gone = true;
            return Err(e);
        }
        drop(ob);
        local.clear();
        if local.capacity() > 4 << 20 {
            local.shrink_to(64 << 10);
        }
    }
}

/// Writes all of `data` to the (non-blocking) stdin, waiting for room with `poll(2)`.
fn write_all_polling(out: &OutQueue, dead: &AtomicBool, fd: RawFd, data: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let r = match out.stdin.read().as_ref() {
            Some(mut f) => f.write(&data[done..]),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        match r {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if dead.load(Ordering::Acquire) {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                poll_fd(fd, libc::POLLOUT, Duration::from_millis(250))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn reader_loop(inner: &Inner, g: &Arc<Generation>) {
    let _ = g.reader_thread.set(thread::current());
    let fd = g.stdout_fd;
    let spin = inner.opts.reader_spin;
    let mut spin_until: Option<Instant> = None;
    let cause = loop {
        if g.attached.load(Ordering::Acquire) != NO_WORKER {
            // A worker reads stdout in its event loop: stay off the descriptor (polling it
            // would wake this thread for every reply) until the worker lets go or the child
            // is reaped; then read whatever is left.
            if g.reaped.load(Ordering::Acquire) {
                break read_available(inner, g, &mut g.reader.lock(), None).err();
            }
            thread::park_timeout(Duration::from_millis(250));
            continue;
        }
        let (got, expecting) = {
            let mut rr = g.reader.lock();
            match read_available(inner, g, &mut rr, None) {
                Ok(got) => (got, rr.expecting),
                Err(cause) => break Some(cause),
            }
        };
        if got {
            spin_until = None;
        }
        // Whether calls were still pending after the last replies: only then is more data
        // expected soon enough for spinning to pay. After the last reply the reader parks at
        // once, leaving the CPU to the worker it just woke (with 2 vCPUs, a spinning reader
        // delays that worker).
        if !spin.is_zero() && expecting {
            let now = Instant::now();
            let until = *spin_until.get_or_insert(now + spin);
            if now < until {
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
                continue;
            }
        }
        spin_until = None;
        // The child is reaped, so everything it wrote is in the pipe and has been read (a
        // grandchild may still hold stdout open, so do not wait for EOF).
        if g.reaped.load(Ordering::Acquire) {
            break None;
        }
        // Blocks until data, EOF or the timeout (to notice a generation killed elsewhere).
        if let Err(e) = poll_readable(fd, Duration::from_millis(250)) {
            break Some(DeathCause::ReadError(e.to_string()));
        }
    };
    g.reader_done.store(true, Ordering::Release);
    if let Some(cause) = cause {
        inner.report_death(g, cause);
    }
}

/// Reads the child's stdout until it would block, routing every complete reply (see
/// [`process_frames`]). Returns whether anything was read; an error ends the stream.
fn read_available(
    inner: &Inner,
    g: &Generation,
    rr: &mut ReplyReader,
    mut own: OwnReplies<'_>,
) -> Result<bool, DeathCause> {
    let mut got = false;
    loop {
        process_frames(
            inner,
            g,
            rr,
            own.as_mut().map(|(w, list)| (*w, &mut **list)),
        )?;
        match rr.dec.read_from(&mut rr.stdout) {
            Ok(0) => return Err(DeathCause::Eof),
            Ok(_) => got = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DeathCause::ReadError(e.to_string())),
        }
    }
}

/// At most one warning of a kind per second, with the count of events since the last one.
#[derive(Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: usize,
}

/// Decodes every complete frame in `dec` and routes the replies. An error means the stream can no
/// longer be trusted (replies decoded before the bad frame are still delivered).
fn process_frames(
    inner: &Inner,
    g: &Generation,
    rr: &mut ReplyReader,
    own: OwnReplies<'_>,
) -> Result<(), DeathCause> {
    let ReplyReader {
        dec,
        replies,
        routed,
        unknown_log,
        expecting,
        ..
    } = rr;
    let name = &inner.opts.name;
    let mut fatal = None;
    let mut frames = 0usize;
    loop {
        match dec.next_frame() {
            Ok(Some(frame)) => {
                frames += 1;
                match decode_child_message(frame) {
                    Ok(ChildMessage::Reply(r)) => {
                        let res = match r.outcome {
                            ReplyOutcome::Object(o) => Ok(o),
                            ReplyOutcome::Error(e) => Err(CallError::PluginError(e)),
                        };
                        replies.push((r.id, res));
                    }
                    Ok(ChildMessage::Ignored(kind)) => {
                        tracing::debug!(
                            "[{name}:{}] ignored a message without id (type {kind:?})",
                            g.pid
                        );
                    }
                    Ok(ChildMessage::Hello(_)) => {
                        tracing::warn!("[{name}:{}] plugin sent a second hello; ignored", g.pid);
                    }
                    Err(FrameError::Decode {
                        id: Some(id),
                        reason,
                    }) => {
                        tracing::warn!(
                            "[{name}:{}] undecodable reply to call {id}: {reason}",
                            g.pid
                        );
                        replies.push((id, Err(CallError::Protocol(reason))));
                    }
                    Err(e) => {
                        fatal = Some(format!(
                            "{e}; is the plugin printing to stdout? Logs must go to stderr"
                        ));
                        break;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                fatal = Some(e.to_string());
                break;
            }
        }
    }
    if frames > 0 {
        let mut unknown = Vec::new();
        let mut late = 0usize;
        {
            let mut st = inner.state.lock();
            st.stall_since = None;
            for (id, res) in replies.drain(..) {
                match st.take(id) {
                    Some(p) => routed.push((id, p, res)),
                    None if st.forgotten.take(id) => late += 1,
                    None => unknown.push(id),
                }
            }
            *expecting = !st.pending.is_empty();
        }
        if !routed.is_empty() {
            inner.deliver(routed.drain(..), own);
        }
        if late > 0 {
            tracing::debug!(
                "[{name}:{}] {late} late replies to timed-out or cancelled calls discarded",
                g.pid
            );
        }
        if !unknown.is_empty() {
            unknown_log.suppressed += unknown.len();
            let now = Instant::now();
            if unknown_log
                .last
                .is_none_or(|t| now - t >= Duration::from_secs(1))
            {
                tracing::warn!(
                    "[{name}:{}] plugin replied to {} unknown request ids (e.g. {:?}); ignored",
                    g.pid,
                    unknown_log.suppressed,
                    &unknown[..unknown.len().min(5)]
                );
                unknown_log.last = Some(now);
                unknown_log.suppressed = 0;
            }
        }
    }
    match fatal {
        Some(reason) => Err(DeathCause::Protocol(reason)),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Supervisor
// ---------------------------------------------------------------------------------------------

struct Backoff {
    consecutive: u32,
}

impl Backoff {
    /// Delay before the next restart attempt. `lifetime` is how long the dead child ran (`None`
    /// for a failed start); a child that ran long enough resets the sequence.
    fn next(&mut self, lifetime: Option<Duration>, max: Duration) -> Duration {
        if lifetime.is_some_and(|l| l >= STABLE_AFTER) {
            self.consecutive = 0;
        }
        let d = match self.consecutive {
            0 => Duration::ZERO,
            n => BACKOFF_BASE
                .saturating_mul(1u32 << (n - 1).min(20))
                .min(max),
        };
        self.consecutive = self.consecutive.saturating_add(1);
        d
    }
}

fn supervisor_loop(inner: Arc<Inner>) {
    let mut backoff = Backoff { consecutive: 0 };
    let mut restart_at: Option<Instant> = None;
    let mut expired: Vec<(u64, Pending, Result<Object, CallError>)> = Vec::new();
    let mut timeout_log = RateLimit::default();
    loop {
        let mut deaths = Vec::new();
        let mut hung = None;
        let restart_due;
        {
            let mut st = inner.state.lock();
            loop {
                if st.shutdown {
                    return;
                }
                let now = Instant::now();
                while let Some(&(d, id)) = st.deadlines.first() {
                    if d > now {
                        break;
                    }
                    st.deadlines.pop_first();
                    if let Some(p) = st.pending.remove(&id) {
                        st.forgotten.add(id);
                        expired.push((id, p, Err(CallError::Timeout)));
                    }
                }
                if !expired.is_empty() && st.stall_since.is_none() {
                    st.stall_since = Some(now);
                }
                deaths.append(&mut st.deaths);
                let hung_at = st.stall_since.map(|s| s + inner.opts.hung_after);
                if hung_at.is_some_and(|h| now >= h) {
                    hung = st.stall_since.take().map(|s| now - s);
                }
                let due = restart_at.is_some_and(|t| now >= t);
                if !expired.is_empty() || !deaths.is_empty() || hung.is_some() || due {
                    restart_due = due;
                    break;
                }
                let mut wake = now + IDLE_TICK;
                for t in [st.deadlines.first().map(|x| x.0), hung_at, restart_at]
                    .into_iter()
                    .flatten()
                {
                    wake = wake.min(t);
                }
                st.sup_wake_at = Some(wake);
                inner.sup_cv.wait_until(&mut st, wake);
                st.sup_wake_at = None;
            }
        }
        if !expired.is_empty() {
            timeout_log.suppressed += expired.len();
            let now = Instant::now();
            if timeout_log
                .last
                .is_none_or(|t| now - t >= Duration::from_secs(1))
            {
                tracing::warn!(
                    "[{}] {} plugin calls timed out (deadline passed before the plugin answered)",
                    inner.opts.name,
                    timeout_log.suppressed
                );
                timeout_log.last = Some(now);
                timeout_log.suppressed = 0;
            }
            inner.deliver(expired.drain(..), None);
        }
        if let Some(stalled) = hung {
            let cur = inner.current.read().clone();
            if let Some(g) = cur {
                let waited = stalled.max(inner.opts.hung_after);
                inner.report_death(&g, DeathCause::Hung(waited));
                deaths.append(&mut inner.state.lock().deaths);
            }
        }
        for (g, cause) in deaths {
            if let Some(lifetime) = handle_death(&inner, &g, &cause) {
                if !inner.shutting_down.load(Ordering::Acquire) {
                    let delay = backoff.next(Some(lifetime), inner.opts.restart_backoff_max);
                    if backoff.consecutive > 1 {
                        tracing::error!(
                            "[{}] plugin died {} times in a row; restarting in {:?}",
                            inner.opts.name,
                            backoff.consecutive,
                            delay
                        );
                    }
                    restart_at = Some(Instant::now() + delay);
                }
            }
        }
        if restart_due && !inner.shutting_down.load(Ordering::Acquire) {
            restart_at = None;
            match spawn_generation(&inner) {
                Ok(g) => {
                    if bring_up(&inner, &g) {
                        inner.restarts.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    let delay = backoff.next(None, inner.opts.restart_backoff_max);
                    tracing::error!(
                        "[{}] plugin restart failed ({} failures in a row; next try in {:?}): {e}",
                        inner.opts.name,
                        backoff.consecutive,
                        delay
                    );
                    restart_at = Some(Instant::now() + delay);
                }
            }
        }
    }
}

/// Re-sends remembered bundles to a fresh child, then publishes it. Returns false if the child died
/// meanwhile or the gateway is shutting down (its death is then handled by the normal path).
fn bring_up(inner: &Arc<Inner>, g: &Arc<Generation>) -> bool {
    let mut sent_version = None;
    loop {
        let (version, list) = {
            let b = inner.bundles.lock();
            (b.version, b.list.clone())
        };
        if sent_version != Some(version) {
            for b in &list {
                if let Err(e) = inner.send_bundle(g, b, BUNDLE_RELOAD_TIMEOUT) {
                    tracing::error!(
                        "[{}:{}] reloading bundle {} for API {} failed: {e}",
                        inner.opts.name,
                        g.pid,
                        b.bundle_hash,
                        b.api_id
                    );
                }
            }
            sent_version = Some(version);
        }
        let b = inner.bundles.lock();
        if b.version != version {
            continue;
        }
        if inner.shutting_down.load(Ordering::Acquire) {
            drop(b);
            g.dead.store(true, Ordering::Release);
            g.out.close();
            kill_and_reap(g);
            return false;
        }
        if g.dead.load(Ordering::Acquire) {
            return false;
        }
        inner.publish(Arc::clone(g));
        return true;
    }
}

/// Reaps a dead generation and fails its calls. Returns how long it lived, or `None` if it had
/// already been handled.
fn handle_death(inner: &Inner, g: &Arc<Generation>, cause: &DeathCause) -> Option<Duration> {
    if g.handled.swap(true, Ordering::AcqRel) {
        return None;
    }
    g.dead.store(true, Ordering::Release);
    {
        let mut cur = inner.current.write();
        if cur.as_ref().is_some_and(|c| c.gen == g.gen) {
            *cur = None;
            inner.published.store(0, Ordering::Release);
        }
    }
    g.out.close();
    let status = {
        let mut slot = g.child.lock();
        match slot.as_mut() {
            Some(child) => {
                let s = if cause.kill_now() {
                    None
                } else {
                    wait_exit(child, EXIT_WAIT)
                };
                let s = s.or_else(|| {
                    let _ = child.kill();
                    child.wait().ok()
                });
                slot.take();
                s
            }
            None => None,
        }
    };
    g.mark_reaped();
    // Replies the child wrote before dying are still in the pipe: let the reader deliver them
    // before failing what is left (e.g. when the writer's EPIPE reported the death first).
    let until = Instant::now() + Duration::from_secs(1);
    while !g.reader_done.load(Ordering::Acquire) && Instant::now() < until {
        thread::sleep(Duration::from_millis(1));
    }
    let failed: Vec<(u64, Pending, Result<Object, CallError>)> = {
        let mut st = inner.state.lock();
        st.stall_since = None;
        let ids: Vec<u64> = st
            .pending
            .iter()
            .filter(|(_, p)| p.gen == g.gen)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| st.take(id).map(|p| (id, p, Err(CallError::ChildDied))))
            .collect()
    };
    let lifetime = g.started.elapsed();
    if !inner.shutting_down.load(Ordering::Acquire) {
        tracing::error!(
            "[{}:{}] plugin {} ({} after running {:.1?}); {} pending calls failed",
            inner.opts.name,
            g.pid,
            cause,
            describe_exit(status),
            lifetime,
            failed.len()
        );
    }
    inner.deliver(failed, None);
    Some(lifetime)
}

fn kill_and_reap(g: &Generation) {
    if let Some(mut child) = g.child.lock().take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    g.mark_reaped();
}

// ---------------------------------------------------------------------------------------------
// Process and fd helpers
// ---------------------------------------------------------------------------------------------

/// Waits up to `limit` for the child to exit on its own.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// Close-stdin-already-done shutdown: wait, SIGTERM, wait, SIGKILL.
fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Some(s) = wait_exit(child, grace) {
        return Some(s);
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions. The pid is our own child, not yet
        // reaped (we hold its `Child` and `try_wait` just said it is running), so it cannot have
        // been reused by another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if let Some(s) = wait_exit(child, grace) {
        return Some(s);
    }
    let _ = child.kill();
    child.wait().ok()
}

fn describe_status(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => s.to_string(),
        None => "exit status unknown".to_string(),
    }
}

fn describe_exit(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) if s.code().is_some() => {
            format!("exited with status {}", s.code().unwrap_or_default())
        }
        Some(s) => format!("was terminated ({s})"),
        None => "exited (status unknown)".to_string(),
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the pipe buffer (default 64 KiB) so batches fit in one write; failure (e.g. above
/// /proc/sys/fs/pipe-max-size) only costs throughput.
fn set_pipe_size(fd: RawFd) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: fcntl on an fd we own, with integer arguments only.
        let r = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) };
        if r < 0 {
            tracing::debug!("F_SETPIPE_SZ failed: {}", io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (fd, PIPE_SIZE);
}

/// Blocks until `fd` is readable (or hung up) or `timeout` passes.
fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    poll_fd(fd, libc::POLLIN, timeout)
}

/// Blocks until `fd` has one of `events` (or an error/hang-up) or `timeout` passes.
fn poll_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid, initialised pollfd on our stack; nfds = 1 matches.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_name_picks_the_script() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            default_name(&v(&["python3", "-u", "plugins/auth.py"])),
            "auth"
        );
        assert_eq!(default_name(&v(&["/usr/bin/my-plugin"])), "my-plugin");
        assert_eq!(
            default_name(&v(&["node", "dist/index.js", "--port"])),
            "index"
        );
        assert_eq!(default_name(&[]), "plugin");
    }

    #[test]
    fn backoff_is_immediate_then_exponential_and_capped() {
        let mut b = Backoff { consecutive: 0 };
        let max = Duration::from_secs(1);
        let short = Some(Duration::from_millis(10));
        let got: Vec<Duration> = (0..7).map(|_| b.next(short, max)).collect();
        let ms = |m| Duration::from_millis(m);
        assert_eq!(
            got,
            vec![
                ms(0),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000)
            ]
        );
        // A child that ran long enough resets the sequence.
        assert_eq!(b.next(Some(STABLE_AFTER), max), Duration::ZERO);
        assert_eq!(b.next(None, max), ms(100));
    }

    /// Many threads queue frames while a slow reader drains a small pipe: inline writers hit a
    /// full pipe and hand the rest to the writer thread. Every frame must arrive whole, each
    /// thread's frames in order, and closing must deliver EOF.
    #[test]
    fn out_queue_keeps_frames_whole_and_ordered_through_partial_writes() {
        let (mut rx, tx) = std::io::pipe().expect("pipe");
        let tx = File::from(OwnedFd::from(tx));
        let fd = tx.as_raw_fd();
        set_nonblocking(fd).expect("nonblocking");
        let out = Arc::new(OutQueue::new(usize::MAX, true, tx));
        let dead = Arc::new(AtomicBool::new(false));
        let writer = {
            let (out, dead) = (Arc::clone(&out), Arc::clone(&dead));
            thread::spawn(move || drain_out(&out, Duration::ZERO, &dead, fd))
        };
        let producers: Vec<_> = (0..3u64)
            .map(|t| {
                let out = Arc::clone(&out);
                thread::spawn(move || {
                    for i in 0..2000u64 {
                        let obj = Object {
                            hook_name: Some(format!(
                                "{t}:{i}:{}",
                                "x".repeat((i % 50) as usize * 40)
                            )),
                            ..Default::default()
                        };
                        let r = out
                            .enqueue(|buf| encode_dispatch(buf, t * 1_000_000 + i, &obj, 1 << 20));
                        assert!(r.is_ok());
                    }
                })
            })
            .collect();
        let reader = thread::spawn(move || {
            let mut dec = FrameDecoder::new(1 << 20);
            let mut next = [0u64; 3];
            let mut total = 0;
            // Start late so the pipe (64 KiB) is full and writes come back short or EAGAIN.
            thread::sleep(Duration::from_millis(50));
            loop {
                // A slow reader keeps the pipe full.
                thread::sleep(Duration::from_micros(200));
                match dec.read_from(&mut rx) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => panic!("read: {e}"),
                }
                while let Some(f) = dec.next_frame().expect("frame") {
                    #[derive(serde::Deserialize)]
                    struct D {
                        id: u64,
                    }
                    let d: D = rmp_serde::from_slice(f).expect("dispatch");
                    let (t, i) = ((d.id / 1_000_000) as usize, d.id % 1_000_000);
                    assert_eq!(i, next[t], "frames of thread {t} in order");
                    next[t] += 1;
                    total += 1;
                }
            }
            (total, next)
        });
        for p in producers {
            p.join().expect("producer");
        }
        out.close();
        writer.join().expect("writer").expect("no write error");
        let (total, next) = reader.join().expect("reader");
        assert_eq!(total, 6000);
        assert_eq!(next, [2000; 3]);
    }

    #[test]
    fn forgotten_is_bounded() {
        let mut f = Forgotten::default();
        for id in 0..(FORGOTTEN_CAP as u64 + 10) {
            f.add(id);
        }
        assert!(!f.take(0));
        assert!(f.take(FORGOTTEN_CAP as u64 + 9));
        assert!(!f.take(FORGOTTEN_CAP as u64 + 9));
        assert!(f.set.len() <= FORGOTTEN_CAP);
    }
}
