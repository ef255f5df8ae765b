//! The middleware chain: the phases of a request's life that can change it or answer it, in Tyk's
//! order (see [`chain`]).
//!
//! The chain never does I/O: each phase returns what the connection should do next (continue, answer
//! now, or wait for a plugin's reply). The server drives it.

pub mod chain;
pub mod hook_object;

/// Changes plugin hooks made to a request, applied when the upstream request head is written. The
/// original head stays untouched in the read buffer; this holds only the differences.
#[derive(Debug, Default, Clone)]
pub struct RequestEdits {
    /// New method.
    pub method: Option<String>,
    /// New path (full path, listen path included, as plugins see it), without the query.
    pub path: Option<String>,
    /// New raw query string (without `?`).
    pub query: Option<String>,
    /// Headers to set, replacing any value the client sent.
    pub set_headers: Vec<(String, String)>,
    /// Headers to remove.
    pub delete_headers: Vec<String>,
    /// New body.
    pub body: Option<Vec<u8>>,
}

impl RequestEdits {
    /// Empties every change but keeps the lists' capacity, for reuse by the next request.
    pub fn clear(&mut self) {
        self.method = None;
        self.path = None;
        self.query = None;
        self.set_headers.clear();
        self.delete_headers.clear();
        self.body = None;
    }

    /// True when the client's header `name` must not be forwarded as sent (deleted or replaced).
    pub fn removes_header(&self, name: &[u8]) -> bool {
        self.delete_headers
            .iter()
            .any(|d| d.as_bytes().eq_ignore_ascii_case(name))
            || self
                .set_headers
                .iter()
                .any(|(k, _)| k.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Records a header set by a plugin (replacing an earlier plugin's value for the same name).
    pub fn set_header(&mut self, name: String, value: String) {
        self.delete_headers
            .retain(|d| !d.eq_ignore_ascii_case(&name));
        if let Some(slot) = self
            .set_headers
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
        {
            slot.1 = value;
        } else {
            self.set_headers.push((name, value));
        }
    }

    /// Records a header deleted by a plugin.
    pub fn delete_header(&mut self, name: String) {
        self.set_headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
        if !self
            .delete_headers
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&name))
        {
            self.delete_headers.push(name);
        }
    }
}
