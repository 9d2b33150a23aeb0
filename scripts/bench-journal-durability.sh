#!/usr/bin/env bash
# Tick-to-order latency of `vpp bench` under both `[journal] durability` modes, alternated
# (group_commit, before_send, group_commit, before_send) in one session so both see the same
# machine load. Usage: bash scripts/bench-journal-durability.sh [rate msgs/s] [secs per run]
set -euo pipefail
rate="${1:-1000}"
secs="${2:-5}"
cd "$(dirname "$0")/.."
cargo build --release -p vpp >/dev/null
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cp config/demo.toml "$dir/group_commit.toml"
{ cat config/demo.toml; printf '\n[journal]\ndurability = "before_send"\n'; } >"$dir/before_send.toml"
for round in 1 2; do
  for mode in group_commit before_send; do
    echo "== round $round: $mode"
    ./target/release/vpp bench --quick --rates "$rate" --secs "$secs" --config "$dir/$mode.toml"
  done
done
