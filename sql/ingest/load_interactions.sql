-- interactions: load one batch's accepted rows (accepted_rows: not a duplicate, not bad); the new
-- owners and items are indexed next (index_new_ids.sql). Returns the number of rows loaded.
-- Parameters: $batch_id.
insert into interactions
with base as (
    select coalesce(max(event_id), 0) as top from interactions
),

final as (
    select
        -- unique and in file order (gaps where rows were rejected): no sort needed
        base.top + a.__row as event_id,
        a.user_id, a.session_id, a.item_id, a.ts, a.event_type, a.event_value,
        a.impression, a.context, $batch_id
    from accepted_rows as a, base
)

select * from final;

select count(*) from interactions where batch_id = $batch_id;
