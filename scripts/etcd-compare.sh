#!/usr/bin/env bash
# Durable single-key writes, fogmesh against etcd, side by side in one run (BENCHMARKS.md,
# "Durable writes against etcd"). Needs etcd on the PATH and installs nothing: on Debian,
# `apt-get install etcd-server` (etcd 3.4; the bench starts its own member on loopback and
# stops it by PID, so the package's service need not run). Extra arguments go to
# `fogmesh testnet put-bench` (e.g. --nodes 3, --puts 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! etcd=$(command -v etcd); then
  echo "etcd is not installed; on Debian: apt-get install etcd-server" >&2
  exit 2
fi
cargo build --release --quiet -p fogmesh
dir=$(mktemp -d -t fogmesh-put-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
target/release/fogmesh testnet put-bench --dir "$dir" --etcd "$etcd" "$@"
