//! Rust SDK for pipegate pipe plugins.
//!
//! The gateway starts a plugin as its child and talks to it over the child's stdin/stdout with
//! length-prefixed MessagePack frames (protocol v1, see `protocol/PROTOCOL.md`). This crate does
//! that part: it answers the gateway's hello, decodes each dispatch into an [`Object`] that mirrors
//! Tyk's coprocess protobuf field for field, calls your handler, and sends back the
//! [`ObjectPatch`] it returns (only what changed: absent fields mean "unchanged").
//!
//! ```no_run
//! use pipegate_plugin::{serve, HookCall, HookResult, ObjectPatch};
//!
//! fn main() -> std::io::Result<()> {
//!     serve("my-plugin", |call: HookCall| {
//!         let mut patch = ObjectPatch::default();
//!         if call.object.header("Authorization").is_none() {
//!             patch.respond(401, "missing credentials");
//!         }
//!         HookResult::from(patch)
//!     })
//! }
//! ```
//!
//! Throughput is the point of this SDK (the gateway's "Rust pipe pre hook" benchmark runs on it),
//! so the loop is pipelined: it reads the pipe in large chunks, handles every complete frame that
//! arrived, and writes all their replies with one `write` per drained batch. The gateway keeps many
//! requests in flight, so under load one read brings many frames and one write returns many
//! replies. Handlers run on the loop's thread, in order: keep them fast and non-blocking.
//!
//! stdout carries the protocol: log with `eprintln!` (the gateway logs the child's stderr line by
//! line), never `println!`.

#![deny(missing_docs)]

mod decode;
mod encode;
mod frame;
mod lenient;
mod object;

use std::io::{self, Read, Write};
use std::panic::{self, AssertUnwindSafe};

use serde::{Deserialize, Serialize};

pub use frame::{encode_frame, write_frame, FrameReader, DEFAULT_MAX_FRAME_BYTES};
pub use object::{
    AccessDefinition, AccessSpec, BasicAuthData, BodyFile, Header, HookType, JwtData,
    MiniRequestObject, Monitor, Object, ObjectPatch, RequestPatch, ResponseObject, ResponsePatch,
    ReturnOverrides, ReturnOverridesPatch, SessionState,
};

/// The protocol version this SDK speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// One dispatch from the gateway.
#[derive(Debug, Clone)]
pub struct HookCall {
    /// The request id (replies carry it back; the SDK does that for you).
    pub id: u64,
    /// The hook object: hook type and name, request, session, metadata, spec, response.
    pub object: Object,
}

/// What a hook answers.
// The patch is returned by value on purpose: boxing it would cost an allocation per hook call on
// the hot path, while the size difference only costs a memcpy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum HookResult {
    /// Apply these changes (an empty patch changes nothing).
    Patch(ObjectPatch),
    /// The hook failed: the gateway answers 500 "Middleware error" (403 for `auth_check`), like
    /// Tyk does for a failed dispatch, and logs this text.
    Error(String),
}

impl HookResult {
    /// Change nothing and let the request continue.
    pub fn unchanged() -> Self {
        HookResult::Patch(ObjectPatch::default())
    }
}

impl From<ObjectPatch> for HookResult {
    fn from(patch: ObjectPatch) -> Self {
        HookResult::Patch(patch)
    }
}

/// A bundle the gateway asks the plugin to load before it dispatches that bundle's hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BundleLoad {
    /// The API the bundle belongs to.
    pub api_id: String,
    /// Lowercase md5 hex of the bundle name; dispatches carry it as `spec["bundle_hash"]`.
    pub bundle_hash: String,
    /// Absolute directory the bundle was unpacked to (its `manifest.json` is there).
    pub path: String,
}

/// A plugin: the hook handler plus optional event and bundle handling.
///
/// Any `Fn(HookCall) -> HookResult` is a plugin, so a closure is enough for the common case;
/// implement the trait to handle events or bundles too.
pub trait Plugin {
    /// Handle one hook dispatch.
    fn dispatch(&self, call: HookCall) -> HookResult;

    /// Handle an event (Tyk's `DispatchEvent`); `payload` is the event's JSON text. Events get no
    /// reply. The default ignores them.
    fn event(&self, payload: &str) {
        let _ = payload;
    }

