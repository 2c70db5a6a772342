"""The bad-input corpus (tests/bad_inputs/, table in EXPECTED.md): each file's exact outcome.

A file either breaks the contract as a whole (``ContractError`` naming the file and the problem,
nothing written) or is processed: ``rows_in = accepted + duplicates + quarantined``, exact counts
and quarantine reasons, and the good rows in ``interactions`` with their values intact. A few
files are also run through the ``hrnn ingest`` CLI in a subprocess.

Known bugs of ``hrnn_core/data/ingest.py`` are asserted as the correct behaviour under
``xfail(strict=True)``; the good rows of those files are still checked by a passing test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hrnn_core.data import contract as c
from hrnn_core.config import load_config
from hrnn_core.errors import ContractError
from hrnn_core.data.ingest import ingest_file
from hrnn_core.data.warehouse import connect, run_checks, table_exists

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
MALFORMED = c.REASON_MALFORMED
HEADER_ROW = "repeated header row"  # reason ingest gives a header line repeated inside the data
GOOD = [("u1", "i1", 1700000000.0, "click", 1.0), ("u2", "i2", 1700000060.0, "view", 2.5)]


@dataclass(frozen=True)
class Broken:
    """A whole-file break: ContractError whose message holds every string of ``says``."""

    says: tuple[str, ...]


@dataclass(frozen=True)
class Processed:
    rows_in: int
    accepted: int
    duplicates: int
    quarantined: int
    reasons: dict[str, int]
    quarantine_rows: list[tuple[int, str]]  # (data row number, reason) sorted
    rows: list[tuple] = field(default_factory=list)  # accepted (user, item, ts, type, value) in order


def _click(user: str, item: str, ts: float, value: float | None = 1.0) -> tuple:
    return (user, item, float(ts), "click", value)


BROKEN: dict[str, Broken] = {
    "empty.csv": Broken(("file is empty",)),
    "header_only.csv": Broken(("header but no data rows",)),
    "wrong_columns.csv": Broken(("missing required column 'item_id'", "userId, movieId, ts")),
    "semicolons.csv": Broken(("missing required column 'item_id'", "another delimiter", "commas")),
    "header_invalid_utf8.csv": Broken(("header row is not valid UTF-8",)),
    "duplicate_header_columns.csv": Broken(("header repeats column(s)", "item_id")),
    "missing_column.parquet": Broken(("missing required column 'timestamp'", "user_id, item_id")),
    "no_rows.parquet": Broken(("no data rows",)),
    "not_parquet.parquet": Broken(("not a readable Parquet file",)),
}

LONG = "L" * 10_000

PROCESSED: dict[str, Processed] = {
    "null_ids.csv": Processed(
        7, 3, 0, 4, {c.REASON_MISSING_USER: 3, c.REASON_MISSING_ITEM: 1},
        [(3, c.REASON_MISSING_USER), (4, c.REASON_MISSING_ITEM), (5, c.REASON_MISSING_USER),
         (6, c.REASON_MISSING_USER)],
        GOOD + [_click("u7", "i7", 1700000360)],
    ),
    "bad_timestamps.csv": Processed(
        7, 3, 0, 4, {c.REASON_BAD_TS: 3, c.REASON_MISSING_TS: 1},
        [(3, c.REASON_BAD_TS), (4, c.REASON_BAD_TS), (5, c.REASON_BAD_TS), (6, c.REASON_MISSING_TS)],
        GOOD + [_click("u7", "i7", 1700000420)],
    ),
    "negative_timestamps.csv": Processed(
        5, 2, 0, 3, {c.REASON_TS_RANGE: 3},
        [(3, c.REASON_TS_RANGE), (4, c.REASON_TS_RANGE), (5, c.REASON_TS_RANGE)],
        GOOD,
    ),
    "future_timestamps.csv": Processed(
        5, 2, 0, 3, {c.REASON_TS_RANGE: 3},
        [(3, c.REASON_TS_RANGE), (4, c.REASON_TS_RANGE), (5, c.REASON_TS_RANGE)],
        GOOD,
    ),
    "nonfinite_values.csv": Processed(
        9, 3, 0, 6, {c.REASON_NONFINITE_VALUE: 5, c.REASON_BAD_VALUE: 1},
        [(3, c.REASON_NONFINITE_VALUE), (4, c.REASON_NONFINITE_VALUE), (5, c.REASON_NONFINITE_VALUE),
         (6, c.REASON_NONFINITE_VALUE), (7, c.REASON_NONFINITE_VALUE), (8, c.REASON_BAD_VALUE)],
        GOOD + [_click("u9", "i9", 1700000480, None)],
    ),
    "invalid_utf8.csv": Processed(
        4, 3, 0, 1, {MALFORMED: 1}, [(3, MALFORMED)],
        GOOD + [_click("u4", "i4", 1700000180)],
    ),
    "sql_ids.csv": Processed(
        5, 5, 0, 0, {}, [],
        GOOD + [
            _click("x'); drop table interactions; --", "i3", 1700000120),
            _click("u4", '" or 1=1', 1700000180),
            _click("u5", "'; delete from users where ''='", 1700000240),
        ],
    ),
    "sql_column_name.csv": Processed(
        2, 2, 0, 0, {}, [],
        [("u1", "i1", 1700000000.0, "default", None), ("u2", "i2", 1700000060.0, "default", None)],
    ),
    "long_ids.csv": Processed(
        5, 3, 0, 2, {c.REASON_ID_TOO_LONG: 2},
        [(3, c.REASON_ID_TOO_LONG), (4, c.REASON_ID_TOO_LONG)],
        GOOD + [_click("u5", "M" * 256, 1700000240)],
    ),
    "ragged.csv": Processed(
        8, 4, 0, 4, {MALFORMED: 3, c.REASON_MISSING_ITEM: 1},
        [(3, MALFORMED), (4, MALFORMED), (5, c.REASON_MISSING_ITEM), (7, MALFORMED)],
        GOOD + [_click("u6", "i6", 1700000300), _click("u8", "i8", 1700000420)],
    ),
    "stray_quote.csv": Processed(
        3, 3, 0, 0, {}, [],
        GOOD + [_click("u3", 'i"3', 1700000120)],
    ),
    "repeated_header.csv": Processed(
        5, 3, 0, 2, {HEADER_ROW: 2}, [(3, HEADER_ROW), (5, HEADER_ROW)],
        GOOD + [_click("u3", "i3", 1700000120)],
    ),
    "mixed_timestamps.csv": Processed(
        7, 7, 0, 0, {}, [],
        [
            ("u1", "i1", 1700000000.0, "default", None),  # epoch int
            ("u1", "i2", 1700000000.5, "default", None),  # epoch float
            ("u1", "i3", 1700000000.0, "default", None),  # ISO with Z
            ("u1", "i4", 1700000000.0, "default", None),  # ISO with +02:00
            ("u1", "i5", 1700000001.0, "default", None),  # ISO without zone: UTC
            ("u1", "i6", 1700000002.0, "default", None),  # space instead of T
            ("u1", "i7", 1700000000.25, "default", None),  # fractional seconds with Z
        ],
    ),
    "duplicates.csv": Processed(
        7, 3, 4, 0, {}, [],
        GOOD + [("u1", "i1", 1700000000.0, "view", 1.0)],
    ),
    "duplicate_of_quarantined.csv": Processed(
        3, 2, 0, 1, {c.REASON_NONFINITE_VALUE: 1}, [(1, c.REASON_NONFINITE_VALUE)],
        [_click("u1", "i1", 1700000000), ("u2", "i2", 1700000060.0, "view", 2.5)],
    ),
    "bom_crlf.csv": Processed(
        2, 2, 0, 0, {}, [],
        [("u1", "i1", 1700000000.0, "default", None), ("u2", "i2", 1700000060.0, "default", None)],
    ),
    "typed_bad_rows.parquet": Processed(
        7, 1, 1, 5,
        {c.REASON_NONFINITE_VALUE: 2, c.REASON_MISSING_USER: 1, c.REASON_MISSING_ITEM: 1,
         c.REASON_TS_RANGE: 1},
        [(2, c.REASON_NONFINITE_VALUE), (3, c.REASON_MISSING_USER), (4, c.REASON_MISSING_ITEM),
         (5, c.REASON_TS_RANGE), (6, c.REASON_NONFINITE_VALUE)],
        [("1", "i1", 1700000000.0, "default", 1.0)],
    ),
}

# Known bugs in hrnn_core/data/ingest.py: the exact-outcome test asserts the correct behaviour.
BUGS: dict[str, str] = {}  # file -> known bug (asserted correct behaviour under strict xfail)

PROCESSED_PARAMS = [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=BUGS[name])) if name in BUGS else name
    for name in PROCESSED
]


def _cfg(tmp_path: Path):
    return load_config(
        overrides={"paths": {"data_dir": str(tmp_path), "warehouse": str(tmp_path / "w.duckdb")}},
        environ={},
    )


def _category(reason: str) -> str:
    return MALFORMED if reason.startswith(MALFORMED + ":") else reason


def _interactions(con) -> list[tuple]:
    rows = con.execute(
        'select user_id, item_id, "timestamp", event_type, event_value from interactions order by event_id'
    ).fetchall()
    return [(u, i, t, e, None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
            for u, i, t, e, v in rows]


def _quarantine_rows(con) -> list[tuple[int, str]]:
    rows = con.execute("select row_number, reason from quarantine order by row_number, reason").fetchall()
    return [(n, _category(r)) for n, r in rows]


def _assert_warehouse_consistent(con, cfg) -> None:
    """Every accepted owner/item has an index entry; every warehouse check passes."""
    failed = {k: v for k, v in run_checks(con, cfg).items() if v}
    assert failed == {}
    missing_owner = con.execute(
        "select count(*) from interactions as i anti join user_index as u "
        "on u.user_id = coalesce(i.user_id, $p || i.session_id)", {"p": c.SESSION_OWNER_PREFIX}
    ).fetchall()[0][0]
    missing_item = con.execute(
        "select count(*) from interactions as i anti join item_index as x using (item_id)"
    ).fetchall()[0][0]
    assert (missing_owner, missing_item) == (0, 0)


# --------------------------------------------------------------------------- the corpus itself


def test_corpus_is_complete() -> None:
    """Every data file of the corpus has an expectation here and a line in EXPECTED.md."""
    files = {p.name for p in CORPUS.iterdir() if p.suffix in (".csv", ".parquet")}
    assert files == set(BROKEN) | set(PROCESSED) | {"unbalanced_quotes.csv", "repeated_bad_rows.csv"}
    assert len(files) >= 14
    table = (CORPUS / "EXPECTED.md").read_text()
    for name in files:
        assert f"`{name}`" in table, name


def test_corpus_bytes_are_real() -> None:
    """The bytes that make a file bad are really there (not normalised away by an editor)."""
    assert (CORPUS / "empty.csv").stat().st_size == 0
    assert b"\xff\xfe" in (CORPUS / "invalid_utf8.csv").read_bytes()
    assert b"\xff\xfe" in (CORPUS / "header_invalid_utf8.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        (CORPUS / "invalid_utf8.csv").read_bytes().decode("utf-8")
    bom = (CORPUS / "bom_crlf.csv").read_bytes()
    assert bom.startswith(b"\xef\xbb\xbf") and b"\r\n" in bom
    assert max(len(line) for line in (CORPUS / "long_ids.csv").read_bytes().splitlines()) > 10_000
    assert (CORPUS / "unbalanced_quotes.csv").read_bytes().count(b'"') == 1


# --------------------------------------------------------------------------- whole-file breaks


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_contract_break(name: str, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    path = CORPUS / name
    with pytest.raises(ContractError) as info:
        ingest_file(cfg, path, "interactions")
    message = str(info.value)
    assert name in message
    assert "\n" not in message
    for text in BROKEN[name].says:
        assert text in message, (text, message)
    with connect(cfg) as con:  # nothing was written
        counts = con.execute(
            "select (select count(*) from ingestion_batches), (select count(*) from interactions), "
            "(select count(*) from quarantine)"
        ).fetchall()[0]
    assert counts == (0, 0, 0)


# --------------------------------------------------------------------------- processed files


@pytest.mark.parametrize("name", PROCESSED_PARAMS)
def test_processed_exact(name: str, tmp_path: Path) -> None:
    """Exact counts, reasons, quarantined row numbers and accepted rows."""
    want = PROCESSED[name]
    cfg = _cfg(tmp_path)
    report = ingest_file(cfg, CORPUS / name, "interactions")
    assert report.rows_in == report.accepted + report.duplicates + report.quarantined
    assert (report.rows_in, report.accepted, report.duplicates, report.quarantined) == (
        want.rows_in, want.accepted, want.duplicates, want.quarantined
    )
    assert report.quarantine_reasons == want.reasons
    assert not report.already_ingested
    with connect(cfg) as con:
        assert _quarantine_rows(con) == want.quarantine_rows
        assert _interactions(con) == want.rows
        batch = con.execute(
            "select rows_in, accepted, duplicates, quarantined from ingestion_batches"
        ).fetchall()
        assert batch == [(want.rows_in, want.accepted, want.duplicates, want.quarantined)]
        _assert_warehouse_consistent(con, cfg)


@pytest.mark.parametrize("name", sorted(PROCESSED) + ["unbalanced_quotes.csv"])
def test_good_rows_kept(name: str, tmp_path: Path) -> None:
    """Every file: the accounting adds up and the good rows are loaded."""
    cfg = _cfg(tmp_path)
    report = ingest_file(cfg, CORPUS / name, "interactions")
    assert report.rows_in == report.accepted + report.duplicates + report.quarantined
    assert report.quarantined == sum(report.quarantine_reasons.values())
    want = GOOD if name == "unbalanced_quotes.csv" else PROCESSED[name].rows
    with connect(cfg) as con:
        assert _interactions(con) == want
        n_quarantine = con.execute("select count(*) from quarantine").fetchall()[0][0]
        assert n_quarantine == report.quarantined
        _assert_warehouse_consistent(con, cfg)


def test_unbalanced_quotes_not_lost(tmp_path: Path) -> None:
    """The unterminated quoted field swallows the rest of the file: it must be quarantined.

    Counting the swallowed text as one malformed row (3/2/0/1) or recovering it line by line
    (4/2/0/2) are both correct; dropping it is not.
    """
    cfg = _cfg(tmp_path)
    report = ingest_file(cfg, CORPUS / "unbalanced_quotes.csv", "interactions")
    assert report.rows_in == report.accepted + report.duplicates + report.quarantined
    assert (report.accepted, report.duplicates) == (2, 0)
    assert (report.rows_in, report.quarantined) in ((3, 1), (4, 2))
    assert report.quarantine_reasons == {MALFORMED: report.quarantined}
    with connect(cfg) as con:
        assert _interactions(con) == GOOD
        raw = " ".join(r for (r,) in con.execute("select raw from quarantine").fetchall())
        rows = [n for (n,) in con.execute("select row_number from quarantine order by 1").fetchall()]
    assert "u3," in raw and "u4,i4,1700000180" in raw
    assert rows[0] == 3


def test_repeated_bad_rows_are_quarantined(tmp_path: Path) -> None:
    """Each copy of a bad row is quarantined (or the later copies counted as duplicates)."""
    cfg = _cfg(tmp_path)
    report = ingest_file(cfg, CORPUS / "repeated_bad_rows.csv", "interactions")
    assert report.rows_in == report.accepted + report.duplicates + report.quarantined
    assert (report.rows_in, report.accepted) == (5, 1)
    assert (report.duplicates, report.quarantine_reasons) in (
        (0, {c.REASON_MISSING_ITEM: 2, c.REASON_BAD_TS: 2}),
        (2, {c.REASON_MISSING_ITEM: 1, c.REASON_BAD_TS: 1}),
    )
    with connect(cfg) as con:
        assert _interactions(con) == [("u3", "i3", 1700000000.0, "default", None)]


def test_sql_looking_ids_are_data(tmp_path: Path) -> None:
    """SQL in ids and column names is stored verbatim; every table is still there."""
    cfg = _cfg(tmp_path)
    ingest_file(cfg, CORPUS / "sql_ids.csv", "interactions")
    ingest_file(cfg, CORPUS / "sql_column_name.csv", "interactions")
    with connect(cfg) as con:
        for table in ("interactions", "users", "items", "quarantine", "user_index", "item_index"):
            assert table_exists(con, table)
        users = {u for (u,) in con.execute("select user_id from user_index").fetchall()}
        items = {i for (i,) in con.execute("select item_id from item_index").fetchall()}
        contexts = [ctx for (ctx,) in con.execute(
            "select context from interactions where batch_id = 2 order by event_id").fetchall()]
        n = con.execute("select count(*) from interactions").fetchall()[0][0]
    assert "x'); drop table interactions; --" in users
    assert {'" or 1=1', "'; delete from users where ''='"} <= items
    assert contexts == [{'dev"ice); drop table interactions; --': "phone"}, {}]
    assert n == 7  # 5 + 2; sql_column_name's u1/i1 row has another event_type than sql_ids'


def test_long_ids_are_not_truncated(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ingest_file(cfg, CORPUS / "long_ids.csv", "interactions")
    with connect(cfg) as con:
        raws = [r for (r,) in con.execute("select raw from quarantine order by row_number").fetchall()]
    assert len(raws) == 2
    assert json.loads(raws[0])["user_id"] == LONG
    assert json.loads(raws[1])["item_id"] == LONG


def test_malformed_rows_keep_their_raw_line(tmp_path: Path) -> None:
    """A line the CSV parser rejects is quarantined with the parser's detail and its text."""
    cfg = _cfg(tmp_path)
    ingest_file(cfg, CORPUS / "invalid_utf8.csv", "interactions")
    with connect(cfg) as con:
        rows = con.execute("select row_number, reason, raw from quarantine").fetchall()
    assert len(rows) == 1
    number, reason, raw = rows[0]
    assert number == 3
    assert reason.startswith(MALFORMED + ": ") and "INVALID ENCODING" in reason.upper()
    assert raw.startswith("u3,i") and raw.endswith(",1700000120,click,1.0")


