#!/usr/bin/env bash
# Reproduce every published setup in workloads/ on the simulator (5 seeds each), then gather the
# committed summaries into results/. Resumable: finished combinations are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${KVBENCH_RESULTS:-results/full}
start=$(date +%s)
for spec in workloads/rlt-*.toml workloads/arc-*.toml workloads/mooncake-*.toml; do
  [ -e "$spec" ] || continue
  name=$(basename "$spec" .toml)
  t0=$(date +%s)
  kvbench run "$spec" -o "$out/$name" --jobs "${KVBENCH_JOBS:-2}"
  cp "$out/$name/summary.csv" "results/$name.csv"
  echo "$name: $(( $(date +%s) - t0 )) s"
done
echo "all specs: $(( $(date +%s) - start )) s"
