#!/usr/bin/env bash
# Test leaderboards of every model on the fixed protocols (issue #4), one `hrnn evaluate` each.
# Default configs (HRNN-meta tuned on ml-100k validation only); torch on one thread.
# Results: bench/results/leaderboard_<dataset>_<protocol>.json (+ .per_event.npz, .png);
# the tables in docs/evaluation/leaderboards.md come from bench/leaderboard_table.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export HRNN__TRAIN__THREADS="${HRNN__TRAIN__THREADS:-1}" HRNN__TRAIN__PROGRESS=false
HRNN=.venv/bin/hrnn
MODELS=hrnn,pop,recent_pop,bpr,fm,gru
run() {  # dataset protocol [params-json]; raw data: ../shared/data (hrnn_core.datasets.shared_raw_dir)
  local out="bench/results/leaderboard_$1_$2.json" extra=()
  [ -n "${3:-}" ] && extra+=(--params "$3")
  echo "== $1 / $2 ${3:-}"
  $HRNN evaluate --dataset "$1" --protocol "$2" --models "$MODELS" --output "$out" "${extra[@]}"
}
only="${1:-all}"
case "$only" in
  all|ml-100k) run ml-100k leave_one_out; run ml-100k temporal ;;&
  all|ml-latest-small) run ml-latest-small temporal ;;&
  # yoochoose: anonymous sessions that repeat items, so seen items stay rankable (PROTOCOLS.md)
  all|yoochoose) run yoochoose temporal '{"exclude_seen": false}' ;;&
  # ml-100k leave_one_out, two more training seeds of the close models, then paired tests on the
  # per-event metrics averaged over the three seeds (bench/seed_mean_test.py)
  all|ml-100k-seeds)
    for seed in 1 2; do
      echo "== ml-100k / leave_one_out, seed $seed"
      $HRNN evaluate --dataset ml-100k --protocol leave_one_out --models hrnn,gru,fm --seed "$seed" \
        --output "bench/results/leaderboard_ml-100k_leave_one_out.seed$seed.json"
    done
    .venv/bin/python bench/seed_mean_test.py bench/results/leaderboard_ml-100k_leave_one_out{,.seed1,.seed2}.json \
      --output bench/results/leaderboard_ml-100k_leave_one_out.seed_mean.json ;;&
  # ml-100k temporal, the same (the one-seed GRU margin there is small: +0.008)
  all|ml-100k-temporal-seeds)
    for seed in 1 2; do
      echo "== ml-100k / temporal, seed $seed"
      $HRNN evaluate --dataset ml-100k --protocol temporal --models hrnn,gru,fm --seed "$seed" \
        --output "bench/results/leaderboard_ml-100k_temporal.seed$seed.json"
    done
    .venv/bin/python bench/seed_mean_test.py bench/results/leaderboard_ml-100k_temporal{,.seed1,.seed2}.json \
      --output bench/results/leaderboard_ml-100k_temporal.seed_mean.json ;;&
  # ml-latest-small temporal, the same
  all|ml-latest-small-seeds)
    for seed in 1 2; do
      echo "== ml-latest-small / temporal, seed $seed"
      $HRNN evaluate --dataset ml-latest-small --protocol temporal --models hrnn,gru,fm --seed "$seed" \
        --output "bench/results/leaderboard_ml-latest-small_temporal.seed$seed.json"
    done
    .venv/bin/python bench/seed_mean_test.py bench/results/leaderboard_ml-latest-small_temporal{,.seed1,.seed2}.json \
      --output bench/results/leaderboard_ml-latest-small_temporal.seed_mean.json ;;&
  # yoochoose temporal, the same for HRNN-meta vs the GRU (the closest pair there)
  all|yoochoose-seeds)
    for seed in 1 2; do
      echo "== yoochoose / temporal, seed $seed"
      $HRNN evaluate --dataset yoochoose --protocol temporal --params '{"exclude_seen": false}' --models hrnn,gru,fm \
        --seed "$seed" --output "bench/results/leaderboard_yoochoose_temporal.seed$seed.json"
    done
    .venv/bin/python bench/seed_mean_test.py bench/results/leaderboard_yoochoose_temporal{,.seed1,.seed2}.json \
      --output bench/results/leaderboard_yoochoose_temporal.seed_mean.json ;;
esac
