#!/usr/bin/env bash
# benches/tls_bench.sh — what TLS costs (issue 11): `protocol: mysql`, one MariaDB started with
# TLS, two switchyard instances in the same run: one plain, one with TLS on both sides
# (`proxy.tls` towards sysbench, `backends.tls` towards MariaDB).
#
# 1. Throughput: sysbench oltp_point_select through each, interleaved round by round (the TLS
#    one with --mysql-ssl=on); the summary gives each path's median QPS and the TLS/plain ratio
#    of each round (target >= 0.9).
# 2. Idle memory: N idle PyMySQL sessions (ssl context, no verification) held open through a
#    fresh TLS proxy, then N plain ones through a fresh plain proxy; VmRSS growth / N per
#    session (target <= 32 KiB for TLS).
#
# Needs: mariadbd, mariadb-install-db, mariadb, sysbench, openssl, python3 with pymysql.
# Usage: benches/tls_bench.sh   (ROUNDS=5 TIME=10 THREADS_LIST="8 32" IDLE=1000 by default)
#        SWITCHYARD_BIN=path (default: cargo build --release), KEEP_WORK=1, OUT=file.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
TIME=${TIME:-10}
THREADS_LIST=${THREADS_LIST:-8 32}
IDLE=${IDLE:-1000}
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
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext
  for n in db proxy; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $n.key \
      -out $n.csr -subj "/CN=$n" >/dev/null 2>&1
    openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $n.pem -days 2 \
      -extfile ext >/dev/null 2>&1
  done
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

echo "== throughput: oltp_point_select, plain vs TLS on both sides" >&2
sysbench oltp_point_select "${SB[@]}" --mysql-port="$PLAIN_PORT" --threads=8 --time=3 run >/dev/null
sysbench oltp_point_select "${SB[@]}" --mysql-port="$TLS_PORT" --mysql-ssl=on --threads=8 --time=3 run >/dev/null
for r in $(seq "$ROUNDS"); do
  for t in $THREADS_LIST; do
    order=(plain tls); ((r % 2)) || order=(tls plain)
    for name in "${order[@]}"; do
      if [[ $name == tls ]]; then
        SB_RUN_ARGS=(--mysql-ssl=on) sb_run oltp_point_select "$t" "$r" tls "$TLS_PORT" "$TLS_PID"
      else
        SB_RUN_ARGS=() sb_run oltp_point_select "$t" "$r" plain "$PLAIN_PORT" "$PLAIN_PID"
      fi
    done
  done
done
{
  echo "# TLS benchmark ($(date -u +%F), $(nproc) cores)"
  throughput_summary plain
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
