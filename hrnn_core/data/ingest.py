"""Ingest contract files into the warehouse: read -> parse -> validate -> dedupe -> quarantine -> load.

One file is one ingestion batch, loaded in one transaction: a failure anywhere leaves the
warehouse as it was. Every row read ends up counted in exactly one of ``accepted``,
``duplicates`` or ``quarantined`` (with a reason): ``rows_in = accepted + duplicates +
quarantined``. A file already ingested (same sha256 into the same table) is skipped, so ingesting
it again leaves every table identical.

Phases (``ingest_file``; the SQL of each is a file of ``sql/ingest/``, values through bound
parameters; only the parse and the raw-row JSON are composed here, from the file's columns,
which are quoted identifiers):
0. contract check of the header/schema (a whole-file break raises ``ContractError``);
1. read: DuckDB reads the file into ``raw_rows``; rows the CSV parser cannot split (ragged,
   bad quotes, invalid UTF-8) go to ``raw_rejects`` and become "malformed row: ..." quarantine rows;
2. parse: SQL types ids, timestamps (epoch int/float or ISO-8601, mixed per row), values;
3. validate: Great Expectations checks the typed rows in chunks (``hrnn_core.data.validation``);
   failing rows get the expectation's reason;
4. dedupe: SQL marks duplicates (within the file, and of rows already in the warehouse);
5. quarantine: rejected lines, repeated headers and failing rows go to ``quarantine``;
6. load: accepted rows are inserted; new users/items get appended stable indices.
"""

from __future__ import annotations

import csv
import io
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb
import pandas as pd

from hrnn_core.data import contract as c
from hrnn_core.data import validation
from hrnn_core.config import Config
from hrnn_core.errors import ContractError
from hrnn_core.hashing import file_sha256
from hrnn_core.data.warehouse import connect, quote_ident, run_sql

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq", ".snappy")
NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                 "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "REAL")


@dataclass
class IngestReport:
    """What happened to one file. ``rows_in == accepted + duplicates + quarantined``."""

    table: str
    source_file: str
    checksum: str
    rows_in: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    batch_id: int | None = None
    already_ingested: bool = False  # same file (sha256) was loaded before: nothing changed
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)  # where the time went

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] = round(self.phase_seconds.get(name, 0.0) + time.perf_counter() - t0, 3)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- file level


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES) or ".parquet" in name:
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise ContractError(path, "unsupported file type; give a .csv or .parquet file")


def _csv_header(path: Path) -> list[str]:
    """The header row of a CSV file, or ContractError when the file cannot be a contract file."""
    with open(path, "rb") as fh:
        first = fh.readline()
        second = fh.readline()
    if not first.strip():
        raise ContractError(path, "file is empty")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ContractError(path, "header row is not valid UTF-8; save the file as UTF-8") from None
    columns = next(csv.reader(io.StringIO(text)))
    columns = [col.strip() for col in columns]
    if any(not col for col in columns):
        raise ContractError(path, "header has an empty column name")
    dupes = sorted({col for col in columns if columns.count(col) > 1})
    if dupes:
        raise ContractError(path, f"header repeats column(s) {dupes}")
    if not second.strip():
        raise ContractError(path, "file has a header but no data rows")
    return columns


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        schema = pq.read_schema(path)
        n_rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise ContractError(path, f"not a readable Parquet file ({exc})") from None
    if n_rows == 0:
        raise ContractError(path, "file has no data rows")
    return list(schema.names)


def _check_required(path: Path, table: str, columns: list[str]) -> None:
    def missing(col: str) -> ContractError:
        hint = ""
        if len(columns) == 1 and any(sep in columns[0] for sep in (";", "\t", "|")):
            hint = "; the header looks like it uses another delimiter: the contract needs commas"
        return ContractError(
            path, f"missing required column '{col}' (columns found: {', '.join(columns)}){hint}"
        )

    if table == "interactions":
        for col in c.INTERACTION_REQUIRED:
            if col not in columns:
                raise missing(col)
        if "user_id" not in columns and "session_id" not in columns:
            raise missing("user_id")
    elif table == "users":
        if "user_id" not in columns:
            raise missing("user_id")
    elif table == "items":
        if "item_id" not in columns:
            raise missing("item_id")
    else:
        raise ContractError(path, f"unknown table {table!r}; use one of {', '.join(c.TABLES)}")


