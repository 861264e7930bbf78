#!/usr/bin/env bash
# Shared by bench/matrix.sh and bench/failover.sh: start a fresh cluster of pando-node processes on loopback (member 1
# founds it; the others join with single-use voter join tokens minted through it), stop it, and count its CPU ticks.
# Expects BASE (set by the caller) and BIN; NICE defaults to 10; NODE1_ARGS adds flags to member 1. Sets PANDO_TICKET (the founder's admin ticket, listing every member once they joined),
# PIDS (one per member, in start order) and PORT (member i listens on PORT + i - 1).
BIN=${BIN:?set BIN to the directory holding pando-node and pando}
NICE=${NICE:-10}
mkdir -p "$BASE"
PIDS=()
stop() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && { kill -9 "$p" 2>/dev/null || true; }; done; PIDS=(); sleep 0.3; }
trap stop EXIT

start() { # members
  stop; rm -rf "$BASE"/d*; PORT=$((27100 + RANDOM % 2000))
  # shellcheck disable=SC2086 # NODE1_ARGS: extra flags for member 1 (bench/fuse.sh mounts through it), split on spaces
  nice -n "$NICE" "$BIN/pando-node" --data-dir "$BASE/d1" --bind 127.0.0.1:$PORT ${NODE1_ARGS:-} >"$BASE/n1.log" 2>&1 & PIDS+=($!)
  for _ in $(seq 1 100); do [ -s "$BASE/d1/ticket" ] && break; sleep 0.1; done
  # Read again on each try: the founder may write its ticket before the admin token it carries is committed.
  export PANDO_TICKET
  for _ in $(seq 1 100); do
    PANDO_TICKET=$(cat "$BASE/d1/ticket") && "$BIN/pando" kv set warm up >/dev/null 2>&1 && break; sleep 0.1
  done
  for i in $(seq 2 "$1"); do
    local join
    join=$("$BIN/pando" cluster join-token create --as voter --uses 1 --ttl 10m --json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["ticket"])')
    nice -n "$NICE" "$BIN/pando-node" --data-dir "$BASE/d$i" --bind 127.0.0.1:$((PORT + i - 1)) --join "$join" \
      >"$BASE/n$i.log" 2>&1 & PIDS+=($!)
  done
  for _ in $(seq 1 300); do
    n=$("$BIN/pando" cluster status --json 2>/dev/null |
      python3 -c 'import json,sys; print(sum(1 for m in json.load(sys.stdin)["members"] if m["voter"]))' 2>/dev/null || echo 0)
    [ "$n" -ge "$1" ] && "$BIN/pando" kv set warm up >/dev/null 2>&1 && break; sleep 0.2
  done
  # The ticket file now lists every member (the node rewrites it when the membership changes).
  sleep 1; PANDO_TICKET=$(cat "$BASE/d1/ticket")
}

cpu_ticks() { local t=0; for p in "${PIDS[@]}"; do t=$((t + $(awk '{print $14+$15}' /proc/"$p"/stat 2>/dev/null || echo 0))); done; echo $t; }
