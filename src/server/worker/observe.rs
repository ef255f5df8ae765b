//! The worker's observability calls: where a request's metrics and access log line are recorded.
//!
//! Kept apart from the connection state machine so the machine only marks points in a request's
//! life (`begin_request`, status set, `end_request`, `hook_ended`) and this file decides what is
//! counted and logged.

use crate::coprocess::object::{HookType, Object};
use crate::coprocess::CallError;
use crate::metrics::{HookOutcome, RequestMark};

use super::Worker;

impl Worker {
    /// Marks the start of a request on `ci` (once; later calls for the same request do nothing).
    pub(super) fn begin_request(&mut self, ci: usize) {
        if let Some(c) = self.conns.get_mut(ci) {
            if c.mark.begun.is_none() {
                c.mark = RequestMark {
                    begun: Some(self.now),
                    ..RequestMark::default()
                };
                self.metrics.request_begun();
            }
        }
    }

    /// Records the end of the request on `ci`, if one is in progress: metrics always, an access
    /// log line when `access_logs.enabled`.
    pub(super) fn end_request(&mut self, ci: usize) {
        let Some(c) = self.conns.get_mut(ci) else {
            return;
        };
        let Some(begun) = c.mark.begun else { return };
        let mark = std::mem::take(&mut c.mark);
        let total = self.now.saturating_duration_since(begun);
        let slot = c.api.as_ref().map_or(0, |a| a.metrics_slot);
        self.metrics
            .request_ended(slot, mark.status, total, mark.upstream);
        let opts = &self.snapshot.gateway.access_log;
        if !opts.enabled {
            return;
        }
        let c = &self.conns[ci];
        // A head that failed to parse leaves stale spans behind: read it only once parsed.
        let parsed = mark.head_parsed && c.head.head_len <= c.rlen;
        crate::access_log::emit(
            opts,
            &crate::access_log::Entry {
                api: c.api.as_deref(),
                method: if parsed {
                    c.head.method.str(&c.rbuf)
                } else {
                    ""
                },
                path: if parsed { c.head.path(&c.rbuf) } else { "" },
                status: mark.status,
                total,
                upstream: mark.upstream,
                hooks: mark.hooks,
                bytes_in: if parsed {
                    c.head.head_len as u64 + c.req_body_seen
                } else {
                    c.rlen as u64
                },
                bytes_out: mark.bytes_out,
                peer: c.peer,
                host: if parsed {
                    c.head
                        .header(&c.rbuf, "host")
                        .and_then(|b| std::str::from_utf8(b).ok())
                } else {
                    None
                },
                protocol: if c.http10 { "HTTP/1.0" } else { "HTTP/1.1" },
                user_agent: if parsed {
                    c.head
                        .header(&c.rbuf, "user-agent")
                        .and_then(|b| std::str::from_utf8(b).ok())
                } else {
                    None
                },
            },
        );
    }

    /// Records a finished hook call (answered, timed out or failed).
    pub(super) fn hook_ended(
        &mut self,
        ci: usize,
        hook: HookType,
        grpc: bool,
        result: &Result<Object, CallError>,
    ) {
        let Some(c) = self.conns.get_mut(ci) else {
            return;
        };
        let took = c
            .mark
            .hook_sent
            .take()
            .map_or_else(Default::default, |t| self.now.saturating_duration_since(t));
        c.mark.hooks += took;
        let outcome = match result {
            Ok(_) => HookOutcome::Ok,
            Err(CallError::Timeout) => HookOutcome::Timeout,
            Err(_) => HookOutcome::Failed,
        };
        let slot = c.api.as_ref().map_or(0, |a| a.metrics_slot);
        self.metrics.hook_ended(slot, hook, grpc, took, outcome);
    }
}
