#!/usr/bin/env bash
# Runs every benchmark in sequence (about 20 minutes on a 2-core machine; run it on an otherwise idle machine) and collects the
# BENCH_JSON lines at the end (what the README's performance table is filled from); each
# benchmark also writes dist/benchmarks/NAME.json.
#
#   benchmarks/run_all.sh            # from anywhere; output also saved to dist/benchmarks/results.txt
#
# Each benchmark runs through benchmarks/run (which provides the locked dependencies and
# redis-server); Debian wrk is installed on first use if missing. Builds the PEXes it measures with ./pants package (shared with other
# Pants users of the checkout: it waits and retries while another invocation runs).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p dist/benchmarks
out=dist/benchmarks/results.txt
: > "$out"
failed=()
for b in artifacts cold_start enqueue poll dispatch_latency load_mixed crash_recovery admission auth_flood render sdk_imports provision chaos; do
  echo "=== benchmarks.$b ===" | tee -a "$out"
  # artifacts builds the three PEXes; cold_start also builds its eager PEX (image-job: no-op).
  extra=()
  [ "$b" = dispatch_latency ] && extra=(--no-build)
  benchmarks/run "$b" "${extra[@]}" 2>&1 | tee -a "$out"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("$b")
done
echo
echo "=== BENCH_JSON lines ==="
grep '^BENCH_JSON ' "$out"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
