#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60): upstream frames, positions and
# Last-Event-ID, the configuration file, connection tokens. cargo-fuzz needs a nightly toolchain; without one
# this says so and exits 0 (the same parsers' properties run on stable in tests/properties.rs).
#   bash scripts/fuzz.sh          # 60 s per target
#   bash scripts/fuzz.sh 3600     # an hour per target
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: skipped - cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked || exit 1
fi
status=0
for target in $(cargo +nightly fuzz list); do
  echo "==> fuzz $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target"
  cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -max_len=65536 2>&1 | tail -4 || status=1
done
exit $status
