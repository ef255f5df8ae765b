//! The hand-written encoder for dispatch replies.
//!
//! Every hook call ends with one reply frame. Through serde, rmp-serde's struct machinery cost
//! about as much as the rest of the reply path together; writing the few reply types directly with
//! `rmp::encode` produces the very same bytes (same field order, the same `None`-fields-left-out
//! rule, the same compact number and string forms) for a fraction of that. The rare nested types
//! (`session`, `raw_body_file`) still go through serde, straight into the same buffer. A test
//! checks the output byte for byte against rmp-serde's.

use std::collections::HashMap;
use std::io;

use rmp::encode as wr;

use crate::object::{Header, ObjectPatch, RequestPatch, ResponsePatch, ReturnOverridesPatch};

const HEADER_LEN: usize = 4;

/// Append one reply frame (`{"id", "object"?, "error"?}`) to `out`.
pub(crate) fn reply(
    out: &mut Vec<u8>,
    id: u64,
    object: Option<&ObjectPatch>,
    error: Option<&str>,
) -> io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = reply_body(out, id, object, error) {
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("could not encode a reply as MessagePack: {e}"),
        ));
    }
    let len = out.len() - start - HEADER_LEN;
    let Ok(len) = u32::try_from(len) else {
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("reply of {len} bytes is larger than the 4 GiB the length prefix can express"),
        ));
    };
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Why an encode failed: writes into a `Vec` cannot fail, so only serde's part can.
type Result<T = ()> = std::result::Result<T, String>;

fn io_err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn count(flags: &[bool]) -> u32 {
    flags.iter().filter(|f| **f).count() as u32
}

fn reply_body(
    out: &mut Vec<u8>,
    id: u64,
    object: Option<&ObjectPatch>,
    error: Option<&str>,
) -> Result {
    wr::write_map_len(out, 1 + count(&[object.is_some(), error.is_some()])).map_err(io_err)?;
    key(out, "id")?;
    wr::write_uint(out, id).map_err(io_err)?;
    if let Some(patch) = object {
        key(out, "object")?;
        object_patch(out, patch)?;
    }
    if let Some(text) = error {
        key(out, "error")?;
        string(out, text)?;
    }
    Ok(())
}

fn key(out: &mut Vec<u8>, name: &str) -> Result {
    wr::write_str(out, name).map_err(io_err)
}

fn string(out: &mut Vec<u8>, s: &str) -> Result {
    wr::write_str(out, s).map_err(io_err)
}

fn string_map(out: &mut Vec<u8>, map: &HashMap<String, String>) -> Result {
    wr::write_map_len(out, len_u32(map.len())?).map_err(io_err)?;
    for (k, v) in map {
        string(out, k)?;
        string(out, v)?;
    }
    Ok(())
}

fn string_list(out: &mut Vec<u8>, list: &[String]) -> Result {
    wr::write_array_len(out, len_u32(list.len())?).map_err(io_err)?;
    for s in list {
        string(out, s)?;
    }
    Ok(())
}

fn len_u32(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| format!("{len} entries are more than MessagePack can hold"))
}

/// A rare value, through serde (as a map with field names, as the rest of the frame).
fn by_serde<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) -> Result {
    rmp_serde::encode::write_named(out, value).map_err(io_err)
}

fn object_patch(out: &mut Vec<u8>, p: &ObjectPatch) -> Result {
    let n = count(&[
        p.request.is_some(),
        p.session.is_some(),
        p.metadata.is_some(),
        p.response.is_some(),
    ]);
    wr::write_map_len(out, n).map_err(io_err)?;
    if let Some(r) = &p.request {
        key(out, "request")?;
        request_patch(out, r)?;
    }
    if let Some(s) = &p.session {
        key(out, "session")?;
        by_serde(out, s)?;
    }
    if let Some(m) = &p.metadata {
        key(out, "metadata")?;
        string_map(out, m)?;
    }
    if let Some(r) = &p.response {
        key(out, "response")?;
        response_patch(out, r)?;
    }
    Ok(())
}

