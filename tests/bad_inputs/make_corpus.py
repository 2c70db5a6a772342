"""Write the bad-input corpus (the files beside this script), byte for byte.

Run ``python tests/bad_inputs/make_corpus.py`` to regenerate; the output files are committed, so
the tests never depend on this script. Every file is small and each (where it makes sense) holds
good rows next to the bad ones, so "good rows are kept" is visible. ``EXPECTED.md`` lists the
expected outcome of each file; ``tests/test_bad_inputs.py`` asserts it exactly.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = b"user_id,item_id,timestamp,event_type,event_value\n"
GOOD = b"u1,i1,1700000000,click,1.0\nu2,i2,1700000060,view,2.5\n"


def csv_files() -> dict[str, bytes]:
    long_id = "L" * 10_000
    return {
        # Whole-file breaks (ContractError).
        "empty.csv": b"",
        "header_only.csv": HEADER,
        "wrong_columns.csv": b"userId,movieId,ts\nu1,i1,1700000000\nu2,i2,1700000060\n",
        "semicolons.csv": (
            b"user_id;item_id;timestamp\nu1;i1;1700000000\nu2;i2;1700000060\n"
        ),
        "header_invalid_utf8.csv": b"user_id,item_\xff\xfeid,timestamp\nu1,i1,1700000000\n",
        "duplicate_header_columns.csv": (
            b"user_id,item_id,timestamp,item_id\nu1,i1,1700000000,i9\n"
        ),
        # Row-level problems (processed; bad rows quarantined with a reason).
        "null_ids.csv": HEADER + GOOD + (
            b",i3,1700000120,click,1.0\n"  # empty user_id (no session_id column)
            b"u4,,1700000180,click,1.0\n"  # empty item_id
            b"   ,i5,1700000240,click,1.0\n"  # blank user_id
            b",,1700000300,click,1.0\n"  # both empty: first rule (user) names the reason
            b"u7,i7,1700000360,click,1.0\n"
        ),
        "bad_timestamps.csv": HEADER + GOOD + (
            b"u3,i3,yesterday,click,1.0\n"
            b"u4,i4,2024-13-45T00:00:00Z,click,1.0\n"
            b"u5,i5,17000000xx,click,1.0\n"
            b"u6,i6,,click,1.0\n"  # missing timestamp
            b"u7,i7,1700000420,click,1.0\n"
        ),
        "negative_timestamps.csv": HEADER + GOOD + (
            b"u3,i3,-1,click,1.0\n"
            b"u4,i4,-1700000000,click,1.0\n"
            b"u5,i5,1969-12-31T23:59:59Z,click,1.0\n"
        ),
        "future_timestamps.csv": HEADER + GOOD + (
            b"u3,i3,7258118400,click,1.0\n"  # 2200-01-01T00:00:00Z as epoch seconds
            b"u4,i4,2200-01-01T00:00:00Z,click,1.0\n"
            b"u5,i5,2200-06-15 12:00:00,click,1.0\n"
        ),
        "nonfinite_values.csv": HEADER + GOOD + (
            b"u3,i3,1700000120,click,nan\n"
            b"u4,i4,1700000180,click,inf\n"
            b"u5,i5,1700000240,click,-inf\n"
            b"u6,i6,1700000300,click,NaN\n"
            b"u7,i7,1700000360,click,Infinity\n"
            b"u8,i8,1700000420,click,abc\n"  # not a number at all
            b"u9,i9,1700000480,click,\n"  # missing value: allowed
        ),
        "unbalanced_quotes.csv": HEADER + GOOD + (
            b'u3,"i3,1700000120,click,1.0\n'  # opening quote never closed
            b"u4,i4,1700000180,click,1.0\n"
        ),
        "invalid_utf8.csv": HEADER + GOOD + (
            b"u3,i\xff\xfe3,1700000120,click,1.0\n"
            b"u4,i4,1700000180,click,1.0\n"
        ),
        "sql_ids.csv": HEADER + GOOD + (
            b"x'); drop table interactions; --,i3,1700000120,click,1.0\n"
            b'u4,""" or 1=1",1700000180,click,1.0\n'
            b"u5,'; delete from users where ''=',1700000240,click,1.0\n"
        ),
        "sql_column_name.csv": (
            b'user_id,item_id,timestamp,"dev""ice); drop table interactions; --"\n'
            b"u1,i1,1700000000,phone\nu2,i2,1700000060,\n"
        ),
        "long_ids.csv": HEADER + GOOD + (
            f"{long_id},i3,1700000120,click,1.0\n".encode()
            + f"u4,{long_id},1700000180,click,1.0\n".encode()
            + ("u5," + "M" * 256 + ",1700000240,click,1.0\n").encode()  # exactly the limit: ok
        ),
        "ragged.csv": HEADER + GOOD + (
            b"u3,i3,1700000120,click,1.0,extra\n"  # too many columns
            b"u4,i4,1700000180\n"  # too few columns (two missing)
            b"u5,,1700000240,click,1.0\n"  # parses, but no item_id: quarantined as row 5
            b"u6,i6,1700000300,click,1.0\n"
            b"u7,i7,1700000360,click\n"  # too few columns (one missing)
            b"u8,i8,1700000420,click,1.0\n"
        ),
        "stray_quote.csv": HEADER + GOOD + (
            b'u3,i"3,1700000120,click,1.0\n'  # a quote inside an unquoted field: a literal quote
        ),
        "repeated_header.csv": HEADER + GOOD + HEADER + (
            b"u3,i3,1700000120,click,1.0\n"
        ) + HEADER,
        "mixed_timestamps.csv": (
            b"user_id,item_id,timestamp\n"
            b"u1,i1,1700000000\n"  # epoch int
            b"u1,i2,1700000000.5\n"  # epoch float
            b"u1,i3,2023-11-14T22:13:20Z\n"  # ISO with Z = 1700000000
            b"u1,i4,2023-11-15T00:13:20+02:00\n"  # ISO with offset = 1700000000
            b"u1,i5,2023-11-14T22:13:21\n"  # ISO without zone (UTC) = 1700000001
            b"u1,i6,2023-11-14 22:13:22\n"  # space separator = 1700000002
            b"u1,i7,2023-11-14T22:13:20.250Z\n"  # fractional seconds = 1700000000.25
        ),
        "duplicates.csv": HEADER + GOOD + GOOD + (
            b"u1,i1,1700000000,click,1.0\n"  # third copy of the first row
            b"u1,i1,1700000000,view,1.0\n"  # same but another event_type: not a duplicate
            b"u1,i1,1700000000,click,9.0\n"  # same key, other value: a duplicate of the key
        ),
        "duplicate_of_quarantined.csv": HEADER + (
            b"u1,i1,1700000000,click,nan\n"  # bad value: quarantined
            b"u1,i1,1700000000,click,1.0\n"  # same key, good value: must be loaded, not a duplicate
            b"u2,i2,1700000060,view,2.5\n"
        ),
        "repeated_bad_rows.csv": (
            b"user_id,item_id,timestamp\n"
            b"u1,,1700000000\n"  # missing item_id ...
            b"u1,,1700000000\n"  # ... twice, byte for byte
            b"u2,i2,yesterday\n"  # unparseable timestamp ...
            b"u2,i2,yesterday\n"  # ... twice
            b"u3,i3,1700000000\n"
        ),
        "bom_crlf.csv": b"\xef\xbb\xbfuser_id,item_id,timestamp\r\nu1,i1,1700000000\r\nu2,i2,1700000060\r\n",
    }


