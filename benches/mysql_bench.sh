#!/usr/bin/env bash
# benches/mysql_bench.sh — switchyard `protocol: mysql` (issue 5).
#
# 1. Throughput: sysbench $WORKLOADS at $THREADS_LIST threads through HAProxy (mode tcp, nbthread 2)
#    and switchyard in tcp and in mysql mode (same backend, same run, interleaved rounds with a
#    rotating order): medians, and ratios to HAProxy and to tcp mode taken round by round.
# 2. oltp_read_only, 16 threads, --db-ps-mode=disable, through a mysql-mode switchyard over two
#    backends while one backend is drained and undrained every 2 s: client errors (target 0) and
#    migrations counted in /metrics.
# 3. 5,000 idle logged-in sessions on one backend; drain it; time until all moved (target <= 10 s).
#
# Needs: mariadbd + mariadb-install-db + mariadb, sysbench, haproxy, python3, curl.
# Usage: benches/mysql_bench.sh   (ROUNDS=5 TIME=15 WORKLOADS=oltp_point_select THREADS_LIST=8
#        IDLE=5000 CHURN_TIME=30 by default)
#        SWITCHYARD_BIN=path/to/switchyard benches/mysql_bench.sh
#        IDLE_CHANGED=1: each idle session first runs a SET (user variable, sql_mode).
#        KEEP_WORK=1 keeps the servers' and proxies' logs (the work directory is printed).
#        PARTS="select churn drain" (default: all three) runs only the named parts.
#        BASELINE_BIN=path/to/older/switchyard: part 3 runs DRAIN_ROUNDS (default 3) times with each
#        binary, alternating, and reports both medians and their ratio.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
TIME=${TIME:-15}
WORKLOADS=${WORKLOADS:-oltp_point_select}
THREADS_LIST=${THREADS_LIST:-${THREADS:-8}}
IDLE=${IDLE:-5000}
CHURN_TIME=${CHURN_TIME:-30}
OUT=${OUT:-mysql-bench-results.md}
PARTS=${PARTS:-select churn drain}
BASELINE_BIN=${BASELINE_BIN:-}
DRAIN_ROUNDS=${DRAIN_ROUNDS:-3}
want() { [[ " $PARTS " == *" $1 "* ]]; }
BIN=$(bench_bin)
bench_init mysql-bench

DB1=$(free_port); DB2=$(free_port)
echo "== MariaDB on $DB1 and $DB2" >&2
start_db db1 "$DB1" --max-connections=$((IDLE + 500)) --thread-handling=pool-of-threads
start_db db2 "$DB2" --max-connections=$((IDLE + 500)) --thread-handling=pool-of-threads
if want select || want churn; then
  for p in "$DB1" "$DB2"; do prepare_db "$p"; done
fi

# ---- 1. throughput: mysql mode vs tcp mode vs HAProxy --------------------------------------------
SELECT_TABLES=
if want select; then
HAP=$(free_port); TCP=$(free_port); TCPA=$(free_port); MY=$(free_port); MYA=$(free_port)
start_haproxy "$HAP $DB1"
sy_start tcp tcp "$TCP" "$TCPA" "$DB1"; TCP_PID=$SY_PID
sy_start my mysql "$MY" "$MYA" "$DB1"; MY_PID=$SY_PID
echo "== $WORKLOADS at $THREADS_LIST threads, ${TIME}s x $ROUNDS rounds" >&2
throughput_rounds "haproxy $HAP $HAP_PID" "switchyard-tcp $TCP $TCP_PID" "switchyard-mysql $MY $MY_PID"
SELECT_TABLES=$(throughput_summary haproxy; echo; echo "Against tcp mode:"; throughput_summary switchyard-tcp)
fi

