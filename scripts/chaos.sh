#!/usr/bin/env bash
# The long form of the chaos checker (docs/CHAOS.md): the test `cargo test --test chaos` runs in its short form, with
# every fault (the changes of Redis primary with a reader lagging across them too) repeated until the schedule is
# SECONDS long, then the table per fault window and the findings.
#
#   bash scripts/chaos.sh [SECONDS]        # default 600
#
# Passed through to the test: STICKLESS_CHAOS_CLIENTS (15), STICKLESS_CHAOS_SEED (a run again), STICKLESS_CHAOS_FAULTS
# (a comma-separated list, or `all`), STICKLESS_CHAOS_NODE_ARGS (more gateway flags, e.g. "--redis-min-replicas 1"),
# STICKLESS_CHAOS_BIN (another stickless binary, e.g. a release build). Exits with the test's status: non-zero when
# the checker found a violation.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-600}"
case "$seconds" in
  '' | *[!0-9]*) echo "usage: bash scripts/chaos.sh [SECONDS]" >&2; exit 2 ;;
esac
for tool in redis-server redis-cli nginx; do
  command -v "$tool" >/dev/null || { echo "chaos: $tool is needed (scripts/test.sh installs it)" >&2; exit 2; }
done

export STICKLESS_CHAOS_SECONDS="$seconds"
echo "chaos: long form, about $((seconds / 60)) min of faults (+ set-up, drain and the build); $(date -u '+%Y-%m-%d %H:%M UTC')"
exec cargo test --test chaos -- --nocapture
