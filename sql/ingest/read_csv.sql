-- raw_rows, raw_rejects: one CSV contract file read as text, every line accounted for.
-- Parameters: $path (the file), $columns (struct {column: 'VARCHAR'} from its header), $header
-- (the header's column names, to find repeated header rows).
-- raw_rows: __row (data row number, 1 = first line after the header), the file's columns as
-- text, __is_header (a repeated header row: quarantined, never loaded).
-- raw_rejects: lines the CSV parser cannot split (ragged, bad quotes, invalid UTF-8), quarantined
-- as "malformed row: <detail>".
-- Keep DuckDB's parallel CSV reader: the serial one (parallel = false) stops silently at an
-- unterminated quote, losing the rest of the file without a reject.
create temp table raw_parse as
select *
from read_csv(
    $path, header = true, delim = ',', quote = '"', escape = '"', all_varchar = true,
    auto_detect = false, strict_mode = true, store_rejects = true,
    rejects_table = 'hrnn_rejects', rejects_scan = 'hrnn_reject_scans', columns = $columns
);

-- One line can produce several reject entries (e.g. one per missing column): it is one bad row.
create temp table raw_rejects as
select
    line - 1 as row_number,
    string_agg(distinct error_type || ': ' || error_message, '; ') as detail,
    any_value(csv_line) as csv_line
from hrnn_rejects
group by line;

-- The parser skips rejected lines, so a parsed row's number is its ordinal k plus the rejected
-- lines before it: reject j (1-based, sorted) precedes ordinals k >= row_j - j + 1.
create temp table raw_rows as
with parsed as (
    select
        row_number() over () as k,
        *,
        [*columns(*)] is not distinct from $header as __is_header
    from raw_parse
),

thresholds as (
    select row_number - row_number() over (order by row_number) + 1 as first_k
    from raw_rejects
),

final as (
    select
        k + (select count(*) from thresholds where first_k <= k) as __row,
        * exclude (k)
    from parsed
)

select * from final;

drop table raw_parse;
