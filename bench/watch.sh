#!/usr/bin/env bash
# Watch side by side: for each watcher count W, etcd then Pando, each on a FRESH 3-member loopback cluster (wiped data
# dirs), niced like bench/matrix.sh and ../shared/bench/etcd/bench.sh. etcd is driven by bench/etcd-watch (the same
# workload as `pando bench watch`: W watchers on one prefix, 16 writers putting to it for DURATION seconds, 2 s drain)
# against its leader; Pando by `pando bench watch` (through member 1's ticket). Repetitions are interleaved (rep 1 of
# every W, then rep 2, ...). One JSON line per run to $OUT, labelled "etcd-watch-w<W>#<rep>" / "pando-watch-w<W>#<rep>",
# with node_cpu_cores (all members, from /proc); then a markdown table of the medians over the reps.
#   BIN=target/release DURATION=10 REPS=2 WATCHERS="0 1 100 1000" OUT=/tmp/watch.jsonl bench/watch.sh
# Build the etcd generator first (offline, from the crates the etcd loadgen already fetched):
#   CARGO_TARGET_DIR=/var/tmp/etcd-watch cargo build --release --offline --manifest-path bench/etcd-watch/Cargo.toml
# Knobs: ETCD_WATCH (the generator), ETCD_SCRIPTS (etcd3.sh / etcd3-stop.sh), BASE (state: $BASE/etcd, $BASE/pando),
# NICE (default 10, for the members and the load generators).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${BASE:-${TMPDIR:-/tmp}/watchbench}
DURATION=${DURATION:-10}
REPS=${REPS:-2}
WATCHERS=${WATCHERS:-"0 1 100 1000"}
OUT=${OUT:-$ROOT/watch.jsonl}
ETCD_WATCH=${ETCD_WATCH:-/var/tmp/etcd-watch/release/etcd-watch}
ETCD_SCRIPTS=${ETCD_SCRIPTS:-$HERE/../../shared/bench/etcd}
ETCD_BASE=$ROOT/etcd
# lib.sh's start/stop wipe and use "$BASE"/d*: Pando gets a directory of its own (etcd's data dirs are data-*).
BASE=$ROOT/pando
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
mkdir -p "$ETCD_BASE" "$(dirname "$OUT")"
[ -x "$ETCD_WATCH" ] || { echo "no etcd-watch binary at $ETCD_WATCH (see the build line at the top)" >&2; exit 1; }
[ -x "$BIN/pando" ] || { echo "no pando binary in $BIN" >&2; exit 1; }

etcd_stop() { BASE=$ETCD_BASE "$ETCD_SCRIPTS/etcd3-stop.sh" >/dev/null 2>&1 || true; }
# Replaces lib.sh's trap (stop): both clusters go down on exit.
trap 'stop; etcd_stop' EXIT

leader() { # prints the client URL of the current leader (as in ../shared/bench/etcd/bench.sh)
  ETCDCTL_API=3 etcdctl --endpoints "$1" endpoint status -w json 2>/dev/null | python3 -c '
import json,sys
for s in json.load(sys.stdin):
    st=s["Status"]
    if st["leader"]==st["header"]["member_id"]: print(s["Endpoint"])'
}

etcd_cpu_ticks() { # sum of utime+stime over the running etcd members
  local t=0 f p
  for f in "$ETCD_BASE"/pids/etcd-*.pid; do
    [ -e "$f" ] || continue
    p=$(cat "$f"); t=$((t + $(awk '{print $14+$15}' /proc/"$p"/stat 2>/dev/null || echo 0)))
  done
  echo "$t"
}

record() { # label system ticks0 ticks1 output: appends the run's report (its last JSON line with "op") to $OUT
  printf '%s\n' "$5" | python3 -c '
import json,sys
r=None
for line in sys.stdin:
    try: j=json.loads(line)
    except ValueError: continue
    if isinstance(j,dict) and "op" in j: r=j
if r is None: sys.exit("no report in the output")
r["label"]=sys.argv[1]
r.setdefault("system", sys.argv[2])
r["node_cpu_cores"]=(int(sys.argv[4])-int(sys.argv[3]))/100/r["duration_s"]
print(json.dumps(r))' "$1" "$2" "$3" "$4" | tee -a "$OUT"
}

