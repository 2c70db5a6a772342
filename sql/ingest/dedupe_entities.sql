-- dup_rows (__row, identical): valid users/items rows whose id repeats an earlier valid row of
-- the file. Identical rows are duplicates; rows that differ from the first are quarantined
-- (moved to bad_rows with $reason): which attributes are right is not ours to guess.
-- Runs after validation (bad_rows): valid rows only.
create temp table dup_rows as
with valid as (
    select t.__row, t.entity_id, t.attr_hash
    from typed_rows as t
    anti join bad_rows as b using (__row)
),

ranked as (
    select
        __row,
        entity_id,
        attr_hash,
        first_value(attr_hash) over (partition by entity_id order by __row) as first_hash,
        row_number() over (partition by entity_id order by __row) as nth
    from valid
),

final as (
    select __row, attr_hash = first_hash as identical
    from ranked
    where nth > 1
)

select * from final;

insert into bad_rows
select __row, $reason from dup_rows where not identical;

delete from dup_rows where not identical;
