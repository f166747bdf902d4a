#!/usr/bin/env bash
# benches/failover_bench.sh — what clients see when a node dies (issue 10): a real 3-node
# MariaDB Galera cluster, 16 writers running sysbench's oltp_read_write transaction (sysbench
# itself crashes when it reconnects; see benches/failover/oltp.rs) + 1,000 idle sessions (each
# with a user variable and a binary prepared statement) + 4 autocommit readers, through switchyard
# and through HAProxy (mode tcp, leastconn, checks every 1 s) in the same run, interleaved round
# by round. 10 s in, one node is killed with SIGKILL; the run goes on 30 s. The harness is
# benches/failover/main.rs (see its header for every figure it reports).
#
# Needs: mariadbd, mariadb-install-db, mariadb, mariadb-backup, galera-4, sysbench, haproxy.
# Usage: benches/failover_bench.sh     (ROUNDS=5 IDLE=1000 THREADS=16 READERS=4 KILL_AT=10
#        AFTER=30 CHECK_AFTER=10 PATHS="switchyard haproxy" by default)
#        SWITCHYARD_BIN=path (default: cargo build --release), KEEP_WORK=1, OUT=file.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

for tool in mariadbd mariadb-backup sysbench haproxy; do
  command -v "$tool" >/dev/null || { echo "failover bench: $tool not found (.ci/run installs it)" >&2; exit 2; }
done
export SWITCHYARD_BIN
SWITCHYARD_BIN=$(bench_bin)
SWITCHYARD_BIN=$(cd "$(dirname "$SWITCHYARD_BIN")" && pwd)/$(basename "$SWITCHYARD_BIN")
export OUT=${OUT:-$PWD/failover-bench-results.md}
cd "$BENCH_ROOT"
cargo bench --quiet --bench failover
echo "summary written to $OUT" >&2
