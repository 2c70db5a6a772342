-- hourly_item_popularity: one row per (item, hour), each equal to a recount from interactions.
-- Zero rows when good (hours never computed are simply absent, not wrong).
with recount as (
    select item_id, (floor("timestamp" / 3600) * 3600)::bigint as hour_start, count(*) as events
    from interactions
    group by all
),

mismatched as (
    select 'hourly count differs' as problem,
        concat_ws(' ', p.item_id, p.hour_start::varchar, p.events::varchar, r.events::varchar) as detail
    from hourly_item_popularity as p
    left join recount as r using (item_id, hour_start)
    where r.events is distinct from p.events
),

repeated as (
    select 'hourly bucket repeated' as problem, concat_ws(' ', item_id, hour_start::varchar) as detail
    from hourly_item_popularity
    group by item_id, hour_start
    having count(*) > 1
),

final as (
    select * from mismatched
    union all
    select * from repeated
)

select * from final
