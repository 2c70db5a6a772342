"""Pipeline steps as plain functions: what each Airflow task (and CLI command) calls.

Each function takes the config explicitly, does one thing, is idempotent on its inputs (a file
is ingested once by checksum; derived tables are rebuilt from what is loaded) and
returns a small JSON-able dict for XCom and logs.
"""

from __future__ import annotations

from pathlib import Path

from hrnn_core.config import Config

LANDING_SUFFIXES = (".csv", ".parquet")


def find_new_files(cfg: Config) -> list[str]:
    """Contract files in the landing folder not yet ingested (by sha256), oldest name first.

    Files are grouped so users and items load before interactions. Half-written files are
    skipped: writers publish a file by renaming it into the folder (names starting with '.'
    or ending in '.tmp' are ignored).
    """
    from hrnn_core.hashing import file_sha256  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect, table_exists  # noqa: PLC0415

    candidates = _landing_files(cfg.paths.landing_dir)
    if not candidates:
        return []
    done: set[str] = set()
    if cfg.paths.warehouse_path.exists():
        with connect(cfg, read_only=True) as con:
            if table_exists(con, "ingestion_batches"):
                done = {r[0] for r in con.execute("select checksum from ingestion_batches").fetchall()}
    order = {"users": 0, "items": 1}
    new = [p for p in candidates if file_sha256(p) not in done]
    new.sort(key=lambda p: (next((v for k, v in order.items() if p.name.startswith(k)), 2), str(p)))
    return [str(p) for p in new]


def _landing_files(folder: Path) -> list[Path]:
    """Published contract files under ``folder`` (names starting with '.' or ending in '.tmp' are being written)."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(LANDING_SUFFIXES) and not p.name.startswith(".")]


def table_for(path: str | Path) -> str:
    """The contract table a landing file feeds, from its name (default: interactions)."""
    name = Path(path).name
    for table in ("users", "items"):
        if name.startswith(table):
            return table
    return "interactions"


def ingest_one(cfg: Config, path: str | Path) -> dict:
    """Ingest one landing file; a contract break raises ContractError (the task fails)."""
    from hrnn_core.data.ingest import ingest_file  # noqa: PLC0415

    report = ingest_file(cfg, path, table_for(path))
    return report.to_dict()


def transform_warehouse(cfg: Config) -> dict:
    """Rebuild sessions (a pure function of interactions: a re-run gives the same rows) and run
    the data checks; a failing check raises ``WarehouseError``."""
    from hrnn_core.errors import WarehouseError  # noqa: PLC0415
    from hrnn_core.data.transforms import build_sessions  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect, run_checks  # noqa: PLC0415

    with connect(cfg) as con:
        n_sessions = build_sessions(con, cfg)
        failed = {k: [list(map(str, r)) for r in v[:5]] for k, v in run_checks(con, cfg).items() if v}
    if failed:
        raise WarehouseError(f"warehouse checks failed after the transform: {failed}")
    return {"sessions": n_sessions}


def archive_ingested(cfg: Config, now: float | None = None) -> dict:
    """Move landing files the warehouse already holds (by checksum) to ``paths.landing_archive_dir/<UTC day>/``
    and delete archived days older than ``ingest.archive_retention_days``. The landing folder then holds only
    what is still to load, so its scan (and the service's start-up read of its event log) does not grow with
    the log's age; the archive keeps the recent days the service re-reads (``EventLog.read_all``)."""
    import shutil  # noqa: PLC0415
    import time  # noqa: PLC0415
    from datetime import datetime, timezone  # noqa: PLC0415

    from hrnn_core.data.warehouse import connect, table_exists  # noqa: PLC0415
    from hrnn_core.hashing import file_sha256  # noqa: PLC0415

    now = time.time() if now is None else now
    landing, archive = cfg.paths.landing_dir, cfg.paths.landing_archive_dir
    done: set[str] = set()
    if cfg.paths.warehouse_path.exists():
        with connect(cfg, read_only=True) as con:
            if table_exists(con, "ingestion_batches"):
                done = {r[0] for r in con.execute("select checksum from ingestion_batches").fetchall()}
    day = archive / datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")
    moved = 0
    for path in _landing_files(landing):
        if file_sha256(path) in done:
            target = day / path.relative_to(landing)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)  # same file system: atomic, and the ingest scan never sees half a move
            moved += 1
    deleted = 0
    cutoff = datetime.fromtimestamp(now - cfg.ingest.archive_retention_days * 86_400.0, timezone.utc).strftime("%Y-%m-%d")
    for folder in sorted(archive.glob("????-??-??")) if archive.exists() else []:
        if folder.name < cutoff:
            shutil.rmtree(folder)
            deleted += 1
    return {"archived": moved, "days_deleted": deleted}
