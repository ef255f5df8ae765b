#!/usr/bin/env bash
# Bounded smoke run of every fuzz target, for CI: builds the targets (debug build with
# debug assertions, no sanitizer: it builds in a fraction of the release build's time), then
# runs each one for FUZZ_SECONDS (default 5) starting from its committed seed corpus. New
# inputs go to a scratch directory, so the committed corpus is never modified. Any crash,
# panic, timeout or leak fails the script, with the reproducer under fuzz/artifacts/<target>/.
#
#   fuzz/smoke.sh                       # CI
#   FUZZ_SECONDS=60 fuzz/smoke.sh       # longer
#   FUZZ_BUILD=--release fuzz/smoke.sh  # optimised build (much slower to build)
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-5}
build=${FUZZ_BUILD:---dev}
# cargo-fuzz passes nightly-only flags to rustc; stable 1.95 accepts them with this set.
export RUSTC_BOOTSTRAP=1

start=$(date +%s)
cargo fuzz build "$build" --sanitizer none
echo "fuzz build: $(( $(date +%s) - start )) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in $(cargo fuzz list); do
  mkdir -p "$scratch/$t"
  echo "== $t (${secs} s)"
  # -timeout: one input taking longer is a hang (the connection target bounds its own reads
  # at 10 s); -rss_limit_mb: a runaway allocation is a finding too.
  if ! cargo fuzz run "$build" --sanitizer none "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
      2> "$scratch/$t.log"; then
    tail -40 "$scratch/$t.log"
    failed+=("$t")
  else
    grep -E "^stat::number_of_executed_units|^stat::average_exec_per_sec|DONE" "$scratch/$t.log" || true
  fi
done
echo "fuzz smoke: $(( $(date +%s) - start )) s in total"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
  exit 1
fi
