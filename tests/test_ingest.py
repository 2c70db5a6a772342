"""Ingest: idempotency, stable indices, atomicity, users/items files, folders, anonymous logs, context.

Every test uses its own warehouse under tmp_path. Files are written inline so each test shows
its input next to its expectations.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hrnn_core.data import contract as c
from hrnn_core.data import ingest, validation
from hrnn_core.config import load_config
from hrnn_core.data.ingest import ingest_file, ingest_path
from hrnn_core.data.warehouse import connect, run_checks, table_checksum

MISSING_USER_ID = "missing user_id"  # users-table reason (validation.entity_rules); no constant yet

# table -> order by, for table_checksum
TABLES = {
    "interactions": "event_id",
    "quarantine": "batch_id, row_number, reason",
    "users": "user_id",
    "items": "item_id",
    "user_index": "user_idx",
    "item_index": "item_idx",
    "ingestion_batches": "batch_id",
}

INTERACTIONS = (
    "user_id,item_id,timestamp,event_type,event_value,device\n"
    "u2,i3,1700000000,click,1.0,phone\n"
    "u1,i1,1700000060,view,,tv\n"
    "u2,i2,1700000120,click,2.0,\n"
    "u2,i2,1700000120,click,2.0,\n"  # exact duplicate
    "u3,,1700000180,click,1.0,phone\n"  # missing item_id: quarantined
)
USERS = (
    "user_id,age,gender,occupation,zip\n"
    "u1,25,F,eng|art,12345\n"
    "u2,30,M,,A1B2\n"
    "u1,25,F,eng|art,12345\n"  # identical duplicate
    "u2,31,M,,A1B2\n"  # same id, other attributes: quarantined
    ",40,M,x,999\n"  # missing id: quarantined
    "u3,,F,doc,55\n"
)
ITEMS = (
    "item_id,genres,price,creation_timestamp,year\n"
    "i1,a|b,9.99,1700000000,1999\n"
    "i2,c,5,2023-11-14T22:13:20Z,2000\n"
    "i3,,7,notatime,2001\n"  # unparseable creation time: quarantined
    "i4,d,1,7258118400,2001\n"  # created in 2200: quarantined
    "i5,e|f|g,2,,2002\n"  # no creation time: accepted with NULL
    "i6,h,1.5,1700000000.5,2003\n"
)


@pytest.fixture
def cfg(tmp_path: Path):
    return load_config(
        overrides={"paths": {"data_dir": str(tmp_path), "warehouse": str(tmp_path / "w.duckdb")}},
        environ={},
    )


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _checksums(cfg) -> dict[str, str]:
    with connect(cfg) as con:
        return {t: table_checksum(con, t, order) for t, order in TABLES.items()}


def _fetch(cfg, sql: str) -> list[tuple]:
    with connect(cfg) as con:
        return con.execute(sql).fetchall()


def _counts(report) -> tuple[int, int, int, int]:
    assert report.rows_in == report.accepted + report.duplicates + report.quarantined
    return report.rows_in, report.accepted, report.duplicates, report.quarantined


# --------------------------------------------------------------------------- idempotency


def test_reingest_leaves_every_table_identical(cfg, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _write(folder, "interactions.csv", INTERACTIONS)
    _write(folder, "users.csv", USERS)
    _write(folder, "items.csv", ITEMS)
    first = ingest_path(cfg, folder)
    assert [r.already_ingested for r in first] == [False, False, False]
    before = _checksums(cfg)
    assert _fetch(cfg, "select count(*) from quarantine")[0][0] > 0  # the check covers quarantine

    second = ingest_path(cfg, folder)
    assert _checksums(cfg) == before
    assert [r.already_ingested for r in second] == [True, True, True]
    for old, new in zip(first, second):
        assert (new.table, new.batch_id, new.checksum) == (old.table, old.batch_id, old.checksum)
        assert (new.rows_in, new.accepted, new.duplicates, new.quarantined) == (old.rows_in, 0, old.rows_in, 0)

    # The same bytes under another name are the same file (sha256): skipped as well.
    copy = shutil.copy(folder / "interactions.csv", tmp_path / "renamed.csv")
    again = ingest_file(cfg, copy, "interactions")
    assert again.already_ingested and again.batch_id == first[2].batch_id
    assert _checksums(cfg) == before


def test_same_bytes_into_another_table_is_not_skipped(cfg, tmp_path: Path) -> None:
    """The skip key is (sha256, table): an items file with the users' bytes is a new batch."""
    path = _write(tmp_path, "ids.csv", "user_id,item_id,timestamp\nu1,i1,1700000000\n")
    ingest_file(cfg, path, "interactions")
    report = ingest_file(cfg, path, "items")
    assert not report.already_ingested
    assert _counts(report) == (1, 1, 0, 0)


