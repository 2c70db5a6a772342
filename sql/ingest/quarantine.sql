-- quarantine: one batch's rejected CSV lines, repeated header rows and rows that failed
-- validation, each with its reason and the row as read.
-- Parameters: $batch_id, $table, $source (the file). raw_json (__row, raw: the row as a JSON
-- object of text values) is built by hrnn_core.data.ingest for the header and bad rows.
insert into quarantine
select $batch_id, $table, $source, row_number, 'malformed row: ' || detail, csv_line
from raw_rejects;

insert into quarantine
select $batch_id, $table, $source, r.__row, 'repeated header row', j.raw
from raw_rows as r
join raw_json as j using (__row)
where r.__is_header;

insert into quarantine
select $batch_id, $table, $source, b.__row, b.reason, j.raw
from bad_rows as b
join raw_json as j using (__row);
