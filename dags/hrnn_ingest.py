"""Ingest: every hour, load new contract files from the landing folder into the warehouse.

New files (uploads, the service's closed event logs) are validated with Great Expectations and
loaded one per mapped task; bad rows are quarantined, a file that breaks the contract fails its
task with the reason. Then sessions are rebuilt and the data checks run, and the loaded files move
to the landing archive (kept `ingest.archive_retention_days`). Tasks that
write the DuckDB file run in the `hrnn_warehouse` pool (1 slot): a single writer.
Heavy imports stay inside the tasks (this file is parsed every ~30 s).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task

WAREHOUSE = Asset("hrnn://warehouse/interactions")
POOL = "hrnn_warehouse"


@dag(
    dag_id="hrnn_ingest",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["hrnn", "ingest"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    doc_md=__doc__,
)
def hrnn_ingest():
    @task
    def find_new_files() -> list[str]:
        """List landing files whose checksum was never ingested."""
        from hrnn_core.config import load_config
        from hrnn_core.data.pipeline import find_new_files as find

        return find(load_config())

    @task(pool=POOL, retries=0)
    def ingest(path: str) -> dict:
        """Validate and load one file (a contract break is not transient: no retries)."""
        from hrnn_core.config import load_config
        from hrnn_core.data.pipeline import ingest_one

        return ingest_one(load_config(), path)

    @task(pool=POOL, outlets=[WAREHOUSE], trigger_rule="none_failed")
    def transform(reports: list[dict]) -> dict:
        """Rebuild sessions from everything loaded (after this run's files) and run the checks."""
        from hrnn_core.config import load_config
        from hrnn_core.data.pipeline import transform_warehouse

        return transform_warehouse(load_config())

    @task(trigger_rule="none_failed")  # a failed load fails the run (the next run archives what loaded)
    def archive(_: dict | None = None) -> dict:
        """Move what the warehouse now holds out of the landing folder (kept ingest.archive_retention_days)."""
        from hrnn_core.config import load_config
        from hrnn_core.data.pipeline import archive_ingested

        return archive_ingested(load_config())

    archive(transform(ingest.expand(path=find_new_files())))


hrnn_ingest()
