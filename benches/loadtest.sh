#!/usr/bin/env bash
# Side-by-side load harness: nginx proxy_pass, nginx + an njs header hook, and pipegate without a
# plugin and with the same header added by a pipe plugin (Rust SDK, Python runner) and, when a gRPC
# server is available, by a gRPC plugin. All proxy to ONE shared upstream (nginx answering a small
# static body), run alternately for several rounds, and the medians are printed with their ratio to
# nginx proxy_pass.
#
#   benches/loadtest.sh                 # defaults: 3 rounds x 5 s, 32 connections, 1 worker each
#   ROUNDS=5 DURATION=10 CONNS=64 WORKERS=2 benches/loadtest.sh
#   LAT_CONNS=4 (default) sets the connections of the moderate-load latency phase that follows.
#
# Needs nginx (Debian's nginx-light + libnginx-mod-http-js), wrk and python3 with msgpack; installs
# them with apt/pip when missing and running as root. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
WORKERS=${WORKERS:-1}
BASE=${BASE_PORT:-19100}

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null || [ ! -e /usr/lib/nginx/modules/ngx_http_js_module.so ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light libnginx-mod-http-js >/dev/null
fi
python3 -c 'import msgpack' 2>/dev/null || python3 -m pip install -q msgpack

cargo build --release -q
cargo build --release -q -p pipegate-plugin --example add_header
cargo build --release -q --example grpc_server
BIN=$PWD/target/release/pipegate
RUST_PLUGIN=$PWD/target/release/examples/add_header
GRPC_SERVER=$PWD/target/release/examples/grpc_server

WORK=$(mktemp -d /tmp/pipegate-load.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

UP=$BASE; NGX=$((BASE+1)); NJS=$((BASE+2)); PG=$((BASE+3))

cat > "$WORK/upstream.conf" <<EOF
worker_processes 1; daemon off; pid $WORK/up.pid; error_log $WORK/up.err;
events { worker_connections 8192; }
http { access_log off;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from the upstream\n"; } } }
EOF
cat > "$WORK/hook.js" <<'EOF'
function header(r) { return "1"; }
export default { header };
EOF
cat > "$WORK/proxy.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_http_js_module.so;
worker_processes $WORKERS; daemon off; pid $WORK/px.pid; error_log $WORK/px.err;
events { worker_connections 8192; }
http { access_log off; js_import hook from $WORK/hook.js; js_set \$hook_header hook.header;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$NGX;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$NJS;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_set_header X-Hook \$hook_header; } } }
EOF
nginx -c "$WORK/upstream.conf" & PIDS+=($!); UP_PID=$!
nginx -c "$WORK/proxy.conf" & PIDS+=($!); PX_PID=$!

mkdir -p "$WORK/apps"
cat > "$WORK/plugin.py" <<'EOF'
from tyk.decorators import *
@Hook
def AddHeader(request, session, spec):
    request.add_header("X-Hook", "1")
    return request, session
EOF
api() { # name listen_path hooks_json
  cat > "$WORK/apps/$1.json" <<EOF
{"api_id":"$1","name":"$1","org_id":"bench","use_keyless":true,
 "proxy":{"listen_path":"$2","target_url":"http://127.0.0.1:$UP/","strip_listen_path":true},
 "custom_middleware":{"driver":"python","pre":$3}}
EOF
}
api plain /plain/ '[]'
api hook /hook/ '[{"name":"AddHeader"}]'
# The same one-header pre hook over gRPC (the Rust tonic example server's MyPreMiddleware).
cat > "$WORK/apps/grpchook.json" <<EOF
{"api_id":"grpchook","name":"grpchook","org_id":"bench","use_keyless":true,
 "proxy":{"listen_path":"/grpchook/","target_url":"http://127.0.0.1:$UP/","strip_listen_path":true},
 "custom_middleware":{"driver":"grpc","pre":[{"name":"MyPreMiddleware"}]}}
EOF
GRPC_PORT=$((BASE+9))
"$GRPC_SERVER" --listen "tcp://127.0.0.1:$GRPC_PORT" > "$WORK/grpc.out" 2>&1 & PIDS+=($!); GRPC_PID=$!

start_gw() { # port pipe_command_json
  local dir="$WORK/gw-$1"; mkdir -p "$dir"; cp -r "$WORK/apps" "$dir/"
  cat > "$dir/tyk.conf" <<EOF
{"listen_address":"127.0.0.1","listen_port":$1,"app_path":"apps/","pipegate":{"workers":$WORKERS},
 "coprocess_options":{"enable_coprocess":true,"pipe_command":$2,
   "pipe_env":{"PYTHONPATH":"$PWD/protocol/python"},
   "coprocess_grpc_server":"tcp://127.0.0.1:$GRPC_PORT"}}
EOF
  "$BIN" --conf "$dir/tyk.conf" 2>"$dir/log" & PIDS+=($!); GW_PID=$!
}
start_gw $PG "[\"$RUST_PLUGIN\"]"; GW_RUST=$GW_PID
start_gw $((PG+1)) "[\"python3\",\"-m\",\"pipegate_plugin\",\"$WORK/plugin.py\"]"; GW_PY=$GW_PID
sleep 2

declare -A URLS=(
  [nginx_proxy_pass]="http://127.0.0.1:$NGX/"
  [nginx_njs_hook]="http://127.0.0.1:$NJS/"
  [pipegate]="http://127.0.0.1:$PG/plain/"
  [pipegate_rust_hook]="http://127.0.0.1:$PG/hook/"
  [pipegate_python_hook]="http://127.0.0.1:$((PG+1))/hook/"
  [pipegate_grpc_hook]="http://127.0.0.1:$PG/grpchook/"
)
ORDER=(nginx_proxy_pass nginx_njs_hook pipegate pipegate_rust_hook pipegate_python_hook pipegate_grpc_hook)
for name in "${ORDER[@]}"; do
  curl -sf -o /dev/null "${URLS[$name]}" || { echo "$name is not answering at ${URLS[$name]}" >&2; exit 1; }
done

# Where each target's CPU goes: "proxy plugin upstream" process lists, read from /proc before and
# after each run (utime + stime of every thread), reported per request. nginx's work is done by
# its worker processes, the children of the master started above.
kids() { pgrep -P "$1" | tr '\n' ' '; }
declare -A PROXY_PROCS=(
  [nginx_proxy_pass]="$(kids $PX_PID)" [nginx_njs_hook]="$(kids $PX_PID)"
  [pipegate]="$GW_RUST" [pipegate_rust_hook]="$GW_RUST"
  [pipegate_python_hook]="$GW_PY" [pipegate_grpc_hook]="$GW_RUST"
)
declare -A PLUGIN_PROCS=(
  [nginx_proxy_pass]="" [nginx_njs_hook]="" [pipegate]=""
  [pipegate_rust_hook]="$(kids $GW_RUST)" [pipegate_python_hook]="$(kids $GW_PY)"
  [pipegate_grpc_hook]="$GRPC_PID"
)
UPSTREAM_PROCS="$(kids $UP_PID)"
ticks() { # pids... -> summed utime+stime in clock ticks
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

# One wrk run: appends "name rps p50 p99 round proxy_ticks plugin_ticks upstream_ticks requests"
# to $out_file and echoes it with a label.
measure() { # label out_file name wrk_args... ($r, the round, is recorded with the result)
  local label=$1 out_file=$2 name=$3; shift 3
  local out rps p50 p99 reqs
  # shellcheck disable=SC2086 # the process lists are space-separated pids
  local a0 b0 c0 a1 b1 c1
  a0=$(ticks ${PROXY_PROCS[$name]}); b0=$(ticks ${PLUGIN_PROCS[$name]}); c0=$(ticks $UPSTREAM_PROCS)
  out=$(wrk -t1 -d"${DURATION}s" --latency "$@" "${URLS[$name]}")
  # shellcheck disable=SC2086
  a1=$(ticks ${PROXY_PROCS[$name]}); b1=$(ticks ${PLUGIN_PROCS[$name]}); c1=$(ticks $UPSTREAM_PROCS)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  echo "$name $rps $p50 $p99 $r $((a1 - a0)) $((b1 - b0)) $((c1 - c0)) $reqs" >> "$out_file"
  echo "$label: $name rps=$rps p50=$p50 p99=$p99"
}

RESULTS="$WORK/results.txt"
for r in $(seq 1 "$ROUNDS"); do
  for name in "${ORDER[@]}"; do
    measure "round $r" "$RESULTS" "$name" -c"$CONNS"
  done
done

# Added latency per hook at moderate load: a few connections, each waiting 1 ms between requests
# (wrk's delay() hook), so the gateway is far from saturated; latency is measured per request
# from its write, without the delay. The hook's added latency is the difference to no plugin.
LAT_CONNS=${LAT_CONNS:-4}
cat > "$WORK/delay.lua" <<'LUA'
function delay() return 1 end
LUA
LATENCY="$WORK/latency.txt"
LAT_ORDER=(pipegate pipegate_rust_hook pipegate_python_hook pipegate_grpc_hook)
for r in $(seq 1 "$ROUNDS"); do
  for name in "${LAT_ORDER[@]}"; do
    measure "latency round $r" "$LATENCY" "$name" -c"$LAT_CONNS" -s "$WORK/delay.lua"
  done
done

python3 - "$RESULTS" "$LATENCY" "$LAT_CONNS" "$(getconf CLK_TCK)" <<'EOF'
import statistics, sys
def us(v):
    for suf, f in (("us", 1), ("ms", 1000), ("s", 1e6)):
        if v.endswith(suf):
            return float(v[:-len(suf)]) * f
    return float(v)
rows = {}
by_round = {}
cpu = {}
tick_us = 1e6 / float(sys.argv[4])
for line in open(sys.argv[1]):
    n, rps, p50, p99, rnd, proxy, plugin, upstream, reqs = line.split()
    rows.setdefault(n, []).append((float(rps), us(p50), us(p99)))
    by_round.setdefault(rnd, {})[n] = float(rps)
    c = cpu.setdefault(n, [0, 0, 0, 0])
    for i, v in enumerate((proxy, plugin, upstream, reqs)):
        c[i] += int(v)
base = statistics.median(r[0] for r in rows["nginx_proxy_pass"])
njs = statistics.median(r[0] for r in rows["nginx_njs_hook"])
print("\n%-22s %10s %9s %9s %10s %10s" % ("target", "rps", "p50 us", "p99 us", "vs nginx", "vs njs"))
for n, rs in rows.items():
    rps = statistics.median(r[0] for r in rs)
    print("%-22s %10.0f %9.0f %9.0f %9.2fx %9.2fx" % (
        n, rps, statistics.median(r[1] for r in rs), statistics.median(r[2] for r in rs),
        rps / base, rps / njs))
# The same targets, compared within each round (they ran back to back there), then the median of
# those per-round ratios. On a shared VM the machine's speed drifts between rounds by more than
# the differences measured; a paired ratio cancels most of that drift.
paired = [
    ("pipegate / nginx_proxy_pass", "pipegate", "nginx_proxy_pass", False),
    ("rust hook / nginx_njs_hook", "pipegate_rust_hook", "nginx_njs_hook", False),
    ("python hook / nginx_njs_hook", "pipegate_python_hook", "nginx_njs_hook", False),
    ("rps lost to the rust pipe hook", "pipegate_rust_hook", "pipegate", True),
    ("rust pipe hook / grpc hook", "pipegate_rust_hook", "pipegate_grpc_hook", False),
]
print("\nper-round ratios (median over %d rounds, then min..max)" % len(by_round))
for label, a, b, loss in paired:
    vals = [(1 - x[a] / x[b]) * 100 if loss else x[a] / x[b]
            for x in by_round.values() if a in x and b in x and x[b] > 0]
    if not vals:
        continue
    fmt = "%.0f%%" if loss else "%.2fx"
    print("%-32s %8s   (%s..%s)" % (label, fmt % statistics.median(vals), fmt % min(vals), fmt % max(vals)))
# CPU time per request, summed over all rounds: what the proxy, its plugin process and the shared
# upstream each spent (user + system, clock-tick resolution).
print("\ncpu per request (all rounds)    proxy us   plugin us  upstream us")
for n, (proxy, plugin, upstream, reqs) in cpu.items():
    if reqs:
        print("%-28s %10.1f %11.1f %12.1f" % (
            n, proxy * tick_us / reqs, plugin * tick_us / reqs, upstream * tick_us / reqs))
lat = {}
lat_round = {}
for line in open(sys.argv[2]):
    n, rps, p50, p99, rnd = line.split()[:5]
    lat.setdefault(n, []).append((float(rps), us(p50), us(p99)))
    lat_round.setdefault(rnd, {})[n] = (us(p50), us(p99))
med = {n: tuple(statistics.median(r[i] for r in rs) for i in range(3)) for n, rs in lat.items()}
plain = med["pipegate"]
print("\nmoderate load (%s connections, 1 ms between requests each): added latency per hook" % sys.argv[3])
print("%-22s %10s %9s %9s %12s %12s" % ("target", "rps", "p50 us", "p99 us", "+p50 us", "+p99 us"))
for n, (rps, p50, p99) in med.items():
    print("%-22s %10.0f %9.1f %9.1f %12.1f %12.1f" % (n, rps, p50, p99, p50 - plain[1], p99 - plain[2]))
print("paired per round (median of each round's difference to no plugin):")
for n in med:
    if n == "pipegate":
        continue
    d50 = [x[n][0] - x["pipegate"][0] for x in lat_round.values() if n in x and "pipegate" in x]
    d99 = [x[n][1] - x["pipegate"][1] for x in lat_round.values() if n in x and "pipegate" in x]
    if d50:
        print("%-22s %32s +%.0f us p50, +%.0f us p99" % (n, "", statistics.median(d50), statistics.median(d99)))
EOF
