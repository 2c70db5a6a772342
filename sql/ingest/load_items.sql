-- items, item_index: load one batch's accepted rows (a later file's row replaces an earlier one
-- of the same item), then give new catalog items the next stable indices: an item gets its index
-- when it enters the catalog, so items nobody interacted with yet can be recommended from their
-- metadata (cold start). Returns the number of rows loaded. Parameters: $batch_id.
insert or replace into items
with accepted as (
    select t.*
    from typed_rows as t
    anti join dup_rows as d using (__row)
    anti join bad_rows as b using (__row)
),

final as (
    select entity_id as item_id, categorical, numeric, cts, $batch_id
    from accepted
)

select * from final;

insert into item_index
with batch_items as (
    select item_id as id, 0 as first_seen
    from items
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

select count(*) from items where batch_id = $batch_id;