def _read_header(path: Path, table: str) -> tuple[str, list[str]]:
    """Phase 0: the file's kind ("csv"/"parquet") and columns, checked against the contract."""
    kind = _file_kind(path)
    columns = _csv_header(path) if kind == "csv" else _parquet_columns(path)
    _check_required(path, table, columns)
    return kind, columns


# --------------------------------------------------------------------------- reading


def _read(con: duckdb.DuckDBPyConnection, cfg: Config, path: Path, kind: str, columns: list[str]) -> None:
    """Phase 1: temp tables ``raw_rows`` (__row = data row ordinal) and ``raw_rejects`` (CSV lines)."""
    try:
        run_sql(con, cfg, f"ingest/read_{kind}", path=str(path), header=columns,
                columns={col: "VARCHAR" for col in columns})
    except duckdb.Error as exc:
        raise ContractError(path, f"cannot be read as {kind.upper()} ({str(exc).splitlines()[0]})") from None


# --------------------------------------------------------------------------- parse


def _column_types(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return {name: str(typ).upper() for name, typ, *_ in con.execute("describe raw_rows").fetchall()}


def _text(col: str) -> str:
    """A column as text with empty/blank strings as NULL."""
    q = quote_ident(col)
    return f"nullif(trim(cast({q} as varchar)), '')"


def _id(col: str, types: dict[str, str]) -> str:
    """An id column as text: empty -> NULL, otherwise kept exactly as given (no trimming)."""
    q = quote_ident(col)
    if col not in types:
        return "cast(null as varchar)"
    return f"case when trim(cast({q} as varchar)) = '' then null else cast({q} as varchar) end"


def _timestamp_expr(col: str, types: dict[str, str]) -> str:
    """Epoch seconds from int/float epoch or ISO-8601 text (mixed formats allowed per row)."""
    q = quote_ident(col)
    typ = types[col]
    if typ.startswith(NUMERIC_TYPES) or typ.startswith("DECIMAL"):
        return f"cast({q} as double)"
    if typ.startswith("TIMESTAMP") or typ == "DATE":
        return f"epoch({q})"
    t = _text(col)
    return (
        f"coalesce(try_cast({t} as double), epoch(try_cast({t} as timestamptz)))"
    )


def _value_class_expr(col: str, types: dict[str, str]) -> tuple[str, str]:
    """(value expression, class code) for event_value; codes in ``validation.VALUE_CLASSES``."""
    if col not in types:
        return "cast(null as double)", "1"
    q = quote_ident(col)
    typ = types[col]
    num = f"cast({q} as double)" if typ.startswith(NUMERIC_TYPES) else f"try_cast({_text(col)} as double)"
    raw = q if typ.startswith(NUMERIC_TYPES) else _text(col)
    klass = (
        f"case when {raw} is null then 1 when {num} is null then 2 "
        f"when not isfinite({num}) then 3 else 0 end"
    )
    return f"case when isfinite({num}) then {num} end", klass


def _present_expr(col: str, types: dict[str, str]) -> str:
    """1 when the raw cell holds something (not null, not blank), else NULL."""
    q = quote_ident(col)
    typ = types[col]
    if typ.startswith(NUMERIC_TYPES) or typ.startswith(("TIMESTAMP", "DATE", "DECIMAL")):
        return f"case when {q} is not null then 1 end"
    return f"case when {_text(col)} is not null then 1 end"


def _stage_interactions(con: duckdb.DuckDBPyConnection, cfg: Config, columns: list[str]) -> None:
    """Phase 2: typed_rows, parsed interactions (+ owner, value_class) for every non-header raw row."""
    # Composed here, not in sql/ingest/: each expression depends on the file's columns and types.
    types = _column_types(con)
    value, value_class = _value_class_expr("event_value", types)
    context_cols = [col for col in columns if col not in c.INTERACTION_COLUMNS]
    params: dict[str, object] = {"default_event_type": cfg.ingest.default_event_type,
                                 "session_prefix": c.SESSION_OWNER_PREFIX}
    if context_cols:
        entries = []
        for i, col in enumerate(context_cols):
            params[f"ctx{i}"] = col
            entries.append(f"struct_pack(key := $ctx{i}, value := {_text(col)})")
        context = f"map_from_entries(list_filter([{', '.join(entries)}], lambda e: e.value is not null))"
    else:
        context = "cast(null as map(varchar, varchar))"
    event_type = _text("event_type") if "event_type" in types else "null"
    impression = _text("impression") if "impression" in types else "cast(null as varchar)"
    con.execute(
        f"""
        create temp table typed_rows as
        with parsed as (
            select
                __row,
                {_id("user_id", types)} as user_id,
                {_id("session_id", types)} as session_id,
                {_id("item_id", types)} as item_id,
                {_present_expr("timestamp", types)} as ts_given,
                {_timestamp_expr("timestamp", types)} as ts,
                coalesce({event_type}, $default_event_type) as event_type,
                {value} as event_value,
                {value_class} as value_class,
                {impression} as impression,
                {context} as context
            from raw_rows
            where not __is_header
        )
        select
            *,
            coalesce(user_id, $session_prefix || session_id) as owner,
            -- numeric stand-ins for the validator: null exactly when the id is missing
            length(coalesce(user_id, session_id)) as owner_len,
            length(item_id) as item_len,
            hash(user_id, session_id, item_id, ts, event_type) as key_hash
        from parsed
        """,
        params,
    )


def _stage_entities(con: duckdb.DuckDBPyConnection, cfg: Config, table: str, columns: list[str],
                    typed: bool) -> tuple[list[str], list[str]]:
    """Phase 2: typed_rows for users/items; returns (numeric columns, categorical columns).

    A column is categorical when it is named in ``ingest.categorical_columns`` (codes such as a category
    id are not quantities, whatever their type), or it is text in a file that declares its types
    (``typed``: Parquet); it is numeric when its type is a number, or, in a CSV file (all text), when
    every non-empty value parses as a number.
    """
    # Composed here, not in sql/ingest/: each expression depends on the file's columns and types.
    types = _column_types(con)
    id_col = "user_id" if table == "users" else "item_id"
    attrs = [
        col for col in columns
        if col != id_col and not (table == "items" and col == c.ITEM_CREATION_COLUMN)
    ]
    numeric, categorical = [], []
    for col in attrs:
        typ = types[col]
        if col in cfg.ingest.categorical_columns:
            categorical.append(col)
            continue
        if typ.startswith(NUMERIC_TYPES) or typ.startswith("DECIMAL"):
            numeric.append(col)
            continue
        if typed:  # a Parquet text column: the file says it is text
            categorical.append(col)
            continue
        # CSV text column: numeric when every non-empty value parses as a number.
        t = _text(col)
        stats = con.execute(
            f"select count({t}), count(try_cast({t} as double)) from raw_rows where not __is_header"
        ).fetchall()[0]
        (numeric if stats[0] > 0 and stats[0] == stats[1] else categorical).append(col)
    params: dict[str, object] = {}
    num_entries, cat_entries = [], []
    for i, col in enumerate(numeric):
        params[f"n{i}"] = col
        num_entries.append(f"struct_pack(key := $n{i}, value := try_cast({_text(col)} as double))")
    for i, col in enumerate(categorical):
        params[f"c{i}"] = col
        cat_entries.append(f"struct_pack(key := $c{i}, value := {_text(col)})")
    num_map = (f"map_from_entries(list_filter([{', '.join(num_entries)}], lambda e: e.value is not null))"
               if num_entries else "cast(null as map(varchar, double))")
    cat_map = (f"map_from_entries(list_filter([{', '.join(cat_entries)}], lambda e: e.value is not null))"
               if cat_entries else "cast(null as map(varchar, varchar))")
    # For validation: NaN becomes +inf, because pandas reads NaN as "missing" and GX would
    # pass it; a NaN attribute is quarantined as not finite like inf is.
    num_cols = "".join(
        f", case when isnan(try_cast({_text(col)} as double)) then 'inf'::double "
        f"else try_cast({_text(col)} as double) end as {quote_ident('num_' + col)}"
        for col in numeric
    )
    if table == "items" and c.ITEM_CREATION_COLUMN in types:
        cts = _timestamp_expr(c.ITEM_CREATION_COLUMN, types)
        raw_cts = _text(c.ITEM_CREATION_COLUMN)
        cts_cols = (f", {cts} as cts, case when {raw_cts} is null then 'missing' "
                    f"when {cts} is null then 'unparseable' else 'ok' end as ts_status")
    else:
        cts_cols = ", cast(null as double) as cts, 'missing' as ts_status"
    con.execute(
        f"""
        create temp table typed_rows as
        select __row, {_id(id_col, types)} as entity_id, {cat_map} as categorical,
               {num_map} as numeric {num_cols} {cts_cols},
               hash({cat_map}, {num_map}) as attr_hash
        from raw_rows where not __is_header
        """,
        params,
    )
    return numeric, categorical


# --------------------------------------------------------------------------- validate, quarantine, load


def _validate_chunks(
    con: duckdb.DuckDBPyConnection, cfg: Config, table: str, select_sql: str, rules,
    target: str = "bad_rows",
) -> None:
    """Run the GX suite over ``select_sql`` (``__row`` + the suite's columns) in chunks.

    Failing rows are added to ``target`` (__row, reason). ``select_sql`` names the suite's
    columns (for users/items they come from the file's header), so it is composed by the caller.
    """
    con.execute(f"create temp table if not exists {target} (__row bigint, reason varchar)")
    n = con.execute(f"select count(*) from ({select_sql})").fetchall()[0][0]
    step = max(1, cfg.ingest.chunk_rows)
    for lo in range(0, n, step):
        df = con.execute(f"select * from ({select_sql}) order by __row limit $n offset $lo", {"n": step, "lo": lo}).df()
        df = df.set_index("__row")
        df.index = df.index.astype("int64")
        failures = validation.failing_rows(table, df, rules)
        if failures:
            bad = pd.DataFrame({"__row": list(failures), "reason": list(failures.values())})  # noqa: F841 (read by the SQL below)
            con.execute(f"insert into {target} select * from bad")


def _quarantine(con: duckdb.DuckDBPyConnection, cfg: Config, batch_id: int, table: str, source: str) -> None:
    """Phase 5: rejected CSV lines, repeated headers and failing rows into ``quarantine``
    (sql/ingest/quarantine.sql), each with the row as read: a JSON object of text values (strict
    JSON: a NaN or infinite number is kept as the string "nan"/"inf", never as bare NaN)."""
    cols = [name for name in _column_types(con) if name not in ("__row", "__is_header")]
    params = {f"j{i}": col for i, col in enumerate(cols)}
    pairs = ", ".join(f"$j{i}, cast(r.{quote_ident(col)} as varchar)" for i, col in enumerate(cols))
    # Composed here: the column list comes from the file's header (keys bound, names quoted).
    con.execute(
        f"create temp table raw_json as select r.__row, json_object({pairs})::varchar as raw from raw_rows as r "
        "where r.__is_header or r.__row in (select __row from bad_rows)",
        params,
    )
    run_sql(con, cfg, "ingest/quarantine", batch_id=batch_id, table=table, source=source)


def _dedupe(con: duckdb.DuckDBPyConnection, cfg: Config, name: str, **params) -> None:
    """Phase 4: flag duplicates (``sql/ingest/<name>.sql``), then define ``accepted_rows``."""
    run_sql(con, cfg, f"ingest/{name}", **params)
    run_sql(con, cfg, "ingest/accepted")


def _load(con: duckdb.DuckDBPyConnection, cfg: Config, table: str, batch_id: int) -> int:
    """Phase 6: ``accepted_rows`` into ``table``, its new owners and items indexed; rows loaded."""
    loaded = run_sql(con, cfg, f"ingest/load_{table}", batch_id=batch_id)[0][0]
    run_sql(con, cfg, "ingest/index_new_ids", batch_id=batch_id)
    return loaded


# --------------------------------------------------------------------------- one file


def _timestamp_bounds(cfg: Config) -> tuple[float, float]:
    """The accepted timestamp range: ``[ingest.min_timestamp, now + max_future_seconds]``,
    capped by ``ingest.max_timestamp``."""
    max_ts = datetime.now(timezone.utc).timestamp() + cfg.ingest.max_future_seconds
    if cfg.ingest.max_timestamp is not None:
        max_ts = min(max_ts, cfg.ingest.max_timestamp)
    return cfg.ingest.min_timestamp, max_ts


def _ingest_interactions(con: duckdb.DuckDBPyConnection, cfg: Config, report: IngestReport,
                         columns: list[str], batch_id: int) -> None:
    """Phases 2-6 for an interactions file read into ``raw_rows``."""
    min_ts, max_ts = _timestamp_bounds(cfg)
    with report.phase("parse"):
        _stage_interactions(con, cfg, columns)
    rules = validation.interaction_rules(min_ts, max_ts, cfg.ingest.max_id_length)
    with report.phase("validate"):
        _validate_chunks(con, cfg, report.table,
                         "select __row, owner_len, item_len, ts_given, ts, value_class from typed_rows", rules)
    with report.phase("dedupe"):
        _dedupe(con, cfg, "dedupe_interactions")
        # Guard of the step above (the key spans chunks and the warehouse, so SQL does the
        # deduplication): GX checks the accepted keys are unique; any flag raises.
        _validate_chunks(con, cfg, report.table, "select __row, key_hash from accepted_rows",
                         validation.accepted_key_rules(), target="guard_rows")
    with report.phase("quarantine"):
        _quarantine(con, cfg, batch_id, report.table, report.source_file)
    with report.phase("load"):
        report.accepted = _load(con, cfg, "interactions", batch_id)


def _ingest_entities(con: duckdb.DuckDBPyConnection, cfg: Config, report: IngestReport,
                     columns: list[str], batch_id: int, typed: bool) -> None:
    """Phases 2-6 for a users or items file read into ``raw_rows``."""
    table = report.table
    min_ts, max_ts = _timestamp_bounds(cfg)
    with report.phase("parse"):
        numeric, _ = _stage_entities(con, cfg, table, columns, typed)
    id_col = "user_id" if table == "users" else "item_id"
    ts_col = "cts" if table == "items" and c.ITEM_CREATION_COLUMN in columns else None
    rules = validation.entity_rules(
        id_col, cfg.ingest.max_id_length, [(f"num_{col}", col) for col in numeric], ts_col, min_ts, max_ts
    )
    # The suite's columns include one per numeric column of the file: composed here.
    select_cols = ", ".join(
        [f"entity_id as {id_col}"] + [quote_ident(f"num_{col}") for col in numeric]
        + (["cts", "ts_status"] if ts_col else [])
    )
    with report.phase("validate"):
        _validate_chunks(con, cfg, table, f"select t.__row, {select_cols} from typed_rows as t", rules)
    with report.phase("dedupe"):
        _dedupe(con, cfg, "dedupe_entities", reason=c.REASON_DUPLICATE_KEY)
        # guard: the ids about to load are unique
        _validate_chunks(con, cfg, table, f"select __row, entity_id as {id_col} from accepted_rows",
                         validation.accepted_id_rules(id_col), target="guard_rows")
    with report.phase("quarantine"):
        _quarantine(con, cfg, batch_id, table, report.source_file)
    with report.phase("load"):
        report.accepted = _load(con, cfg, table, batch_id)


def _account(con: duckdb.DuckDBPyConnection, cfg: Config, report: IngestReport, batch_id: int) -> None:
    """Fill the report's counts; raise when ``rows_in != accepted + duplicates + quarantined``."""
    report.rows_in, report.duplicates = run_sql(con, cfg, "ingest/batch_counts")[0]
    report.quarantine_reasons = dict(run_sql(con, cfg, "ingest/batch_reasons", batch_id=batch_id))
    report.quarantined = sum(report.quarantine_reasons.values())
    if report.rows_in != report.accepted + report.duplicates + report.quarantined:
        raise RuntimeError(
            f"{report.source_file}: row accounting does not add up ({report.rows_in} in, {report.accepted} "
            f"accepted, {report.duplicates} duplicates, {report.quarantined} quarantined)"
        )
    report.batch_id = batch_id


def _record_batch(con: duckdb.DuckDBPyConnection, cfg: Config, report: IngestReport, started: float) -> None:
    """One ``ingestion_batches`` row for the file (what makes a second ingest of it a no-op)."""
    run_sql(con, cfg, "ingest/batch_record", batch_id=report.batch_id, table=report.table,
            source=report.source_file, checksum=report.checksum, rows_in=report.rows_in,
            accepted=report.accepted, duplicates=report.duplicates, quarantined=report.quarantined,
            started=started)


def ingest_file(cfg: Config, path: str | Path, table: str = "interactions",
                con: duckdb.DuckDBPyConnection | None = None) -> IngestReport:
    """Ingest one contract file into ``table``; see the module docstring for the phases."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(path, "no such file")
    if table not in c.TABLES:
        raise ContractError(path, f"unknown table {table!r}; use one of {', '.join(c.TABLES)}")
    if con is None:
        with connect(cfg) as own:
            return ingest_file(cfg, path, table, own)

    started = time.time()
    kind, columns = _read_header(path, table)
    report = IngestReport(table=table, source_file=str(path.resolve()), checksum=file_sha256(path))
    previous = run_sql(con, cfg, "ingest/batch_previous", checksum=report.checksum, table=table)
    if previous:  # the same file was loaded before: nothing changes
        report.batch_id, report.rows_in = previous[0]
        report.duplicates = report.rows_in
        report.already_ingested = True
        report.seconds = time.time() - started
        return report

    con.execute("begin transaction")
    try:
        batch_id = run_sql(con, cfg, "ingest/batch_next_id")[0][0]
        with report.phase("read"):
            _read(con, cfg, path, kind, columns)
        if table == "interactions":
            _ingest_interactions(con, cfg, report, columns, batch_id)
        else:
            _ingest_entities(con, cfg, report, columns, batch_id, typed=kind == "parquet")
        _account(con, cfg, report, batch_id)
        report.seconds = time.time() - started
        _record_batch(con, cfg, report, started)
        run_sql(con, cfg, "ingest/cleanup")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return report


def ingest_path(cfg: Config, path: str | Path, table: str | None = None,
                con: duckdb.DuckDBPyConnection | None = None) -> list[IngestReport]:
    """Ingest a file, or every contract file in a folder (users and items before interactions).

    In a folder, the table comes from the file name (``interactions*``, ``users*``, ``items*``).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        order = {"users": 0, "items": 1, "interactions": 2}
        plan = []
        for f in files:
            t = table or next((name for name in order if f.name.startswith(name)), None)
            if t is None:
                continue
            try:
                _file_kind(f)
            except ContractError:
                continue
            plan.append((order.get(t, 3), f.name, f, t))
        if not plan:
            raise ContractError(path, "no contract files (interactions*/users*/items* .csv/.parquet) found")
        if con is None:
            with connect(cfg) as own:
                return [ingest_file(cfg, f, t, own) for _, _, f, t in sorted(plan)]
        return [ingest_file(cfg, f, t, con) for _, _, f, t in sorted(plan)]
    return [ingest_file(cfg, path, table or "interactions", con)]