fn request_patch(out: &mut Vec<u8>, r: &RequestPatch) -> Result {
    let n = count(&[
        r.set_headers.is_some(),
        r.delete_headers.is_some(),
        r.url.is_some(),
        r.add_params.is_some(),
        r.delete_params.is_some(),
        r.return_overrides.is_some(),
        r.method.is_some(),
        r.raw_body.is_some(),
        r.raw_body_file.is_some(),
    ]);
    wr::write_map_len(out, n).map_err(io_err)?;
    if let Some(m) = &r.set_headers {
        key(out, "set_headers")?;
        string_map(out, m)?;
    }
    if let Some(l) = &r.delete_headers {
        key(out, "delete_headers")?;
        string_list(out, l)?;
    }
    if let Some(s) = &r.url {
        key(out, "url")?;
        string(out, s)?;
    }
    if let Some(m) = &r.add_params {
        key(out, "add_params")?;
        string_map(out, m)?;
    }
    if let Some(l) = &r.delete_params {
        key(out, "delete_params")?;
        string_list(out, l)?;
    }
    if let Some(o) = &r.return_overrides {
        key(out, "return_overrides")?;
        return_overrides_patch(out, o)?;
    }
    if let Some(s) = &r.method {
        key(out, "method")?;
        string(out, s)?;
    }
    if let Some(b) = &r.raw_body {
        key(out, "raw_body")?;
        wr::write_bin(out, b).map_err(io_err)?;
    }
    if let Some(f) = &r.raw_body_file {
        key(out, "raw_body_file")?;
        by_serde(out, f)?;
    }
    Ok(())
}

fn return_overrides_patch(out: &mut Vec<u8>, o: &ReturnOverridesPatch) -> Result {
    let n = count(&[
        o.response_code.is_some(),
        o.response_error.is_some(),
        o.headers.is_some(),
        o.override_error.is_some(),
        o.response_body.is_some(),
    ]);
    wr::write_map_len(out, n).map_err(io_err)?;
    if let Some(code) = o.response_code {
        key(out, "response_code")?;
        wr::write_sint(out, code.into()).map_err(io_err)?;
    }
    if let Some(s) = &o.response_error {
        key(out, "response_error")?;
        string(out, s)?;
    }
    if let Some(m) = &o.headers {
        key(out, "headers")?;
        string_map(out, m)?;
    }
    if let Some(b) = o.override_error {
        key(out, "override_error")?;
        wr::write_bool(out, b).map_err(io_err)?;
    }
    if let Some(s) = &o.response_body {
        key(out, "response_body")?;
        string(out, s)?;
    }
    Ok(())
}

fn response_patch(out: &mut Vec<u8>, r: &ResponsePatch) -> Result {
    let n = count(&[
        r.status_code.is_some(),
        r.raw_body.is_some(),
        r.headers.is_some(),
        r.multivalue_headers.is_some(),
        r.raw_body_file.is_some(),
    ]);
    wr::write_map_len(out, n).map_err(io_err)?;
    if let Some(code) = r.status_code {
        key(out, "status_code")?;
        wr::write_sint(out, code.into()).map_err(io_err)?;
    }
    if let Some(b) = &r.raw_body {
        key(out, "raw_body")?;
        wr::write_bin(out, b).map_err(io_err)?;
    }
    if let Some(m) = &r.headers {
        key(out, "headers")?;
        string_map(out, m)?;
    }
    if let Some(list) = &r.multivalue_headers {
        key(out, "multivalue_headers")?;
        wr::write_array_len(out, len_u32(list.len())?).map_err(io_err)?;
        for Header { key: name, values } in list {
            wr::write_map_len(out, 2).map_err(io_err)?;
            key(out, "key")?;
            string(out, name)?;
            key(out, "values")?;
            string_list(out, values)?;
        }
    }
    if let Some(f) = &r.raw_body_file {
        key(out, "raw_body_file")?;
        by_serde(out, f)?;
    }
    Ok(())
}