# --------------------------------------------------------------------------- stable indices


def test_second_file_appends_indices_without_renumbering(cfg, tmp_path: Path) -> None:
    a = _write(tmp_path, "a.csv", (
        "user_id,item_id,timestamp\n"
        "u2,i3,1700000000\n"
        "u1,i1,1700000060\n"
        "u2,i2,1700000120\n"
    ))
    b = _write(tmp_path, "b.csv", (
        "user_id,item_id,timestamp\n"
        "u9,i9,1700000200\n"
        "u1,i1,1700000260\n"  # known user and item, new event
        "u2,i3,1700000000\n"  # exactly a row of a.csv: duplicate of the warehouse
        "u0,i0,1700000300\n"
    ))
    assert _counts(ingest_file(cfg, a)) == (3, 3, 0, 0)
    users_a = _fetch(cfg, "select user_idx, user_id from user_index order by user_idx")
    items_a = _fetch(cfg, "select item_idx, item_id from item_index order by item_idx")
    assert users_a == [(0, "u2"), (1, "u1")]  # order of first appearance, not alphabetical
    assert items_a == [(0, "i3"), (1, "i1"), (2, "i2")]

    assert _counts(ingest_file(cfg, b)) == (4, 3, 1, 0)
    users = _fetch(cfg, "select user_idx, user_id from user_index order by user_idx")
    items = _fetch(cfg, "select item_idx, item_id from item_index order by item_idx")
    assert users[: len(users_a)] == users_a and items[: len(items_a)] == items_a
    assert users == users_a + [(2, "u9"), (3, "u0")]
    assert items == items_a + [(3, "i9"), (4, "i0")]
    events = _fetch(cfg, "select event_id, user_id, item_id, batch_id from interactions order by event_id")
    assert [e[1:] for e in events] == [  # event ids follow file order, batch after batch
        ("u2", "i3", 1), ("u1", "i1", 1), ("u2", "i2", 1),
        ("u9", "i9", 2), ("u1", "i1", 2), ("u0", "i0", 2),
    ]
    assert len({e[0] for e in events}) == len(events)
    with connect(cfg) as con:
        assert {k: v for k, v in run_checks(con, cfg).items() if v} == {}


# --------------------------------------------------------------------------- atomicity


def _fail_after(fn):
    def wrapper(*args, **kwargs):
        fn(*args, **kwargs)  # the load really happens inside the transaction...
        raise RuntimeError("injected failure")  # ...then the ingest fails

    return wrapper


def _raise(*args, **kwargs):
    raise RuntimeError("injected failure")


