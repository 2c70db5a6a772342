"""Airflow on this machine, the embedded default: sqlite metadata DB in the data dir.

Used by ``hrnn demo`` (runs the DAGs with ``airflow dags test``) and ``hrnn airflow`` (the UI:
api-server, scheduler, dag-processor and triggerer, each in its own process group, bound to
127.0.0.1; stopping it stops every process it started).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hrnn_core.config import REPO_ROOT, Config
from hrnn_core.errors import HrnnError
from hrnn_core.procs import run_group, stop_tree

POOL = "hrnn_warehouse"  # single writer of the DuckDB file (see dags/)


class AirflowError(HrnnError):
    """An Airflow command failed."""


def airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def airflow_home(cfg: Config) -> Path:
    return cfg.paths.airflow_home


def env(cfg: Config, port: int = 8080) -> dict[str, str]:
    """Environment for Airflow commands: AIRFLOW_HOME in the data dir, this repo's DAGs, loopback."""
    out = dict(os.environ)
    out.update(
        AIRFLOW_HOME=str(airflow_home(cfg)),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO_ROOT / "plugins"),  # the retrain reports in the UI
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        HRNN_DATA_DIR=str(cfg.paths.data_dir),
    )
    out.setdefault("BENTOML_HOME", str(cfg.paths.bentoml_home))
    if cfg.paths.warehouse:
        out["HRNN__PATHS__WAREHOUSE"] = str(cfg.paths.warehouse)
    return out


def run(cfg: Config, *args: str, timeout: float = 3600, check: bool = True) -> subprocess.CompletedProcess:
    proc = run_group([airflow_bin(), *args], env=env(cfg), timeout=timeout)  # an interrupted demo stops it too
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise AirflowError(f"`airflow {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}")
    return proc


def setup(cfg: Config) -> None:
    """Create/upgrade the sqlite metadata DB and the single-writer pool (idempotent)."""
    airflow_home(cfg).mkdir(parents=True, exist_ok=True)
    run(cfg, "db", "migrate", timeout=600)
    run(cfg, "pools", "set", POOL, "1", "single writer of the DuckDB warehouse", timeout=120)


def dags_test(cfg: Config, dag_id: str, logical_date: str, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run one DAG run in-process (``airflow dags test``); its log goes to ``log``."""
    proc = run(cfg, "dags", "test", dag_id, logical_date, check=False, timeout=3600)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        failed = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Error" in ln or "error" in ln][-8:]
        raise AirflowError(f"DAG {dag_id} failed for {logical_date} (full log: {log}):\n" + "\n".join(failed))
    return proc


def serve_ui(cfg: Config, port: int = 8080) -> None:
    """Start the UI processes in their own process groups; stop them all on Ctrl-C/SIGTERM."""
    setup(cfg)
    e = env(cfg, port)
    logs = airflow_home(cfg) / "logs-ui"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        out = open(logs / f"{component}.log", "ab")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([airflow_bin(), component], env=e, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    def stop(*_args) -> None:
        for p in procs:
            stop_tree(p, grace=15.0)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    passwords = airflow_home(cfg) / "simple_auth_manager_passwords.json.generated"
    for _ in range(120):
        if passwords.exists():
            break
        time.sleep(0.5)
    login = json.loads(passwords.read_text()) if passwords.exists() else {}
    print(f"Airflow UI: http://127.0.0.1:{port}  (logs: {logs})")
    for user, password in login.items():
        print(f"login: {user} / {password}")
    print("Ctrl-C stops the api-server, scheduler, dag-processor and triggerer.")
    while True:
        for p in procs:
            if p.poll() is not None:
                print(f"an Airflow process exited ({p.args[1]}, code {p.returncode}); stopping the others")
                stop()
        time.sleep(1)
