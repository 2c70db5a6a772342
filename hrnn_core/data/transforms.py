"""SQL transforms over the warehouse, and the snapshot the trainer reads.

Each function runs one file of ``sql/`` with bound parameters. Writers run one at a time
(single writer per DuckDB file); the snapshot is Parquet, so readers never touch the database.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from hrnn_core.config import Config
from hrnn_core.data.contract import SESSION_OWNER_PREFIX
from hrnn_core.errors import WarehouseError
from hrnn_core.data.warehouse import read_sql, run_sql, split_statements

def build_sessions(con: duckdb.DuckDBPyConnection, cfg: Config, gap_seconds: float | None = None) -> int:
    """Rebuild ``sessions`` (sql/sessions.sql); returns the number of sessions."""
    gap = cfg.ingest.session_gap_seconds if gap_seconds is None else gap_seconds
    if gap <= 0 or not math.isfinite(gap):
        raise WarehouseError(f"session gap must be a positive number of seconds, got {gap}")
    run_sql(con, cfg, "sessions", gap_seconds=float(gap))
    return con.execute("select count(*) from sessions where is_session_start").fetchall()[0][0]


@dataclass(frozen=True)
class Snapshot:
    """Files the trainer reads, all as of one cut time."""

    snapshot_id: str  # content-derived: same data and cut -> same id
    path: Path  # folder with sequences.parquet, item_frequency.parquet, items/users.parquet
    as_of: float  # events strictly before this time are included
    n_events: int
    n_owners: int
    n_items: int


def export_snapshot(
    con: duckdb.DuckDBPyConnection, cfg: Config, as_of: float | None = None, out_root: Path | None = None
) -> Snapshot:
    """Export training sequences, item frequencies, items and users as of ``as_of`` to Parquet.

    The snapshot id hashes the cut time and the ingestion batches loaded so far, so a snapshot
    of the same data is found again instead of rewritten.
    """
    started = time.time()
    if as_of is None:
        hi = con.execute('select max("timestamp") from interactions').fetchall()[0][0]
        if hi is None:
            raise WarehouseError("the warehouse has no interactions; run `hrnn ingest` first")
        as_of = float(hi) + 1.0
    # The id digests the content the snapshot holds (events before the cut, items, users), not
    # what else the warehouse holds: a backfill run later, after more data arrived, exports the
    # same snapshot (same id) as the nightly run did.
    digest = con.execute(
        """select
            (select [count(*)::varchar, coalesce(sum(hash(event_id, user_id, session_id, item_id, "timestamp",
                     event_type, event_value))::varchar, '0')] from interactions where "timestamp" < $as_of),
            (select [count(*)::varchar, coalesce(sum(hash(item_id, categorical, numeric, creation_timestamp))::varchar, '0')]
             from items),
            (select [count(*)::varchar, coalesce(sum(hash(user_id, categorical, numeric))::varchar, '0')] from users
             where user_id in (select user_id from interactions where "timestamp" < $as_of)),
            (select count(*)::varchar from item_index)""",
        {"as_of": as_of},
    ).fetchall()[0]
    batches = con.execute("select count(*) from ingestion_batches").fetchall()[0][0]
    gap = cfg.ingest.session_gap_seconds
    key = json.dumps({"as_of": as_of, "content": [list(d) for d in digest], "gap": gap}, sort_keys=True)
    snapshot_id = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(out_root) if out_root else cfg.paths.snapshots_dir
    folder = root / snapshot_id
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        return Snapshot(snapshot_id, folder, m["as_of"], m["n_events"], m["n_owners"], m["n_items"])

    build_sessions(con, cfg)
    tmp = root / f".{snapshot_id}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)

    def copy(query: str, name: str, params: dict) -> None:
        con.execute(f"copy ({query}) to '{tmp / name}' (format parquet)", params)

    seq_sql = split_statements(read_sql(cfg, "training_sequences"))[0]
    copy(seq_sql, "sequences.parquet", {"as_of": as_of})
    freq_sql = split_statements(read_sql(cfg, "item_frequency"))[0]
    copy(freq_sql, "item_frequency.parquet", {"as_of": as_of})
    copy("select ix.item_idx, ix.item_id, it.categorical, it.numeric, it.creation_timestamp "
         "from item_index as ix left join items as it using (item_id) order by ix.item_idx",
         "items.parquet", {})
    # Users with events before the cut only: feature statistics come from training data only.
    copy("select ux.user_idx, ux.user_id, u.categorical, u.numeric "
         "from user_index as ux left join users as u using (user_id) "
         "where ux.user_id in (select coalesce(user_id, $session_prefix || session_id) from interactions "
         "                     where \"timestamp\" < $as_of) "
         "order by ux.user_idx",
         "users.parquet", {"as_of": as_of, "session_prefix": SESSION_OWNER_PREFIX})
    n_events, n_owners = con.execute(
        f"select coalesce(sum(n_events), 0), count(*) from read_parquet('{tmp / 'sequences.parquet'}')"
    ).fetchall()[0]
    n_items = con.execute("select count(*) from item_index").fetchall()[0][0]
    manifest = {
        "snapshot_id": snapshot_id, "as_of": as_of, "n_events": int(n_events),
        "n_owners": int(n_owners), "n_items": int(n_items), "session_gap_seconds": gap,
        "batches": batches, "seconds": round(time.time() - started, 3),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if folder.exists():  # a crashed earlier export without manifest: replace it
        import shutil  # noqa: PLC0415

        shutil.rmtree(folder)
    tmp.rename(folder)  # atomic publish: readers see a whole snapshot or none
    return Snapshot(snapshot_id, folder, as_of, int(n_events), int(n_owners), int(n_items))
