#!/usr/bin/env bash
# Failover after `kill -9` of the leader, and elections under load.
#   BIN=target/release TRIALS=10 bench/failover.sh
# Each trial starts a fresh 3-member cluster, runs `pando bench put --concurrency 16` for 8 s, kills the leader with
# SIGKILL 3 s in, and takes the bench's longest stretch without an acknowledged write (max_gap_ms): from the last write
# the old leader acknowledged to the first the new one did, an upper bound of the time from the kill to the first
# acknowledged write through the new leader. Prints each trial and the median. Then (unless LOAD_SECONDS=0) it runs
# 256 clients for LOAD_SECONDS on a fresh cluster and prints how many elections happened (the term's growth).
set -euo pipefail
BASE=${BASE:-${TMPDIR:-/tmp}/pandofailover}
TRIALS=${TRIALS:-10}
LOAD_SECONDS=${LOAD_SECONDS:-60}
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

status() { "$BIN/pando" cluster status --json; }
gaps=()
for trial in $(seq 1 "$TRIALS"); do
  start 3
  "$BIN/pando" bench put --concurrency 16 --duration 8 --json >"$BASE/bench.json" &
  bench=$!
  sleep 3
  # The leader's index among PIDS, from its port (member i listens on PORT + i - 1).
  index=$(status | python3 -c '
import json, sys
s = json.load(sys.stdin)
leader = [m for m in s["members"] if m["node_id"] == s["leader_id"]][0]
print(int(leader["addrs"][0].rsplit(":", 1)[1]) - int(sys.argv[1]))' "$PORT")
  kill -9 "${PIDS[$index]}"
  wait "$bench" || true
  gap=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(r["max_gap_ms"]))' "$BASE/bench.json")
  echo "trial $trial: killed member $((index + 1)) (the leader); no write acknowledged for $gap ms"
  gaps+=("$gap")
done
printf '%s\n' "${gaps[@]}" | sort -n | python3 -c '
import statistics, sys
gaps = [float(line) for line in sys.stdin]
print(f"failover: median {statistics.median(gaps):.0f} ms, max {max(gaps):.0f} ms over {len(gaps)} trials")'

if [ "$LOAD_SECONDS" -gt 0 ]; then
  start 3
  before=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["term"])')
  "$BIN/pando" bench put --concurrency 256 --duration "$LOAD_SECONDS" >/dev/null
  after=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["term"])')
  echo "elections under 256 clients: $((after - before)) in $LOAD_SECONDS s (term $before -> $after)"
fi