# ---- 2. read-only load while one backend is drained/undrained every 2 s ------------------------
RO_QPS=-; RO_ERR=-; MIG_OK=-; MIG_FAIL=-
if want churn; then
CH=$(free_port); CHA=$(free_port)
sy_start churn mysql "$CH" "$CHA" "$DB1" "$DB2"
echo "== oltp_read_only 16 threads, ${CHURN_TIME}s, draining 127.0.0.1:$DB1 every 2s" >&2
(
  end=$((SECONDS + CHURN_TIME))
  while ((SECONDS < end)); do
    curl -fs -XPOST -H "Content-Type: application/json" "127.0.0.1:$CHA/backends/127.0.0.1:$DB1/drain" >/dev/null; sleep 2
    curl -fs -XPOST -H "Content-Type: application/json" "127.0.0.1:$CHA/backends/127.0.0.1:$DB1/undrain" >/dev/null; sleep 2
  done
) &
TOGGLE=$!
set +e
RO=$(sysbench oltp_read_only "${SB[@]}" --mysql-port="$CH" --threads=16 --time="$CHURN_TIME" \
  --db-ps-mode=disable --report-interval=0 run 2>&1)
RO_RC=$?
set -e
wait "$TOGGLE" || true
RO_QPS=$(sed -n 's/.*queries: *[0-9]* *(\([0-9.]*\) per sec.).*/\1/p' <<<"$RO")
RO_ERR=$(sed -n 's/.*errors: *\([0-9]*\).*/\1/p' <<<"$RO")
[[ $RO_RC -ne 0 ]] && { echo "$RO" | tail -20 >&2; RO_ERR="sysbench exited $RO_RC"; }
MIG_OK=$(curl -fs "127.0.0.1:$CHA/metrics" | sed -n 's/^switchyard_migrations_total{result="succeeded"} \([0-9]*\).*/\1/p')
MIG_FAIL=$(curl -fs "127.0.0.1:$CHA/metrics" | sed -n 's/^switchyard_migrations_total{result="failed"} \([0-9]*\).*/\1/p')
fi

# ---- 3. drain 5,000 idle sessions --------------------------------------------------------------
cat >"$WORK/idle.py" <<'PY'
import hashlib, socket, struct, sys, time, json, urllib.request
port, n, admin, db1, db2 = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
changed = sys.argv[6] == '1'
def read_pkt(s):
    h = b''
    while len(h) < 4:
        c = s.recv(4 - len(h))
        if not c: raise EOFError
        h += c
    n = h[0] | h[1] << 8 | h[2] << 16
    p = b''
    while len(p) < n:
        c = s.recv(n - len(p))
        if not c: raise EOFError
        p += c
    return h[3], p
def login(user, pw):
    s = socket.create_connection(('127.0.0.1', port))
    _, g = read_pkt(s)
    i = g.index(b'\0', 1) + 1 + 4
    salt = g[i:i+8]; i += 9 + 2 + 1 + 2 + 2 + 1 + 10
    salt += g[i:i+12]
    s1 = hashlib.sha1(pw).digest(); s2 = hashlib.sha1(s1).digest()
    tok = bytes(a ^ b for a, b in zip(s1, hashlib.sha1(salt + s2).digest()))
    caps = 0x0200 | 0x8000 | 0x80000 | 0x20000 | 0x1000000
    body = struct.pack('<IIB23x', caps, 1 << 24, 45) + user + b'\0' + bytes([20]) + tok + b'mysql_native_password\0'
    s.sendall(struct.pack('<I', len(body))[:3] + b'\x01' + body)
    _, r = read_pkt(s)
    if r[0] != 0: raise RuntimeError(r)
    if changed:   # a session that changed state: its move reads everything from the server
        q = b"\x03SET @v = 'x', sql_mode = 'ANSI_QUOTES'"
        s.sendall(struct.pack('<I', len(q))[:3] + b'\x00' + q)
        _, r = read_pkt(s)
        if r[0] != 0: raise RuntimeError(r)
    return s
def conns():
    bs = json.load(urllib.request.urlopen(f'http://127.0.0.1:{admin}/backends'))
    return {b['addr']: b['conn_count'] for b in bs}
