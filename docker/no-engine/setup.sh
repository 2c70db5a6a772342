#!/usr/bin/env bash
# Prepare the no-engine exercise of docker/compose.yaml (see docker/README.md): a Python venv
# built with the same steps as the Dockerfile's runtime stage (CPU variant), plus PostgreSQL and
# Redis on loopback ports, configured like compose's postgres and redis services.
#
# Needs: python3.11, Debian packages postgresql and redis-server, run as root (PostgreSQL runs as
# the `postgres` user). Where the PyTorch CPU index is reachable, set
#   TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# (otherwise pip's own configuration must provide torch==2.13.0+cpu).
# Afterwards: python exercise.py (with $VENV/bin/python), then teardown.sh.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BASE="${HRNN_EXERCISE_DIR:-/tmp/hrnn-cluster}"
VENV="${HRNN_EXERCISE_VENV:-/tmp/hrnn-image-venv}"
pg_bins=(/usr/lib/postgresql/*/bin)
PG="${pg_bins[-1]}"  # newest installed major version

# 1. The image's Python environment, step by step as in docker/airflow/Dockerfile.
if [[ ! -x "$VENV/bin/airflow" ]]; then
  rm -rf "$VENV" && python3.11 -m venv "$VENV"
  P="$VENV/bin/pip"
  $P install --no-cache-dir "pip==26.3"
  $P install --no-cache-dir --no-deps ${TORCH_CPU_INDEX_URL:+--index-url "$TORCH_CPU_INDEX_URL"} "torch==2.13.0+cpu"
  SRC="$(mktemp -d)"; mkdir -p "$SRC/docker"
  cp "$REPO/constraints.txt" "$REPO/pyproject.toml" "$REPO/README.md" "$SRC/"
  cp "$REPO/docker/airflow/requirements-cluster.txt" "$REPO/docker/airflow/constraints-cluster.txt" "$SRC/docker/"
  cp -r "$REPO/hrnn_core" "$SRC/hrnn_core"
  "$VENV/bin/python" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
      "$SRC/pyproject.toml" > "$SRC/requirements-project.txt"
  $P install --no-cache-dir -c "$SRC/constraints.txt" -c "$SRC/docker/constraints-cluster.txt" \
      -r "$SRC/requirements-project.txt" -r "$SRC/docker/requirements-cluster.txt"
  $P install --no-cache-dir --no-deps "$SRC"
  $P check
  rm -rf "$SRC"
fi

# 2. Layout, secrets (the real generator), a DAG that exercises pool and queues.
rm -rf "$BASE" && mkdir -p "$BASE/dags" "$BASE/home" "$BASE/logs"
cp "$HERE/smoke_dag.py" "$BASE/dags/"
bash "$REPO/docker/make-env.sh" "$BASE/env"
set -a
# The env file is generated just above.
# shellcheck source=/dev/null
. "$BASE/env"
set +a

# 3. PostgreSQL on 127.0.0.1:15432: role and database `airflow`, password from the env file.
mkdir -p "$BASE/pg" && touch "$BASE/logs/postgres.log"
printf '%s' "$POSTGRES_PASSWORD" > "$BASE/pg/pw"
chown -R postgres "$BASE/pg" "$BASE/logs/postgres.log"
su postgres -c "$PG/initdb -D $BASE/pg/data -U airflow --pwfile=$BASE/pg/pw --auth-host=scram-sha-256 --auth-local=trust" >/dev/null
rm "$BASE/pg/pw"
su postgres -c "$PG/pg_ctl -D $BASE/pg/data -o '-p 15432 -k $BASE/pg -c listen_addresses=127.0.0.1' -l $BASE/logs/postgres.log -w start"
su postgres -c "$PG/createdb -h $BASE/pg -p 15432 -U airflow airflow"
su postgres -c "$PG/pg_isready -h 127.0.0.1 -p 15432 --username airflow --dbname airflow"

# 4. Redis on 127.0.0.1:16379 with the password, as compose's redis command.
# $REDIS_PASSWORD is expanded by the inner sh from the environment, so it is not written here.
# shellcheck disable=SC2016
setsid sh -c 'exec redis-server --requirepass "$REDIS_PASSWORD" --port 16379 --bind 127.0.0.1 --save "" --appendonly no' \
    > "$BASE/logs/redis.log" 2>&1 < /dev/null &
echo $! > "$BASE/redis.pid"
sleep 1
REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p 16379 ping
echo "ready: $VENV/bin/python $HERE/exercise.py"
