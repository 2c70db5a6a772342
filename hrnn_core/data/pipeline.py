"""Pipeline steps as plain functions: what each Airflow task (and CLI command) calls.

Each function takes the config explicitly, does one thing, is idempotent on its inputs (a file
is ingested once by checksum; derived tables are rebuilt from what is loaded) and
returns a small JSON-able dict for XCom and logs.
"""

from __future__ import annotations

from pathlib import Path

from hrnn_core.config import Config

LANDING_SUFFIXES = (".csv", ".parquet")


def landing_dir(cfg: Config) -> Path:
    """``cfg.paths.landing_dir`` (kept for bento/service.py, which imports it from here)."""
    return cfg.paths.landing_dir


def find_new_files(cfg: Config) -> list[str]:
    """Contract files in the landing folder not yet ingested (by sha256), oldest name first.

    Files are grouped so users and items load before interactions. Half-written files are
    skipped: writers publish a file by renaming it into the folder (names starting with '.'
    or ending in '.tmp' are ignored).
    """
    from hrnn_core.hashing import file_sha256  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect, table_exists  # noqa: PLC0415

    folder = cfg.paths.landing_dir
    if not folder.exists():
        return []
    candidates = [
        p for p in folder.rglob("*")
        if p.is_file() and p.name.endswith(LANDING_SUFFIXES) and not p.name.startswith(".")
    ]
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
