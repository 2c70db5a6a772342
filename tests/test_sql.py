"""The SQL files of sql/ on tiny fixture tables with expected outputs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from hrnn_core.config import load_config
from hrnn_core.data.contract import owner_id
from hrnn_core.errors import WarehouseError
from hrnn_core.data.transforms import build_sessions, export_snapshot
from hrnn_core.data.warehouse import connect, run_checks, split_statements


@pytest.fixture()
def cfg(tmp_path):
    return load_config(overrides={"paths": {"data_dir": str(tmp_path), "warehouse": str(tmp_path / "w.duckdb")}})


def insert_events(con, rows):
    """rows: (event_id, user_id, session_id, item_id, timestamp[, event_type, value])."""
    for r in rows:
        event_id, user, session, item, ts = r[:5]
        etype = r[5] if len(r) > 5 else "click"
        value = r[6] if len(r) > 6 else None
        con.execute(
            "insert into interactions values ($e, $u, $s, $i, $t, $et, $v, null, null, 1)",
            {"e": event_id, "u": user, "s": session, "i": item, "t": ts, "et": etype, "v": value},
        )
    for owner in dict.fromkeys(owner_id(r[1], r[2]) for r in rows):
        con.execute("insert into user_index select (select coalesce(max(user_idx), -1) + 1 from user_index), $o "
                    "where not exists (select 1 from user_index where user_id = $o)", {"o": owner})
    for item in dict.fromkeys(r[3] for r in rows):
        con.execute("insert into item_index select (select coalesce(max(item_idx), -1) + 1 from item_index), $i "
                    "where not exists (select 1 from item_index where item_id = $i)", {"i": item})


def sessions_of(con):
    return con.execute(
        "select event_id, owner_id, session_index, position_in_session, time_delta, is_session_start "
        "from sessions order by event_id"
    ).fetchall()


def test_session_boundary_exactly_at_gap(cfg):
    gap = 1800
    with connect(cfg) as con:
        insert_events(con, [
            (1, "u", None, "a", 0.0),
            (2, "u", None, "b", gap),             # exactly the gap: same session
            (3, "u", None, "c", 2 * gap + 1),     # gap + 1 s: new session
            (4, "u", None, "d", 2 * gap + 1),     # same second: same session, delta 0
            (5, "v", None, "a", 10.0),            # another owner starts its own session
        ])
        n = build_sessions(con, cfg, gap_seconds=gap)
        rows = sessions_of(con)
    assert n == 3
    assert rows == [
        (1, "u", 0, 0, None, True),
        (2, "u", 0, 1, float(gap), False),
        (3, "u", 1, 0, float(gap + 1), True),
        (4, "u", 1, 1, 0.0, False),
        (5, "v", 0, 0, None, True),
    ]


def test_given_session_ids_win_over_gaps(cfg):
    with connect(cfg) as con:
        insert_events(con, [
            (1, None, "s1", "a", 0.0),
            (2, None, "s1", "b", 99_999.0),       # long gap but same given session
            (3, None, "s2", "c", 100_000.0),      # different owner (anonymous session)
            (4, "u", "x", "a", 0.0),
            (5, "u", "y", "b", 1.0),              # given session changes after 1 s
        ])
        build_sessions(con, cfg, gap_seconds=1800)
        rows = sessions_of(con)
    assert [(r[0], r[1], r[2], r[5]) for r in rows] == [
        (1, "~session:s1", 0, True),
        (2, "~session:s1", 0, False),
        (3, "~session:s2", 0, True),
        (4, "u", 0, True),
        (5, "u", 1, True),
    ]


def test_ties_keep_file_order(cfg):
    with connect(cfg) as con:
        insert_events(con, [(2, "u", None, "b", 5.0), (1, "u", None, "a", 5.0), (3, "u", None, "c", 4.0)])
        build_sessions(con, cfg)
        order = con.execute("select event_id from sessions order by owner_position").fetchall()
    assert [r[0] for r in order] == [3, 1, 2]


def test_snapshot_respects_cut_and_is_reused(cfg):
    with connect(cfg) as con:
        insert_events(con, [
            (1, "u", None, "a", 100.0, "view", 1.0),
            (2, "u", None, "b", 200.0, "buy", 5.0),
            (3, "v", None, "a", 150.0),
            (4, "u", None, "c", 300.0),           # after the cut
        ])
        snap = export_snapshot(con, cfg, as_of=250.0)
        again = export_snapshot(con, cfg, as_of=250.0)
    assert again.snapshot_id == snap.snapshot_id
    assert (snap.n_events, snap.n_owners, snap.n_items) == (3, 2, 3)
    seqs = pq.read_table(snap.path / "sequences.parquet").to_pylist()
    u = next(s for s in seqs if s["owner_id"] == "u")
    assert u["item_idx"] == [0, 1] and u["event_types"] == ["view", "buy"] and u["event_values"] == [1.0, 5.0]
    assert u["time_deltas"] == [None, 100.0] and u["session_starts"] == [True, False]
    freq = pq.read_table(snap.path / "item_frequency.parquet").to_pylist()
    assert {(f["item_id"], f["events"]) for f in freq} == {("a", 2), ("b", 1)}  # c is after the cut
    manifest = json.loads((snap.path / "manifest.json").read_text())
    assert manifest["as_of"] == 250.0


def test_checks_detect_a_duplicate(cfg):
    with connect(cfg) as con:
        insert_events(con, [(1, "u", None, "a", 1.0)])
        con.execute("insert into interactions select * from interactions")
        failures = run_checks(con, cfg)["interactions_unique"]
    assert {f[0] for f in failures} == {"duplicate event_id", "duplicate interaction key"}


def test_split_statements_ignores_comment_lines():
    sql = "-- a; comment\ndelete from t where x = 1;\ninsert into t values (1);\n"
    assert split_statements(sql) == ["delete from t where x = 1", "insert into t values (1)"]


def test_a_locked_warehouse_is_waited_for_then_a_clear_error(tmp_path):
    """Another process writing the warehouse: connect retries for ingest.lock_wait_seconds (the writer
    finishes: it opens), and after that gives a WarehouseError naming the setting, not a traceback."""
    cfg = load_config(overrides={"paths": {"data_dir": str(tmp_path)}}, environ={})
    with connect(cfg):
        pass  # create it
    holder = ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
              "time.sleep(float(sys.argv[2])); c.close()")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(cfg.paths.warehouse_path), "2"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        quick = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, lock_wait_seconds=0.0))
        with pytest.raises(WarehouseError, match="lock_wait_seconds"):
            with connect(quick):
                pass
        start = time.monotonic()
        with connect(cfg) as con:  # waits for the holder (2 s), well inside the default wait
            assert con.execute("select 1").fetchone() == (1,)
        assert time.monotonic() - start < cfg.ingest.lock_wait_seconds
    finally:
        proc.wait(timeout=30)
