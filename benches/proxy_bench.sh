#!/usr/bin/env bash
# benches/proxy_bench.sh — switchyard (tcp and mysql mode) against HAProxy and a direct connection.
#
# 1. Throughput: sysbench $WORKLOADS at each of $THREADS_LIST threads against one MariaDB on
#    loopback: direct, through HAProxy (mode tcp, nbthread 2, leastconn) and through switchyard in
#    each of $MODES, in interleaved rounds (the order rotates each round). Per workload × threads
#    × path: median QPS with min–max, the ratio to HAProxy taken round by round, median p95.
# 2. Memory: RSS of each proxy while 0 → $IDLE_MAX idle client connections are held open through
#    it (to a backend that accepts and holds); the least-squares slope is the cost per connection.
#
# Needs: mariadbd + mariadb-install-db + mariadb (client), sysbench, haproxy, python3, curl.
# Usage:  benches/proxy_bench.sh
#   ROUNDS=5 TIME=15 WORKLOADS="oltp_point_select oltp_read_only" THREADS_LIST="8 64"
#   MODES="tcp mysql" IDLE_MAX=5000 by default; IDLE_MAX=0 skips memory.
#   SWITCHYARD_BIN=path/to/switchyard: the binary (default: a release build of this tree).
#   BASELINE_BIN=path/to/older/switchyard adds "base-<mode>" paths run by that binary, in the
#     same rounds: a change is measured against the previous binary under the same load.
#   DIRECT=0 leaves out the direct path.
#   PROFILE="<path> <workload> <threads>" (e.g. "switchyard-mysql oltp_read_only 8") adds one
#     run of that path under `perf record -e cpu-clock` ($OUT.perf.txt) and one under
#     `strace -c -f` ($OUT.strace.txt, syscalls per query).
# Prints a Markdown summary at the end (also written to $OUT, default bench-results.md).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
TIME=${TIME:-15}
WORKLOADS=${WORKLOADS:-oltp_point_select oltp_read_only}
THREADS_LIST=${THREADS_LIST:-${THREADS:-8 64}}
MODES=${MODES:-tcp mysql}
IDLE_MAX=${IDLE_MAX:-5000}
IDLE_STEP=${IDLE_STEP:-1000}
OUT=${OUT:-bench-results.md}
BASELINE_BIN=${BASELINE_BIN:-}
BIN=$(bench_bin)

bench_init bench
DB=$(free_port); HAP=$(free_port)
HOLD=$(free_port); HAP_IDLE=$(free_port); SY_IDLE=$(free_port); SY_IDLE_ADM=$(free_port)

echo "== MariaDB on 127.0.0.1:$DB" >&2
start_db db "$DB"
prepare_db "$DB"

echo "== HAProxy on $HAP" >&2
start_haproxy "$HAP $DB" "$HAP_IDLE $HOLD"

TARGETS=()
[[ ${DIRECT:-1} != 0 ]] && TARGETS+=("direct $DB")
TARGETS+=("haproxy $HAP $HAP_PID")
declare -A SY_PIDS
for mode in $MODES; do
  for flavour in switchyard ${BASELINE_BIN:+base}; do
    port=$(free_port); adm=$(free_port)
    bin=$BIN; [[ $flavour == base ]] && bin=$BASELINE_BIN
    SY_BIN=$bin sy_start "$flavour-$mode" "$mode" "$port" "$adm" "$DB"
    SY_PIDS[$flavour-$mode]=$SY_PID
    TARGETS+=("$flavour-$mode $port $SY_PID")
    echo "== $flavour-$mode on $port" >&2
  done
done

echo "== $WORKLOADS at $THREADS_LIST threads, ${TIME}s x $ROUNDS rounds, paths: ${TARGETS[*]}" >&2
throughput_rounds "${TARGETS[@]}"

