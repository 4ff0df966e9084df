#!/usr/bin/env bash
# Wall time of a 30-iteration tiny train-cls for thread counts and OpenMP wait policies
# (docs/usage.md "Threads"). Usage: benchmarks/bench_threads.sh [WORKDIR]
set -euo pipefail
W=${1:-/tmp/bana-bench-threads}
mkdir -p "$W" && cd "$W"
[ -d d64 ] || bana synth d64 --images 200 --val 40 --size 64 -q
for mode in "2 ACTIVE" "2 PASSIVE" "1 PASSIVE"; do
  set -- $mode
  rm -rf run
  s=$(date +%s.%N)
  env -u OMP_NUM_THREADS BANA_NUM_THREADS=$1 OMP_WAIT_POLICY=$2 \
    bana train-cls --data d64 --run run --backbone tiny --iterations 30 --batch-size 8 --crop-size 64 -q
  e=$(date +%s.%N)
  echo "threads=$1 OMP_WAIT_POLICY=$2 wall_s=$(echo "$e - $s" | bc) load=$(cut -d' ' -f1 /proc/loadavg)"
done
