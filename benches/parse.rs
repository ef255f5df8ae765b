//! Request-head parsing and validation: the first thing every request costs.
//!
//! Run with `cargo bench --bench parse`. Figures go in docs/PERFORMANCE.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pipegate::http::{parse_request, ChunkedDecoder, RequestHead};

const SMALL: &[u8] = b"GET /demo/anything?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";

fn realistic() -> Vec<u8> {
    let mut s = String::from("POST /api/v1/orders/12345/items?expand=true&limit=50 HTTP/1.1\r\n");
    s.push_str("Host: api.example.com\r\n");
    s.push_str("User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n");
    s.push_str("Accept: application/json, text/plain, */*\r\n");
    s.push_str("Accept-Language: en-US,en;q=0.9\r\n");
    s.push_str("Accept-Encoding: gzip, deflate, br\r\n");
    s.push_str("Content-Type: application/json\r\n");
    s.push_str("Content-Length: 1024\r\n");
    s.push_str("Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c\r\n");
    s.push_str("X-Request-Id: 7f9c2ba4-e88f-11ee-a5d2-0242ac120002\r\n");
    s.push_str("X-Forwarded-For: 203.0.113.7\r\n");
    s.push_str("Cookie: session=abcdef0123456789; theme=dark\r\n");
    s.push_str("Connection: keep-alive\r\n\r\n");
    s.into_bytes()
}

fn bench_parse(c: &mut Criterion) {
    let mut head = RequestHead::default();
    let mut g = c.benchmark_group("parse_request");
    g.throughput(Throughput::Bytes(SMALL.len() as u64));
    g.bench_function("small_get", |b| {
        b.iter(|| parse_request(black_box(SMALL), &mut head, 32 * 1024).unwrap())
    });
    let big = realistic();
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("realistic_post_12_headers_jwt", |b| {
        b.iter(|| parse_request(black_box(&big), &mut head, 32 * 1024).unwrap())
    });
    g.finish();

    let mut body = Vec::new();
    for _ in 0..64 {
        pipegate::http::chunked::write_chunk(&mut body, &[b'a'; 1024]);
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("chunked");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("passthrough_64k", |b| {
        b.iter(|| {
            let mut d = ChunkedDecoder::new();
            d.feed(black_box(&body), None).unwrap()
        })
    });
    let mut out = Vec::with_capacity(body.len());
    g.bench_function("decode_64k", |b| {
        b.iter(|| {
            out.clear();
            let mut d = ChunkedDecoder::new();
            d.feed(black_box(&body), Some(&mut out)).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
