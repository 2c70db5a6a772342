-- One batch's row accounting from its work tables: rows read (parsed rows plus rejected CSV
-- lines) and duplicates. Quarantined rows are counted by batch_reasons.sql.
with counts as (
    select
        (select count(*) from raw_rows) + (select count(*) from raw_rejects) as rows_in,
        (select count(*) from dup_rows) as duplicates
)

select * from counts;
