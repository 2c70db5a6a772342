"""DAG integrity (DagBag, no heavy top-level imports) and each DAG end to end with `airflow dags test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
HEAVY = ("torch", "pandas", "great_expectations", "duckdb", "bentoml", "pyarrow")


def airflow_env(home: Path, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HRNN"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        HRNN_DATA_DIR=str(data_dir),
    )
    return env


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    """A fresh AIRFLOW_HOME with a migrated sqlite metadata DB (shared by this module)."""
    home = tmp_path_factory.mktemp("airflow")
    env = airflow_env(home, home / "unused")
    proc = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return home


def test_dagbag_imports_cleanly_without_heavy_modules(tmp_path):
    code = (
        "import sys, json\n"
        "from airflow.models import DagBag\n"
        f"before = set(sys.modules)\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        f"heavy = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {HEAVY!r})\n"
        "dags = {d: {'tags': sorted(bag.dags[d].tags), 'retries': {t.task_id: t.retries for t in bag.dags[d].tasks},"
        " 'catchup': bag.dags[d].catchup,"
        " 'roots': sorted(t.task_id for t in bag.dags[d].roots)} for d in bag.dags}\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'heavy': heavy, 'dags': dags}))\n"
    )
    env = airflow_env(tmp_path, tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errors"] == {}
    assert out["heavy"] == [], f"DAG files import heavy modules at parse time: {out['heavy']}"
    assert "hrnn_ingest" in out["dags"]
    for dag_id, info in out["dags"].items():
        assert "hrnn" in info["tags"], dag_id
        assert info["catchup"] is False, dag_id  # unpausing never queues a run per past interval; backfills are explicit
    # Bad settings fail first: the retrain's config check is its only root (before the snapshot),
    # and a bad config is not transient (no retries).
    assert out["dags"]["hrnn_retrain"]["roots"] == ["check_config"]
    assert out["dags"]["hrnn_retrain"]["retries"]["check_config"] == 0
    assert out["dags"]["hrnn_ingest"]["roots"] == ["find_new_files"]  # loads the config first
    assert out["dags"]["hrnn_batch_recommendations"]["roots"] == ["champion", "shards"]


@pytest.mark.parametrize("toml, names", [
    ('[retrain]\nmodels = ["hrnn", "bert4rec"]\n', ["retrain config: models", "unknown model 'bert4rec'"]),
    ('[retrain]\nmodels = ["hrnn", "pop", "pop"]\n', ["pop", "more than once"]),
    ('[retrain]\ngate_metric = "ndcg@11"\n', ["gate_metric 'ndcg@11'"]),
    ('[retrain]\ngate_metric = "coverage@10"\n', ["gate_metric 'coverage@10'"]),  # no per-event values
    ('[train]\ndevice = "gpu"\n', ["train config: device", "'gpu'"]),
    ('[retrain]\nmodels = ["pop"]\n', ["must include hrnn"]),  # load_config's own checks
    ('[retrain]\nmodles = ["hrnn"]\n', ["modles"]),
    ('[retrain]\ntest_fraction = 1.5\n', ["test_fraction"]),
])
def test_retrain_config_check_names_the_bad_setting(tmp_path, toml, names):
    """What the retrain DAG's first task (check_config) runs, without Airflow."""
    from hrnn_core.config import load_config
    from hrnn_core.errors import HrnnError
    from hrnn_core.evaluation.checks import check_retrain_config

    conf = tmp_path / "hrnn.toml"
    conf.write_text(toml)
    with pytest.raises(HrnnError) as info:
        check_retrain_config(load_config(conf, environ={}))
    for name in names:
        assert name in str(info.value)


def test_retrain_config_check_accepts_the_defaults_and_a_gpu_name_anywhere():
    from hrnn_core.config import load_config
    from hrnn_core.evaluation.checks import check_retrain_config

    check_retrain_config(load_config(environ={}))
    # HRNN-meta may train on a GPU worker (retrain.hrnn_queue): the check task need not have one
    check_retrain_config(load_config(overrides={"train": {"device": "cuda:1"}}, environ={}))