run_etcd() { # watchers rep
  local w=$1 rep=$2 label="etcd-watch-w$1#$2"
  etcd_stop
  MEMBERS=3 NICE=$NICE BASE=$ETCD_BASE "$ETCD_SCRIPTS/etcd3.sh" >/dev/null
  local all ldr; all=$(cat "$ETCD_BASE/pids/endpoints"); ldr=$(leader "$all") || true
  [ -n "$ldr" ] || { echo "$label: no etcd leader found" >&2; exit 1; }
  sleep 1   # let the fresh cluster settle after election
  local e0 e1 r rc=0; e0=$(etcd_cpu_ticks)
  r=$(timeout $((DURATION + 60)) nice -n "$NICE" "$ETCD_WATCH" --endpoints "$ldr" --watchers "$w" --concurrency 16 \
    --duration "$DURATION" --json) || rc=$?
  e1=$(etcd_cpu_ticks)
  [ "$rc" = 0 ] || echo "$label: etcd-watch exited with $rc" >&2
  if [ -n "$r" ]; then record "$label" etcd "$e0" "$e1" "$r" || echo "$label: not recorded" >&2; fi
  etcd_stop
}

run_pando() { # watchers rep
  local w=$1 rep=$2 label="pando-watch-w$1#$2"
  start 3
  local e0 e1 r rc=0; e0=$(cpu_ticks)
  r=$(timeout $((DURATION + 60)) nice -n "$NICE" "$BIN/pando" bench watch --watchers "$w" --concurrency 16 \
    --duration "$DURATION" --json) || rc=$?
  e1=$(cpu_ticks)
  [ "$rc" = 0 ] || echo "$label: pando bench watch exited with $rc" >&2
  if [ -n "$r" ]; then record "$label" pando "$e0" "$e1" "$r" || echo "$label: not recorded" >&2; fi
  stop
}

first_line=$(($( [ -f "$OUT" ] && wc -l <"$OUT" || echo 0) + 1))
echo "# $(date -u +%FT%TZ) etcd $(etcd --version | head -1 | awk '{print $3}') vs pando ($BIN)" \
  "duration=${DURATION}s reps=$REPS watchers=\"$WATCHERS\"" >&2
for rep in $(seq 1 "$REPS"); do
  for w in $WATCHERS; do
    run_etcd "$w" "$rep"
    run_pando "$w" "$rep"
  done
done

# This invocation's lines only ($OUT is appended to): medians over the reps, etcd / Pando side by side.
tail -n +"$first_line" "$OUT" | python3 -c '
import json,re,sys,statistics
runs={}
for line in sys.stdin:
    line=line.strip()
    if not line: continue
    r=json.loads(line)
    m=re.match(r"(etcd|pando)-watch-w(\d+)#", r.get("label",""))
    if m: runs.setdefault((int(m.group(2)),m.group(1)),[]).append(r)
cols=[("writes/s","writes_per_s","%.0f"),("write p99 ms","write_p99_ms","%.2f"),("events/s","events_per_s","%.0f"),
      ("delivery p50 ms","delivery_p50_ms","%.2f"),("delivery p99 ms","delivery_p99_ms","%.2f"),
      ("node CPU cores","node_cpu_cores","%.2f"),("load generator CPU s","loadgen_cpu_s","%.1f")]
def cell(w,system,key,fmt):
    rs=runs.get((w,system),[])
    values=[r[key] for r in rs if r.get(key) is not None]
    return fmt % statistics.median(values) if values else "-"
print()
print("| watchers | " + " | ".join(name + " (etcd / pando)" for name,_,_ in cols) + " | runs (etcd / pando) |")
print("|---:|" + "---:|"*len(cols) + "---:|")
for w in sorted({w for w,_ in runs}):
    cells=[cell(w,"etcd",k,f) + " / " + cell(w,"pando",k,f) for _,k,f in cols]
    n="%d / %d" % (len(runs.get((w,"etcd"),[])), len(runs.get((w,"pando"),[])))
    print("| %d | %s | %s |" % (w, " | ".join(cells), n))
errs=sum(len(r.get("watch_errors") or []) + (r.get("write_errors") or 0) for rs in runs.values() for r in rs)
if errs: print("\n(%d watch/write errors in these runs: see watch_errors / write_errors in the JSON lines)" % errs)
'
