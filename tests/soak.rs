//! Soak: many requests through every kind of path at once, with the plugin child SIGKILLed
//! again and again, checking that every request sent gets a response and none gets another
//! request's response.
//!
//! The mix, per client, round robin: pass-through (no hooks), a pipe hook that modifies the
//! request (`Echo`, out-of-order replies), a short-circuit reply from the plugin (`Reflect`), and
//! an auth failure (plugin `auth_check` refusing the key). Every request carries a unique token
//! that comes back in the answer. While the child is down, hooked requests get Tyk's clean 500
//! (403 for auth); those are counted, not failures.
//!
//! `soak_short` (20,000 requests) runs in CI. The full run is ignored by default:
//! `cargo test --release --test soak -- --ignored --nocapture` (1,000,000 requests; figures in
//! docs/HARDENING.md).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[derive(Default)]
struct Figures {
    sent: AtomicUsize,
    received: AtomicUsize,
    ok: AtomicUsize,
    clean_errors: AtomicUsize,
    mismatches: AtomicUsize,
    first_bad: Mutex<Vec<String>>,
}

impl Figures {
    fn bad(&self, why: String) {
        self.mismatches.fetch_add(1, Ordering::Relaxed);
        let mut b = self.first_bad.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() < 20 {
            b.push(why);
        }
    }
}

fn is_tyk_error(r: &Response, statuses: &[u16]) -> bool {
    statuses.contains(&r.status)
        && serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| v["error"].is_string())
}

