#!/usr/bin/env bash
# Pando's side of the etcd matrix (../shared/bench/etcd/bench.sh runs etcd's): the same scenarios, each on a FRESH
# cluster (wiped data dirs) of pando-node processes on loopback, niced like etcd, driven by `pando bench` for DURATION
# seconds. One JSON line per run to $OUT, labelled "<scenario>#<rep>", with node_cpu_cores (all members, from /proc).
#   BIN=target/release DURATION=10 REPS=2 OUT=/tmp/pando.jsonl bench/matrix.sh
# Members 2 and 3 join with single-use voter join tokens minted through member 1 (a join ticket only joins).
set -euo pipefail
BASE=${BASE:-${TMPDIR:-/tmp}/pandobench}
DURATION=${DURATION:-10}
REPS=${REPS:-2}
OUT=${OUT:-$BASE/results.jsonl}
SCENARIOS=${SCENARIOS:-"put-c1 put-c16 put-c64k8 put-c256k16 put-c64k8-all get-lin-c64k8 get-ser-c64k8 single-put-c64k8"}
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

for rep in $(seq 1 "$REPS"); do
  for sc in $SCENARIOS; do
    members=3; [[ $sc == single-* ]] && members=1
    start $members
    case $sc in
      put-c1) a="put --concurrency 1" ;;
      put-c16) a="put --concurrency 16" ;;
      put-c64k8|single-put-c64k8) a="put --concurrency 64" ;;
      put-c256k16) a="put --concurrency 256" ;;
      put-c64k8-all) a="put --concurrency 64 --endpoints all" ;;
      get-lin-c64k8) "$BIN/pando" bench put --concurrency 16 --keys 1000 --duration 2 >/dev/null
        a="get --concurrency 64 --keys 1000 --endpoints all" ;;
      get-ser-c64k8) "$BIN/pando" bench put --concurrency 16 --keys 1000 --duration 2 >/dev/null
        a="get --concurrency 64 --keys 1000 --endpoints all --stale" ;;
      *) echo "unknown scenario $sc" >&2; exit 1 ;;
    esac
    e0=$(cpu_ticks)
    # shellcheck disable=SC2086
    r=$(timeout $((DURATION + 60)) nice -n "$NICE" "$BIN/pando" bench $a --duration "$DURATION" --json)
    e1=$(cpu_ticks)
    echo "$r" | python3 -c 'import json,sys; r=json.load(sys.stdin); r["label"]=sys.argv[1]; r["node_cpu_cores"]=(int(sys.argv[3])-int(sys.argv[2]))/100/r["duration_s"]; print(json.dumps(r))' "$sc#$rep" "$e0" "$e1" | tee -a "$OUT"
  done
done
