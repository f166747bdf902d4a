#!/usr/bin/env bash
# benches/cluster_bench.sh — three switchyard instances sharing one pool through etcd (issue 12).
#
# Per round (each a fresh etcd, fresh instances and a fresh cluster name; the two MariaDB backends
# are shared by all rounds, every session closed between rounds):
#   1. a real etcd, 3 `switchyard` instances A, B, C in `protocol: mysql` over the same 2 MariaDB
#      backends, each with a `cluster` section (lease_ttl $LEASE_TTL, publish_interval $PUBLISH);
#   2. skew: backend 2 is drained through A (a cluster-wide drain), and $N_A idle PyMySQL
#      sessions are opened through A, so all sit on backend 1;
#   3. backend 2 is undrained through A; once every instance has applied the undrain (it reaches
#      B and C through etcd within publish_interval; OPEN_BC=undrain: at once, so B and C still
#      route their first sessions as if backend 2 were drained), $N_BC idle sessions are opened
#      through B and C, alternating. From that moment (t0) the global counts (the sum of `GET /backends`
#      conn_count over the three instances, polled every 50 ms) are watched: the time until all
#      sessions are open and busiest ÷ idlest <= 1.2 first, the worst ratio over the next $WATCH s,
#      and the time from which it stays <= 1.2 for good;
#   4. moves: the sum of `switchyard_migrations_total{result="succeeded"}` over the instances;
#      sessions moved twice: (instance, conn_id) pairs that appear more than once in the
#      instances' "session moved" info logs (target 0); then every session must answer a ping;
#   5. etcd traffic: over a quiet $QUIET s window with the sessions held (nothing changes), the
#      growth of etcd's gRPC byte counters (received + sent) and of handled gRPC calls, divided by
#      the 3 instances and the window (the instances' JSON-gateway requests reach etcd's gRPC
#      server, so they show there; nothing else talks to this etcd).
#
# Needs: etcd, mariadbd + mariadb-install-db + mariadb, python3 with pymysql, curl.
# Usage: benches/cluster_bench.sh   (ROUNDS=3 N_A=300 N_BC=300 LEASE_TTL=3s PUBLISH=500ms
#        QUIET=10 WATCH=10 OPEN_BC=applied by default; OUT=cluster-bench-results.md)
#        SWITCHYARD_BIN=path/to/switchyard benches/cluster_bench.sh
#        KEEP_WORK=1 keeps the servers' and instances' logs (the work directory is printed).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
N_A=${N_A:-300}
N_BC=${N_BC:-300}
LEASE_TTL=${LEASE_TTL:-3s}
PUBLISH=${PUBLISH:-500ms}
QUIET=${QUIET:-10}
WATCH=${WATCH:-10}
OUT=${OUT:-cluster-bench-results.md}
OPEN_BC=${OPEN_BC:-applied}
[[ $OPEN_BC == applied || $OPEN_BC == undrain ]] || { echo "OPEN_BC is applied or undrain" >&2; exit 2; }
BIN=$(bench_bin)
bench_init cluster-bench
PY=/usr/bin/python3
"$PY" -c 'import pymysql' 2>/dev/null || PY=python3
"$PY" -c 'import pymysql' || { echo "python3 pymysql is missing (apt-get install python3-pymysql)" >&2; exit 1; }

DB1=$(free_port); DB2=$(free_port)
echo "== MariaDB on $DB1 and $DB2" >&2
start_db db1 "$DB1" --max-connections=$((2 * (N_A + N_BC) + 200)) --thread-handling=pool-of-threads
start_db db2 "$DB2" --max-connections=$((2 * (N_A + N_BC) + 200)) --thread-handling=pool-of-threads

# A single-member etcd with short raft timers (as testkit/src/etcd.rs starts it); sets ETCD_PID
# and ETCD (the client URL).
start_etcd() { # name
  local c p; c=$(free_port); p=$(free_port)
  etcd --name default --data-dir "$WORK/$1.data" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "default=http://127.0.0.1:$p" \
    --heartbeat-interval=50 --election-timeout=500 >"$WORK/$1.log" 2>&1 &
  ETCD_PID=$!; PIDS+=($ETCD_PID)
  ETCD="http://127.0.0.1:$c"
  for _ in $(seq 300); do
    curl -fs "$ETCD/health" | grep -q '"health":"true"' && return 0; sleep 0.1
  done
  echo "etcd did not become healthy (logs: $WORK)" >&2; KEEP_WORK=1; return 1
}

