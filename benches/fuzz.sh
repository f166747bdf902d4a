#!/usr/bin/env bash
# benches/fuzz.sh — fuzz every cargo-fuzz target (fuzz/fuzz_targets/) for N minutes each, one
# after the other, growing fuzz/corpus/<target>/. See docs/fuzzing.md.
#
# Needs: the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Usage: benches/fuzz.sh [MINUTES] [TARGET...]     (default: 5 minutes, every target)
#        CMIN=1       minimizes each corpus afterwards (`cargo fuzz cmin`); do this before a commit.
#        SANITIZER=address  builds with AddressSanitizer (default none: the code under test is safe
#                     Rust, and the fuzzer looks for panics and broken invariants, ~2x faster).
#        KEEP_GOING=1 keeps fuzzing past crashes (libFuzzer's -fork=1 -ignore_crashes=1), writing
#                     each to fuzz/artifacts/<target>/: for a target with a known, unfixed crash.
#        JOBS=2       runs that many fuzzing processes per target (default 1: the CI machine has 2
#                     cores shared with other work).
# Exits non-zero when any target found a crash or a hang; the input is in fuzz/artifacts/<target>/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MINUTES=${1:-5}
shift || true
SANITIZER=${SANITIZER:-none}
JOBS=${JOBS:-1}
cd "$ROOT/fuzz"
if (($# == 0)); then
  set -- $(cargo +nightly fuzz list)
fi

# (cargo fuzz build takes one target or none: build them all)
nice cargo +nightly fuzz build -s "$SANITIZER" 2>&1 | tail -n 1
failed=()
summary=()
for t in "$@"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/fuzz.log"
  echo "fuzz: $t for $MINUTES min"
  # -timeout: an input running over 10 s is a hang; -rss_limit_mb: room for 16 MiB packets
  parallel=()
  if ((JOBS > 1)); then parallel=(-jobs="$JOBS" -workers="$JOBS"); fi
  if [[ ${KEEP_GOING:-0} == 1 ]]; then parallel=(-fork="$JOBS" -ignore_crashes=1 -ignore_timeouts=1); fi
  if nice cargo +nightly fuzz run -s "$SANITIZER" "$t" "corpus/$t" -- \
    -max_total_time=$((MINUTES * 60)) -timeout=10 -rss_limit_mb=4096 \
    "${parallel[@]}" -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
  fi
  # with -jobs the output goes to fuzz-N.log in the working directory
  stats=$({ cat "$log"; cat fuzz-*.log 2>/dev/null || true; } |
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' |
    tr -s ' ' | sed 's/stat:://' | paste -sd ' ' - || true)
  # fork mode (KEEP_GOING) prints no final stats: its last progress line instead
  stats=${stats:-$(grep -E 'exec/s' "$log" | tail -n 1 || true)}
  rm -f fuzz-*.log
  summary+=("$t: $status; corpus $(ls "corpus/$t" | wc -l) files, $(du -sb "corpus/$t" | cut -f1) bytes; $stats")
  if [[ $status == FAILED ]]; then
    grep -E 'panicked at|ERROR: libFuzzer|Test unit written|SUMMARY' "$log" | head -n 5 || true
  fi
done

if [[ ${CMIN:-0} == 1 ]]; then
  for t in "$@"; do
    echo "fuzz: minimizing corpus/$t"
    nice cargo +nightly fuzz cmin -s "$SANITIZER" "$t" "corpus/$t" >/dev/null 2>&1
  done
fi

printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "fuzz: crashes or hangs in: ${failed[*]} (inputs in fuzz/artifacts/<target>/; logs there too)"
  exit 1
fi
