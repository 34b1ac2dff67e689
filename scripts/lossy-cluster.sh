#!/usr/bin/env bash
# A fog cluster on lossy links: NODES nodes, each in a network namespace of its own, joined
# by a bridge in one more namespace; nftables in every node's namespace drops LOSS % of the
# packets it sends to the others, at random. Once one cluster has formed, this watches it for
# WATCH_S seconds, once a second on every node: how many coordinators it had (terms), how
# long it had none, and whether members left it. (BENCHMARKS.md, "A cluster on lossy links".)
#
# Needs root, iproute2 and nftables. Addresses: 10.78.0.0/24 inside namespaces this script
# creates and deletes. Stops exactly the nodes it started, by PID; every wait is bounded.
#
# Usage: scripts/lossy-cluster.sh [BIN] [LOSS] [WATCH_S] [NODES]
#   defaults: target/release/fogmesh, 10 (%), 120 (s), 3
# With HEAL_AFTER_S set, the loss stops that many seconds into the watch (LOSS=100 makes it a
# partition of every node from every other, then a heal); the streams each node dropped for
# being at capacity are counted either way.
set -euo pipefail

BIN=$(realpath "${1:-target/release/fogmesh}")
LOSS=${2:-10}
WATCH_S=${3:-120}
NODES=${4:-3}
BR=fm-loss-br
WORK=$(mktemp -d /tmp/fogmesh-loss.XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for i in $(seq 0 $((NODES - 1))); do ip netns del "fm-loss-$i" 2>/dev/null || true; done
  ip netns del "$BR" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
command -v nft >/dev/null || { echo "needs nftables: apt-get install nftables" >&2; exit 2; }

ip netns add "$BR"
ip -n "$BR" link add br0 type bridge
ip -n "$BR" link set br0 up
for i in $(seq 0 $((NODES - 1))); do
  ns="fm-loss-$i"
  ip netns add "$ns"
  ip link add "fm-loss-n$i" type veth peer name "fm-loss-b$i"
  ip link set "fm-loss-n$i" netns "$ns"
  ip link set "fm-loss-b$i" netns "$BR"
  ip -n "$BR" link set "fm-loss-b$i" master br0 up
  ip -n "$ns" addr add "10.78.0.$((i + 1))/24" dev "fm-loss-n$i"
  ip -n "$ns" link set "fm-loss-n$i" up
  ip -n "$ns" link set lo up
done

ids=()
for i in $(seq 0 $((NODES - 1))); do
  mkdir -p "$WORK/n$i"
  ids+=("$("$BIN" id --data-dir "$WORK/n$i")")
done
for i in $(seq 0 $((NODES - 1))); do
  args=(run --data-dir "$WORK/n$i" --listen "/ip4/10.78.0.$((i + 1))/tcp/4747" --no-mdns
    --no-quic --telemetry-interval 2s --control-port 7472)
  if [ "$i" -gt 0 ]; then
    args+=(--bootstrap "/ip4/10.78.0.1/tcp/4747/p2p/${ids[0]}")
  fi
  ip netns exec "fm-loss-$i" "$BIN" "${args[@]}" >"$WORK/n$i.log" 2>&1 &
  PIDS+=($!)
done

# One line per node: cluster, term, coordinator, members ("-" when none).
view() {
  for i in $(seq 0 $((NODES - 1))); do
    ip netns exec "fm-loss-$i" curl -sf --max-time 2 http://127.0.0.1:7472/v1/cluster 2>/dev/null \
      | python3 -c 'import json, sys
try:
    c = json.load(sys.stdin)
    print(c.get("cluster") or "-", c.get("term", 0), c.get("coordinator") or "-", len(c.get("members", [])))
except Exception:
    print("- 0 - 0")'
  done
}

# Wait (at most 90 s) for one cluster of every node, before the loss starts.
formed=""
for _ in $(seq 1 90); do
  v=$(view)
  if [ "$(echo "$v" | awk '{print $1}' | sort -u | wc -l)" = 1 ] \
    && ! echo "$v" | grep -q '^-' && [ "$(echo "$v" | awk '{print $4}' | sort -u)" = "$NODES" ]; then
    formed=yes
    break
  fi
  sleep 1
done
[ -n "$formed" ] || { echo "no single cluster of $NODES formed in 90 s:"; view; exit 1; }
cluster=$(view | awk 'NR == 1 {print $1}')

for i in $(seq 0 $((NODES - 1))); do
  ns="fm-loss-$i"
  ip netns exec "$ns" nft add table inet fmloss
  ip netns exec "$ns" nft add chain inet fmloss out '{ type filter hook output priority 0; policy accept; }'
  if [ "$LOSS" -ge 100 ]; then
    ip netns exec "$ns" nft add rule inet fmloss out ip daddr 10.78.0.0/24 drop
  else
    ip netns exec "$ns" nft add rule inet fmloss out ip daddr 10.78.0.0/24 numgen random mod 100 \< "$LOSS" drop
  fi
done

terms=$(mktemp)
leaderless=0
left=0
for second in $(seq 1 "$WATCH_S"); do
  if [ "$second" = "${HEAL_AFTER_S:-none}" ]; then
    for i in $(seq 0 $((NODES - 1))); do ip netns exec "fm-loss-$i" nft delete table inet fmloss; done
    echo "healed after ${HEAL_AFTER_S} s"
  fi
  v=$(view)
  echo "$v" | awk '$2 > 0 {print $2}' >>"$terms"
  # No node names a coordinator: the cluster has none right now.
  if ! echo "$v" | awk '{print $3}' | grep -qv '^-$'; then leaderless=$((leaderless + 1)); fi
  if echo "$v" | awk -v c="$cluster" '$1 != c' | grep -q .; then left=$((left + 1)); fi
  sleep 1
done
first=$(sort -n "$terms" | head -1)
last=$(sort -n "$terms" | tail -1)
echo "loss ${LOSS}% each way, ${NODES} nodes, watched ${WATCH_S} s"
echo "terms: from $first to $last ($((last - first)) elections)"
echo "seconds with no coordinator: $leaderless; node-seconds outside the cluster: $left"
for i in $(seq 0 $((NODES - 1))); do
  echo "node $i: $(grep -c 'left the cluster\|leaving' "$WORK/n$i.log" || true) leave lines, $(grep -c 'raft pace changed' "$WORK/n$i.log" || true) pace changes, $(grep 'raft pace changed' "$WORK/n$i.log" | tail -1 | grep -o 'tick_ms=[0-9]*' || true), $(grep -c 'at capacity' "$WORK/n$i.log" || true) streams dropped at capacity, $(grep -c 'stalled connection' "$WORK/n$i.log" || true) stalled connections closed"
done
