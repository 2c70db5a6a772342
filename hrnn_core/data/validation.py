"""Great Expectations suites for the data contract, one per table, and row-level fault finding.

Ingest parses a file in SQL into typed columns (``hrnn_core.data.ingest``), then hands the typed rows
to these suites in bounded chunks. Every failing expectation names the rows it failed on
(``unexpected_index_list``, the DataFrame index = the row number); each such row is quarantined
with the expectation's reason. A file that passes every expectation loads whole.

Why pandas batches and not GX's SQL datasource: on DuckDB the SQL datasource fails every
expectation (see STACK_NOTES.md); validating Arrow/pandas chunks is exact and fast (~0.6 s per
million rows here).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from hrnn_core.data import contract as c


@dataclass(frozen=True)
class RowRule:
    """One expectation and the quarantine reason of the rows it flags."""

    expectation: Any  # a gx.expectations.Expectation
    reason: str  # quarantine reason for the rows this expectation flags


@functools.lru_cache(maxsize=1)
def _context():
    """An ephemeral GX context with one pandas datasource (created once per process: ~3 s)."""
    import great_expectations as gx  # noqa: PLC0415 - heavy import, only when validating

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    try:  # silence "Calculating Metrics" progress bars in logs and CLI output
        from great_expectations.data_context.types.base import (  # noqa: PLC0415
            ProgressBarsConfig,
        )

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    except ImportError:  # pragma: no cover - older/newer GX layouts; bars are cosmetic
        pass
    ctx.data_sources.add_pandas("hrnn")
    return ctx


def _batch_definition(table: str):
    ctx = _context()
    ds = ctx.data_sources.get("hrnn")
    try:
        asset = ds.get_asset(table)
    except LookupError:
        asset = ds.add_dataframe_asset(table)
    try:
        return asset.get_batch_definition("whole")
    except KeyError:
        return asset.add_batch_definition_whole_dataframe("whole")


# event_value classes, computed in SQL as small integer codes (fast to validate in bulk).
VALUE_CLASSES = {0: "ok", 1: "missing", 2: "not_a_number", 3: "not_finite"}


def interaction_rules(min_ts: float, max_ts: float, max_id_length: int) -> list[RowRule]:
    """The interactions suite, over numeric columns computed in SQL from the parsed row.

    ``owner_len`` / ``item_len``: id lengths, null when the id is missing; ``ts_given``: 1 when
    the timestamp cell is non-empty; ``ts``: parsed epoch seconds (null/NaN when unparseable);
    ``value_class``: a ``VALUE_CLASSES`` code; ``key_hash``: hash of the interaction key.
    Numeric stand-ins instead of the strings keep validation of 10M rows to seconds.
    """
    import great_expectations as gx  # noqa: PLC0415

    e = gx.expectations
    return [
        RowRule(e.ExpectColumnValuesToNotBeNull(column="owner_len"), c.REASON_MISSING_USER),
        RowRule(e.ExpectColumnValuesToNotBeNull(column="item_len"), c.REASON_MISSING_ITEM),
        RowRule(e.ExpectColumnValuesToNotBeNull(column="ts_given"), c.REASON_MISSING_TS),
        # ts is null (or NaN) exactly when a given timestamp could not be parsed.
        RowRule(e.ExpectColumnValuesToNotBeNull(column="ts"), c.REASON_BAD_TS),
        RowRule(
            e.ExpectColumnValuesToBeBetween(column="ts", min_value=min_ts, max_value=max_ts),
            c.REASON_TS_RANGE,
        ),
        RowRule(
            e.ExpectColumnValuesToBeInSet(column="value_class", value_set=[0, 1]),
            "event_value",  # refined per row from value_class (not a number / not finite)
        ),
        RowRule(
            e.ExpectColumnValuesToBeBetween(column="item_len", min_value=1, max_value=max_id_length),
            c.REASON_ID_TOO_LONG,
        ),
        RowRule(
            e.ExpectColumnValuesToBeBetween(column="owner_len", min_value=1, max_value=max_id_length),
            c.REASON_ID_TOO_LONG,
        ),
    ]


def accepted_key_rules() -> list[RowRule]:
    """Guard run on the rows about to load: their interaction keys are unique.

    SQL removes duplicates (the key spans chunks and the warehouse); this expectation checks
    that step and must never flag a row. (A 64-bit hash collision, p ~ 1e-7 per 2M-row chunk,
    would stop the ingest with this message.)
    """
    import great_expectations as gx  # noqa: PLC0415

    return [
        RowRule(
            gx.expectations.ExpectColumnValuesToBeUnique(column="key_hash"),
            "internal: duplicate interaction key survived deduplication",
        )
    ]


def accepted_id_rules(id_column: str) -> list[RowRule]:
    """Guard run on the users/items rows about to load: ids unique (SQL deduplicated them)."""
    import great_expectations as gx  # noqa: PLC0415

    return [
        RowRule(
            gx.expectations.ExpectColumnValuesToBeUnique(column=id_column),
            "internal: duplicate id survived deduplication",
        )
    ]


def entity_rules(
    id_column: str,
    max_id_length: int,
    numeric_columns: list[tuple[str, str]],
    ts_column: str | None,
    min_ts: float,
    max_ts: float,
) -> list[RowRule]:
    """The users / items suite: id present and sane, numeric attributes finite, creation time."""
    import great_expectations as gx  # noqa: PLC0415

    e = gx.expectations
    missing = c.REASON_MISSING_ITEM if id_column == "item_id" else c.REASON_MISSING_USER_ID
    rules = [
        RowRule(e.ExpectColumnValuesToNotBeNull(column=id_column), missing),
        RowRule(
            e.ExpectColumnValueLengthsToBeBetween(column=id_column, min_value=1, max_value=max_id_length),
            c.REASON_ID_TOO_LONG,
        ),
    ]
    for col, name in numeric_columns:  # (validated column, the user's column name)
        rules.append(
            RowRule(
                e.ExpectColumnValuesToBeBetween(column=col, min_value=-1e300, max_value=1e300),
                f"{name} not finite",
            )
        )
    if ts_column:
        # ts_status is 'ok', 'missing' (allowed) or 'unparseable' (computed in SQL).
        rules.append(
            RowRule(
                e.ExpectColumnValuesToBeInSet(column="ts_status", value_set=["ok", "missing"]),
                c.REASON_BAD_TS,
            )
        )
        rules.append(
            RowRule(
                e.ExpectColumnValuesToBeBetween(column=ts_column, min_value=min_ts, max_value=max_ts),
                c.REASON_TS_RANGE,
            )
        )
    return rules


def failing_rows(table: str, df: pd.DataFrame, rules: list[RowRule]) -> dict[int, str]:
    """Validate ``df`` (index = row number) with ``rules``; {row number: first reason} of failures."""
    import great_expectations as gx  # noqa: PLC0415

    if df.empty:
        return {}
    # GX reports results in its own order: tag each expectation with its rule's position.
    expectations = []
    for i, rule in enumerate(rules):
        rule.expectation.meta = {"rule": i}  # rules are built fresh per ingest: safe to tag
        expectations.append(rule.expectation)
    suite = gx.ExpectationSuite(name=f"{table}_contract", expectations=expectations)
    batch = _batch_definition(table).get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(
        suite,
        result_format={"result_format": "COMPLETE", "partial_unexpected_count": 0},
    )
    failures: dict[int, str] = {}
    ordered = sorted(result.results, key=lambda r: r.expectation_config.meta["rule"])
    for res in ordered:
        rule = rules[res.expectation_config.meta["rule"]]
        if res.success:
            continue
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"Great Expectations could not evaluate {res.expectation_config.type}: "
                f"{res.exception_info.get('exception_message')}"
            )
        if rule.reason.startswith("internal:"):
            raise RuntimeError(f"{table}: {rule.reason}: {res.result.get('unexpected_index_list')}")
        for idx in res.result.get("unexpected_index_list") or []:
            row = int(idx["__row"]) if isinstance(idx, dict) else int(idx)
            if row in failures:
                continue  # the first failing rule names the reason
            reason = rule.reason
            if reason == "event_value":
                klass = VALUE_CLASSES.get(int(df.at[row, "value_class"]))
                reason = c.REASON_BAD_VALUE if klass == "not_a_number" else c.REASON_NONFINITE_VALUE
            failures[row] = reason
    return failures
