#!/usr/bin/env bash
# One command for the whole benchmark on a fresh Debian machine: `bash bench/run.sh`.
#
# Installs what is missing (redis-server, nginx, chromium, node/npm; bench/node_modules from
# bench/package-lock.json), builds the release binaries (stickless, the raw axum example, the load generator
# bench/loadgen), raises the open-files limit, then runs bench/bench.mjs, which starts every server on free
# loopback ports, measures every workload, stops everything it started and writes docs/benchmarks.md with its
# PNG charts. Bounded: the bench stops by its own watchdog (25 min) and is killed by `timeout` past 26 min.
# Options (environment): BENCH_QUICK=1 (a small smoke run, report in the temp dir),
# BENCH_ONLY=idle,fanout,longpoll,publish,storm (a subset).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
started=$(date +%s)
log() { printf '==> %s\n' "$*" >&2; }

# --- system packages -------------------------------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || missing+=(nginx)
# The charts are SVG screenshotted to PNG by Debian's Chromium (through playwright-core).
[ -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >&2 || exit 1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || exit 1
fi
# Debian's redis-server package starts a system Redis on :6379; the bench runs its own on free ports and
# leaves that one alone.
command -v cargo >/dev/null || { log "cargo is missing: install Rust (rustup) first"; exit 1; }

# --- node packages (bench/package-lock.json) ---------------------------------------------------------------------
log "npm ci (bench/)"
(cd bench && npm ci --no-audit --no-fund --loglevel=error >&2) || exit 1

# --- release binaries --------------------------------------------------------------------------------------------
log "cargo build --release --bin stickless --example raw_axum -p loadgen"
cargo build --release --bin stickless --example raw_axum >&2 || exit 1
cargo build --release -p loadgen >&2 || exit 1
export STICKLESS_BIN="$ROOT/target/release/stickless"
export RAW_AXUM_BIN="$ROOT/target/release/examples/raw_axum"
export LOADGEN_BIN="$ROOT/target/release/loadgen"
setup_done=$(date +%s)

# --- open files: 15,000 idle connections need 15,000 descriptors in the load generator and in the server -------
hard=$(ulimit -Hn)
want=65536
[ "$hard" != unlimited ] && [ "$hard" -lt "$want" ] && want=$hard
ulimit -n "$want" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 16000 ] && [ "${BENCH_QUICK:-0}" != 1 ]; then
  log "open-files limit is $(ulimit -n): the 15,000-connection steps need about 16,000; raise the hard limit"
  exit 1
fi

# --- the bench, in its own process group so that everything it started can be stopped -------------------------
export BENCH_TMP
BENCH_TMP=$(mktemp -d /tmp/stickless-bench.XXXXXX)
log "running bench/bench.mjs (logs in $BENCH_TMP)"
setsid timeout --signal=TERM --kill-after=10 1560 node bench/bench.mjs &
bench=$!
cleanup() {
  # Only our own process group (bench.mjs and what it started); it normally stops everything itself.
  kill -TERM -- "-$bench" 2>/dev/null || true
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM
wait "$bench"
status=$?
finished=$(date +%s)
echo
echo "_setup (install + build) $((setup_done - started)) s, bench $((finished - setup_done)) s, total $((finished - started)) s; exit ${status}_"
exit "$status"
