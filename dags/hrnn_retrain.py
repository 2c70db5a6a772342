"""Nightly retrain: check the config -> snapshot -> train + evaluate every model -> register -> gated promotion.

Each model is one mapped task (HRNN-meta can be routed to GPU workers through the configured
queue/pool); all are evaluated on the same `temporal` split of the snapshot taken at the end of
the data interval. The new HRNN-meta becomes champion only if it beats the current champion and
every baseline on the gating metric; a failure anywhere before that leaves the champion as it
was. When the champion changes, the `hrnn://model/champion` asset is updated (it triggers the
batch recommendations DAG). Every run writes its HTML report beside it
(`<data>/runs/<snapshot id>/report.html`). `catchup=False`: unpausing it runs the latest night only (not one
retrain per day since the start date); backfills are explicit (the UI's Backfill, or `airflow backfill
create`), and a backfill over a date range gives the same state as the nightly runs would have.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, BaseOperatorLink, dag, task

CHAMPION = Asset("hrnn://model/champion")
POOL = "hrnn_warehouse"


class ReportLink(BaseOperatorLink):
    """The run's HTML report, served by the api-server (plugins/hrnn_reports.py): the report task's extra link
    "HTML report". Resolved once on the worker when the task ends (Airflow 3 keeps it as an XCom)."""

    name = "HTML report"

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.configuration import conf

        page = ti_key.xcom_pull(task_ids=ti_key.task_id)  # the task's return value: the page's path
        if not page:
            return ""
        base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
        return f"{base}/hrnn/reports/{Path(page).parent.name}"


def _cfg():
    from hrnn_core.config import load_config

    return load_config()


@dag(
    dag_id="hrnn_retrain",
    schedule="@daily",
    start_date=datetime(2026, 11, 1),
    catchup=False,  # a new install must not queue a retrain per day since start_date
    max_active_runs=1,
    tags=["hrnn", "train"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": True},
    doc_md=__doc__,
)
def hrnn_retrain():
    @task(retries=0)
    def check_config() -> None:
        """Fail first, before the snapshot, on a setting the run cannot use: an unknown model in
        retrain.models, an unknown gate metric, bad temporal-protocol parameters, a bad device name
        (a config file that is missing or has unknown keys already fails in load_config)."""
        from hrnn_core.evaluation.checks import check_retrain_config

        check_retrain_config(_cfg())

    @task(pool=POOL)
    def snapshot(data_interval_end=None) -> dict:
        """Export the training data as of the interval end (Parquet; readers never lock DuckDB)."""
        from hrnn_core.retrain import make_snapshot

        return make_snapshot(_cfg(), data_interval_end.timestamp())

    @task
    def baselines() -> list[str]:
        """The baselines to train tonight (config: retrain.models)."""
        return [m for m in _cfg().retrain.models if m != "hrnn"]

    @task(retries=0)
    def train_and_evaluate(kind: str, snap: dict) -> dict:
        """Fit one model on the temporal split's training data and score its test events."""
        from hrnn_core.retrain import train_and_evaluate as run

        return run(_cfg(), snap, kind)

    @task
    def evaluate_champion(snap: dict) -> dict | None:
        """The current champion on the same split (None before the first promotion)."""
        from hrnn_core.retrain import evaluate_champion as run

        return run(_cfg(), snap)

    @task(pool=POOL)
    def register_and_promote(snap: dict, candidate: dict, runs: list[dict], champion: dict | None,
                             data_interval_start=None, data_interval_end=None) -> dict:
        """Register every model; promote HRNN-meta only if it wins the gate."""
        from hrnn_core.retrain import register_and_promote as run

        interval = (data_interval_start.timestamp(), data_interval_end.timestamp())
        return run(_cfg(), snap, [candidate, *runs], champion, interval)

    @task
    def report(snap: dict, candidate: dict, runs: list[dict], champion: dict | None, decision: dict) -> str:
        """Write the run's HTML report beside it (<runs>/<snapshot id>/report.html): leaderboard, gate, curves,
        breakdowns, data."""
        from hrnn_core.retrain import write_report

        return write_report(_cfg(), snap, [candidate, *runs], champion, decision)

    @task.short_circuit
    def champion_changed(decision: dict) -> bool:
        return bool(decision["changed"])

    @task(outlets=[CHAMPION])
    def announce(decision: dict) -> str:
        """Publish the champion asset (downstream: batch recommendations)."""
        return decision["champion"]

    # HRNN-meta gets its own task so a deployment can route it to GPU workers (config:
    # retrain.hrnn_queue / retrain.hrnn_pool, read here at parse time: config is torch-free).
    retrain_cfg = _cfg().retrain
    checked = check_config()
    snap = snapshot()
    kinds = baselines()
    checked >> [snap, kinds]
    candidate = train_and_evaluate.override(
        task_id="train_hrnn", queue=retrain_cfg.hrnn_queue, pool=retrain_cfg.hrnn_pool
    )(kind="hrnn", snap=snap)
    runs = train_and_evaluate.partial(snap=snap).expand(kind=kinds)
    champion = evaluate_champion(snap)
    decision = register_and_promote(snap, candidate, runs, champion)
    report(snap, candidate, runs, champion, decision).operator.operator_extra_links = (ReportLink(),)
    champion_changed(decision) >> announce(decision)


hrnn_retrain()
