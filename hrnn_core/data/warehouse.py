"""The DuckDB warehouse: connections, schema, and running the SQL files of ``sql/``.

Single writer per file: ``connect(..., read_only=False)`` is for ingest and transforms (run one
at a time); readers open read-only or read exported snapshots. Values always go through bound
parameters; identifiers that come from data (column names of a user's file) go through
``quote_ident``.
"""

from __future__ import annotations

import hashlib
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb

from hrnn_core.config import Config
from hrnn_core.data.contract import SESSION_OWNER_PREFIX
from hrnn_core.errors import WarehouseError

_STATEMENT_END = re.compile(r";\s*(?:\n|$)")
# Data-contract constants every SQL file may use as bound parameters (one home: hrnn_core.data.contract).
CONTRACT_PARAMS: dict[str, Any] = {"session_prefix": SESSION_OWNER_PREFIX}


def quote_ident(name: str) -> str:
    """Quote ``name`` as a SQL identifier (for column names read from a user's file)."""
    return '"' + str(name).replace('"', '""') + '"'


def read_sql(cfg: Config, name: str) -> str:
    """The text of ``sql/<name>.sql`` (``name`` may contain a subfolder, e.g. ``checks/x``)."""
    path = Path(cfg.paths.sql_dir) / f"{name}.sql"
    if not path.is_file():
        raise WarehouseError(f"SQL file {path} is missing; is sql_dir ({cfg.paths.sql_dir}) right?")
    return path.read_text()


def split_statements(sql: str) -> list[str]:
    """Split a SQL file into statements at ``;`` that ends a line (files never put ``;`` in text)."""
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    body = "\n".join(lines)
    return [s.strip() for s in _STATEMENT_END.split(body) if s.strip()]


def _params_for(statement: str, params: dict[str, Any]) -> dict[str, Any]:
    """DuckDB rejects unused named parameters: pass each statement only the ones it uses.

    ``CONTRACT_PARAMS`` (e.g. ``$session_prefix``) are always offered.
    """
    params = {**CONTRACT_PARAMS, **params}
    used = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", statement))
    missing = used - set(params)
    if missing:
        raise WarehouseError(f"SQL statement needs parameter(s) {sorted(missing)}")
    return {k: v for k, v in params.items() if k in used}


def run_sql(
    con: duckdb.DuckDBPyConnection, cfg: Config, name: str, **params: Any
) -> list[tuple]:
    """Run every statement of ``sql/<name>.sql`` with bound parameters; rows of the last one."""
    rows: list[tuple] = []
    for statement in split_statements(read_sql(cfg, name)):
        rows = con.execute(statement, _params_for(statement, params)).fetchall()
    return rows


@contextmanager
def connect(cfg: Config, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse (creating it and its schema when writing); close it on exit."""
    path = cfg.paths.warehouse_path
    if read_only and not path.exists():
        raise WarehouseError(f"warehouse {path} does not exist; run `hrnn ingest` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + max(cfg.ingest.lock_wait_seconds, 0.0)
    while True:
        try:
            con = duckdb.connect(
                str(path),
                read_only=read_only,
                config={"memory_limit": cfg.ingest.memory_limit, "threads": cfg.ingest.threads},
            )
            break
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower() and time.monotonic() < deadline:  # another writer: wait for it
                time.sleep(0.5)
                continue
            raise WarehouseError(
                f"cannot open warehouse {path}: {exc}. Only one process may write it at a time; "
                f"waited {cfg.ingest.lock_wait_seconds:g} s (ingest.lock_wait_seconds) for the other writer "
                "(an ingest, transform or evaluation) to finish."
            ) from exc
    try:
        con.execute("set TimeZone = 'UTC'")
        if not read_only:
            run_sql(con, cfg, "schema")
        yield con
    finally:
        con.close()


def run_checks(con: duckdb.DuckDBPyConnection, cfg: Config) -> dict[str, list[tuple]]:
    """Run every ``sql/checks/*.sql``; returns {check: failing rows} (all empty when good)."""
    results = {}
    for path in sorted((Path(cfg.paths.sql_dir) / "checks").glob("*.sql")):
        name = f"checks/{path.stem}"
        if path.stem == "sessions_consistent" and not table_exists(con, "sessions"):
            continue
        results[path.stem] = run_sql(con, cfg, name)
    return results


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.execute(
        "select count(*) from information_schema.tables where table_name = ?", [name]
    ).fetchall()
    return rows[0][0] > 0


def table_checksum(con: duckdb.DuckDBPyConnection, table: str, order_by: str) -> str:
    """A content hash of a table (for idempotency tests): sha256 over its rows in a fixed order."""
    if not re.fullmatch(r"[a-z_]+", table):
        raise WarehouseError(f"not a warehouse table name: {table!r}")
    cols = [r[0] for r in con.execute(f"describe {table}").fetchall()]
    digest = hashlib.sha256()
    cur = con.execute(f"select * from {table} order by {order_by}")
    while batch := cur.fetchmany(10_000):
        for row in batch:
            digest.update(repr(row).encode())
    digest.update(repr(cols).encode())
    return digest.hexdigest()