    /// Prepare for a bundle's hooks. Compiled plugins usually have nothing to load, so the
    /// default accepts every bundle; return `Err` with a message to make the gateway refuse it.
    fn load_bundle(&self, bundle: &BundleLoad) -> Result<(), String> {
        let _ = bundle;
        Ok(())
    }
}

impl<F> Plugin for F
where
    F: Fn(HookCall) -> HookResult,
{
    fn dispatch(&self, call: HookCall) -> HookResult {
        self(call)
    }
}

/// What the plugin announces in its hello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeOptions {
    /// The plugin's name (shows up in the gateway's logs).
    pub name: String,
    /// The hook names served; `None` means "any name" (the gateway sends everything).
    pub hooks: Option<Vec<String>>,
    /// Accept large bodies as files (`raw_body_file`) instead of inline; read them with
    /// [`MiniRequestObject::body`] / [`ResponseObject::body_bytes`]. Off by default so a plugin
    /// that only looks at `raw_body` never misses a body.
    pub mmap: bool,
}

impl ServeOptions {
    /// Options for a plugin called `name` that serves any hook name.
    pub fn new(name: impl Into<String>) -> Self {
        ServeOptions {
            name: name.into(),
            hooks: None,
            mmap: false,
        }
    }

    /// Announce that this plugin reads bodies handed over as files (see [`ServeOptions::mmap`]).
    pub fn mmap(mut self, enabled: bool) -> Self {
        self.mmap = enabled;
        self
    }

    /// Announce exactly these hook names, so the gateway can report a misconfigured API early.
    pub fn hooks<I, S>(mut self, hooks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hooks = Some(hooks.into_iter().map(Into::into).collect());
        self
    }
}

/// Serve `handler` on stdin/stdout until the gateway closes stdin (then return `Ok(())`).
///
/// Returns an error when the stream breaks (the gateway went away mid-frame, a frame exceeds the
/// size limit, or stdout is closed); `main` should then exit non-zero so the gateway restarts it.
pub fn serve<F>(name: &str, handler: F) -> io::Result<()>
where
    F: Fn(HookCall) -> HookResult + Send + Sync + 'static,
{
    serve_with(ServeOptions::new(name), handler)
}

/// Like [`serve`], with explicit hello options and any [`Plugin`].
pub fn serve_with<P: Plugin>(options: ServeOptions, plugin: P) -> io::Result<()> {
    let (input, output) = stdio()?;
    serve_io(input, output, &options, &plugin)
}

/// Raw handles on fds 0 and 1: std's `Stdout` is line-buffered and would split a batch of binary
/// replies at every `\n` byte, costing extra write calls.
#[cfg(unix)]
fn stdio() -> io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::AsFd;
    let input = io::stdin().as_fd().try_clone_to_owned()?;
    let output = io::stdout().as_fd().try_clone_to_owned()?;
    Ok((std::fs::File::from(input), std::fs::File::from(output)))
}

#[cfg(not(unix))]
fn stdio() -> io::Result<(io::Stdin, io::Stdout)> {
    Ok((io::stdin(), io::stdout()))
}

/// The protocol loop over any byte streams (what [`serve_with`] runs on stdin/stdout; tests run it
/// on buffers).
pub fn serve_io<R: Read, W: Write, P: Plugin + ?Sized>(
    input: R,
    mut output: W,
    options: &ServeOptions,
    plugin: &P,
) -> io::Result<()> {
    let mut reader = FrameReader::new(input, DEFAULT_MAX_FRAME_BYTES);
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let mut stop = false;
        while let Some(frame) = reader.next_buffered()? {
            let outcome = handle_frame(frame, options, plugin, &mut out)?;
            match outcome {
                Outcome::Continue => {}
                Outcome::SetMaxFrame(max) => reader.set_max_frame(max),
                Outcome::Stop => {
                    stop = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            output.write_all(&out)?;
            output.flush()?;
            out.clear();
        }
        if stop || !reader.fill()? {
            return Ok(());
        }
    }
}

enum Outcome {
    Continue,
    SetMaxFrame(usize),
    Stop,
}

/// Every message the gateway may send, decoded in one pass; fields a type does not use stay empty.
#[derive(Default, Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Incoming {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    object: Option<Object>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    max_frame_bytes: Option<u64>,
    #[serde(default)]
    api_id: String,
    #[serde(default)]
    bundle_hash: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Serialize)]
