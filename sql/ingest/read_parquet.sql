-- raw_rows, raw_rejects: one Parquet contract file (columns keep their Parquet types).
-- Parameters: $path. raw_rows: __row (1 = first row), the file's columns, __is_header (always
-- false). raw_rejects is empty: a Parquet file has no lines a parser could fail to split.
create temp table raw_rows as
select row_number() over () as __row, *, false as __is_header
from read_parquet($path);

create temp table raw_rejects (row_number bigint, detail varchar, csv_line varchar);
