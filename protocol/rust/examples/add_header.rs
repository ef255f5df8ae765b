//! Example pipegate plugin: a `pre` hook named `AddHeader` that adds `X-Pipegate-Rust: 1` to the
//! request before it goes upstream, replying with only that change.
//!
//! Build: `cargo build -p pipegate-plugin --example add_header` (add `--release` for benchmarks),
//! then point `coprocess_options.pipe_command` at `target/<profile>/examples/add_header`.

use pipegate_plugin::{serve_with, HookCall, HookResult, ObjectPatch, ServeOptions};

fn add_header(call: HookCall) -> HookResult {
    match call.object.hook_name.as_str() {
        "AddHeader" => {
            let mut patch = ObjectPatch::default();
            patch.set_header("X-Pipegate-Rust", "1");
            patch.into()
        }
        other => HookResult::Error(format!(
            "the add_header example has no hook named {other:?}; configure the API's pre hook \
             with name \"AddHeader\""
        )),
    }
}

fn main() {
    let options = ServeOptions::new("rust-add-header").hooks(["AddHeader"]);
    if let Err(e) = serve_with(options, add_header) {
        eprintln!("add_header plugin stopped: {e}");
        std::process::exit(1);
    }
}