struct HelloReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: u64,
    protocol: u32,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hooks: Option<&'a [String]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    mmap: bool,
}

fn handle_frame<P: Plugin + ?Sized>(
    frame: &[u8],
    options: &ServeOptions,
    plugin: &P,
    out: &mut Vec<u8>,
) -> io::Result<Outcome> {
    // The hand-written decoder takes the shapes the gateway sends; anything else (odd but valid,
    // or invalid) goes through serde, which decides and words the error.
    let mut msg = Incoming::default();
    if decode::incoming_into(frame, &mut msg).is_none() {
        msg = match rmp_serde::from_slice(frame) {
            Ok(m) => m,
            Err(e) => {
                let text = format!("plugin could not decode the message: {e}");
                match rmp_serde::from_slice::<IdOnly>(frame) {
                    Ok(IdOnly { id: Some(id) }) => reply_error(out, id, &text)?,
                    _ => eprintln!("pipegate-plugin: dropped a frame without an id: {text}"),
                }
                return Ok(Outcome::Continue);
            }
        };
    }
    match msg.kind.as_str() {
        "hello" => {
            encode_frame(
                out,
                &HelloReply {
                    kind: "hello",
                    id: msg.id.unwrap_or(0),
                    protocol: PROTOCOL_VERSION,
                    name: &options.name,
                    hooks: options.hooks.as_deref(),
                    mmap: options.mmap,
                },
            )?;
            if let Some(max) = msg.max_frame_bytes {
                return Ok(Outcome::SetMaxFrame(
                    usize::try_from(max).unwrap_or(usize::MAX),
                ));
            }
        }
        "dispatch" => {
            let Some(id) = msg.id else {
                eprintln!("pipegate-plugin: dropped a dispatch without an id");
                return Ok(Outcome::Continue);
            };
            // The call is built inside the closure and the reply encoded there too, so neither the
            // object (over a kilobyte) nor the patch is moved through `catch_unwind`'s result.
            // A panicking hook must not take the plugin (and every in-flight request) down.
            let object = &mut msg.object;
            let handled = panic::catch_unwind(AssertUnwindSafe(|| {
                let call = HookCall {
                    id,
                    object: object.take().unwrap_or_default(),
                };
                write_reply(out, id, &plugin.dispatch(call))
            }));
            match handled {
                Ok(written) => written?,
                Err(p) => reply_error(out, id, &format!("hook panicked: {}", panic_text(&p)))?,
            }
        }
        "event" => {
            let payload = msg.payload.unwrap_or_default();
            if panic::catch_unwind(AssertUnwindSafe(|| plugin.event(&payload))).is_err() {
                eprintln!("pipegate-plugin: event handler panicked; event dropped");
            }
        }
        "load_bundle" => {
            let bundle = BundleLoad {
                api_id: msg.api_id,
                bundle_hash: msg.bundle_hash,
                path: msg.path,
            };
            let result = panic::catch_unwind(AssertUnwindSafe(|| plugin.load_bundle(&bundle)))
                .unwrap_or_else(|p| Err(format!("bundle loader panicked: {}", panic_text(&p))));
            if let Some(id) = msg.id {
                match result {
                    Ok(()) => encode::reply(out, id, None, None)?,
                    Err(text) => reply_error(out, id, &text)?,
                }
            }
        }
        "shutdown" => return Ok(Outcome::Stop),
        other => {
            if let Some(id) = msg.id {
                reply_error(
                    out,
                    id,
                    &format!("plugin does not support message type {other:?}"),
                )?;
            }
        }
    }
    Ok(Outcome::Continue)
}

/// Append the reply to a dispatch: the patch, or the hook's error.
fn write_reply(out: &mut Vec<u8>, id: u64, result: &HookResult) -> io::Result<()> {
    match result {
        HookResult::Patch(patch) => encode::reply(out, id, Some(patch), None),
        HookResult::Error(text) => reply_error(out, id, text),
    }
}

fn reply_error(out: &mut Vec<u8>, id: u64, text: &str) -> io::Result<()> {
    encode::reply(out, id, None, Some(text))
}

fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests;
