//! Tyk's ID extractor (`gateway/coprocess_id_extractor.go`): which part of a request identifies
//! the client, so an auth plugin's session can be cached under an id derived from it.
//!
//! The session id is Tyk's legacy `generateToken(org_id, md5hex(extracted))`, i.e.
//! `org_id + md5hex`. Sources, as Tyk:
//! - `header`: the first value of `header_name`; empty or missing → 400.
//! - `form`: every value of `param_name` joined with "" (Go's `r.Form`: values from a
//!   `application/x-www-form-urlencoded` POST/PUT/PATCH body first, then from the query string);
//!   none → 400.
//! - `body`: the whole body (regex only).
//!
//! Regex (Tyk's quirk kept): `FindAllString(input, -1)[regex_match_index]` — the index picks among
//! whole-pattern matches, not capture groups; out of range → 400. Patterns are compiled once and
//! cached. Failures answer 400 "Authorization field missing" without detail (logged instead).
//!
//! XPath is not implemented yet: an API using it gets 400 for every request, with an error in
//! the log naming the API.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use md5::{Digest, Md5};
use parking_lot::Mutex;
use regex::bytes::Regex;

use super::auth::{generate_token, MSG_AUTH_FIELD_MISSING};
use crate::config::{ApiDefinition, IdExtractor};
use crate::middleware::chain::LocalResponse;

/// The parts of a request an extractor may read.
pub struct ExtractorRequest<'a> {
    /// Request method (the form source reads the body only for POST, PUT and PATCH).
    pub method: &'a str,
    /// Header lookup by name, case-insensitive, first value.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// Query string without '?', if any.
    pub query: Option<&'a str>,
    /// The whole body when it was buffered (see [`extractor_needs_body`]); `None` otherwise.
    pub body: Option<&'a [u8]>,
}

/// Whether the extractor reads the body, so the caller must buffer it first.
pub fn extractor_needs_body(extractor: &IdExtractor) -> bool {
    matches!(extractor.extract_from.as_str(), "body" | "form")
}

/// The session id for this request (`org_id + md5hex(extracted)`), or 400 "Authorization field
/// missing" when nothing can be extracted.
pub fn id_extractor_key(
    api: &ApiDefinition,
    extractor: &IdExtractor,
    req: &ExtractorRequest<'_>,
) -> Result<String, LocalResponse> {
    let fail = |why: &str| {
        tracing::info!(api = %api.api_id, "ID extractor: {why}");
        LocalResponse::error(400, MSG_AUTH_FIELD_MISSING, Vec::new())
    };
    let extracted: Vec<u8> = match extractor.extract_with.as_str() {
        "value" => match extractor.extract_from.as_str() {
            "header" => header_value(extractor, req).ok_or_else(|| fail("no header value"))?,
            "form" => form_value(extractor, req).ok_or_else(|| fail("no form value"))?,
            // Tyk extracts "" without an error here, mapping every client to one session;
            // the config loader rejects this combination, so this is only a safety net.
            _ => {
                return Err(fail(
                    "the value extractor reads only a header or a form field",
                ))
            }
        },
        "regex" => {
            let input = match extractor.extract_from.as_str() {
                "header" => header_value(extractor, req).ok_or_else(|| fail("no header value"))?,
                "form" => form_value(extractor, req).ok_or_else(|| fail("no form value"))?,
                "body" => req
                    .body
                    .ok_or_else(|| fail("the body was not buffered for the extractor"))?
                    .to_vec(),
                _ => return Err(fail("unsupported source for the regex extractor")),
            };
            if extractor.regex_expression.is_empty() {
                return Err(fail("the regex extractor has no expression"));
            }
            let re = compiled(&extractor.regex_expression)
                .ok_or_else(|| fail("the regex_expression does not compile"))?;
            let m = re
                .find_iter(&input)
                .nth(extractor.regex_match_index)
                .ok_or_else(|| fail("no match at regex_match_index"))?;
            m.as_bytes().to_vec()
        }
        "xpath" => {
            tracing::error!(api = %api.api_id, "the xpath ID extractor is not supported by pipegate; use \"regex\" instead");
            return Err(fail("xpath is not supported"));
        }
        other => return Err(fail(&format!("unknown extractor {other:?}"))),
    };
    let digest = Md5::digest(&extracted);
    let mut hex = String::with_capacity(32);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    Ok(generate_token(&api.org_id, &hex))
}

fn header_value(extractor: &IdExtractor, req: &ExtractorRequest<'_>) -> Option<Vec<u8>> {
    let v = (req.header)(&extractor.header_name)?;
    (!v.is_empty()).then(|| v.into_bytes())
}

/// Go's `r.Form[param]` joined with "": body values (urlencoded POST/PUT/PATCH) then query values.
fn form_value(extractor: &IdExtractor, req: &ExtractorRequest<'_>) -> Option<Vec<u8>> {
    let name = extractor.param_name.as_str();
    if name.is_empty() {
        return None;
    }
    let mut out = String::new();
    let mut found = false;
    let urlencoded_body = matches!(req.method, "POST" | "PUT" | "PATCH")
        && (req.header)("Content-Type").is_some_and(|ct| {
            ct.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if urlencoded_body {
        if let Some(body) = req.body {
            for (k, v) in form_urlencoded::parse(body) {
                if k == name {
                    found = true;
                    out.push_str(&v);
                }
            }
        }
    }
    if let Some(q) = req.query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k == name {
                found = true;
                out.push_str(&v);
            }
        }
    }
    found.then(|| out.into_bytes())
}

/// Compiled patterns, shared by every worker (an extractor's pattern is fixed per API, so the
/// cache stays small; it is cleared if a reload ever fills it).
fn compiled(pattern: &str) -> Option<Arc<Regex>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(re) = cache.lock().get(pattern) {
        return Some(Arc::clone(re));
    }
    let re = Arc::new(Regex::new(pattern).ok()?);
    let mut c = cache.lock();
    if c.len() >= 256 {
        c.clear();
    }
    c.insert(pattern.to_string(), Arc::clone(&re));
    Some(re)
}