if [[ -n "${PROFILE:-}" ]]; then
  read -r p_name p_work p_threads <<<"$PROFILE"
  p_port=
  for t in "${TARGETS[@]}"; do read -r n p _ <<<"$t"; [[ $n == "$p_name" ]] && p_port=$p; done
  p_pid=${SY_PIDS[$p_name]:-$HAP_PID}
  p_sb=(sysbench "$p_work" "${SB[@]}" "${SB_RUN_ARGS[@]}" --mysql-port="$p_port" --threads="$p_threads" --time="$TIME" run)
  # Where the proxy's CPU time goes (no hardware counters in a VM: sample the cpu clock).
  perf record -e cpu-clock -F 999 -g -p "$p_pid" -o "$WORK/perf.data" -- sleep "$TIME" 2>/dev/null &
  PERF=$!
  "${p_sb[@]}" >/dev/null
  wait "$PERF" || true
  perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null \
    | grep -v '^#' | grep '%' | head -60 >"$OUT.perf.txt" || true
  # Syscalls per query: strace slows the proxy, so only the counts matter here.
  strace -c -f -p "$p_pid" -o "$WORK/strace.txt" &
  STRACE=$!
  sleep 0.5
  q=$("${p_sb[@]}" | sed -n 's/.*queries: *\([0-9]*\) .*/\1/p')
  kill -INT "$STRACE"; wait "$STRACE" || true
  { echo "queries: $q"; cat "$WORK/strace.txt"; } >"$OUT.strace.txt"
  echo "profile of $p_name: $OUT.perf.txt, $OUT.strace.txt" >&2
fi

SLOPE_S=-; RSS0_S=-; RSSN_S=-; SLOPE_H=-; RSS0_H=-; RSSN_H=-
if (( IDLE_MAX > 0 )); then
echo "== idle connections: RSS 0 -> $IDLE_MAX" >&2
cat >"$WORK/hold.py" <<'PY'
import asyncio, sys
async def hold(r, w):
    await r.read()          # until the peer closes
    w.close()
async def main():
    srv = await asyncio.start_server(hold, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
PY
cat >"$WORK/idle.py" <<'PY'
import socket, sys, time
port, pid, top, step = (int(a) for a in sys.argv[1:5])
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def settle():
    time.sleep(1.5)
    return rss_kib()
conns, pts = [], [(0, settle())]
while len(conns) < top:
    for _ in range(step):
        conns.append(socket.create_connection(("127.0.0.1", port)))
    pts.append((len(conns), settle()))
n = len(pts); mx = sum(x for x, _ in pts) / n; my = sum(y for _, y in pts) / n
slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
print(" ".join(f"{x}:{y}" for x, y in pts), file=sys.stderr)
print(f"{slope:.2f} {pts[0][1]} {pts[-1][1]}")
for c in conns:
    c.close()
PY
python3 "$WORK/hold.py" "$HOLD" & PIDS+=($!)
wait_port 127.0.0.1 "$HOLD"
sy_start sy-idle tcp "$SY_IDLE" "$SY_IDLE_ADM" "$HOLD"
read -r SLOPE_S RSS0_S RSSN_S < <(python3 "$WORK/idle.py" "$SY_IDLE" "$SY_PID" "$IDLE_MAX" "$IDLE_STEP")
read -r SLOPE_H RSS0_H RSSN_H < <(python3 "$WORK/idle.py" "$HAP_IDLE" "$HAP_PID" "$IDLE_MAX" "$IDLE_STEP")
fi

{
  echo "Run: $(date -u +%Y-%m-%d), $(nproc) cores, $(haproxy -v | head -1 | cut -d' ' -f1-3) (nbthread ${HAP_THREADS:-2}), $(mariadbd --version | awk '{print $3}'), sysbench $(sysbench --version | awk '{print $2}')"
  echo "Command: \`ROUNDS=$ROUNDS TIME=$TIME WORKLOADS=\"$WORKLOADS\" THREADS_LIST=\"$THREADS_LIST\" MODES=\"$MODES\" IDLE_MAX=$IDLE_MAX${BASELINE_BIN:+ BASELINE_BIN=…} benches/proxy_bench.sh\`"
  throughput_summary haproxy
  if (( IDLE_MAX > 0 )); then
    echo
    echo "| proxy | RSS at 0 idle conns | RSS at $IDLE_MAX | slope per idle conn |"
    echo "|---|---:|---:|---:|"
    echo "| HAProxy | ${RSS0_H} KiB | ${RSSN_H} KiB | ${SLOPE_H} KiB |"
    echo "| switchyard (tcp) | ${RSS0_S} KiB | ${RSSN_S} KiB | ${SLOPE_S} KiB |"
  fi
  echo
  echo "Runs (workload, threads, round, path, QPS, p95 ms, load average at start, CPU cores used by other jobs, proxy CPU µs per query):"
  echo
  echo '```'
  cat "$WORK/rounds.txt"
  echo '```'
} | tee "$OUT"
