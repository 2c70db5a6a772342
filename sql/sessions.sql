-- sessions: one row per interaction with its sequence owner, session index, position in the
-- session, and the time since the owner's previous event (the paper's time-delta control input).
-- Parameters: $gap_seconds (inactivity gap that starts a new inferred session), $session_prefix
-- (hrnn_core.data.contract.SESSION_OWNER_PREFIX: the owner id of an anonymous session).
-- A session starts at an owner's first event, when a given session_id changes, or - when the
-- event has no session_id - when the gap since the previous event is strictly greater than
-- $gap_seconds (a gap of exactly $gap_seconds stays in the session).
-- Rebuilt whole (create or replace): it is a pure function of interactions.
create or replace table sessions as
with events as (
    select
        event_id,
        coalesce(user_id, $session_prefix || session_id) as owner_id,
        session_id,
        "timestamp"
    from interactions
),

ordered as (
    select
        *,
        lag("timestamp") over owner_time as prev_timestamp,
        lag(session_id) over owner_time as prev_session_id,
        row_number() over owner_time as owner_position
    from events
    window owner_time as (partition by owner_id order by "timestamp", event_id)
),

flagged as (
    select
        *,
        "timestamp" - prev_timestamp as time_delta,
        case
            when prev_timestamp is null then true
            when session_id is not null or prev_session_id is not null
                then session_id is distinct from prev_session_id
            else "timestamp" - prev_timestamp > $gap_seconds
        end as is_session_start
    from ordered
),

numbered as (
    select
        *,
        sum(case when is_session_start then 1 else 0 end)
            over (partition by owner_id order by owner_position
                  rows between unbounded preceding and current row) - 1 as session_index
    from flagged
),

final as (
    select
        event_id,
        owner_id,
        owner_position - 1 as owner_position,  -- 0-based position in the owner's history
        session_index::integer as session_index,
        (row_number() over (partition by owner_id, session_index order by owner_position) - 1)::integer
            as position_in_session,
        time_delta,                             -- seconds; null for the owner's first event
        is_session_start
    from numbered
)

select * from final
