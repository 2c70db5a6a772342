"""Batch recommendations: top-K for every user from the champion, as CSV + JSON lines.

Runs when the champion changes (the `hrnn://model/champion` asset published by the retrain) and
every morning. Users are scored in shards (one mapped task each, the same scoring code as the
online service: `hrnn_core.serving.recommend`), then merged into one export folder per data interval:
`recommendations.csv` (user_id,rank,item_id,score), `recommendations.jsonl` (Amazon
Personalize's batch output shape) and `manifest.json` (model tag, interval, row counts,
checksums). Re-running an interval replaces its export atomically. New items are explored as
the service explores them (`serve.exploration_weight`); a run triggered with `{"explore": false}`
exports without the bonus.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

CHAMPION = Asset("hrnn://model/champion")
EXPORT = Asset("hrnn://exports/recommendations")


def _cfg():
    from hrnn_core.config import load_config

    return load_config()


@dag(
    dag_id="hrnn_batch_recommendations",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 6 * * *", timezone="UTC"), assets=[CHAMPION]),
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    tags=["hrnn", "export"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={"explore": Param(True, type="boolean",
                             description="exploration bonus for new items (serve.exploration_weight); false: none")},
    doc_md=__doc__,
)
def hrnn_batch_recommendations():
    @task
    def champion() -> str:
        """The champion's tag (the run is skipped while there is none)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from hrnn_core.registry import champion_from_store

        _cfg()  # a missing config file, an unknown key or a bad export.k / n_shards fails here, first
        tag = champion_from_store()
        if tag is None:
            raise AirflowSkipException("no champion yet: the retrain has not promoted a model")
        return tag

    @task
    def shards() -> list[int]:
        return list(range(_cfg().export.n_shards))

    @task
    def score_shard(shard: int, tag: str, run_id=None, params=None) -> str:
        """Top-K for the users of one shard (seen items excluded)."""
        from hrnn_core.serving import export

        cfg = _cfg()
        work = cfg.paths.exports_dir / ".work" / run_id.replace(":", "_").replace("+", "_")
        explore = bool((params or {}).get("explore", True))
        return str(export.score_shard(cfg, tag, shard, cfg.export.n_shards, cfg.export.k, work, explore))

    @task(outlets=[EXPORT])
    def merge(tag: str, files: list[str], data_interval_start=None, data_interval_end=None, run_id=None) -> dict:
        """One export folder per interval: CSV, JSON lines and a manifest, replaced atomically."""
        import shutil
        from pathlib import Path

        from hrnn_core.serving import export

        cfg = _cfg()
        root = Path(cfg.export.out_dir) if cfg.export.out_dir else cfg.paths.exports_dir
        out = root / export.interval_label(data_interval_end.timestamp())
        manifest = export.merge_shards(cfg, tag, [Path(f) for f in files], out,
                                       (data_interval_start.timestamp(), data_interval_end.timestamp()))
        shutil.rmtree(Path(files[0]).parent, ignore_errors=True)  # the shard files are merged
        return manifest

    tag = champion()
    files = score_shard.partial(tag=tag).expand(shard=shards())
    merge(tag, files)


hrnn_batch_recommendations()
