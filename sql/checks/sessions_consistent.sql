-- sessions: one row per interaction; a session starts exactly at position 0; deltas >= 0.
-- Zero rows when good.
with missing as (
    select 'interaction without session row' as problem, i.event_id::varchar as detail
    from interactions as i
    anti join sessions as s using (event_id)
),

bad_start as (
    select 'session start not at position 0' as problem, event_id::varchar as detail
    from sessions
    where is_session_start <> (position_in_session = 0)
),

negative_delta as (
    select 'negative time delta' as problem, event_id::varchar as detail
    from sessions
    where time_delta < 0
),

final as (
    select * from missing
    union all select * from bad_start
    union all select * from negative_delta
)

select * from final