@pytest.mark.parametrize(
    ("table", "target"),
    [
        ("interactions", "validation.failing_rows"),
        ("interactions", "ingest._load"),
        ("interactions", "ingest._record_batch"),  # after the rows, the indices and the batch row are in
        ("users", "ingest._load"),
        ("items", "validation.failing_rows"),
    ],
)
def test_failure_mid_ingest_leaves_warehouse_as_it_was(
    cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, target: str
) -> None:
    folder = tmp_path / "first"
    _write(folder, "interactions.csv", INTERACTIONS)
    _write(folder, "users.csv", USERS)
    _write(folder, "items.csv", ITEMS)
    ingest_path(cfg, folder)
    before = _checksums(cfg)
    n_batches = _fetch(cfg, "select count(*) from ingestion_batches")[0][0]

    second = {
        "interactions": ("interactions", "user_id,item_id,timestamp\nu7,i7,1700000500\nu1,,1700000600\n"),
        "users": ("users", "user_id,age\nu7,50\n,60\n"),
        "items": ("items", "item_id,price\ni7,1.0\n,2.0\n"),
    }[table]
    path = _write(tmp_path, f"{second[0]}_2.csv", second[1])
    module, name = target.split(".")
    owner = {"validation": validation, "ingest": ingest}[module]
    if name.startswith(("_load", "_record")):
        monkeypatch.setattr(owner, name, _fail_after(getattr(owner, name)))
    else:
        monkeypatch.setattr(owner, name, _raise)

    with pytest.raises(RuntimeError, match="injected"):
        ingest_file(cfg, path, table)
    assert _checksums(cfg) == before
    assert _fetch(cfg, "select count(*) from ingestion_batches")[0][0] == n_batches

    monkeypatch.undo()  # the failed file was not recorded: it ingests normally afterwards
    report = ingest_file(cfg, path, table)
    assert not report.already_ingested and report.accepted == 1 and report.quarantined == 1


