#!/usr/bin/env bash
# Stop what setup.sh started (PostgreSQL and Redis of the no-engine exercise).
set -uo pipefail
BASE="${HRNN_EXERCISE_DIR:-/tmp/hrnn-cluster}"
pg_bins=(/usr/lib/postgresql/*/bin)
PG="${pg_bins[-1]}"  # newest installed major version
[[ -d "$BASE/pg/data" ]] && su postgres -c "$PG/pg_ctl -D $BASE/pg/data -m fast -w stop"
[[ -f "$BASE/redis.pid" ]] && kill "$(cat "$BASE/redis.pid")" && rm "$BASE/redis.pid"
echo stopped