# --------------------------------------------------------------------------- the CLI


def _hrnn() -> str:
    exe = Path(sys.executable).with_name("hrnn")
    return str(exe) if exe.exists() else "hrnn"


def _run_cli(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HRNN")}
    env["HRNN_DATA_DIR"] = str(tmp_path)
    return subprocess.run(
        [_hrnn(), "ingest", "--path", str(path), "--warehouse", str(tmp_path / "w.duckdb"), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )


@pytest.mark.parametrize("name", ["empty.csv", "semicolons.csv", "header_invalid_utf8.csv",
                                  "missing_column.parquet"])
def test_cli_contract_break(name: str, tmp_path: Path) -> None:
    proc = _run_cli(CORPUS / name, tmp_path)
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert name in lines[0]
    assert "Traceback" not in proc.stderr
    for text in BROKEN[name].says:
        assert text in lines[0]


@pytest.mark.parametrize("name", ["sql_ids.csv", "nonfinite_values.csv"])
def test_cli_processed(name: str, tmp_path: Path) -> None:
    want = PROCESSED[name]
    proc = _run_cli(CORPUS / name, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    payload = json.loads(proc.stdout)
    assert isinstance(payload, dict)
    got = tuple(payload[k] for k in ("rows_in", "accepted", "duplicates", "quarantined"))
    assert got == (want.rows_in, want.accepted, want.duplicates, want.quarantined)
    assert payload["quarantine_reasons"] == want.reasons
    assert [Path(f["source_file"]).name for f in payload["files"]] == [name]
