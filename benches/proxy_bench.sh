#!/usr/bin/env bash
# benches/proxy_bench.sh — switchyard (tcp mode) against HAProxy and a direct connection.
#
# 1. Throughput: sysbench oltp_point_select, $THREADS threads, against one MariaDB on loopback:
#    direct, through HAProxy (mode tcp, balance leastconn) and through switchyard (protocol tcp),
#    in interleaved rounds (the order rotates each round); medians of QPS and p95 latency.
# 2. Memory: RSS of each proxy while 0 → $IDLE_MAX idle client connections are held open through
#    it (to a backend that accepts and holds); the least-squares slope is the cost per connection.
#
# Needs: mariadbd + mariadb-install-db + mariadb (client), sysbench, haproxy, python3.
# Usage:  benches/proxy_bench.sh            (ROUNDS=5 TIME=20 THREADS=8 IDLE_MAX=5000 by default)
#         PROFILE=1 ... adds a perf profile of one switchyard round ($OUT.perf.txt); IDLE_MAX=0 skips memory
#         SWITCHYARD_BIN=path/to/switchyard benches/proxy_bench.sh
# Prints a Markdown summary at the end (also written to $OUT, default bench-results.md).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
TIME=${TIME:-20}
THREADS=${THREADS:-8}
IDLE_MAX=${IDLE_MAX:-5000}
IDLE_STEP=${IDLE_STEP:-1000}
OUT=${OUT:-bench-results.md}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SWITCHYARD_BIN:-}
if [[ -z "$BIN" ]]; then
  (cd "$ROOT" && cargo build --release --quiet --bin switchyard)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard"
fi

WORK=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -z "${KEEP:-}" ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n 20000 2>/dev/null || true
# HAProxy wants 2 descriptors per connection plus some; keep maxconn inside the limit.
HAP_MAXCONN=$(( ($(ulimit -n) - 100) / 2 ))

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # host port
  for _ in $(seq 200); do
    if python3 -c "import socket,sys; socket.create_connection(('$1',$2),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on $1:$2 (logs: $WORK)" >&2; KEEP=1; return 1
}

DB=$(free_port); HAP=$(free_port); SY=$(free_port); SYADM=$(free_port)
HOLD=$(free_port); HAP_IDLE=$(free_port); SY_IDLE=$(free_port); SY_IDLE_ADM=$(free_port)

echo "== MariaDB on 127.0.0.1:$DB" >&2
mariadb-install-db --no-defaults --auth-root-authentication-method=normal --skip-test-db \
  --datadir="$WORK/data" --user=root >"$WORK/install.log" 2>&1
mariadbd --no-defaults --datadir="$WORK/data" --port="$DB" --bind-address=127.0.0.1 \
  --socket="$WORK/mysql.sock" --pid-file="$WORK/mariadbd.pid" --user=root --skip-name-resolve \
  --max-connections=1000 --innodb-buffer-pool-size=256M >"$WORK/mariadbd.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 "$DB"
for _ in $(seq 100); do mariadb --socket="$WORK/mysql.sock" -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
mariadb --socket="$WORK/mysql.sock" -uroot -e "CREATE DATABASE sbtest; CREATE USER sb@'%' IDENTIFIED BY 'sb'; GRANT ALL ON sbtest.* TO sb@'%';"
SB=(sysbench oltp_point_select --db-driver=mysql --mysql-host=127.0.0.1 --mysql-user=sb
    --mysql-password=sb --mysql-db=sbtest --tables=8 --table-size=10000)
"${SB[@]}" --mysql-port="$DB" --threads=4 prepare >"$WORK/prepare.log"

echo "== HAProxy on $HAP, switchyard on $SY" >&2
cat >"$WORK/haproxy.cfg" <<CFG
global
  maxconn $HAP_MAXCONN
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen db
  bind 127.0.0.1:$HAP
  balance leastconn
  server db1 127.0.0.1:$DB
listen idle
  bind 127.0.0.1:$HAP_IDLE
  balance leastconn
  server hold 127.0.0.1:$HOLD
CFG
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
HAP_PID=$!; PIDS+=($HAP_PID)

sy_config() { # listen admin backend
  cat <<CFG
proxy: { listen: 127.0.0.1:$1, protocol: tcp, workers: ${SY_WORKERS:-0} }
admin: { listen: 127.0.0.1:$2 }
backends: { static: [127.0.0.1:$3] }
log: { level: warn }
CFG
}
sy_config "$SY" "$SYADM" "$DB" >"$WORK/sy.yaml"
"$BIN" --config "$WORK/sy.yaml" >"$WORK/sy.log" 2>&1 &
SY_PID=$!; PIDS+=($SY_PID)
wait_port 127.0.0.1 "$HAP"; wait_port 127.0.0.1 "$SY"
# Wait until switchyard's first health check has marked the backend healthy.
for _ in $(seq 100); do
  curl -fs "127.0.0.1:$SYADM/backends" | grep -q '"healthy"' && break; sleep 0.1
