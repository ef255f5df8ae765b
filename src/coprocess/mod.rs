//! The coprocess client: how the gateway talks to its plugin process.
//!
//! - [`object`]: the one hook object model (Tyk's protobuf messages as serde structs), shared by
//!   every transport so that hooks, the chain and tests see the same types.
//! - [`frame`]: the pipe protocol's framing and messages (`protocol/PROTOCOL.md`).
//! - [`pipe`]: [`pipe::PipeClient`], the supervised child spoken to over its stdin/stdout.
//!
//! The types below are transport-neutral so that a gRPC transport can answer calls through the
//! same [`HookReply`] path back to the workers.

pub mod bodyfile;
pub mod frame;
pub mod grpc;
pub mod object;
pub mod pipe;
pub mod proto;
mod reply_decode;

use object::Object;
use std::fmt;

/// The answer to one hook call, delivered on the calling worker's reply channel.
///
/// Every dispatched call gets exactly one `HookReply`: the plugin's reply, its error, a timeout or
/// the child's death. Workers can therefore keep a connection parked on a call without a timer of
/// their own.
#[derive(Debug, Clone, PartialEq)]
pub struct HookReply {
    /// The id `dispatch` returned.
    pub call_id: u64,
    /// The caller's opaque tag (e.g. connection token and generation), returned unchanged.
    pub tag: u64,
    /// The (possibly partial) object the plugin returned, or why there is none.
    pub result: Result<Object, CallError>,
}

/// Why a hook call produced no object. The chain maps every variant to Tyk's error answer
/// (500 `Middleware error`, 403 `Key not authorised` for auth) or passes the request on when the
/// hook is configured to fail open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The deadline passed before the plugin answered.
    Timeout,
    /// The plugin process died (or was killed as hung or misbehaving) while the call was pending.
    ChildDied,
    /// The plugin answered with `"error"`.
    PluginError(String),
    /// The request could not be encoded or the reply could not be decoded.
    Protocol(String),
    /// The plugin is down (starting, restarting or backing off); the call was not sent.
    Unavailable,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout => f.write_str("plugin call timed out"),
            CallError::ChildDied => f.write_str("plugin process died during the call"),
            CallError::PluginError(e) => write!(f, "plugin error: {e}"),
            CallError::Protocol(e) => write!(f, "plugin protocol error: {e}"),
            CallError::Unavailable => f.write_str("plugin process unavailable (restarting)"),
        }
    }
}

impl std::error::Error for CallError {}

/// A failure to start or use the plugin process outside a hook call. Messages name the command and
/// say what to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoprocessError {
    /// `pipe_command` is empty or invalid.
    Config(String),
    /// The command could not be started (not found, not executable, bad workdir).
    Spawn {
        /// The command line, for the message.
        command: String,
        /// Why.
        reason: String,
    },
    /// The child started but the hello handshake failed (exited, no hello in time, bad hello).
    Handshake {
        /// The command line, for the message.
        command: String,
        /// Why.
        reason: String,
    },
    /// A blocking request (e.g. `load_bundle`) failed.
    Call(CallError),
}

impl fmt::Display for CoprocessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoprocessError::Config(e) => write!(f, "coprocess configuration: {e}"),
            CoprocessError::Spawn { command, reason } => {
                write!(f, "cannot start plugin command `{command}`: {reason}")
            }
            CoprocessError::Handshake { command, reason } => {
                write!(
                    f,
                    "plugin command `{command}` failed the hello handshake: {reason}"
                )
            }
            CoprocessError::Call(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CoprocessError {}

impl From<CallError> for CoprocessError {
    fn from(e: CallError) -> Self {
        CoprocessError::Call(e)
    }
}
