#!/usr/bin/env bash
# benches/tls_bench.sh — what TLS costs (issue 11): `protocol: mysql`, one MariaDB started with
# TLS, two switchyard instances in the same run: one plain, one with TLS on both sides
# (`proxy.tls` towards sysbench, `backends.tls` towards MariaDB).
#
# 1. Throughput: sysbench oltp_point_select through each proxy and straight to MariaDB, plain and
#    TLS (--mysql-ssl=on), interleaved round by round. The summary gives each path's median QPS,
#    the TLS/plain ratio of each round through the proxy (target >= 0.9), and the same ratio
#    without the proxy: what sysbench's and MariaDB's own TLS cost on this machine, which the
#    proxied ratio cannot beat while all of them share its cores.
# 2. The proxy's own cost: its CPU per query, plain and TLS, at the same offered load
#    (sysbench --rate=$RATE, below both paths' maximum), so neither runs with fuller batches
#    per wake-up than the other. plain/TLS of that CPU is the throughput ratio the proxy would
#    reach where it, and not its clients and servers, is the bottleneck.
# 3. Idle memory: N idle PyMySQL sessions (ssl context, no verification) held open through a
#    fresh TLS proxy, then N plain ones through a fresh plain proxy; VmRSS growth / N per
#    session (target <= 32 KiB for TLS).
#
# Needs: mariadbd, mariadb-install-db, mariadb, sysbench, openssl, python3 with pymysql.
# Usage: benches/tls_bench.sh   (ROUNDS=5 TIME=10 THREADS_LIST="8 32" RATE=5000 IDLE=1000 by
#        default) SWITCHYARD_BIN=path (default: cargo build --release), KEEP_WORK=1, OUT=file.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
TIME=${TIME:-10}
THREADS_LIST=${THREADS_LIST:-8 32}
IDLE=${IDLE:-1000}
RATE=${RATE:-5000}
OUT=${OUT:-tls-bench-results.md}
BIN=$(bench_bin)
bench_init tls-bench
PY=/usr/bin/python3
"$PY" -c 'import pymysql' 2>/dev/null || PY=python3

# A throwaway CA and certificates for 127.0.0.1 (MariaDB's and the proxy's).
pki() {
  cd "$WORK"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
    -out ca.pem -days 2 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign >/dev/null 2>&1
  # clientAuth too: MariaDB checks the certificate sysbench shows when it connects directly
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' >ext
  for n in db proxy client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $n.key \
      -out $n.csr -subj "/CN=$n" >/dev/null 2>&1
    openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $n.pem -days 2 \
      -extfile ext >/dev/null 2>&1
  done
  # sysbench's --mysql-ssl=on reads cacert.pem, client-cert.pem and client-key.pem from its
  # working directory (the proxy asks for no client certificate; sysbench insists on the files)
  cp ca.pem cacert.pem; cp client.pem client-cert.pem; cp client.key client-key.pem
  cd - >/dev/null
}
pki

DB=$(free_port)
start_db db "$DB" --ssl-ca="$WORK/ca.pem" --ssl-cert="$WORK/db.pem" --ssl-key="$WORK/db.key"
prepare_db "$DB"

# A switchyard in `protocol: mysql` in front of the MariaDB; with tls=1, TLS on both sides.
start_pair() { # name tls(0|1) -> sets PORT, PID
  local name=$1 tls=$2 port admin front="" back=""
  port=$(free_port); admin=$(free_port)
  if [[ $tls == 1 ]]; then
    front=", tls: { cert: $WORK/proxy.pem, key: $WORK/proxy.key }"
    back=", tls: { enable: true, ca: $WORK/ca.pem }"
  fi
  cat >"$WORK/$name.yaml" <<CFG
proxy: { listen: 127.0.0.1:$port, protocol: mysql, workers: ${SY_WORKERS:-0}$front }
admin: { listen: 127.0.0.1:$admin }
backends: { static: [127.0.0.1:$DB]$back }
health_check: { interval: 1s }
mysql: { users: [ { name: sb, password: sb } ] }
log: { level: warn }
CFG
  "$BIN" --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
  PID=$!; PIDS+=($PID)
  wait_port 127.0.0.1 "$port"
  for _ in $(seq 100); do
    curl -fs "127.0.0.1:$admin/backends" | grep -q '"healthy"' && break; sleep 0.1
  done
  PORT=$port
}

start_pair plain 0; PLAIN_PORT=$PORT; PLAIN_PID=$PID
start_pair tls 1; TLS_PORT=$PORT; TLS_PID=$PID

# One measured run of one target: plain / tls (through the proxies), direct-plain / direct-tls
# (straight to MariaDB). Extra sysbench options in $EXTRA_SB.
run_target() { # name threads round
  local name=$1 ssl=() port pid=""
  case $name in
    plain*) port=$PLAIN_PORT; pid=$PLAIN_PID ;;
    tls*) port=$TLS_PORT; pid=$TLS_PID; ssl=(--mysql-ssl=on) ;;
    direct-plain) port=$DB ;;
    direct-tls) port=$DB; ssl=(--mysql-ssl=on) ;;
  esac
  # sysbench's --mysql-ssl=on reads its certificate files from the working directory
  (cd "$WORK" && SB_RUN_ARGS=("${ssl[@]}" ${EXTRA_SB:-}) && sb_run oltp_point_select "$2" "$3" "$name" "$port" $pid)
}

