//! The dispatch frames the decode benchmark and the callgrind driver (`examples/hook_loop.rs`)
//! feed through `serve_io`, written key by key the way the gateway writes them.

use rmp::encode;

/// Which dispatch to build.
#[derive(Clone, Copy, Debug)]
pub enum Sample {
    /// The smallest frame the gateway sends: `curl` with three headers and no body (455 bytes).
    Typical,
    /// A browser-like request: a dozen headers, a JWT bearer token, query parameters and a 1 KiB
    /// JSON body (sent twice, as `body` text and `raw_body` bin, as the gateway does).
    Realistic,
}

fn str_(out: &mut Vec<u8>, s: &str) {
    encode::write_str(out, s).expect("writes into a Vec cannot fail");
}

fn map(out: &mut Vec<u8>, entries: &[(&str, &str)]) {
    encode::write_map_len(out, entries.len() as u32).expect("Vec write");
    for (k, v) in entries {
        str_(out, k);
        str_(out, v);
    }
}

/// What varies between the samples: headers, url, query params, method, body.
type RequestParts<'a> = (
    Vec<(&'a str, &'a str)>,
    &'a str,
    Vec<(&'a str, &'a str)>,
    &'a str,
    &'a str,
);

/// The MessagePack body of one dispatch (no length prefix).
pub fn dispatch_body(sample: Sample, id: u64) -> Vec<u8> {
    let jwt = format!(
        "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyLCJleHAiOjE3MDAwMDAwMDAsInNjb3BlIjoicmVhZCB3cml0ZSJ9"
    );
    let body: String = {
        let mut b = String::from("{\"items\":[");
        let mut i = 0;
        while b.len() < 1000 {
            if i > 0 {
                b.push(',');
            }
            b.push_str(&format!(
                "{{\"id\":{i},\"name\":\"item-{i}\",\"qty\":{}}}",
                i * 3
            ));
            i += 1;
        }
        b.push_str("]}");
        b
    };
    let (headers, url, params, method, body): RequestParts =
        match sample {
            Sample::Typical => (
                vec![
                    ("User-Agent", "curl/7.88.1"),
                    ("Accept", "*/*"),
                    ("Host", "localhost:19501"),
                ],
                "/hook/",
                vec![],
                "GET",
                "",
            ),
            Sample::Realistic => (
                vec![
                    ("Host", "api.example.com"),
                    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"),
                    ("Accept", "application/json, text/plain, */*"),
                    ("Accept-Encoding", "gzip, deflate, br"),
                    ("Accept-Language", "en-GB,en;q=0.9"),
                    ("Authorization", jwt.as_str()),
                    ("Content-Type", "application/json"),
                    ("Content-Length", "1003"),
                    ("Origin", "https://app.example.com"),
                    ("Referer", "https://app.example.com/orders/new"),
                    ("X-Request-Id", "5f2b8c1e-9d7a-4e3b-8c6f-1a2b3c4d5e6f"),
                    ("X-Forwarded-For", "203.0.113.7"),
                    ("Cookie", "session=abc123; theme=dark"),
                ],
                "/orders/v1/items?page=2&limit=50",
                vec![("page", "2"), ("limit", "50")],
                "POST",
                body.as_str(),
            ),
        };
    let mut out = Vec::with_capacity(4096);
    let o = &mut out;
    encode::write_map_len(o, 3).expect("Vec write");
    str_(o, "type");
    str_(o, "dispatch");
    str_(o, "id");
    encode::write_uint(o, id).expect("Vec write");
    str_(o, "object");
    encode::write_map_len(o, 5).expect("Vec write");
    str_(o, "hook_type");
    str_(o, "Pre");
    str_(o, "hook_name");
    str_(o, "AddHeader");
    str_(o, "request");
    encode::write_map_len(o, 14).expect("Vec write");
    str_(o, "headers");
    map(o, &headers);
    str_(o, "set_headers");
    map(o, &[]);
    str_(o, "delete_headers");
    encode::write_array_len(o, 0).expect("Vec write");
    str_(o, "body");
    str_(o, body);
    str_(o, "url");
    str_(o, url);
    str_(o, "params");
    map(o, &params);
    str_(o, "add_params");
    map(o, &[]);
    str_(o, "extended_params");
    map(o, &[]);
    str_(o, "delete_params");
    encode::write_array_len(o, 0).expect("Vec write");
    str_(o, "return_overrides");
    encode::write_map_len(o, 5).expect("Vec write");
    str_(o, "response_code");
    encode::write_sint(o, -1).expect("Vec write");
    str_(o, "response_error");
    str_(o, "");
    str_(o, "headers");
    map(o, &[]);
    str_(o, "override_error");
    encode::write_bool(o, false).expect("Vec write");
    str_(o, "response_body");
    str_(o, "");
    str_(o, "method");
    str_(o, method);
    str_(o, "request_uri");
    str_(o, url);
    str_(o, "scheme");
    str_(o, "http");
    str_(o, "raw_body");
    encode::write_bin(o, body.as_bytes()).expect("Vec write");
    str_(o, "metadata");
    map(o, &[]);
    str_(o, "spec");
    map(
        o,
        &[
            ("OrgID", "b"),
            ("APIID", "hook"),
            ("bundle_hash", "d41d8cd98f00b204e9800998ecf8427e"),
        ],
    );
    out
}

/// `count` length-prefixed dispatch frames, ids 1..=count, written straight into one buffer.
pub fn dispatch_frames(sample: Sample, count: u64) -> Vec<u8> {
    let template = dispatch_body(sample, 1);
    // The template starts with fixmap(3), "type", "dispatch", "id", then the id 1 (one byte): only
    // the id is re-encoded per frame.
    let head = 1 + 5 + 9 + 3;
    let mut out = Vec::with_capacity((template.len() + 12) * count as usize);
    for id in 1..=count {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&template[..head]);
        encode::write_uint(&mut out, id).expect("Vec write");
        out.extend_from_slice(&template[head + 1..]);
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    out
}