/// Sends request `i` of a client (kind by `i % 4`) and checks the answer.
fn one(c: &mut Client, kind: usize, tok: &str, f: &Figures) -> bool {
    let bytes = match kind {
        0 => req("GET", &format!("/pass/{tok}")).token(tok).to_bytes(),
        1 => req("GET", &format!("/echo/{tok}?t={tok}"))
            .token(tok)
            .to_bytes(),
        2 => req("GET", &format!("/reflect/{tok}")).token(tok).to_bytes(),
        _ => req("GET", &format!("/auth/{tok}"))
            .header("Authorization", "wrong")
            .token(tok)
            .to_bytes(),
    };
    f.sent.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = c.try_send(&bytes) {
        f.bad(format!("{tok}: send failed: {e}"));
        return false;
    }
    let r = match c.try_read_response(false) {
        Ok(r) => r,
        Err(e) => {
            f.bad(format!("{tok}: no response: {e}"));
            return false;
        }
    };
    f.received.fetch_add(1, Ordering::Relaxed);
    let verdict: Result<bool, String> = match kind {
        0 => {
            if r.status == 200
                && r.header("x-echo-token") == Some(tok)
                && r.echoed().path == format!("/{tok}")
            {
                Ok(true)
            } else {
                Err(format!("pass-through: {r:?}"))
            }
        }
        1 => {
            if is_tyk_error(&r, &[500]) {
                Ok(false)
            } else if r.status == 200
                && r.header("x-echo-token") == Some(tok)
                && r.echoed().header("X-Plugin-Token") == Some(tok)
            {
                Ok(true)
            } else {
                Err(format!("modifying hook: {r:?}"))
            }
        }
        2 => {
            if is_tyk_error(&r, &[500]) {
                Ok(false)
            } else if r.status == 200
                && r.body == tok.as_bytes()
                && r.header("x-reflected") == Some(tok)
            {
                Ok(true)
            } else {
                Err(format!("short-circuit: {r:?}"))
            }
        }
        _ => {
            if is_tyk_error(&r, &[401, 403]) {
                Ok(true)
            } else {
                Err(format!("auth failure: {r:?}"))
            }
        }
    };
    match verdict {
        Ok(true) => {
            f.ok.fetch_add(1, Ordering::Relaxed);
            true
        }
        Ok(false) => {
            f.clean_errors.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(why) => {
            f.bad(format!("{tok}: {why}"));
            false
        }
    }
}

/// Runs `total` requests from `clients` keep-alive clients, SIGKILLing the plugin child each
/// time `kill_every` requests have completed since it came back from the previous kill.
fn soak(tag: &str, total: usize, clients: usize, kill_every: usize) {
    let sb = Sandbox::new(tag);
    let echo = EchoUpstream::start();
    sb.write_conf(&conf_with(json!({
        "coprocess_options": {
            "enable_coprocess": true,
            "pipe_command": ["python3", plugin_script("scenarios.py")],
            "hook_timeout_ms": 30000
        }
    })));
    let up = format!("{}/", echo.url());
    sb.write_api("pass", &keyless_api("pass", "/pass/", &up));
    sb.write_api(
        "echo",
        &hooked_api("echo", "/echo/", &up, json!({"pre": [{"name": "Echo"}]})),
    );
    sb.write_api(
        "reflect",
        &hooked_api(
            "reflect",
            "/reflect/",
            &up,
            json!({"pre": [{"name": "Reflect"}]}),
        ),
    );
    let mut auth = hooked_api(
        "auth",
        "/auth/",
        &up,
        json!({"auth_check": {"name": "Auth"}}),
    );
    merge(
        &mut auth,
        json!({ "use_keyless": false, "enable_coprocess_auth": true }),
    );
    sb.write_api("auth", &auth);
    let mut gw = Gateway::start(&sb);
    let addr = gw.addr();

    let figures = Arc::new(Figures::default());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|t| {
            let (f, next) = (Arc::clone(&figures), Arc::clone(&next));
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    if !one(&mut c, i % 4, &format!("s{t}n{i}"), &f) {
                        c = Client::connect(addr);
                    }
                }
            })
        })
        .collect();

    // The killer: one SIGKILL per `kill_every` requests, each after the previous child is back.
    let mut kills = 0;
    let mut last_kill_at = 0;
    while figures.received.load(Ordering::Relaxed) + figures.mismatches.load(Ordering::Relaxed)
        < total
        && !handles.iter().all(|h| h.is_finished())
    {
        let received = figures.received.load(Ordering::Relaxed);
        if received >= last_kill_at + kill_every && received + kill_every / 2 < total {
            if let Some(pid) = ready_pid(&gw, "scenarios") {
                if process_alive(pid) {
                    let mark = gw.log().mark();
                    kill_pid(pid);
                    kills += 1;
                    wait_restarted(&gw, mark, "scenarios");
                    // Count the next `kill_every` requests from when the child is back, so it
                    // serves that many between kills (requests fail fast while it is down).
                    last_kill_at = figures.received.load(Ordering::Relaxed);
                }
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    for h in handles {
        assert!(h.join().is_ok(), "a client thread panicked");
    }
    let elapsed = started.elapsed();
    let f = &figures;
    let (sent, received) = (
        f.sent.load(Ordering::Relaxed),
        f.received.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak {tag}: {sent} sent, {received} received, {} ok, {} clean errors while the child was down, \
         {} mismatches, {kills} child SIGKILLs, {clients} clients, {:.1} s, {:.0} req/s",
        f.ok.load(Ordering::Relaxed),
        f.clean_errors.load(Ordering::Relaxed),
        f.mismatches.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        received as f64 / elapsed.as_secs_f64()
    );
    let first_bad = f
        .first_bad
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(sent, total);
    assert_eq!(
        received, sent,
        "requests without a response: {first_bad:#?}"
    );
    assert_eq!(
        f.mismatches.load(Ordering::Relaxed),
        0,
        "wrong answers: {first_bad:#?}"
    );
    assert!(kills >= 1, "the plugin child was never killed");
    assert!(gw.wait_exit(Duration::ZERO).is_none(), "the gateway exited");
    drop(gw);
}

/// 20,000 requests, 16 clients, a child SIGKILL every 4,000 requests (CI).
#[test]
fn soak_short() {
    soak("soak-short", 20_000, 16, 4_000);
}

/// 1,000,000 requests, 32 clients, a child SIGKILL every 25,000 requests (about every few
/// seconds). Run with `cargo test --release --test soak -- --ignored --nocapture`.
#[test]
#[ignore]
fn soak_one_million() {
    soak("soak-1m", 1_000_000, 32, 25_000);
}
