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
run() {  # dataset protocol [params-json] [raw folder]
  local out="bench/results/leaderboard_$1_$2.json" extra=()
  [ -n "${3:-}" ] && extra+=(--params "$3")
  [ -n "${4:-}" ] && extra+=(--path "$4")
  echo "== $1 / $2 ${3:-}"
  $HRNN evaluate --dataset "$1" --protocol "$2" --models "$MODELS" --output "$out" "${extra[@]}"
}
only="${1:-all}"
case "$only" in
  all|ml-100k) run ml-100k leave_one_out; run ml-100k temporal ;;&
  all|ml-latest-small) run ml-latest-small temporal ;;&
  # yoochoose: anonymous sessions that repeat items, so seen items stay rankable (PROTOCOLS.md)
  all|yoochoose) run yoochoose temporal '{"exclude_seen": false}' ../shared/data/yoochoose-100k-sessionrec ;;
esac
