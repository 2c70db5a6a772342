-- interactions: event_id and the interaction key are unique. Zero rows when good.
with by_event as (
    select 'duplicate event_id' as problem, event_id::varchar as detail, count(*) as n
    from interactions
    group by event_id
    having count(*) > 1
),

by_key as (
    select 'duplicate interaction key' as problem,
        concat_ws(' ', user_id, session_id, item_id, "timestamp"::varchar, event_type) as detail,
        count(*) as n
    from interactions
    group by user_id, session_id, item_id, "timestamp", event_type
    having count(*) > 1
),

final as (
    select * from by_event
    union all
    select * from by_key
)

select * from final
