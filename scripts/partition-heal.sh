#!/usr/bin/env bash
# A partition between two nodes, each in a network namespace of its own, joined by a veth
# pair; the partition is an nftables rule dropping every packet between them (silently, as
# a real one does: connections are not told). While apart, node A writes KEYS keys; then the
# rule goes and this measures when node B holds them all, and counts the streams each node
# dropped for being at capacity. (BENCHMARKS.md, "Partition heal".)
#
# Needs root, iproute2 and nftables (`apt-get install nftables`). Addresses: 10.77.0.1 and
# .2 inside namespaces this script creates and deletes. Stops exactly the two nodes it
# started, by PID, whatever happens; every wait is bounded.
#
# Usage: scripts/partition-heal.sh [BIN] [KEYS] [APART_S]
#   BIN      the fogmesh binary (default target/release/fogmesh)
#   KEYS     keys written on A while apart (default 2000)
#   APART_S  how long the partition lasts, in seconds (default 30)
set -euo pipefail

BIN=$(realpath "${1:-target/release/fogmesh}")
KEYS=${2:-2000}
APART_S=${3:-30}
NS_A=fm-heal-a
NS_B=fm-heal-b
WORK=$(mktemp -d /tmp/fogmesh-heal.XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
}
trap cleanup EXIT

command -v nft >/dev/null || { echo "needs nftables: apt-get install nftables" >&2; exit 2; }
ip netns del "$NS_A" 2>/dev/null || true
ip netns del "$NS_B" 2>/dev/null || true
ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add fm-heal-va type veth peer name fm-heal-vb
ip link set fm-heal-va netns "$NS_A"
ip link set fm-heal-vb netns "$NS_B"
ip -n "$NS_A" addr add 10.77.0.1/24 dev fm-heal-va
ip -n "$NS_B" addr add 10.77.0.2/24 dev fm-heal-vb
for ns in "$NS_A" "$NS_B"; do
  ip -n "$ns" link set lo up
done
ip -n "$NS_A" link set fm-heal-va up
ip -n "$NS_B" link set fm-heal-vb up

in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }

start() { # ns dir listen [bootstrap]
  local ns=$1 dir=$2 listen=$3
  shift 3
  ip netns exec "$ns" "$BIN" run --data-dir "$dir" --listen "$listen" --no-mdns --no-quic \
    --telemetry-interval 2s --log "${FOGMESH_HEAL_LOG:-info}" "$@" >"$dir.log" 2>&1 &
  PIDS+=($!)
}

mkdir -p "$WORK/a" "$WORK/b"
A_ID=$("$BIN" id --data-dir "$WORK/a")
start "$NS_A" "$WORK/a" /ip4/10.77.0.1/tcp/4747 --control-port 7471
sleep 1
start "$NS_B" "$WORK/b" /ip4/10.77.0.2/tcp/4747 --control-port 7471 \
  --bootstrap "/ip4/10.77.0.1/tcp/4747/p2p/$A_ID"

kv_count() { # ns: keys the node holds, from its metrics (-1 if it does not answer)
  ip netns exec "$1" curl -sf http://127.0.0.1:7471/metrics 2>/dev/null \
    | awk '/^fogmesh_kv_keys / {print $2; found=1} END {if (!found) print -1}'
}

# Connected, and a first write crosses.
in_a "$BIN" kv put --data-dir "$WORK/a" --namespace heal warm up >/dev/null 2>&1 || true
for _ in $(seq 1 300); do
  [ "$(kv_count "$NS_B")" = 1 ] && break
  sleep 0.1
done
[ "$(kv_count "$NS_B")" = 1 ] || { echo "the nodes never connected" >&2; tail "$WORK"/*.log >&2; exit 1; }

# Apart: every packet between them dropped, both ways.
in_a nft add table inet fmheal
in_a nft add chain inet fmheal in '{ type filter hook input priority 0; policy accept; }'
in_a nft add chain inet fmheal out '{ type filter hook output priority 0; policy accept; }'
in_a nft add rule inet fmheal in ip saddr 10.77.0.2 drop
in_a nft add rule inet fmheal out ip daddr 10.77.0.2 drop
apart_at=$(date +%s.%N)

# A writes while apart, in batches of 500 (one flush each), through its control API, with
# its token (from a file in the private work dir, not on curl's command line).
printf 'Authorization: Bearer %s\n' "$(cat "$WORK/a/api-token")" >"$WORK/auth.header"
for first in $(seq 0 500 $((KEYS - 1))); do
  python3 -c 'import json, sys
first, total = int(sys.argv[1]), int(sys.argv[2])
print(json.dumps({"writes": [{"key": f"k{i:06d}", "value": f"v{i}"}
                              for i in range(first, min(first + 500, total))]}))' \
    "$first" "$KEYS" >"$WORK/batch.json"
  in_a curl -sf -X POST -H 'content-type: application/json' \
    -H @"$WORK/auth.header" --data-binary @"$WORK/batch.json" \
    http://127.0.0.1:7471/v1/kv/heal >/dev/null
done
written=$(kv_count "$NS_A")
left=$(python3 -c "import time; print(max(0.0, $apart_at + $APART_S - time.time()))")
sleep "$left"

in_a nft delete table inet fmheal
healed_at=$(date +%s.%N)
want=$((KEYS + 1))
got=0
for _ in $(seq 1 1200); do
  got=$(kv_count "$NS_B")
  [ "$got" = "$want" ] && break
  sleep 0.05
done
done_at=$(date +%s.%N)
echo "apart ${APART_S}s; A wrote $((written - 1)) keys while apart"
if [ "$got" = "$want" ]; then
  python3 -c "print(f'B held them all {($done_at - $healed_at) * 1000:.0f} ms after the heal')"
else
  echo "B held $((got - 1)) of $KEYS keys 60 s after the heal"
fi
for node in a b; do
  echo "node $node: $(grep -c 'at capacity' "$WORK/$node.log" || true) streams dropped at capacity"
done
