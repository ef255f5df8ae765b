//! `pipegate plugin-bench` run as a user runs it: the real binary against a real pipe child (the
//! Rust-SDK demo plugin, the Python runner), a real gRPC server, and plugins that fail.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn bench(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(pipegate_bin())
        .arg("plugin-bench")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run pipegate plugin-bench")
}

/// Runs with `--json` and returns the report, failing the test with stderr if there is none.
fn report(args: &[&str], env: &[(&str, &str)]) -> (Output, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = bench(&all, env);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_else(|| {
        panic!(
            "no report on stdout; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    (out, v)
}

fn assert_all_ok(v: &Value, n: u64) {
    assert_eq!(v["ok"], n, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    let lat = &v["latency_us"];
    let p = |k: &str| lat[k].as_f64().unwrap_or(-1.0);
    assert!(p("p50") > 0.0, "{v}");
    assert!(
        p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("p999"),
        "{v}"
    );
    assert!(p("p999") <= p("max"), "{v}");
    assert!(v["throughput_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
}

fn python_env() -> (&'static str, String) {
    (
        "PYTHONPATH",
        format!("{}/protocol/python", env!("CARGO_MANIFEST_DIR")),
    )
}

#[test]
fn drives_the_rust_sdk_demo_plugin_over_the_pipe() {
    let cmd = format!("{} demo-plugin", pipegate_bin());
    let (out, v) = report(
        &[
            "--command",
            &cmd,
            "--hook",
            "pre",
            "--name",
            "DemoPre",
            "-n",
            "3000",
            "-c",
            "16",
            "--warmup",
            "200",
        ],
        &[],
    );
    assert!(out.status.success(), "{v}");
    assert_all_ok(&v, 3000);
    assert_eq!(v["concurrency"], 16);
    assert_eq!(v["hook"], "Pre DemoPre");

    // The human report carries the same figures.
    let out = bench(
        &[
            "--command",
            &cmd,
            "--name",
            "DemoPre",
            "-n",
            "500",
            "-c",
            "4",
        ],
        &[],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("500 ok, 0 failed, 4 in flight"), "{text}");
    assert!(
        text.contains("p50") && text.contains("p99") && text.contains("max"),
        "{text}"
    );
}

#[test]
fn drives_a_python_plugin_and_counts_its_failures() {
    let sb = Sandbox::new("plugin-bench-py");
    let plugin = sb.write_file(
        "plugin.py",
        "from tyk.decorators import *\n\
         @Hook\n\
         def AddHeader(request, session, spec):\n    request.add_header('X-Hook', '1')\n    return request, session\n\
         @Hook\n\
         def Boom(request, session, spec):\n    raise ValueError('nope')\n",
    );
    let cmd = format!("python3 -m pipegate_plugin {}", plugin.display());
    let (py_key, py_val) = python_env();
    let env = [(py_key, py_val.as_str())];

    let (out, v) = report(
        &[
            "--command",
            &cmd,
            "--name",
            "AddHeader",
            "-n",
            "2000",
            "-c",
            "8",
        ],
        &env,
    );
    assert!(out.status.success(), "{v}");
    assert_all_ok(&v, 2000);

    // Every call of a raising hook is counted as a plugin error, and the run fails.
    let (out, v) = report(
        &[
            "--command",
            &cmd,
            "--name",
            "Boom",
            "-n",
            "300",
            "-c",
            "8",
            "--warmup",
            "0",
        ],
        &env,
    );
    assert!(!out.status.success());
    assert_eq!(v["ok"], 0, "{v}");
    assert_eq!(v["failed"], 300, "{v}");
    assert_eq!(v["errors"][0]["kind"], "plugin error", "{v}");
    assert!(
        v["errors"][0]["first"]
            .as_str()
            .is_some_and(|s| s.contains("nope")),
        "{v}"
    );
}

#[test]
fn drives_a_grpc_server() {
    let sb = Sandbox::new("plugin-bench-grpc");
    let server = GrpcServer::start("tcp://127.0.0.1:0", &sb.dir().join("calls.log"), &[]);
    let (out, v) = report(
        &[
            "--grpc",
            &server.target,
            "--hook",
            "post",
            "--name",
            "Deadline",
            "-n",
            "400",
            "-c",
            "8",
            "--warmup",
            "20",
        ],
        &[],
    );
    assert!(out.status.success(), "{v}");
    assert_all_ok(&v, 400);
    assert!(v["target"].as_str().is_some_and(|t| t.starts_with("gRPC")));
}

#[test]
fn bad_arguments_and_dead_plugins_get_clear_errors() {
    let text = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let out = bench(&["--command", "/nonexistent/plugin --x", "-n", "10"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("pipegate plugin-bench:"),
        "{}",
        text(&out)
    );

    let out = bench(&["--command", "true", "--hook", "prehook"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("use pre, auth_check"), "{}", text(&out));

    let out = bench(&["--hook", "pre"], &[]);
    assert!(!out.status.success(), "neither --command nor --grpc");

    let out = bench(&["--grpc", "tcp://127.0.0.1:1", "-n", "10"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not reachable"), "{}", text(&out));
}