done

run_one() { # name port
  local out
  out=$("${SB[@]}" --mysql-port="$2" --threads="$THREADS" --time="$TIME" --report-interval=0 run)
  local qps p95
  qps=$(sed -n 's/.*queries: *[0-9]* *(\([0-9.]*\) per sec.).*/\1/p' <<<"$out")
  p95=$(sed -n 's/.*95th percentile: *\([0-9.]*\).*/\1/p' <<<"$out")
  echo "$1 $qps $p95" | tee -a "$WORK/rounds.txt" >&2
}

echo "== sysbench oltp_point_select, $THREADS threads, ${TIME}s x $ROUNDS rounds" >&2
"${SB[@]}" --mysql-port="$DB" --threads="$THREADS" --time=5 run >/dev/null   # warm-up
TARGETS=("direct $DB" "haproxy $HAP" "switchyard $SY")
for r in $(seq "$ROUNDS"); do
  for i in 0 1 2; do
    t=${TARGETS[$(( (i + r) % 3 ))]}
    run_one $t
  done
done

if [[ -n "${PROFILE:-}" ]]; then
  # One more switchyard round under perf: where the proxy's CPU time goes.
  perf record -F 999 -g -p "$SY_PID" -o "$WORK/perf.data" -- sleep "$TIME" 2>/dev/null &
  PERF=$!
  "${SB[@]}" --mysql-port="$SY" --threads="$THREADS" --time="$TIME" run >/dev/null
  wait "$PERF" || true
  perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null \
    | grep -v '^#' | grep '%' | head -40 >"$OUT.perf.txt" || true
  echo "perf profile of switchyard: $OUT.perf.txt" >&2
fi

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -v n="$1" -v c="$2" '$1==n {print $c}' "$WORK/rounds.txt" | median; }
Q_D=$(col direct 2); Q_H=$(col haproxy 2); Q_S=$(col switchyard 2)
P_D=$(col direct 3); P_H=$(col haproxy 3); P_S=$(col switchyard 3)

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
sy_config "$SY_IDLE" "$SY_IDLE_ADM" "$HOLD" >"$WORK/sy-idle.yaml"
"$BIN" --config "$WORK/sy-idle.yaml" >"$WORK/sy-idle.log" 2>&1 &
SY_IDLE_PID=$!; PIDS+=($SY_IDLE_PID)
wait_port 127.0.0.1 "$SY_IDLE"
for _ in $(seq 100); do
  curl -fs "127.0.0.1:$SY_IDLE_ADM/backends" | grep -q '"healthy"' && break; sleep 0.1
done
read -r SLOPE_S RSS0_S RSSN_S < <(python3 "$WORK/idle.py" "$SY_IDLE" "$SY_IDLE_PID" "$IDLE_MAX" "$IDLE_STEP")
read -r SLOPE_H RSS0_H RSSN_H < <(python3 "$WORK/idle.py" "$HAP_IDLE" "$HAP_PID" "$IDLE_MAX" "$IDLE_STEP")
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
{
  echo "Run: $(date -u +%Y-%m-%d), $(nproc) cores, $(haproxy -v | head -1 | cut -d' ' -f1-3), $(mariadbd --version | awk '{print $3}'), sysbench $(sysbench --version | awk '{print $2}')"
  echo "Command: \`ROUNDS=$ROUNDS TIME=$TIME THREADS=$THREADS IDLE_MAX=$IDLE_MAX benches/proxy_bench.sh\`"
  echo
  echo "| path | median QPS | vs direct | vs HAProxy | median p95 (ms) |"
  echo "|---|---:|---:|---:|---:|"
  echo "| direct | $Q_D | 1.00 | $(ratio "$Q_D" "$Q_H") | $P_D |"
  echo "| HAProxy (tcp, leastconn) | $Q_H | $(ratio "$Q_H" "$Q_D") | 1.00 | $P_H |"
  echo "| switchyard (tcp) | $Q_S | $(ratio "$Q_S" "$Q_D") | $(ratio "$Q_S" "$Q_H") | $P_S |"
  echo
  echo "| proxy | RSS at 0 idle conns | RSS at $IDLE_MAX | slope per idle conn |"
  echo "|---|---:|---:|---:|"
  echo "| HAProxy | ${RSS0_H} KiB | ${RSSN_H} KiB | ${SLOPE_H} KiB |"
  echo "| switchyard | ${RSS0_S} KiB | ${RSSN_S} KiB | ${SLOPE_S} KiB |"
  echo
  echo "Rounds (path, QPS, p95 ms):"
  echo
  echo '```'
  cat "$WORK/rounds.txt"
  echo '```'
} | tee "$OUT"