def test_retrain_dag_fails_on_a_bad_setting_before_the_snapshot(airflow_home, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    conf = tmp_path / "hrnn.toml"
    conf.write_text('[retrain]\nmodels = ["hrnn", "bert4rec"]\n')
    env = airflow_env(airflow_home, data)
    env["HRNN_CONFIG"] = str(conf)
    proc = subprocess.run([AIRFLOW, "dags", "test", "hrnn_retrain", "2026-11-23T00:00:00+00:00"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "unknown model 'bert4rec'" in proc.stdout + proc.stderr
    # the snapshot task never ran: no warehouse opened, no snapshot, no run folder
    assert sorted(p.name for p in data.iterdir()) == []


def run_dag(home: Path, data_dir: Path, dag_id: str, logical_date: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [AIRFLOW, "dags", "test", dag_id, logical_date],
        env=airflow_env(home, data_dir), capture_output=True, text=True, timeout=600,
    )


def test_ingest_dag_end_to_end_and_idempotent(airflow_home, tmp_path):
    from hrnn_core.config import load_config
    from hrnn_core.data.warehouse import connect, table_checksum

    data = tmp_path / "data"
    landing = data / "landing"
    landing.mkdir(parents=True)
    (landing / "items_1.csv").write_text("item_id,genres\ni1,a|b\ni2,b\n")
    (landing / "interactions_1.csv").write_text(
        "user_id,item_id,timestamp\nu1,i1,1764230400\nu1,i2,1764230500\nu2,,1764230600\n"
    )
    proc = run_dag(airflow_home, data, "hrnn_ingest", "2026-11-27T08:00:00+00:00")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    cfg = load_config(overrides={"paths": {"data_dir": str(data)}}, environ={})
    tables = ("interactions", "items", "quarantine", "sessions", "ingestion_batches")
    with connect(cfg, read_only=True) as con:
        assert con.execute("select count(*) from interactions").fetchall()[0][0] == 2
        assert con.execute("select count(*) from items").fetchall()[0][0] == 2
        assert con.execute("select reason from quarantine").fetchall() == [("missing item_id",)]
        assert con.execute("select count(*) from sessions").fetchall()[0][0] == 2
        before = {t: table_checksum(con, t, "all") for t in tables}
    assert not [p for p in landing.rglob("*") if p.is_file()]  # loaded files left the landing folder...
    assert sorted(p.name for p in cfg.paths.landing_archive_dir.rglob("*.csv")) == ["interactions_1.csv", "items_1.csv"]
    # The same interval again: nothing new to load, identical tables.
    proc = run_dag(airflow_home, data, "hrnn_ingest", "2026-11-27T08:00:00+00:00")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with connect(cfg, read_only=True) as con:
        assert {t: table_checksum(con, t, "all") for t in tables} == before


def test_ingest_dag_fails_on_contract_break(airflow_home, tmp_path):
    data = tmp_path / "data"
    (data / "landing").mkdir(parents=True)
    (data / "landing" / "interactions_bad.csv").write_text("userId;movieId;ts\n1;2;3\n")
    proc = run_dag(airflow_home, data, "hrnn_ingest", "2026-11-27T10:00:00+00:00")
    assert proc.returncode != 0
    assert "missing required column 'item_id'" in proc.stdout + proc.stderr


def test_airflow_ui_starts_and_stops_every_process(tmp_path):
    """`hrnn airflow` (make airflow): api-server, scheduler, dag-processor, triggerer on
    127.0.0.1; SIGTERM stops every process it started."""
    import signal
    import socket
    import time

    import httpx
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HRNN"))}
    env.update(HRNN_DATA_DIR=str(tmp_path / "data"), BENTOML_HOME=str(tmp_path / "bentoml"))
    hrnn = str(Path(sys.executable).parent / "hrnn")
    proc = subprocess.Popen([hrnn, "airflow", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    started: list[psutil.Process] = []
    try:
        health = {}
        deadline = time.time() + 180
        while time.time() < deadline:
            started = psutil.Process(proc.pid).children(recursive=True) or started
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2).json()
                if all(health.get(c, {}).get("status") == "healthy"
                       for c in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(2)
        assert health.get("scheduler", {}).get("status") == "healthy", health
        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) >= 4
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert "login: admin / " in out
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"still running after stop: {[p.pid for p in alive]}"