def test_failure_keeps_a_shared_connection_usable(cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a rolled-back ingest, the same connection ingests the next file (no leftover temp tables)."""
    a = _write(tmp_path, "a.csv", "user_id,item_id,timestamp\nu1,i1,1700000000\n")
    b = _write(tmp_path, "b.csv", "user_id,item_id,timestamp\nu2,i2,1700000060\n")
    with connect(cfg) as con:
        monkeypatch.setattr(ingest, "_load", _fail_after(ingest._load))
        with pytest.raises(RuntimeError, match="injected"):
            ingest_file(cfg, a, con=con)
        monkeypatch.undo()
        assert con.execute("select count(*) from interactions").fetchall() == [(0,)]
        assert _counts(ingest_file(cfg, b, con=con)) == (1, 1, 0, 0)
        assert _counts(ingest_file(cfg, a, con=con)) == (1, 1, 0, 0)
        assert con.execute("select user_idx, user_id from user_index order by 1").fetchall() == [
            (0, "u2"), (1, "u1")
        ]


# --------------------------------------------------------------------------- users and items


def test_users_file(cfg, tmp_path: Path) -> None:
    report = ingest_file(cfg, _write(tmp_path, "users.csv", USERS), "users")
    assert _counts(report) == (6, 3, 1, 2)
    assert report.quarantine_reasons == {c.REASON_DUPLICATE_KEY: 1, MISSING_USER_ID: 1}
    users = {u: (cat, num) for u, cat, num in _fetch(cfg, "select user_id, categorical, numeric from users")}
    assert users == {
        # age is numeric (every value parses); zip is categorical ("A1B2"); empty values omitted
        "u1": ({"gender": "F", "occupation": "eng|art", "zip": "12345"}, {"age": 25.0}),
        "u2": ({"gender": "M", "zip": "A1B2"}, {"age": 30.0}),  # the first u2 row wins
        "u3": ({"gender": "F", "occupation": "doc", "zip": "55"}, {}),
    }
    quarantine = _fetch(cfg, "select row_number, reason, table_name from quarantine order by row_number")
    assert quarantine == [(4, c.REASON_DUPLICATE_KEY, "users"), (5, MISSING_USER_ID, "users")]


def test_items_file(cfg, tmp_path: Path) -> None:
    report = ingest_file(cfg, _write(tmp_path, "items.csv", ITEMS), "items")
    assert _counts(report) == (6, 4, 0, 2)
    assert report.quarantine_reasons == {c.REASON_BAD_TS: 1, c.REASON_TS_RANGE: 1}
    items = _fetch(cfg, "select item_id, categorical, numeric, creation_timestamp from items order by item_id")
    assert items == [
        ("i1", {"genres": "a|b"}, {"price": 9.99, "year": 1999.0}, 1700000000.0),
        ("i2", {"genres": "c"}, {"price": 5.0, "year": 2000.0}, 1700000000.0),  # ISO Z
        ("i5", {"genres": "e|f|g"}, {"price": 2.0, "year": 2002.0}, None),
        ("i6", {"genres": "h"}, {"price": 1.5, "year": 2003.0}, 1700000000.5),
    ]
    quarantine = _fetch(cfg, "select row_number, reason from quarantine order by row_number")
    assert quarantine == [(3, c.REASON_BAD_TS), (4, c.REASON_TS_RANGE)]


def test_code_columns_stay_categorical(cfg, tmp_path: Path) -> None:
    """A number-looking code is not a quantity: a Parquet text column stays text, and a column named in
    ingest.categorical_columns ("category") is categorical in a CSV too; other all-number CSV text is numeric."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    parquet = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["i1", "i2"], "shelf": ["0042", "17"], "price": [1.5, 2.0]}), parquet)
    ingest_file(cfg, parquet, "items")
    ingest_file(cfg, _write(tmp_path, "items.csv", "item_id,category,weight\ni3,3738615,2\ni4,982926,0.5\n"), "items")
    items = _fetch(cfg, "select item_id, categorical, numeric from items order by item_id")
    assert items == [
        ("i1", {"shelf": "0042"}, {"price": 1.5}),  # the leading zero survives: the value is the text
        ("i2", {"shelf": "17"}, {"price": 2.0}),
        ("i3", {"category": "3738615"}, {"weight": 2.0}),
        ("i4", {"category": "982926"}, {"weight": 0.5}),
    ]


def test_entity_nonfinite_numeric_inf_is_quarantined(cfg, tmp_path: Path) -> None:
    path = _write(tmp_path, "users.csv", "user_id,score\nu1,1.5\nu2,inf\nu3,-inf\n")
    report = ingest_file(cfg, path, "users")
    assert _counts(report) == (3, 1, 0, 2)
    assert sum(n for r, n in report.quarantine_reasons.items() if r.endswith("not finite")) == 2
    assert _fetch(cfg, "select user_id, numeric from users") == [("u1", {"score": 1.5})]


def test_entity_nonfinite_reason_names_the_users_column(cfg, tmp_path: Path) -> None:
    path = _write(tmp_path, "users.csv", "user_id,score\nu1,1.5\nu2,inf\n")
    report = ingest_file(cfg, path, "users")
    assert report.quarantine_reasons == {c.REASON_NONFINITE_VALUE.replace("event_value", "score"): 1}


def test_entity_nan_numeric_is_quarantined(cfg, tmp_path: Path) -> None:
    path = _write(tmp_path, "users.csv", "user_id,score\nu1,1.5\nu2,nan\n")
    report = ingest_file(cfg, path, "users")
    assert _counts(report) == (2, 1, 0, 1)
    assert [r for r in report.quarantine_reasons if r.endswith("not finite")] != []
    assert _fetch(cfg, "select user_id, numeric from users") == [("u1", {"score": 1.5})]


def test_identical_entity_rows_across_files_update_in_place(cfg, tmp_path: Path) -> None:
    """A later users file replaces the attributes of a known user (one row per id)."""
    ingest_file(cfg, _write(tmp_path, "u1.csv", "user_id,gender\nu1,F\nu2,M\n"), "users")
    report = ingest_file(cfg, _write(tmp_path, "u2.csv", "user_id,gender\nu2,X\nu3,F\n"), "users")
    assert _counts(report) == (2, 2, 0, 0)
    rows = _fetch(cfg, "select user_id, categorical, batch_id from users order by user_id")
    assert rows == [("u1", {"gender": "F"}, 1), ("u2", {"gender": "X"}, 2), ("u3", {"gender": "F"}, 2)]


# --------------------------------------------------------------------------- folders


def test_folder_ingests_users_and_items_before_interactions(cfg, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _write(folder, "interactions.csv", INTERACTIONS)
    _write(folder, "items.csv", ITEMS)
    _write(folder, "users.csv", USERS)
    _write(folder, "notes.txt", "not a contract file\n")  # no table prefix: skipped
    _write(folder, "README.md", "# readme\n")
    _write(folder, ".hidden.csv", "user_id,item_id,timestamp\n")  # hidden: skipped
    reports = ingest_path(cfg, folder)
    assert [(r.table, Path(r.source_file).name) for r in reports] == [
        ("users", "users.csv"), ("items", "items.csv"), ("interactions", "interactions.csv")
    ]
    assert [r.batch_id for r in reports] == [1, 2, 3]
    assert [_counts(r) for r in reports] == [(6, 3, 1, 2), (6, 4, 0, 2), (5, 3, 1, 1)]
    batches = _fetch(cfg, "select batch_id, table_name from ingestion_batches order by batch_id")
    assert batches == [(1, "users"), (2, "items"), (3, "interactions")]


# --------------------------------------------------------------------------- anonymous logs, context


def test_anonymous_session_log(cfg, tmp_path: Path) -> None:
    path = _write(tmp_path, "interactions.csv", (
        "session_id,item_id,timestamp\n"
        "s1,i1,1700000000\n"
        "s1,i2,1700000010\n"
        "s2,i1,1700000020\n"
        ",i3,1700000030\n"  # no owner at all: quarantined
    ))
    report = ingest_file(cfg, path)
    assert _counts(report) == (4, 3, 0, 1)
    assert report.quarantine_reasons == {c.REASON_MISSING_USER: 1}
    rows = _fetch(cfg, "select user_id, session_id, item_id from interactions order by event_id")
    assert rows == [(None, "s1", "i1"), (None, "s1", "i2"), (None, "s2", "i1")]
    owners = _fetch(cfg, "select user_idx, user_id from user_index order by user_idx")
    assert owners == [(0, "~session:s1"), (1, "~session:s2")]
    with connect(cfg) as con:
        assert {k: v for k, v in run_checks(con, cfg).items() if v} == {}


def test_user_id_falls_back_to_session_per_row(cfg, tmp_path: Path) -> None:
    path = _write(tmp_path, "interactions.csv", (
        "user_id,session_id,item_id,timestamp\n"
        "u1,s1,i1,1700000000\n"
        ",s9,i2,1700000010\n"  # anonymous row in a file with users
        ",,i3,1700000020\n"  # neither: quarantined
    ))
    report = ingest_file(cfg, path)
    assert _counts(report) == (3, 2, 0, 1)
    owners = _fetch(cfg, "select user_idx, user_id from user_index order by user_idx")
    assert owners == [(0, "u1"), (1, "~session:s9")]


def test_context_columns_become_a_map_without_nulls(cfg, tmp_path: Path) -> None:
    path = _write(tmp_path, "interactions.csv", (
        "user_id,item_id,timestamp,event_value,impression,device,city\n"
        "u1,i1,1700000000,4.5,i1|i2|i3,phone,Paris\n"
        "u1,i2,1700000010,,,tv,\n"
        "u2,i3,1700000020,0,i3,,\n"
    ))
    report = ingest_file(cfg, path)
    assert _counts(report) == (3, 3, 0, 0)
    rows = _fetch(cfg, "select item_id, event_type, event_value, impression, context from interactions order by event_id")
    assert rows == [
        ("i1", "default", 4.5, "i1|i2|i3", {"device": "phone", "city": "Paris"}),
        ("i2", "default", None, None, {"device": "tv"}),
        ("i3", "default", 0.0, "i3", {}),
    ]


def test_file_without_context_columns_has_null_context(cfg, tmp_path: Path) -> None:
    path = _write(tmp_path, "interactions.csv", "user_id,item_id,timestamp\nu1,i1,1700000000\n")
    ingest_file(cfg, path)
    assert _fetch(cfg, "select context from interactions") == [(None,)]