socks = [login(b'sb', b'sb') for _ in range(n)]
time.sleep(1)
print(f'opened {n}: {conns()}', file=sys.stderr)
t0 = time.time()
urllib.request.urlopen(urllib.request.Request(f'http://127.0.0.1:{admin}/backends/{db2}/undrain', method='POST', headers={'Content-Type': 'application/json'}))
urllib.request.urlopen(urllib.request.Request(f'http://127.0.0.1:{admin}/backends/{db1}/drain', method='POST', headers={'Content-Type': 'application/json'}))
while True:
    c = conns()
    if c.get(db1, 0) == 0 or time.time() - t0 > 60:
        break
    time.sleep(0.05)
took = time.time() - t0
# every session still answers a ping
ok = 0
for s in socks:
    s.sendall(b'\x01\x00\x00\x00\x0e')
    _, r = read_pkt(s)
    ok += r[0] == 0
print(f'{took:.2f} {c.get(db1, 0)} {c.get(db2, 0)} {ok}')
PY
drain_once() { # label binary
  local id ida line
  id=$(free_port); ida=$(free_port)
  SY_BIN=$2 sy_start "idle-$1" mysql "$id" "$ida" "$DB1" "$DB2"
  curl -fs -XPOST -H "Content-Type: application/json" "127.0.0.1:$ida/backends/127.0.0.1:$DB2/drain" >/dev/null   # all sessions land on DB1
  line=$(python3 "$WORK/idle.py" "$id" "$IDLE" "$ida" "127.0.0.1:$DB1" "127.0.0.1:$DB2" "${IDLE_CHANGED:-0}")
  echo "$1 $line" | tee -a "$WORK/drain.txt" >&2
  kill "$SY_PID" 2>/dev/null || true
  wait "$SY_PID" 2>/dev/null || true
  sleep 2   # let both servers close the sessions before the next round
}
DRAIN_S=-; LEFT=-; MOVED=-; PINGS=-; DRAIN_LINE=
if want drain; then
  echo "== drain of $IDLE idle sessions" >&2
  if [[ -n "$BASELINE_BIN" ]]; then
    for r in $(seq "$DRAIN_ROUNDS"); do
      if ((r % 2)); then drain_once before "$BASELINE_BIN"; drain_once after "$BIN"
      else drain_once after "$BIN"; drain_once before "$BASELINE_BIN"; fi
    done
    D_B=$(awk '$1=="before" {print $2}' "$WORK/drain.txt" | median)
    D_A=$(awk '$1=="after" {print $2}' "$WORK/drain.txt" | median)
    D_R=$(python3 -c "print(f'{$D_A/$D_B:.3f}')")
    DRAIN_LINE="Drain of $IDLE idle sessions${IDLE_CHANGED:+ (each ran a SET first)}, median of $DRAIN_ROUNDS rounds each, alternating: baseline **$D_B s**, this build **$D_A s** (ratio $D_R). Rounds (label, seconds, left, moved, answering a ping): $(awk '{printf "%s%s %s %s %s %s", (NR>1?"; ":""), $1, $2, $3, $4, $5}' "$WORK/drain.txt")."
  else
    drain_once this "$BIN"
    read -r _ DRAIN_S LEFT MOVED PINGS < "$WORK/drain.txt"
    DRAIN_LINE="Drain of $IDLE idle sessions: **${DRAIN_S} s** until none left on the drained backend (left: $LEFT, on the other: $MOVED, answering a ping afterwards: $PINGS)."
  fi
fi

{
  echo "### Results ($(date -u +%Y-%m-%d), $(nproc) cores)"
  if want select; then
    echo "$SELECT_TABLES"
  fi
  if want churn; then
    echo
    echo "oltp_read_only, 16 threads, --db-ps-mode=disable, ${CHURN_TIME}s, one backend drained/undrained every 2 s:"
    echo "QPS $RO_QPS, client errors **${RO_ERR:-?}**, migrations succeeded ${MIG_OK:-0}, failed ${MIG_FAIL:-0}."
  fi
  if want drain; then
    echo
    echo "$DRAIN_LINE"
  fi
} | tee "$OUT"
