-- accepted_rows: the rows of one file that load (typed, not a duplicate, not bad); read by the
-- guard of the dedupe step and by the load files. Dropped with the work tables (cleanup.sql).
create or replace temp view accepted_rows as
select t.*
from typed_rows as t
anti join dup_rows as d using (__row)
anti join bad_rows as b using (__row);
