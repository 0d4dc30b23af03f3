#!/usr/bin/env bash
# Runs the whole stickless test suite on a fresh Debian machine: installs what it needs (redis-server, nginx,
# haproxy, chromium, node packages), builds once, then runs the Rust tests, the Node client tests and the browser tests,
# and prints one summary line.
set -uo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# --- system packages -----------------------------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q || exit 1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" || exit 1
fi
# Debian's nginx package starts a system nginx on :80; the tests run their own on free ports, so stop it.
if pgrep -x nginx >/dev/null && [ -f /run/nginx.pid ]; then nginx -s quit 2>/dev/null || true; fi

# --- node packages (the client itself has none; tests use ws, eventsource, playwright-core and typescript) ---
log "npm ci"
npm ci --no-audit --no-fund --loglevel=error || exit 1

# --- build once, test ---------------------------------------------------------------------------------------
# A debug build of every target takes about 4 GB, the tests' temp files a few hundred MB: a full disk shows
# up as a cryptic rustc error, so say how much there is first.
read -r free_kb mount < <(df -Pk . | awk 'NR==2 {print $4, $6}')
log "cargo build ($((free_kb / 1024 / 1024)) GB free on $mount)"
((free_kb < 4 * 1024 * 1024)) && echo "warning: under 4 GB free; the build may fail with 'No space left on device'"
cargo build --workspace --all-targets || exit 1
export STICKLESS_BIN="$PWD/target/debug/stickless"

results=$(mktemp)
log "cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee -a "$results"
rust=${PIPESTATUS[0]}

# A test that times out can leave its file's process alive (sockets, timers, the gateways it started), and the
# runner waits for that process forever: each file exits once its tests are done (Node >= 20.14; Debian's 18 has
# no such flag) and each runner is bounded, so a hang fails in minutes with a summary rather than never.
force_exit=()
node --test-force-exit -e "" 2>/dev/null && force_exit=(--test-force-exit)

log "node client tests (tests/js)"
timeout -k 10 1200 node --test "${force_exit[@]}" tests/js/ 2>&1 | tee -a "$results"
js=${PIPESTATUS[0]}

log "browser tests (tests/browser, Debian chromium via playwright-core)"
timeout -k 10 900 node --test "${force_exit[@]}" --test-concurrency=1 tests/browser/ 2>&1 | tee -a "$results"
browser=${PIPESTATUS[0]}

# --- one summary over every runner ---------------------------------------------------------------------------
passed=$(( $(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$results" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}') \
         + $(grep -E '^# pass [0-9]+' "$results" | awk '{s+=$3} END {print s+0}') ))
failed=$(( $(grep -oE '[0-9]+ failed;' "$results" | awk '{s+=$1} END {print s+0}') \
         + $(grep -E '^# fail [0-9]+' "$results" | awk '{s+=$3} END {print s+0}') ))
rm -f "$results"
echo
echo "rust: exit $rust, node client: exit $js, browser: exit $browser"
echo "summary: $passed passed, $failed failed"
[ "$rust" -eq 0 ] && [ "$js" -eq 0 ] && [ "$browser" -eq 0 ] && [ "$failed" -eq 0 ]
