#!/usr/bin/env bash
# Start a local testnet from a fresh clone: builds fogmesh (release) and runs
# `fogmesh testnet up`. Stop it with `scripts/testnet.sh down`.
#   scripts/testnet.sh up [N]      start N nodes (default 5) in ./.fogmesh-testnet
#   scripts/testnet.sh status      show it
#   scripts/testnet.sh down        stop exactly the processes it started
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p fogmesh
bin=target/release/fogmesh
case "${1:-up}" in
  up) "$bin" testnet up --nodes "${2:-5}" ;;
  status) "$bin" testnet status ;;
  down) "$bin" testnet down ;;
  *) echo "usage: $0 up [N] | status | down" >&2; exit 2 ;;
esac
