-- hourly_item_popularity: every stored bucket equals a recount from interactions.
-- Zero rows when good (hours never computed are simply absent, not wrong).
with recount as (
    select item_id, (floor("timestamp" / 3600) * 3600)::bigint as hour_start, count(*) as events
    from interactions
    group by all
),

final as (
    select 'hourly count differs' as problem,
        concat_ws(' ', p.item_id, p.hour_start::varchar, p.events::varchar, r.events::varchar) as detail
    from hourly_item_popularity as p
    left join recount as r using (item_id, hour_start)
    where r.events is distinct from p.events
)

select * from final
