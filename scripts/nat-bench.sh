#!/usr/bin/env bash
# The NAT lab benchmark: brings the lab up RUNS times with LAYOUT, and per pair of NAT kinds
# prints the share of pairs that ended direct, connected at all, and the time from first
# contact to direct (p50, p99) over every run; then the public nodes' memory and CPU per
# relayed circuit (against the NATed nodes that relay nothing), sampled over SAMPLE_S.
#
#   sudo scripts/nat-bench.sh [BINARY] [RUNS] [LAYOUT]
#   sudo scripts/nat-bench.sh target/release/fogmesh 3 public=2,port-restricted=4,full-cone=2,symmetric=3
#
# Linux, root, ip and nft (docs/nat-lab.md). Each run's lab is torn down before the next.
set -euo pipefail
BIN=${1:-target/release/fogmesh}
RUNS=${2:-3}
LAYOUT=${3:-public=2,port-restricted=4,full-cone=2,symmetric=3}
SAMPLE_S=${SAMPLE_S:-30}
OUT=$(mktemp -d /tmp/fogmesh-nat-bench.XXXXXX)
BIN=$(realpath "$BIN")
echo "nat-bench: $RUNS runs of $LAYOUT with $BIN; reports in $OUT"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

for run in $(seq 1 "$RUNS"); do
  dir="$OUT/run-$run"
  "$BIN" testnet up --nat lab --dir "$dir" --lab-layout "$LAYOUT" --settle 60s >"$OUT/up-$run.txt" 2>&1 || true
  tail -1 "$OUT/up-$run.txt"
  # Resources: CPU over SAMPLE_S and RSS at its end, per node, with its relaying counts.
  "$BIN" testnet nat-report --dir "$dir" --json >"$OUT/before-$run.json"
  pids=$(python3 -c 'import json,sys; print(" ".join(str(n["pid"]) for n in json.load(open(sys.argv[1]))["nodes"]))' "$OUT/before-$run.json")
  declare -A start=()
  for p in $pids; do start[$p]=$(ticks "$p"); done
  sleep "$SAMPLE_S"
  : >"$OUT/res-$run.txt"
  for p in $pids; do echo "$p $(( $(ticks "$p") - ${start[$p]} )) $(rss_kib "$p")" >>"$OUT/res-$run.txt"; done
  "$BIN" testnet nat-report --dir "$dir" --json >"$OUT/report-$run.json"
  "$BIN" testnet down --dir "$dir" >/dev/null 2>&1 || true
done

python3 - "$OUT" "$RUNS" "$SAMPLE_S" <<'EOF'
import json, os, sys
out, runs, sample_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
hz = os.sysconf("SC_CLK_TCK")
kinds = {}
relay_rows, quiet_rows = [], []
for run in range(1, runs + 1):
    report = json.load(open(f"{out}/report-{run}.json"))
    for pair in report["pairs"]:
        key = " / ".join(sorted([pair["a_kind"], pair["b_kind"]]))
        k = kinds.setdefault(key, {"pairs": 0, "connected": 0, "direct": 0, "punched": 0, "after": []})
        k["pairs"] += 1
        k["connected"] += bool(pair["connected"])
        if pair.get("path") == "direct":
            k["direct"] += 1
            if pair.get("direct_after_ms") is not None:
                k["after"].append(pair["direct_after_ms"])
        if pair.get("via") == "hole-punched":
            k["punched"] += 1
    res = {}
    for line in open(f"{out}/res-{run}.txt"):
        pid, ticks, rss = (int(x) for x in line.split())
        res[pid] = (ticks, rss)
    for node in report["nodes"]:
        reach = node.get("reach") or {}
        circuits = reach.get("relaying_circuits", 0)
        ticks, rss = res.get(node["pid"], (0, 0))
        row = (circuits, ticks / hz / sample_s * 100.0, rss)
        (relay_rows if circuits > 0 else quiet_rows).append(row)

def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]

print(f"\n| kinds | pairs | connected | direct | hole-punched | first contact to direct p50 | p99 |")
print("|---|---|---|---|---|---|---|")
for key, k in sorted(kinds.items()):
    p50, p99 = pct(k["after"], 0.5), pct(k["after"], 0.99)
    fmt = lambda v: "—" if v is None else f"{v} ms"
    print(f"| {key} | {k['pairs']} | {100*k['connected']/k['pairs']:.0f} % | {100*k['direct']/k['pairs']:.0f} % | {k['punched']} | {fmt(p50)} | {fmt(p99)} |")

if relay_rows and quiet_rows:
    q_cpu = sum(r[1] for r in quiet_rows) / len(quiet_rows)
    q_rss = sum(r[2] for r in quiet_rows) / len(quiet_rows)
    circuits = sum(r[0] for r in relay_rows)
    d_cpu = sum(r[1] for r in relay_rows) / len(relay_rows) - q_cpu
    d_rss = sum(r[2] for r in relay_rows) / len(relay_rows) - q_rss
    per = circuits / len(relay_rows)
    print(f"\nrelaying nodes: {len(relay_rows)}, {per:.1f} circuits each on average; others: {len(quiet_rows)}")
    print(f"CPU: relaying {q_cpu + d_cpu:.2f} % vs {q_cpu:.2f} % of a core; RSS: relaying {(q_rss + d_rss)/1024:.1f} MiB vs {q_rss/1024:.1f} MiB")
    print(f"per circuit (idle mesh traffic): {d_cpu / per:.3f} % of a core, {d_rss / per:.0f} KiB")
EOF
