#!/usr/bin/env bash
# benches/mysql_memory.sh — proxy memory of idle `protocol: mysql` sessions (issue 9), measured
# from outside (VmRSS of the switchyard process).
#
# 1. Slope: N idle logged-in PyMySQL sessions held open through a fresh proxy, N = 0, STEP, …,
#    TOP; RSS after each step settles; the least-squares slope is the cost of one idle session.
# 2. Large rows: a fresh proxy, SESSIONS idle sessions (RSS), then each of them reads one ROW_MB
#    MiB row and sits idle again (RSS): the difference is what a large row leaves behind.
#
# Each round runs both parts for this build and, with BASELINE_BIN, for an older binary, in
# alternating order; the summary gives medians, the spread (min–max) and the ratio/delta of this
# build against the baseline measured in the same run.
#
# Needs: mariadbd + mariadb-install-db + mariadb, python3 with pymysql (Debian: python3-pymysql).
# Usage: benches/mysql_memory.sh   (ROUNDS=5 TOP=2000 STEP=500 SESSIONS=1000 ROW_MB=4 by default)
#        BASELINE_BIN=path/to/older/switchyard benches/mysql_memory.sh
#        SWITCHYARD_BIN=path/to/switchyard (default: cargo build --release)
#        PARTS="slope rows" (default both), KEEP_WORK=1 keeps logs, OUT=file for the summary.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
TOP=${TOP:-2000}
STEP=${STEP:-500}
SESSIONS=${SESSIONS:-1000}
# The baseline keeps each large buffer for the session's life (about 8 MiB a session for a 4 MiB
# row): 1,000 of them would take 8 GiB of a shared machine, so it runs fewer by default.
BASELINE_SESSIONS=${BASELINE_SESSIONS:-100}
ROW_MB=${ROW_MB:-4}
SETTLE=${SETTLE:-2}
PARTS=${PARTS:-slope rows}
OUT=${OUT:-mysql-memory-results.md}
BASELINE_BIN=${BASELINE_BIN:-}
want() { [[ " $PARTS " == *" $1 "* ]]; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SWITCHYARD_BIN:-}
if [[ -z "$BIN" ]]; then
  (cd "$ROOT" && cargo build --release --quiet --bin switchyard)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard"
fi
PY=${PYTHON:-}
for p in "$PY" /usr/bin/python3 python3; do
  if [[ -n "$p" ]] && "$p" -c 'import pymysql' 2>/dev/null; then PY=$p; break; fi
done
"$PY" -c 'import pymysql' || { echo "no python3 with pymysql (set PYTHON=)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/switchyard-mysql-memory.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n "${KEEP_WORK:-}" ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
ulimit -n 30000 2>/dev/null || true

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 300); do
    if "$PY" -c "import socket; socket.create_connection(('$1',$2),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on $1:$2" >&2; return 1
}

DB=$(free_port)
echo "== MariaDB on $DB" >&2
mariadb-install-db --no-defaults --auth-root-authentication-method=normal --skip-test-db \
  --datadir="$WORK/db" --user=root >"$WORK/db-install.log" 2>&1
mariadbd --no-defaults --datadir="$WORK/db" --port="$DB" --bind-address=127.0.0.1 \
  --socket="$WORK/db.sock" --pid-file="$WORK/db.pid" --user=root --skip-name-resolve \
  --max-connections=$((TOP + SESSIONS + BASELINE_SESSIONS + 200)) --thread-handling=pool-of-threads \
  --max-allowed-packet=64M --innodb-buffer-pool-size=64M >"$WORK/db.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 "$DB"
for _ in $(seq 100); do mariadb --socket="$WORK/db.sock" -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
mariadb --socket="$WORK/db.sock" -uroot -e "
  CREATE DATABASE mem; CREATE USER sb@'%' IDENTIFIED BY 'sb'; GRANT ALL ON *.* TO sb@'%';
  CREATE TABLE mem.big (id INT PRIMARY KEY, b LONGBLOB);
  INSERT INTO mem.big VALUES (1, REPEAT('x', $ROW_MB * 1024 * 1024));"

sy_start() { # binary listen admin
  cat >"$WORK/sy.yaml" <<CFG
proxy: { listen: 127.0.0.1:$2, protocol: mysql }
admin: { listen: 127.0.0.1:$3 }
backends: { static: [127.0.0.1:$DB] }
health_check: { interval: 1s }
mysql: { users: [ { name: sb, password: sb } ] }
log: { level: warn }
CFG
  "$1" --config "$WORK/sy.yaml" >>"$WORK/sy.log" 2>&1 &
  SY_PID=$!
  PIDS+=($SY_PID)
  wait_port 127.0.0.1 "$2"
  for _ in $(seq 100); do
    curl -fs "127.0.0.1:$3/backends" | grep -q '"healthy"' && break; sleep 0.1
  done
}
sy_stop() {
  kill "$SY_PID" 2>/dev/null || true
  wait "$SY_PID" 2>/dev/null || true
  sleep 1   # let the server close the sessions before the next run
}

cat >"$WORK/idle.py" <<'PY'
import sys, time, pymysql
mode, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
settle = float(sys.argv[4])
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def connect():
    return pymysql.connect(host="127.0.0.1", port=port, user="sb", password="sb", database="mem")