# A TCP relay in front of etcd that counts the bytes each way (HTTP/JSON as it is on the wire),
# writing "to_etcd from_etcd" to $WORK/$1.count every 100 ms; sets RELAY (the URL the instances
# are given) and RELAY_PID.
cat >"$WORK/relay.py" <<'PY'
import asyncio, sys
listen, target, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
n = [0, 0]
async def pipe(r, w, k):
    try:
        while True:
            b = await r.read(65536)
            if not b:
                break
            n[k] += len(b)
            w.write(b)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def serve(cr, cw):
    try:
        er, ew = await asyncio.open_connection("127.0.0.1", target)
    except Exception:
        cw.close(); return
    await asyncio.gather(pipe(cr, ew, 0), pipe(er, cw, 1))
async def dump():
    while True:
        with open(path + ".tmp", "w") as f:
            f.write(f"{n[0]} {n[1]}\n")
        import os; os.replace(path + ".tmp", path)
        await asyncio.sleep(0.1)
async def main():
    srv = await asyncio.start_server(serve, "127.0.0.1", listen)
    asyncio.create_task(dump())
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
PY
start_relay() { # name
  local l; l=$(free_port)
  python3 "$WORK/relay.py" "$l" "${ETCD##*:}" "$WORK/$1.count" &
  RELAY_PID=$!; PIDS+=($RELAY_PID)
  wait_port 127.0.0.1 "$l"
  RELAY="http://127.0.0.1:$l"
}

# One clustered instance (info logs, for the "session moved" lines); sets SY_PID.
start_instance() { # name id cluster listen admin
  cat >"$WORK/$1.yaml" <<CFG
proxy: { listen: 127.0.0.1:$4, protocol: mysql, workers: ${SY_WORKERS:-0} }
admin: { listen: 127.0.0.1:$5 }
backends: { static: [127.0.0.1:$DB1, 127.0.0.1:$DB2] }
health_check: { interval: 1s }
mysql: { users: [ { name: sb, password: sb } ] }
log: { level: info }
cluster: { etcd: { endpoints: [$RELAY] }, name: $3, instance_id: $2, lease_ttl: $LEASE_TTL, publish_interval: $PUBLISH }
CFG
  "$BIN" --config "$WORK/$1.yaml" >"$WORK/$1.log" 2>&1 &
  SY_PID=$!; PIDS+=($SY_PID)
  wait_port 127.0.0.1 "$4"
  for _ in $(seq 100); do
    [[ $(curl -fs "127.0.0.1:$5/backends" | grep -o '"healthy"' | wc -l) -ge 2 ]] && break; sleep 0.1
  done
}

# The skew, the watch, the moves' check and the quiet window: prints one JSON line.
cat >"$WORK/skew.py" <<'PY'
import json, re, sys, threading, time, urllib.request
import pymysql
cfg = json.loads(sys.argv[1])
db1, db2 = cfg["db1"], cfg["db2"]
inst = cfg["instances"]          # [{"name","port","admin","log"}], A first
etcd = cfg["etcd"]

