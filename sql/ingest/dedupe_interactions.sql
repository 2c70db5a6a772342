-- dup_rows (__row): valid interaction rows whose key (contract.INTERACTION_KEY) repeats an
-- earlier valid row of the file, or a row already in the warehouse.
-- Runs after validation (bad_rows), so a bad row never makes a good row with the same key a
-- "duplicate", and bad rows are each quarantined rather than deduplicated.
create temp table dup_rows as
with valid as (
    select t.__row, t.user_id, t.session_id, t.item_id, t.ts, t.event_type
    from typed_rows as t
    anti join bad_rows as b using (__row)
),

keyed as (
    select
        *,
        row_number() over (
            partition by user_id, session_id, item_id, ts, event_type order by __row
        ) as nth
    from valid
),

in_file as (
    select __row from keyed where nth > 1
),

in_warehouse as (
    select k.__row
    from keyed as k
    join interactions as i
      on i.item_id = k.item_id
     and i."timestamp" = k.ts
     and i.event_type = k.event_type
     and i.user_id is not distinct from k.user_id
     and i.session_id is not distinct from k.session_id
    where k.nth = 1
),

final as (
    select __row from in_file
    union
    select __row from in_warehouse
)

select * from final;
