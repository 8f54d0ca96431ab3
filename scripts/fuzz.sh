#!/usr/bin/env bash
# Runs every libFuzzer harness in fuzz/ for SECONDS each (make fuzz: 300; make test: 20).
# Usage: scripts/fuzz.sh BUILD_DIR SECONDS
# Each starts from its seed corpus (fuzz/corpus/<target>, read only) plus what earlier runs
# found (BUILD_DIR/fuzz-corpus/<target>); an input that crashes, leaks, trips a sanitizer or
# breaks a harness's invariant is saved as BUILD_DIR/fuzz-artifacts/<target>-crash-... and
# fails the run.
set -euo pipefail
build=$1
seconds=$2
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$build/fuzz-artifacts"
failed=()
for target in ws_messages_fuzz names_fuzz http_request_fuzz config_fuzz requests_fuzz \
    grpc_items_fuzz bridge_fuzz whep_offer_fuzz jwt_claims_fuzz; do
  found="$build/fuzz-corpus/$target"
  mkdir -p "$found"
  log="$build/fuzz-artifacts/$target.log"
  echo "fuzz: $target for ${seconds}s"
  if "$build/fuzz/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$build/fuzz-artifacts/$target-" \
      "$found" "$root/fuzz/corpus/$target" >"$log" 2>&1; then
    grep -E "^stat::number_of_executed_units|DONE" "$log" | tail -1 | sed "s/^/  /"
  else
    echo "  FAILED: $log"
    grep -E -A25 "ERROR|invariant broken|deadly signal" "$log" | head -40 | sed "s/^/  /"
    failed+=("$target")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: failed: ${failed[*]} (inputs in $build/fuzz-artifacts)"
  exit 1
fi