def settled():
    time.sleep(settle)
    return rss_kib()
conns = []
if mode == "slope":    # argv: top step; prints "slope_kib rss0 rss_at_each_step..."
    top, step = int(sys.argv[5]), int(sys.argv[6])
    pts = [(0, settled())]
    while len(conns) < top:
        conns += [connect() for _ in range(step)]
        pts.append((len(conns), settled()))
    mx = sum(x for x, _ in pts) / len(pts); my = sum(y for _, y in pts) / len(pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    print(f"{slope:.2f} " + " ".join(f"{x}:{y}" for x, y in pts))
else:                  # "rows": argv: sessions mib; prints "rss_before rss_after" (KiB)
    n, mib = int(sys.argv[5]), int(sys.argv[6])
    conns = [connect() for _ in range(n)]
    before = settled()
    for c in conns:
        with c.cursor() as cur:
            cur.execute("SELECT b FROM big WHERE id = 1")
            (b,) = cur.fetchone()
            assert len(b) == mib * 1024 * 1024, len(b)
    print(before, settled())
for c in conns:
    c.close()
PY

slope_once() { # label binary
  local p a line
  p=$(free_port); a=$(free_port)
  sy_start "$2" "$p" "$a"
  line=$("$PY" "$WORK/idle.py" slope "$p" "$SY_PID" "$SETTLE" "$TOP" "$STEP")
  echo "$1 $line" | tee -a "$WORK/slope.txt" >&2
  sy_stop
}
rows_once() { # label binary sessions
  local p a before after
  p=$(free_port); a=$(free_port)
  sy_start "$2" "$p" "$a"
  read -r before after < <("$PY" "$WORK/idle.py" rows "$p" "$SY_PID" "$SETTLE" "$3" "$ROW_MB")
  sy_stop
  echo "$1 $3 $before $after $((after - before)) $(((after - before) / $3))" | tee -a "$WORK/rows.txt" >&2
}

LABELS=(this)
[[ -n "$BASELINE_BIN" ]] && LABELS=(baseline this)
sessions_of() { if [[ $1 == baseline ]]; then echo "$BASELINE_SESSIONS"; else echo "$SESSIONS"; fi; }
bin_of() { if [[ $1 == baseline ]]; then echo "$BASELINE_BIN"; else echo "$BIN"; fi; }
echo "== $ROUNDS rounds: slope 0..$TOP step $STEP; $SESSIONS sessions x one $ROW_MB MiB row" >&2
for r in $(seq "$ROUNDS"); do
  order=("${LABELS[@]}")
  if (( r % 2 == 0 )) && (( ${#LABELS[@]} == 2 )); then order=(this baseline); fi
  for l in "${order[@]}"; do
    want slope && slope_once "$l" "$(bin_of "$l")"
    want rows && rows_once "$l" "$(bin_of "$l")" "$(sessions_of "$l")"
  done
done

stats() { # file label column -> "median min max"
  awk -v l="$2" -v c="$3" '$1==l {print $c}' "$1" | sort -n |
    awk '{a[NR]=$1} END {m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%.2f %.2f %.2f\n", m, a[1], a[NR]}'
}
{
  echo "### Results ($(date -u +%Y-%m-%d), $(nproc) cores, $ROUNDS rounds, alternating)"
  echo
  echo "Command: \`ROUNDS=$ROUNDS TOP=$TOP STEP=$STEP SESSIONS=$SESSIONS ROW_MB=$ROW_MB${BASELINE_BIN:+ BASELINE_BIN=…} benches/mysql_memory.sh\`"
  if want slope; then
    echo
    echo "| build | idle session slope, KiB (median) | min–max |"
    echo "|---|---:|---:|"
    for l in "${LABELS[@]}"; do
      read -r m lo hi < <(stats "$WORK/slope.txt" "$l" 2)
      echo "| $l | **$m** | $lo–$hi |"
      eval "SLOPE_$l=$m"
    done
    if [[ -n "$BASELINE_BIN" ]]; then
      echo
      echo "this / baseline: **$("$PY" -c "print(f'{$SLOPE_this/$SLOPE_baseline:.3f}')")**"
    fi
  fi
  if want rows; then
    echo
    echo "| build | sessions | RSS after one $ROW_MB MiB row each − RSS of the same idle sessions before, MiB (median) | min–max | per session, KiB (median) |"
    echo "|---|---:|---:|---:|---:|"
    mib() { "$PY" -c "print(f'{$1/1024:.1f}')"; }
    for l in "${LABELS[@]}"; do
      read -r m lo hi < <(stats "$WORK/rows.txt" "$l" 5)
      read -r per _ _ < <(stats "$WORK/rows.txt" "$l" 6)
      echo "| $l | $(sessions_of "$l") | **$(mib "$m")** | $(mib "$lo")–$(mib "$hi") | $per |"
    done
  fi
  echo
  echo "Rounds (slope: label, KiB/session, N:RSS KiB …):"
  echo
  sed 's/^/    /' "$WORK/slope.txt" 2>/dev/null || true
  if want rows; then
    echo
    echo "Rounds (rows: label, sessions, RSS before KiB, RSS after KiB, difference KiB, per session KiB):"
    echo
    sed 's/^/    /' "$WORK/rows.txt"
  fi
} | tee "$OUT"
