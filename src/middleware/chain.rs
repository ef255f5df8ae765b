//! The phases of a request's life, in Tyk's order.

use super::RequestEdits;

/// Where the request is in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Nothing run yet.
    #[default]
    Start,
    /// Proxying.
    Upstream,
}

/// Per-request chain state, reused across the requests of a connection.
#[derive(Debug, Default)]
pub struct RequestState {
    /// Current phase.
    pub phase: Phase,
    /// Plugin changes to the request.
    pub edits: Option<Box<RequestEdits>>,
    /// The buffered request body, when a hook needs it.
    pub body: Vec<u8>,
    /// `body` holds the whole request body.
    pub body_buffered: bool,
    /// Buffered response body for response hooks.
    pub resp_body: Vec<u8>,
}

impl RequestState {
    /// Clears for the next request, keeping buffer capacity.
    pub fn reset(&mut self) {
        self.phase = Phase::Start;
        self.edits = None;
        self.body.clear();
        self.body_buffered = false;
        self.resp_body.clear();
    }
}