echo "== throughput: oltp_point_select, plain vs TLS on both sides, through the proxy and straight" >&2
for name in plain tls direct-plain direct-tls; do   # warm up: buffer pool, pools, handshakes
  (cd "$WORK" && EXTRA_SB= TIME=3 run_target "$name" 8 0 >/dev/null 2>&1) || { tail -n 20 "$WORK"/*.log >&2; exit 1; }
done
: >"$WORK/rounds.txt"
TARGETS=(plain tls direct-plain direct-tls)
for r in $(seq "$ROUNDS"); do
  for t in $THREADS_LIST; do
    for i in 0 1 2 3; do
      EXTRA_SB= run_target "${TARGETS[$(( (i + r) % 4 ))]}" "$t" "$r"
    done
  done
  # the proxy's own cost at an equal offered load, 8 threads
  order=(plain@rate tls@rate); ((r % 2)) || order=(tls@rate plain@rate)
  for name in "${order[@]}"; do EXTRA_SB="--rate=$RATE" run_target "$name" 8 "$r"; done
done
{
  echo "# TLS benchmark ($(date -u +%F), $(nproc) cores)"
  python3 - "$WORK/rounds.txt" "$RATE" <<'PY'
import sys, statistics as st
from collections import defaultdict
path, rate = sys.argv[1], sys.argv[2]
cell = defaultdict(dict)  # threads -> {(round, name): (qps, cpu)}
loads = []
for line in open(path):
    w, t, r, name, qps, p95, load, others, cpu = line.split()
    cell[int(t)][(int(r), name)] = (float(qps), None if cpu == "-" else float(cpu))
    loads.append(float(load))
def med(xs): return st.median(xs) if xs else float("nan")
def span(xs): return f"{min(xs):.2f}–{max(xs):.2f}" if xs else "-"
def ratios(c, a, b, i=0):
    return [c[(r, a)][i] / c[(r, b)][i] for r in sorted({r for r, _ in c})
            if (r, a) in c and (r, b) in c and c[(r, b)][i]]
for t, c in sorted(cell.items()):
    names = ["plain", "tls", "direct-plain", "direct-tls"]
    if not any((r, "plain") in c for r, _ in c):
        continue
    print(f"\noltp_point_select, {t} threads, {len({r for r, n in c if n == 'plain'})} rounds (median QPS, proxy CPU µs/query):\n")
    print("| path | QPS | proxy CPU µs/query |")
    print("|---|---:|---:|")
    for n in names:
        q = [v[0] for (r, m), v in c.items() if m == n]
        u = [v[1] for (r, m), v in c.items() if m == n and v[1] is not None]
        print(f"| {n} | {med(q):.0f} | {med(u):.1f} |" if u else f"| {n} | {med(q):.0f} | - |")
    tp, td = ratios(c, "tls", "plain"), ratios(c, "direct-tls", "direct-plain")
    print(f"\nTLS / plain QPS, per round: through the proxy **{med(tp):.2f}** ({span(tp)}; target >= 0.9); "
          f"straight to MariaDB {med(td):.2f} ({span(td)}).")
    if any(n == "tls@rate" for _, n in c):
        cp = [c[(r, "plain@rate")][1] / c[(r, "tls@rate")][1] for r in sorted({r for r, _ in c})
              if (r, "plain@rate") in c and (r, "tls@rate") in c and c[(r, "tls@rate")][1]]
        pu = med([v[1] for (r, m), v in c.items() if m == "plain@rate"])
        tu = med([v[1] for (r, m), v in c.items() if m == "tls@rate"])
        print(f"\nProxy CPU per query at an equal offered load ({rate} queries/s): plain {pu:.1f} µs, "
              f"TLS {tu:.1f} µs; plain / TLS per round **{med(cp):.2f}** ({span(cp)}).")
print(f"\nLoad average (1 min) at the start of each run: median {med(loads):.2f}, min {min(loads):.2f}, max {max(loads):.2f}.")
PY
} >"$OUT"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Opens N idle sessions through port (with TLS or not), prints the RSS growth per session.
idle_cost() { # pid port ssl(0|1)
  local before after
  before=$(rss_kib "$1")
  "$PY" - "$2" "$3" "$IDLE" "$WORK/idle.$2" <<'PY' &
import os, ssl, sys, time, pymysql
port, tls, n, flag = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
ctx = None
if tls:
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
conns = [pymysql.connect(host="127.0.0.1", port=port, user="sb", password="sb", ssl=ctx) for _ in range(n)]
for c in conns[:10]:
    c.cursor().execute("SELECT 1")
open(flag, "w").close()
time.sleep(3600)
PY
  local py=$!
  for _ in $(seq 600); do [[ -e "$WORK/idle.$2" ]] && break; sleep 0.2; done
  sleep 3
  after=$(rss_kib "$1")
  kill "$py"; wait "$py" 2>/dev/null || true
  awk -v a="$after" -v b="$before" -v n="$IDLE" 'BEGIN {printf "%.1f", (a - b) / n}'
}

echo "== idle memory: $IDLE sessions" >&2
start_pair idle-tls 1; TLS_KIB=$(idle_cost "$PID" "$PORT" 1)
start_pair idle-plain 0; PLAIN_KIB=$(idle_cost "$PID" "$PORT" 0)
{
  echo
  echo "Idle sessions ($IDLE, PyMySQL, VmRSS growth of a fresh proxy / sessions):"
  echo
  echo "| path | KiB per idle session |"
  echo "|---|---:|"
  echo "| plain | $PLAIN_KIB |"
  echo "| TLS both sides | $TLS_KIB |"
} >>"$OUT"
cat "$OUT"
