"""The main job, end to end on MovieLens-100k, through Airflow (``make demo`` / ``hrnn demo``).

1. fetch ml-100k (checksummed) and convert it to contract files in the landing folder;
2. ``airflow dags test hrnn_ingest``: validate, quarantine, load, sessions, hourly popularity;
3. ``airflow dags test hrnn_retrain``: snapshot, train HRNN-meta + baselines, evaluate on the
   temporal protocol, register all, promote HRNN-meta if it wins;
4. ``airflow dags test hrnn_batch_recommendations``: top-K for every user, CSV + JSONL export;
5. print the leaderboard, the champion's tag and the export's path.

A fresh ``AIRFLOW_HOME`` (sqlite) and BentoML store live inside the data dir. Re-running is
idempotent: files already ingested, snapshots and runs already made are reused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from typing import Callable

from hrnn_core.cli import local_airflow
from hrnn_core.config import Config


def run_demo(cfg: Config, say: Callable[[str], None] = print) -> dict:
    started = time.time()
    from hrnn_core.data.datasets.load import fetch_dataset  # noqa: PLC0415
    from hrnn_core.evaluation.checks import check_retrain_config  # noqa: PLC0415

    check_retrain_config(cfg)  # a model name or gate metric the retrain cannot use fails now, not after the ingest

    # The demo's model store lives in the data dir too (unless the user chose one).
    os.environ.setdefault("BENTOML_HOME", str(cfg.paths.bentoml_home))
    say(f"== data dir: {cfg.paths.data_dir}")
    say("== fetch ml-100k (from the recbole==1.2.1 wheel, checksums verified)")
    files = fetch_dataset(cfg, "ml-100k")
    landing = cfg.paths.landing_dir / "ml-100k"
    landing.mkdir(parents=True, exist_ok=True)
    for table, path in files.items():
        target = landing / f"{table}.parquet"
        if not target.exists():
            tmp = landing / f".{table}.parquet.tmp"
            shutil.copy2(path, tmp)
            tmp.rename(target)  # publish by rename: the ingest scan ignores partial files

    say(f"== Airflow (sqlite metadata DB in {local_airflow.airflow_home(cfg)})")
    local_airflow.setup(cfg)
    logs = cfg.paths.demo_logs_dir
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    hour = (now - timedelta(hours=1)).isoformat()
    day = (now.replace(hour=0) - timedelta(days=1)).isoformat()
    steps = [
        ("hrnn_ingest", hour, "ingest: GX validation, quarantine, DuckDB load, sessions, data checks"),
        ("hrnn_retrain", day, "nightly retrain: snapshot, HRNN-meta + baselines, temporal evaluation, gate"),
        ("hrnn_batch_recommendations", day, "batch recommendations: top-K for every user"),
    ]
    timings = {}
    for dag_id, date, what in steps:
        say(f"== airflow dags test {dag_id} {date}  ({what})")
        t = time.time()
        local_airflow.dags_test(cfg, dag_id, date, logs / f"{dag_id}.log")
        timings[dag_id] = round(time.time() - t, 1)
        say(f"   done in {timings[dag_id]:.0f} s (log: {logs / f'{dag_id}.log'})")
    return summarize(cfg, say, timings, time.time() - started)


def summarize(cfg: Config, say: Callable[[str], None], timings: dict, seconds: float) -> dict:
    from hrnn_core import registry  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415
    from hrnn_core.retrain import report_pages  # noqa: PLC0415

    with connect(cfg, read_only=True) as con:
        n, users, items = con.execute(
            "select count(*), count(distinct user_id), count(distinct item_id) from interactions").fetchall()[0]
        quarantined = con.execute("select count(*) from quarantine").fetchall()[0][0]
        entries = registry.entries(con)
        champion = registry.champion(con)
    latest = {}
    for e in entries:  # newest first: the latest registration of each kind
        latest.setdefault(e.kind, e)
    say("")
    say(f"warehouse: {n:,} interactions ({users:,} users, {items:,} items), {quarantined:,} quarantined rows")
    say("leaderboard (temporal protocol, full ranking, newest snapshot):")
    say(f"  {'model':<12}{'ndcg@10':>10}{'recall@10':>11}{'mrr@10':>9}  tag")
    for kind, e in sorted(latest.items(), key=lambda kv: -kv[1].metrics.get("ndcg@10", 0.0)):
        m = e.metrics
        say(f"  {kind:<12}{m.get('ndcg@10', 0):>10.4f}{m.get('recall@10', 0):>11.4f}{m.get('mrr@10', 0):>9.4f}  {e.tag}")
    say(f"champion: {champion or 'none (HRNN-meta did not beat the baselines; nothing exported)'}")
    if "hrnn" in latest:  # retrain.mode: warm by default, full on a first run (no champion yet)
        lineage = registry.show_lineage(latest["hrnn"].tag)
        if lineage:
            say(f"HRNN-meta trained {lineage.get('retrain_mode')}: {lineage.get('mode_reason')}")
    pages = report_pages(cfg)
    if pages:
        say(f"report: {pages[0]} (open it in a browser; `hrnn report` prints it again)")
    export_dir = None
    exports = sorted(cfg.paths.exports_dir.glob("until-*"))
    if exports:
        export_dir = exports[-1]
        manifest = json.loads((export_dir / "manifest.json").read_text())
        say(f"export: {export_dir / 'recommendations.csv'} ({manifest['files']['recommendations.csv']['rows']:,} rows, "
            f"{manifest['n_users']:,} users, model {manifest['model_tag']})")
    say(f"total: {seconds / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    return {"champion": champion, "export": str(export_dir) if export_dir else None, "timings": timings}