def write_parquet() -> None:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    table = pa.table({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"]})  # no timestamp
    pq.write_table(table, HERE / "missing_column.parquet")
    empty = pa.table({"user_id": pa.array([], pa.string()), "item_id": pa.array([], pa.string()),
                      "timestamp": pa.array([], pa.int64())})
    pq.write_table(empty, HERE / "no_rows.parquet")
    typed = pa.table({
        "user_id": pa.array([1, 2, None, 4, 5, 6, 1], pa.int64()),  # integer ids: stored as text
        "item_id": pa.array(["i1", "i2", "i3", None, "i5", "i6", "i1"]),
        "timestamp": pa.array(
            [1700000000, 1700000060, 1700000120, 1700000180, -5, 1700000300, 1700000000],
            pa.timestamp("s", tz="UTC"),
        ),
        "event_value": pa.array([1.0, float("nan"), 1.0, 1.0, 1.0, float("inf"), 1.0]),
    })
    pq.write_table(typed, HERE / "typed_bad_rows.parquet")
    (HERE / "not_parquet.parquet").write_bytes(b"PAR1 this is not really parquet\n")


def main() -> None:
    for name, data in csv_files().items():
        (HERE / name).write_bytes(data)
    write_parquet()


if __name__ == "__main__":
    main()
