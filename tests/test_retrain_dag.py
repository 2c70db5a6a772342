"""The nightly retrain DAG end to end with `airflow dags test` on small synthetic data.

Covers: registration of every model, gated promotion, re-running an interval (identical tables,
one registry entry per model), an injected training failure (champion unchanged), a candidate
that loses to a baseline (registered, not promoted), and a backfill run after more data arrived
(same snapshots, same registry as the nightly runs).
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.test_dags import AIRFLOW, REPO, airflow_env

START = int(datetime(2026, 11, 20, tzinfo=timezone.utc).timestamp())
DAY1 = "2026-11-23T00:00:00+00:00"  # interval [11-23, 11-24): snapshot as of 11-24
DAY2 = "2026-11-24T00:00:00+00:00"
CUT1 = int(datetime(2026, 11, 24, tzinfo=timezone.utc).timestamp())
CUT2 = int(datetime(2026, 11, 25, tzinfo=timezone.utc).timestamp())

BASE_TOML = """
[model]
hidden_size = 32
[train]
epochs = 30
patience = 5
early_stopping_metric = "ndcg@10"
threads = 1
progress = false
val_owners = 50
seed = 0
[retrain]
models = {models}
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-retrain")
    proc = subprocess.run([AIRFLOW, "db", "migrate"], env=airflow_env(home, home), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return home


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A 6-day synthetic log starting 2026-11-20, split into contract files by day."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from research import synth as gen

    out = tmp_path_factory.mktemp("synth")
    files = gen.generate(out / "all", n_users=120, n_items=150, n_events=6000, days=6, start_time=START, seed=3)
    inter = pq.read_table(files["interactions"])
    ts = inter["timestamp"]
    parts = {}
    for name, lo, hi in (("upto1", 0, CUT1), ("day2", CUT1, CUT2), ("later", CUT2, 2**62)):
        mask = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
        path = out / f"interactions_{name}.parquet"
        pq.write_table(inter.filter(mask), path)
        parts[name] = path
    parts["items"], parts["users"] = files["items"], files["users"]
    return parts


def make_env(home: Path, root: Path, models: str) -> tuple[dict, Path]:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    cfg_path = root / "hrnn.toml"
    cfg_path.write_text(BASE_TOML.format(models=models))
    env = airflow_env(home, data)
    env["HRNN_CONFIG"] = str(cfg_path)
    env["BENTOML_HOME"] = str(root / "bentoml")  # each scenario has its own model store
    return env, cfg_path


def ingest(env: dict, *paths: Path) -> None:
    from hrnn_core.config import load_config
    from hrnn_core.data.ingest import ingest_file
    from hrnn_core.data.warehouse import connect

    cfg = load_config(overrides={"paths": {"data_dir": env["HRNN_DATA_DIR"]}}, environ={})
    with connect(cfg) as con:
        for p in paths:
            table = "items" if p.name.startswith("items") else "users" if p.name.startswith("users") else "interactions"
            ingest_file(cfg, p, table, con)


def retrain(home: Path, env: dict, day: str) -> subprocess.CompletedProcess:
    return subprocess.run([AIRFLOW, "dags", "test", "hrnn_retrain", day], env=env, capture_output=True,
                          text=True, timeout=900)


def registry_state(env: dict) -> dict:
    """Registry rows and events (without wall-clock columns and random tags), from a subprocess
    so the BentoML store of ``env`` is used."""
    import json
    import sys

    code = (
        "import json, duckdb, bentoml\n"
        "from hrnn_core.config import load_config\n"
        "from hrnn_core.data.warehouse import connect\n"
        "from hrnn_core import registry\n"
        "cfg = load_config()\n"
        "with connect(cfg, read_only=True) as con:\n"
        "    reg = con.execute('select tag, kind, snapshot_id, metrics, data_interval_start, data_interval_end "
        "from model_registry order by kind, snapshot_id').fetchall()\n"
        "    ev = con.execute('select tag, action from model_events order by event_seq').fetchall()\n"
        "    champ = registry.champion(con)\n"
        "print(json.dumps({'reg': reg, 'events': ev, 'champion': champ, 'store': registry.champion_from_store()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    tag_kind = {tag: f"{kind}@{snap}" for tag, kind, snap, *_ in state["reg"]}
    return {
        "reg": [[kind, snap, json.loads(metrics), s, e] for _, kind, snap, metrics, s, e in state["reg"]],
        "events": [[tag_kind[t], a] for t, a in state["events"]],
        "champion": tag_kind.get(state["champion"]),
        "store_agrees": state["champion"] == state["store"],
    }


def assert_report_reachable(home: Path, env: dict, page: Path) -> None:
    """Where users look for the run's page: the report task's "HTML report" link in the Airflow UI (kept as an
    XCom by the worker), the api-server's plugin that serves it, and ``hrnn report``."""
    import json
    import sqlite3
    import sys

    with sqlite3.connect(home / "airflow.db") as db:
        links = db.execute("select value from xcom where dag_id = 'hrnn_retrain' and task_id = 'report' "
                           "and key = '_link_ReportLink'").fetchall()
    assert f"/hrnn/reports/{page.parent.name}" in [json.loads(v) for (v,) in links]
    # the plugin's pages need a user allowed to read the retrain DAG (Airflow leaves plugin apps open): anonymous
    # callers get 401, a user without a role 403; a viewer's token (bearer header or the UI's cookie) reads them
    code = ("import json, sys; sys.path.insert(0, 'plugins')\n"
            "from fastapi.testclient import TestClient\n"
            "from airflow.api_fastapi.app import init_auth_manager\n"
            "from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser as U\n"
            "from hrnn_reports import app\n"
            "am, c = init_auth_manager(), TestClient(app)\n"
            "viewer, nobody = (am.generate_jwt(U(username=n, role=r)) for n, r in (('v', 'VIEWER'), ('n', None)))\n"
            "h = {'Authorization': f'Bearer {viewer}'}\n"
            f"print(json.dumps([c.get('/').status_code, c.get('/{page.parent.name}').status_code,\n"
            "    c.get('/', headers={'Authorization': f'Bearer {nobody}'}).status_code,\n"
            f"    c.get('/', headers=h).text, c.get('/{page.parent.name}', cookies={{'_token': viewer}}).text,\n"
            "    c.get('/nope', headers=h).status_code]))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    anonymous, anonymous_page, no_role, index, served, missing = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (anonymous, anonymous_page, no_role) == (401, 401, 403)
    assert f'href="/hrnn/reports/{page.parent.name}"' in index
    assert served == page.read_text(encoding="utf-8") and missing == 404
    hrnn = str(Path(sys.executable).parent / "hrnn")
    proc = subprocess.run([hrnn, "report"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == str(page), proc.stdout + proc.stderr


def test_retrain_gate_idempotency_and_failures(airflow_home, synth, tmp_path):
    env, cfg_path = make_env(airflow_home, tmp_path, '["hrnn", "pop"]')
    ingest(env, synth["items"], synth["users"], synth["upto1"])

    proc = retrain(airflow_home, env, DAY1)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    first = registry_state(env)
    kinds = sorted(r[0] for r in first["reg"])
    assert kinds == ["hrnn", "pop"]  # every model registered
    hrnn = next(r for r in first["reg"] if r[0] == "hrnn")[2]["ndcg@10"]
    best_baseline = max(r[2]["ndcg@10"] for r in first["reg"] if r[0] != "hrnn")
    assert hrnn > best_baseline, f"HRNN {hrnn} should beat popularity {best_baseline}"
    assert first["champion"].startswith("hrnn@") and first["store_agrees"]
    assert [a for _, a in first["events"]].count("promote") == 1
    pages = list((tmp_path / "data" / "runs").glob("*/report.html"))  # the run's HTML report, beside it
    assert len(pages) == 1 and "promoted" in pages[0].read_text(encoding="utf-8")
    assert_report_reachable(airflow_home, env, pages[0])

    # The same interval again: identical registry, one entry per model, no new events.
    proc = retrain(airflow_home, env, DAY1)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert registry_state(env) == first

    # Day 2 with an injected HRNN training failure: the champion stays.
    ingest(env, synth["day2"])
    cfg_path.write_text(cfg_path.read_text().replace("[train]\n", "[train]\nmax_dense_logits = 1\n"))
    proc = retrain(airflow_home, env, DAY2)
    assert proc.returncode != 0
    after_failure = registry_state(env)
    assert after_failure["champion"] == first["champion"] and after_failure["store_agrees"]
    assert not any(e[1] == "promote" and e[0] != first["champion"] for e in after_failure["events"])

    # Day 2 with a crippled candidate (no learning, from scratch: a warm start at lr 1e-9 would be the champion
    # itself with its priors refitted on day 2, which can fairly win): registered, not promoted.
    cfg_path.write_text(BASE_TOML.format(models='["hrnn", "pop"]').replace("epochs = 30", "epochs = 1\nlr = 1e-9")
                        .replace("[retrain]\n", '[retrain]\nmode = "full"\n'))
    proc = retrain(airflow_home, env, DAY2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    final = registry_state(env)
    day2_snaps = {r[1] for r in final["reg"]} - {r[1] for r in first["reg"]}
    assert len(day2_snaps) == 1
    day2 = day2_snaps.pop()
    assert sorted(r[0] for r in final["reg"] if r[1] == day2) == ["hrnn", "pop"]
    assert final["champion"] == first["champion"] and final["store_agrees"]
    assert [f"hrnn@{day2}", "reject"] in final["events"]


def test_backfill_equals_nightly_runs(airflow_home, synth, tmp_path):
    models = '["hrnn", "pop"]'
    # Nightly: each day's run sees the data that had arrived by then.
    nightly_env, _ = make_env(airflow_home, tmp_path / "nightly", models)
    ingest(nightly_env, synth["items"], synth["users"], synth["upto1"])
    assert retrain(airflow_home, nightly_env, DAY1).returncode == 0
    ingest(nightly_env, synth["day2"])
    assert retrain(airflow_home, nightly_env, DAY2).returncode == 0
    # Backfill: both days run later, after all the data (and more) arrived.
    backfill_env, _ = make_env(airflow_home, tmp_path / "backfill", models)
    ingest(backfill_env, synth["items"], synth["users"], synth["upto1"], synth["day2"], synth["later"])
    for day in (DAY1, DAY2):
        proc = retrain(airflow_home, backfill_env, day)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    nightly, backfill = registry_state(nightly_env), registry_state(backfill_env)
    assert len(nightly["reg"]) == 4
    assert backfill == nightly
