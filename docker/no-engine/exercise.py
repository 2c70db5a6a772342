"""Run docker/compose.yaml's Airflow services as local processes, without a Docker engine.

Each service starts with the compose file's own command and environment (the `x-airflow-common`
block, secrets interpolated from a file made by docker/make-env.sh) plus the Dockerfile's ENV, in
a venv built with the Dockerfile's install steps (setup.sh). What a container would provide is
mapped to this machine: service hosts -> 127.0.0.1 with non-default ports (PostgreSQL 15432,
Redis 16379, api-server 18080), image paths (/data, /bentoml, /opt/airflow, /opt/hrnn/...) ->
folders under $HRNN_EXERCISE_DIR. Every server binds 127.0.0.1.

It then: runs airflow-init's script, starts api-server, scheduler, dag-processor, triggerer, the
CPU worker and the GPU-queue worker (here without a GPU), waits for docker/airflow/healthcheck.py
to report each healthy, checks the pool over the REST API, triggers smoke_dag.py (a
warehouse-writing task in pool hrnn_warehouse, a task on queue gpu), reports where each task
ran, stops every process group it started, and writes results.json.

This exercises the configuration (executor, broker, DB, execution API, JWT, pool, queues,
health checks, HRNN paths) with the image's packages; it is not a container test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BASE = Path(os.environ.get("HRNN_EXERCISE_DIR", "/tmp/hrnn-cluster"))
VENV_BIN = Path(sys.executable).parent
API = "http://127.0.0.1:18080"
DAG_ID = "hrnn_cluster_smoke"

COMPOSE = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
DOCKERFILE = (REPO / "docker/airflow/Dockerfile").read_text()
SECRETS = dict(
    line.split("=", 1) for line in (BASE / "env").read_text().splitlines() if line and not line.startswith("#")
)
PATHS = [
    ("/opt/hrnn/sql", str(REPO / "sql")),
    ("/opt/hrnn/dags", str(BASE / "dags")),
    ("/opt/hrnn/healthcheck.py", str(REPO / "docker/airflow/healthcheck.py")),
    ("/opt/airflow", str(BASE / "airflow")),
    ("/data", str(BASE / "data")),
    ("/bentoml", str(BASE / "bentoml")),
]
HOSTS = [("@postgres:5432", "@127.0.0.1:15432"), ("@redis:6379", "@127.0.0.1:16379"),
         ("http://airflow-apiserver:8080", API)]
LOCAL_PORTS = {  # loopback binds, ports away from the defaults other work on this machine uses
    "AIRFLOW__API__HOST": "127.0.0.1",
    "AIRFLOW__API__PORT": "18080",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "18974",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "18795",
}


def interpolate(value: str) -> str:
    def one(m: re.Match) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3)
        if name in SECRETS:
            return SECRETS[name]
        if op == ":-":
            return default
        raise KeyError(f"{name} is required by compose.yaml and missing from {BASE / 'env'}")

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:[-?])([^}]*))?\}", one, value).replace("$$", "$")


def mapped(value: str) -> str:
    for old, new in HOSTS + PATHS:
        value = value.replace(old, new)
    return value


def image_env() -> dict[str, str]:
    base_stage = DOCKERFILE.split("FROM base AS torch-cpu")[0]
    env_block = base_stage.split("\nENV ", 1)[1].split("\nRUN ", 1)[0]
    return dict(re.findall(r"([A-Z][A-Z0-9_]+)=(\S+)", env_block))


def env_for(service: str, extra: dict | None = None) -> dict[str, str]:
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(BASE / "home"), "LANG": "C.UTF-8"}
    env.update({k: mapped(v) for k, v in image_env().items()})
    env.update({k: mapped(interpolate(str(v))) for k, v in COMPOSE["services"][service]["environment"].items()})
    env.update(LOCAL_PORTS)
    env.update(extra or {})
    return env


def argv_for(service: str) -> list[str]:
    argv = [mapped(interpolate(str(c))) for c in COMPOSE["services"][service]["command"]]
    return ["18080" if a == "8080" else a for a in argv]


PROCS: dict[str, subprocess.Popen] = {}


def start(service: str, extra_env: dict | None = None, extra_args: tuple = ()) -> None:
    argv = argv_for(service) + list(extra_args)
    log = open(BASE / "logs" / f"{service}.log", "w")  # noqa: SIM115 (lives as long as the process)
    PROCS[service] = subprocess.Popen(argv, env=env_for(service, extra_env), stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True, cwd=BASE)
    print(f"started {service} (pid {PROCS[service].pid}): {' '.join(argv)}", flush=True)


def wait_healthy(service: str, component: str, timeout: float = 240.0) -> bool:
    t0, out = time.time(), ""
    while time.time() - t0 < timeout:
        done = subprocess.run([str(VENV_BIN / "python"), str(REPO / "docker/airflow/healthcheck.py"), component],
                              env=env_for(service), capture_output=True, text=True, check=False)
        if done.returncode == 0:
            print(f"healthy: {service} after {time.time() - t0:.0f} s", flush=True)
            return True
        out = done.stdout + done.stderr
        if PROCS[service].poll() is not None:
            print(f"exited: {service} rc={PROCS[service].returncode}", flush=True)
            return False
        time.sleep(5)
    print(f"unhealthy: {service}: {out}", flush=True)
    return False


def api(method: str, path: str, token: str | None = None, body: dict | None = None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(API + path, method=method, headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback)
        return json.loads(resp.read() or b"null")


def stop_all(results: dict) -> None:
    for proc in PROCS.values():
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 60
    for service, proc in PROCS.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        results.setdefault("exit_codes_after_sigterm", {})[service] = proc.returncode


def main() -> int:
    (BASE / "logs").mkdir(parents=True, exist_ok=True)
    for d in ("airflow/logs", "airflow/auth", "data/landing", "bentoml"):  # what the image creates
        (BASE / d).mkdir(parents=True, exist_ok=True)
    results: dict = {}
    try:
        init = subprocess.run(argv_for("airflow-init"), env=env_for("airflow-init"), capture_output=True,
                              text=True, cwd=BASE, check=False)
        (BASE / "logs" / "airflow-init.log").write_text(init.stdout + init.stderr)
        results["airflow_init_rc"] = init.returncode
        if init.returncode:
            print(init.stdout[-2000:], init.stderr[-4000:])
            return 1
        for service in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
            start(service)
        start("airflow-worker", {"HRNN_SMOKE_WORKER": "cpu-default",
                                 "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "18793"})
        # In containers each worker has its own hostname; here both share one, so name the node.
        start("airflow-worker-gpu", {"HRNN_SMOKE_WORKER": "gpu-queue",
                                     "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "18794"},
              ("--celery-hostname", "gpu@%h"))
        results["healthy"] = {
            s: wait_healthy(s, c) for s, c in (
                ("airflow-apiserver", "api-server"), ("airflow-scheduler", "scheduler"),
                ("airflow-dag-processor", "dag-processor"), ("airflow-triggerer", "triggerer"),
                ("airflow-worker", "worker"))
        }
        password = json.loads((BASE / "airflow/auth/passwords.json").read_text())["admin"]
        token = api("POST", "/auth/token", body={"username": "admin", "password": password})["access_token"]
        pool = api("GET", "/api/v2/pools/hrnn_warehouse", token)
        results["pool"] = {"name": pool["name"], "slots": pool["slots"]}
        t0 = time.time()
        while True:  # the dag-processor parses the DAG folder
            try:
                api("GET", f"/api/v2/dags/{DAG_ID}", token)
                break
            except OSError:
                if time.time() - t0 > 180:
                    raise
                time.sleep(5)
        api("PATCH", f"/api/v2/dags/{DAG_ID}", token, {"is_paused": False})
        run_id = api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", token, {"logical_date": None})["dag_run_id"]
        t0 = time.time()
        while True:
            state = api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", token)["state"]
            if state in ("success", "failed") or time.time() - t0 > 300:
                break
            time.sleep(5)
        results["dag_run"] = {"state": state, "seconds": round(time.time() - t0)}
        results["tasks"] = {}
        tis = api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", token)["task_instances"]
        for ti in tis:
            entry = {k: ti.get(k) for k in ("state", "queue", "pool")}
            xcom_path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/xcomEntries/return_value"
            try:
                entry["returned"] = api("GET", xcom_path, token)["value"]
            except OSError as exc:
                entry["returned"] = f"unavailable: {exc}"
            results["tasks"][ti["task_id"]] = entry
    finally:
        stop_all(results)
        print(json.dumps(results, indent=1, default=str))
        (BASE / "results.json").write_text(json.dumps(results, indent=1, default=str))
    ok = (all(results.get("healthy", {}).values()) and results.get("pool", {}).get("slots") == 1
          and results.get("dag_run", {}).get("state") == "success")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
