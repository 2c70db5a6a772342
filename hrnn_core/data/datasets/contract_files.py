"""Helpers shared by the dataset adapters (``adapters``, ``ml100k``): typed columns from raw text,
and contract files written atomically with their ``conversion_report.json``.

Its own module so that ``adapters`` (the registry, which names ``ml100k``'s converter) and
``ml100k`` (which uses these helpers) do not import each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hrnn_core.data.contract import INTERACTION_KEY
from hrnn_core.errors import DatasetError

REPORT_NAME = "conversion_report.json"

# A year in parentheses at the end of a MovieLens title: "Toy Story (1995)".
TITLE_YEAR_PATTERN = r"\((\d{4})\)\s*$"


def strings(values: Any) -> pa.Array:
    """A string column; pandas missing values become nulls (ingest counts missing ids)."""
    return pa.array(values, type=pa.string(), from_pandas=True)


def numeric_or_raw(values: Any, types: tuple[pa.DataType, ...] = (pa.int64(), pa.float64())) -> pa.Array:
    """The column as the first numeric type that every value parses as, else the raw strings.

    Keeping unparseable values as text (rather than coercing them to null) is deliberate: ingest
    then quarantines those rows with a reason instead of the adapter losing them silently.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    arr = values if isinstance(values, pa.Array) else strings(values)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return arr  # already numeric in the raw file: keep as it is
    for t in types:
        try:
            return arr.cast(t)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return arr.cast(pa.string())


def year_from_title(titles: pd.Series) -> pd.Series:
    """The release year at the end of a MovieLens title, as nullable Int64 (null when absent)."""
    years = titles.astype("str").str.extract(TITLE_YEAR_PATTERN, expand=False)
    return pd.to_numeric(years, errors="coerce").astype("Int64")


def read_text_table(path: Path, **kwargs: Any) -> pd.DataFrame:
    """Read a delimited text file with every field as a string.

    Only empty fields become null: pandas' default NA strings ("NA", "null", "nan") could be
    real ids or titles, so they stay text.
    """
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing; the raw dataset folder must contain it (see ../shared/data/README.md)"
        )
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{path} cannot be read as a delimited text file ({exc}); is it the raw file?") from exc


def require_columns(df: pd.DataFrame, expected: Iterable[str], path: Path) -> None:
    """Fail with a clear message when a raw file does not have the expected header."""
    missing = [c for c in expected if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{path}: expected columns {list(expected)}, missing {missing} (found {list(df.columns)}); "
            "is this the right raw file for the dataset?"
        )


def duplicate_key_rows(table: pa.Table) -> int:
    """Rows repeating an earlier row's contract key; ingest loads such rows once (reported, not an error)."""
    key = [c for c in INTERACTION_KEY if c in table.column_names]
    return int(table.select(key).to_pandas().duplicated().sum())


def _write_atomic(path: Path, write: Any) -> None:
    """Write through a temporary file so an interrupted conversion leaves no half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def finish(
    dataset: str,
    raw_dir: Path,
    out_dir: Path,
    tables: dict[str, tuple[pa.Table, int, dict[str, int], str]],
    notes: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the contract tables and ``conversion_report.json``; return the table paths.

    ``tables`` maps a table name to ``(table, rows_read, rows_skipped_by_reason, source)``.
    The report must add up (read = written + skipped): a mismatch is a bug in the adapter,
    so it fails here instead of producing a report that hides rows.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    report_tables: dict[str, Any] = {}
    for name, (table, read, skipped, source) in tables.items():
        written = table.num_rows
        if read != written + sum(skipped.values()):
            raise DatasetError(
                f"adapter {dataset!r} bug: table {name} read {read} rows but wrote {written} and "
                f"skipped {sum(skipped.values())}; please report this"
            )
        path = out_dir / f"{name}.parquet"
        _write_atomic(path, lambda p, t=table: pq.write_table(t, p))
        paths[name] = path
        report_tables[name] = {
            "source": source,
            "rows_read": read,
            "rows_written": written,
            "rows_skipped": dict(skipped),
        }
    if "interactions" in tables:
        notes = {**(notes or {}), "interactions_duplicate_key_rows": duplicate_key_rows(tables["interactions"][0])}
    report = {"dataset": dataset, "raw_dir": str(raw_dir), "tables": report_tables, "notes": notes or {}}
    text = json.dumps(report, indent=2, sort_keys=False) + "\n"
    _write_atomic(out_dir / REPORT_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    return paths
