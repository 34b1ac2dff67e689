#!/usr/bin/env bash
# Testnet benchmark (convergence, propagation latency, RSS, CPU) as recorded in BENCHMARKS.md.
# Bounded: each phase stops its own nodes; the whole run takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p fogmesh
exec target/release/fogmesh testnet bench --dir target/bench-testnet "$@"
