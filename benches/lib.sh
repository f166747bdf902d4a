# benches/lib.sh — setup shared by proxy_bench.sh and mysql_bench.sh: a work directory that is
# cleaned on exit, MariaDB servers, HAProxy, switchyard instances, and interleaved sysbench
# throughput rounds with their summary. Sourced, not run; the sourcing script sets `set -euo
# pipefail` first.
#
# Knobs read here: SWITCHYARD_BIN (default: cargo build --release), KEEP_WORK=1 (keep logs),
# WORKLOADS, THREADS_LIST, ROUNDS, TIME, SB_ARGS (throughput), HAP_THREADS (HAProxy nbthread, default 2),
# SY_WORKERS (switchyard proxy.workers, default 0 = one per core).

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The switchyard binary: $SWITCHYARD_BIN, or a fresh release build.
bench_bin() {
  if [[ -n "${SWITCHYARD_BIN:-}" ]]; then
    echo "$SWITCHYARD_BIN"
    return
  fi
  (cd "$BENCH_ROOT" && cargo build --release --quiet --bin switchyard) >&2
  echo "${CARGO_TARGET_DIR:-$BENCH_ROOT/target}/release/switchyard"
}

# Creates $WORK (named after $1) and the exit trap that stops every process in PIDS.
bench_init() { # name
  WORK=$(mktemp -d "/tmp/switchyard-$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
  ulimit -n 65536 2>/dev/null || ulimit -n 30000 2>/dev/null || true
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n "${KEEP_WORK:-}" ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # host port
  for _ in $(seq 300); do
    if python3 -c "import socket; socket.create_connection(('$1',$2),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on $1:$2 (logs: $WORK)" >&2; KEEP_WORK=1; return 1
}

# A MariaDB with database sbtest and user sb/sb (all privileges); extra mariadbd options after
# the port (e.g. --thread-handling=pool-of-threads).
start_db() { # name port [mariadbd options...]
  local name=$1 port=$2; shift 2
  mariadb-install-db --no-defaults --auth-root-authentication-method=normal --skip-test-db \
    --datadir="$WORK/$name" --user=root >"$WORK/$name-install.log" 2>&1
  mariadbd --no-defaults --datadir="$WORK/$name" --port="$port" --bind-address=127.0.0.1 \
    --socket="$WORK/$name.sock" --pid-file="$WORK/$name.pid" --user=root --skip-name-resolve \
    --max-connections=1000 --innodb-buffer-pool-size=128M "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  wait_port 127.0.0.1 "$port"
  for _ in $(seq 100); do mariadb --socket="$WORK/$name.sock" -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
  mariadb --socket="$WORK/$name.sock" -uroot -e "CREATE DATABASE sbtest; CREATE USER sb@'%' IDENTIFIED BY 'sb'; GRANT ALL ON *.* TO sb@'%';"
}

# sysbench's common options (the workload and the port come per call).
SB_TABLES=${SB_TABLES:-8}
SB_TABLE_SIZE=${SB_TABLE_SIZE:-10000}
SB=(--db-driver=mysql --mysql-host=127.0.0.1 --mysql-user=sb --mysql-password=sb
    --mysql-db=sbtest --tables="$SB_TABLES" --table-size="$SB_TABLE_SIZE")
# Extra options for the measured runs only, e.g. SB_ARGS="--range_size=1000" (bigger results).
read -r -a SB_RUN_ARGS <<<"${SB_ARGS:-}"

# The sbtest tables (shared by oltp_point_select and oltp_read_only).
prepare_db() { # port
  sysbench oltp_point_select "${SB[@]}" --mysql-port="$1" --threads=4 prepare >"$WORK/prepare-$1.log"
}

# HAProxy in `mode tcp`, `nbthread $HAP_THREADS`: one `listen` per "port backend_port" pair.
start_haproxy() { # "listen_port backend_port"...
  local maxconn=$(( ($(ulimit -n) - 100) / 2 ))   # 2 descriptors per connection plus some
  {
    echo "global"
    echo "  maxconn $maxconn"
    echo "  nbthread ${HAP_THREADS:-2}"
    echo "defaults"
    echo "  mode tcp"
    echo "  timeout connect 5s"
    echo "  timeout client 1h"
    echo "  timeout server 1h"
    local pair
    for pair in "$@"; do
      echo "listen l${pair% *}"
      echo "  bind 127.0.0.1:${pair% *}"
      echo "  balance leastconn"
      echo "  server b${pair#* } 127.0.0.1:${pair#* }"
    done
  } >"$WORK/haproxy.cfg"
  haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  HAP_PID=$!; PIDS+=($HAP_PID)
  for pair in "$@"; do wait_port 127.0.0.1 "${pair% *}"; done
}

# A switchyard; sets SY_PID. Extra YAML in $EXTRA; binary $SY_BIN (default $BIN). Returns once
# every backend is healthy.
sy_start() { # name protocol listen admin backend_port...
  local name=$1 proto=$2 listen=$3 admin=$4; shift 4
  local list; list=$(printf '127.0.0.1:%s, ' "$@"); list=${list%, }
  cat >"$WORK/$name.yaml" <<CFG
proxy: { listen: 127.0.0.1:$listen, protocol: $proto, workers: ${SY_WORKERS:-0} }
admin: { listen: 127.0.0.1:$admin }
backends: { static: [$list] }
health_check: { interval: 1s }
mysql: { users: [ { name: sb, password: sb } ] }
log: { level: warn }
${EXTRA:-}
CFG
  "${SY_BIN:-$BIN}" --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
  SY_PID=$!
  PIDS+=($SY_PID)
  wait_port 127.0.0.1 "$listen"
  for _ in $(seq 100); do
    [[ $(curl -fs "127.0.0.1:$admin/backends" | grep -o '"healthy"' | wc -l) -ge $# ]] && break; sleep 0.1
  done
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# CPU time (clock ticks) the machine spent on niced processes: the other jobs (builds, tests)
# that share the machine run under `nice`, the benchmark does not.
cpu_niced() { awk '/^cpu /{print $3}' /proc/stat; }

# CPU time (clock ticks) of one process.
cpu_of() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }

# Another benchmark on the machine (someone else's sysbench) would halve both: wait up to
# $BUSY_WAIT seconds (default 900) for it to end. Counts the runs that had to wait in
# $WORK/waited.
wait_no_other_sysbench() {
  local waited=0
  while pgrep -x sysbench >/dev/null && (( waited < ${BUSY_WAIT:-900} )); do
    (( waited == 0 )) && echo "another sysbench is running; waiting" >&2
    sleep 5; waited=$((waited + 5))
  done
  (( waited > 0 )) && echo "$waited" >>"$WORK/waited"
  return 0
}

# One sysbench run; appends "workload threads round name qps p95 load1 others cpu" to
# $WORK/rounds.txt: the load average at the start (which counts the benchmark's own threads),
# the CPU that niced jobs on the machine used during the run, in cores (the benchmark runs at
# normal priority, so they mostly get what it leaves), and the CPU time the proxy process `pid` spent
# per query, in µs ("-" without a pid). On a machine where every core is busy, the proxy's CPU
# per query decides its throughput, and it is far less noisy than QPS.
sb_run() { # workload threads round name port [pid]
  local out qps p95 load niced0 others hz pcpu0=0 per=-
  wait_no_other_sysbench
  load=$(cut -d' ' -f1 /proc/loadavg)
  niced0=$(cpu_niced); hz=$(getconf CLK_TCK)
  [[ -n "${6:-}" ]] && pcpu0=$(cpu_of "$6")
  out=$(sysbench "$1" "${SB[@]}" "${SB_RUN_ARGS[@]}" --mysql-port="$5" --threads="$2" --time="$TIME" --report-interval=0 run)
  others=$(awk -v n="$(( $(cpu_niced) - niced0 ))" -v hz="$hz" -v t="$TIME" 'BEGIN {printf "%.2f", n / hz / t}')
  qps=$(sed -n 's/.*queries: *[0-9]* *(\([0-9.]*\) per sec.).*/\1/p' <<<"$out")
  p95=$(sed -n 's/.*95th percentile: *\([0-9.]*\).*/\1/p' <<<"$out")
  if [[ -n "${6:-}" ]]; then
    per=$(awk -v c="$(( $(cpu_of "$6") - pcpu0 ))" -v hz="$hz" \
      -v q="$(sed -n 's/.*queries: *\([0-9]*\) .*/\1/p' <<<"$out")" \
      'BEGIN {printf "%.1f", (q > 0 ? c / hz * 1e6 / q : 0)}')
  fi
  echo "$1 $2 $3 $4 ${qps:-0} ${p95:-0} $load $others $per" | tee -a "$WORK/rounds.txt" >&2
}

# Interleaved throughput: every round runs each workload × thread count against every target,
# the targets' order rotating by one each round, so drift in the machine's load (other jobs,
# the page cache) spreads over all of them. Targets are "name port [pid]" strings (with the
# proxy's pid, its CPU per query is measured).
throughput_rounds() { # "name port"...
  local targets=("$@") n=$# w t r i
  for w in $WORKLOADS; do   # warm the buffer pool and the proxies' pools
    local first=(${targets[0]})
    sysbench "$w" "${SB[@]}" --mysql-port="${first[1]}" --threads=8 --time=3 run >/dev/null
  done
  for r in $(seq "$ROUNDS"); do
    for w in $WORKLOADS; do
      for t in $THREADS_LIST; do
        for i in $(seq 0 $((n - 1))); do
          sb_run "$w" "$t" "$r" ${targets[$(( (i + r) % n ))]}
        done
      done
    done
  done
}

# Markdown tables from $WORK/rounds.txt: per workload × threads, each target's median QPS with
# its min–max, and its ratio to $1 (default haproxy) taken round by round (median, min–max).
throughput_summary() { # [reference target]
  python3 - "$WORK/rounds.txt" "${1:-haproxy}" <<'PY'
import sys, statistics as st
from collections import defaultdict
path, ref = sys.argv[1], sys.argv[2]
runs = defaultdict(dict)           # (workload, threads) -> {(round, name): (qps, p95)}
names, loads, busy = [], [], []
for line in open(path):
    w, t, r, name, qps, p95, load, *rest = line.split()
    builds = rest[:1]
    cpu = float(rest[1]) if len(rest) > 1 and rest[1] != "-" else None
    runs[(w, int(t))][(int(r), name)] = (float(qps), float(p95), cpu)
    loads.append(float(load))
    busy.append(float(builds[0]) if builds else 0.0)
    if name not in names:
        names.append(name)
def span(xs, fmt):
    return f"{fmt.format(min(xs))}–{fmt.format(max(xs))}"
for (w, t), cell in runs.items():
    rounds = sorted({r for r, _ in cell})
    print(f"\n{w}, {t} threads, {len(rounds)} rounds:\n")
    print(f"| path | median QPS | QPS min–max | vs {ref} (median of rounds) | min–max | median p95 ms | proxy CPU µs/query |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        qs = [cell[(r, name)][0] for r in rounds if (r, name) in cell]
        ps = [cell[(r, name)][1] for r in rounds if (r, name) in cell]
        if not qs:
            continue
        ratios = [cell[(r, name)][0] / cell[(r, ref)][0] for r in rounds
                  if (r, name) in cell and cell.get((r, ref), (0,))[0] > 0]
        rat = f"{st.median(ratios):.3f} | {span(ratios, '{:.3f}')}" if ratios else "- | -"
        cs = [cell[(r, name)][2] for r in rounds if (r, name) in cell and cell[(r, name)][2] is not None]
        cpu = f"{st.median(cs):.1f}" if cs else "-"
        print(f"| {name} | {st.median(qs):.0f} | {span(qs, '{:.0f}')} | {rat} | {st.median(ps):.2f} | {cpu} |")
import os
waited = os.path.join(os.path.dirname(path), "waited")
if os.path.exists(waited):
    w = [int(x) for x in open(waited).read().split()]
    print(f"\n{len(w)} runs waited for another benchmark on the machine to end ({sum(w)} s in all).")
if loads:
    print(f"\nLoad average (1 min) at the start of each run: median {st.median(loads):.2f}, "
          f"min {min(loads):.2f}, max {max(loads):.2f} (it counts the benchmark's own threads); "
          f"CPU used by niced jobs (other helpers' builds) during a run: median {st.median(busy):.2f} cores, "
          f"max {max(busy):.2f}.")
PY
}