def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()
def post(url):
    req = urllib.request.Request(url, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()
def counts():
    g = {db1: 0, db2: 0}
    for i in inst:
        for b in json.loads(get(f"http://127.0.0.1:{i['admin']}/backends")):
            g[b["addr"]] = g.get(b["addr"], 0) + b["conn_count"]
    return g
def metric(text, name, labels=None):
    tot = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, val = line.rpartition(" ")
        if labels and labels not in key:
            continue
        if key == name or key.startswith(name + "{"):
            tot += float(val)
    return tot
def connect(i):
    return pymysql.connect(host="127.0.0.1", port=i["port"], user="sb", password="sb", autocommit=True)
def wait_until(cond, limit, what):
    end = time.time() + limit
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")

A, B, C = inst
# All three see each other.
for i in inst:
    wait_until(lambda: len(json.loads(get(f"http://127.0.0.1:{i['admin']}/cluster")).get("instances", [])) == 3,
               30, f"{i['name']} to see 3 instances")
# Drain backend 2 through A; B and C must apply it before A's sessions open (they never route
# there, but the rounds should start from one state everywhere).
post(f"http://127.0.0.1:{A['admin']}/backends/{db2}/drain")
def drained_everywhere(flag):
    for i in inst:
        for b in json.loads(get(f"http://127.0.0.1:{i['admin']}/backends")):
            if b["addr"] == db2 and b.get("drained") != flag:
                return False
    return True
wait_until(lambda: drained_everywhere(True), 10, "the drain to reach B and C")
sessions = [(A["name"], connect(A)) for _ in range(cfg["n_a"])]
g = counts()
assert g[db2] == 0 and g[db1] == cfg["n_a"], g

# Undrain, and at once open the B/C sessions while a thread watches the global counts.
total = cfg["n_a"] + cfg["n_bc"]
samples = []                      # (seconds since t0, count db1, count db2)
stop = threading.Event()
def watch():
    while not stop.is_set():
        try:
            g = counts()
            samples.append((time.time() - t0, g[db1], g[db2]))
        except Exception as e:     # an admin call timing out is a gap, not the end
            print(f"poll failed: {e}", file=sys.stderr)
        time.sleep(0.05)
t0 = time.time()
post(f"http://127.0.0.1:{A['admin']}/backends/{db2}/undrain")
applied = None
if cfg["open_bc"] == "applied":  # B and C open only once every instance routes to backend 2 again
    wait_until(lambda: drained_everywhere(False), 10, "the undrain to reach B and C")
    applied = time.time() - t0
    t0 = time.time()
w = threading.Thread(target=watch); w.start()
bc = [B, C]
for k in range(cfg["n_bc"]):
    i = bc[k % 2]
    sessions.append((i["name"], connect(i)))
opened = time.time() - t0
# Watch until converged (all open, ratio <= 1.2) and then WATCH seconds more.
conv = None
end = time.time() + 60
while time.time() < end:
    done = [s for s in samples if s[1] + s[2] == total and min(s[1], s[2]) > 0
            and max(s[1], s[2]) / min(s[1], s[2]) <= 1.2]
    if done:
        conv = done[0][0]
        break
    time.sleep(0.05)
if conv is not None:
    time.sleep(cfg["watch"])
stop.set(); w.join()
after = [s for s in samples if conv is not None and s[0] >= conv]
# Settled: from this sample on, every sample had all sessions and busiest ÷ idlest <= 1.2.
settled = None
for s in reversed(samples):
    if s[1] + s[2] == total and min(s[1], s[2]) > 0 and max(s[1], s[2]) / min(s[1], s[2]) <= 1.2:
        settled = s[0]
    else:
        break
if settled is not None and settled == samples[-1][0]:
    settled = None                # even only at the very last sample: not shown to stay
worst_after = max((max(a, b) / max(min(a, b), 1) for _, a, b in after), default=None)
final = counts()

# Moves and sessions moved twice.
moves = failed = 0.0
for i in inst:
    m = get(f"http://127.0.0.1:{i['admin']}/metrics")
    moves += metric(m, "switchyard_migrations_total", 'result="succeeded"')
    failed += metric(m, "switchyard_migrations_total", 'result="failed"')
twice = 0
moved_lines = 0
per_instance = {}
for i in inst:
    seen = {}
    for line in open(i["log"], errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if "session moved" in line:
            mm = re.search(r"conn_id=(\d+)", line)
            if mm:
                seen[mm.group(1)] = seen.get(mm.group(1), 0) + 1
                moved_lines += 1
    twice += sum(1 for v in seen.values() if v > 1)
    per_instance[i["name"]] = sum(seen.values())

# The quiet window: sessions held, nothing changes; etcd's own counters.
time.sleep(2)
def etcd_counters():
    m = get(f"{etcd}/metrics")
    return (metric(m, "etcd_network_client_grpc_received_bytes_total") + metric(m, "etcd_network_client_grpc_sent_bytes_total"),
            metric(m, "grpc_server_handled_total"))
def wire():
    up, down = open(cfg["relay_count"]).read().split()
    return int(up) + int(down)
b0, r0 = etcd_counters(); w0 = wire(); q0 = time.time()
time.sleep(cfg["quiet"])
b1, r1 = etcd_counters(); w1 = wire(); q = time.time() - q0
# Every session still answers.
ok = 0
for _, s in sessions:
    try:
        s.ping(reconnect=False); ok += 1
    except Exception:
        pass
for _, s in sessions:
    try:
        s.close()
    except Exception:
        pass
print(json.dumps({
    "undrain_applied_s": None if applied is None else round(applied, 2), "opened_s": round(opened, 2), "converged_s": None if conv is None else round(conv, 2),
    "settled_s": None if settled is None else round(settled, 2),
    "worst_ratio_after": None if worst_after is None else round(worst_after, 3),
    "final": [final[db1], final[db2]], "moves": int(moves), "failed": int(failed),
    "moved_log_lines": moved_lines, "moved_per_instance": per_instance, "moved_twice": twice,
    "etcd_wire_bytes_per_inst_s": round((w1 - w0) / 3 / q, 1),
    "etcd_grpc_bytes_per_inst_s": round((b1 - b0) / 3 / q, 1), "etcd_calls_per_inst_s": round((r1 - r0) / 3 / q, 2),
    "pings_ok": ok, "sessions": len(sessions),
}))
PY

echo "round opened_s converged_s worst_ratio_after final moves failed moved_twice etcd_B/s etcd_calls/s pings" >&2
: >"$WORK/rounds.jsonl"
for r in $(seq "$ROUNDS"); do
  echo "== round $r: etcd, instances A B C" >&2
  start_etcd "etcd-$r"
  start_relay "relay-$r"
  INST=()
  for n in A B C; do
    l=$(free_port); a=$(free_port)
    start_instance "sy-$r-$n" "$n" "bench$r" "$l" "$a"
    INST+=("{\"name\":\"$n\",\"port\":$l,\"admin\":$a,\"log\":\"$WORK/sy-$r-$n.log\",\"pid\":$SY_PID}")
  done
  CFG=$(printf '{"db1":"127.0.0.1:%s","db2":"127.0.0.1:%s","etcd":"%s","relay_count":"%s","n_a":%s,"n_bc":%s,"watch":%s,"quiet":%s,"open_bc":"%s","instances":[%s]}' \
    "$DB1" "$DB2" "$ETCD" "$WORK/relay-$r.count" "$N_A" "$N_BC" "$WATCH" "$QUIET" "$OPEN_BC" "$(IFS=,; echo "${INST[*]}")")
  "$PY" "$WORK/skew.py" "$CFG" | tee -a "$WORK/rounds.jsonl" >&2
  # Fresh setup next round: stop this round's instances and etcd.
  for p in $(python3 -c 'import json,sys; print(" ".join(str(i["pid"]) for i in json.loads(sys.argv[1])["instances"]))' "$CFG") "$ETCD_PID" "$RELAY_PID"; do
    kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
  done
  sleep 2   # let both servers close the sessions
done

python3 - "$WORK/rounds.jsonl" "$N_A" "$N_BC" "$LEASE_TTL" "$PUBLISH" "$QUIET" "$(nproc)" "$OPEN_BC" "$WATCH" <<'PY' | tee "$OUT"
import json, sys, statistics as st, datetime
path, n_a, n_bc, ttl, pub, quiet, cores, open_bc, watch = sys.argv[1:]
rs = [json.loads(l) for l in open(path) if l.strip()]
def med(k):
    xs = [r[k] for r in rs if r[k] is not None]
    return (st.median(xs), min(xs), max(xs)) if xs else None
def fmt(k, unit="", nd=2):
    m = med(k)
    return "-" if m is None else f"{m[0]:.{nd}f}{unit} ({m[1]:.{nd}f}–{m[2]:.{nd}f})"
print(f"### Results ({datetime.date.today()}, {cores} cores)\n")
print(f"3 switchyard instances (`protocol: mysql`, `cluster` with lease_ttl {ttl}, publish_interval {pub}), "
      f"2 MariaDB backends, one etcd; {n_a} idle PyMySQL sessions through A while backend 2 is drained, "
      f"then backend 2 undrained and {n_bc} more opened through B and C "
      f"({'once every instance applied the undrain' if open_bc == 'applied' else 'at once, before B and C applied the undrain'}); {len(rs)} rounds, each a fresh "
      f"etcd and fresh instances. Median (min–max):\n")
print("| round | undrain applied everywhere after s | B/C sessions opened in s | until busiest ÷ idlest ≤ 1.2 first, s | worst ratio afterwards | until ≤ 1.2 for good, s | final (b1, b2) | moves | failed moves | sessions moved twice | etcd bytes on the wire / instance / s | etcd gRPC bytes / instance / s | etcd calls / instance / s | sessions answering a ping |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n, r in enumerate(rs, 1):
    print(f"| {n} | {r['undrain_applied_s'] if r['undrain_applied_s'] is not None else '-'} | {r['opened_s']} | {r['converged_s']} | {r['worst_ratio_after']} | {r['settled_s']} | {r['final'][0]}, {r['final'][1]} | {r['moves']} | {r['failed']} | "
          f"**{r['moved_twice']}** | {r['etcd_wire_bytes_per_inst_s']} | {r['etcd_grpc_bytes_per_inst_s']} | {r['etcd_calls_per_inst_s']} | {r['pings_ok']}/{r['sessions']} |")
print()
print(f"Time from the first B/C session ({'opened once the undrain was applied everywhere' if open_bc == 'applied' else 'opened with the undrain'}) until the global pool is even (≤ 1.2, all sessions open): first **{fmt('converged_s', ' s')}**, "
      f"for good (every later sample over the next {watch} s) **{fmt('settled_s', ' s')}**; "
      f"moves {fmt('moves', '', 0)}; sessions moved twice: **{sum(r['moved_twice'] for r in rs)}** in all; "
      f"extra etcd traffic per instance over a quiet {quiet} s window (sessions held, nothing changing): "
      f"**{fmt('etcd_wire_bytes_per_inst_s', ' B/s', 0)}** on the wire (HTTP/JSON both ways, counted by a relay in front of etcd), "
      f"{fmt('etcd_grpc_bytes_per_inst_s', ' B/s', 0)} as etcd's gRPC byte counters see it, {fmt('etcd_calls_per_inst_s', ' calls/s')} (gRPC calls handled).")
PY
