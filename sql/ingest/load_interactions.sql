-- interactions, user_index, item_index: load one batch's accepted rows (not a duplicate, not
-- bad), then give its new owners and items the next stable indices, in order of first
-- appearance (existing ids are never renumbered). Returns the number of rows loaded.
-- Parameters: $batch_id, $session_prefix (hrnn_core.contract.SESSION_OWNER_PREFIX).
insert into interactions
with accepted as (
    select t.*
    from typed_rows as t
    anti join dup_rows as d using (__row)
    anti join bad_rows as b using (__row)
),

base as (
    select coalesce(max(event_id), 0) as top from interactions
),

final as (
    select
        -- unique and in file order (gaps where rows were rejected): no sort needed
        base.top + a.__row as event_id,
        a.user_id, a.session_id, a.item_id, a.ts, a.event_type, a.event_value,
        a.impression, a.context, $batch_id
    from accepted as a, base
)

select * from final;

insert into user_index
with batch_owners as (
    select coalesce(user_id, $session_prefix || session_id) as id, event_id as first_seen
    from interactions
    where batch_id = $batch_id
),

new_ids as (
    select s.id, min(s.first_seen) as first_seen
    from batch_owners as s
    anti join user_index as x on x.user_id = s.id
    group by s.id
),

base as (
    select coalesce(max(user_idx), -1) as top from user_index
),

final as (
    select (base.top + row_number() over (order by first_seen, id))::integer, id
    from new_ids, base
)

select * from final;

insert into item_index
with batch_items as (
    select item_id as id, event_id as first_seen
    from interactions
    where batch_id = $batch_id
),

new_ids as (
    select s.id, min(s.first_seen) as first_seen
    from batch_items as s
    anti join item_index as x on x.item_id = s.id
    group by s.id
),

base as (
    select coalesce(max(item_idx), -1) as top from item_index
),

final as (
    select (base.top + row_number() over (order by first_seen, id))::integer, id
    from new_ids, base
)

select * from final;

select count(*) from interactions where batch_id = $batch_id;
