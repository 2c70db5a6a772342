-- training_sequences: one row per sequence owner (user, or session for anonymous logs) with the
-- owner's events before $as_of ordered by (timestamp, event_id), as parallel lists. Exported to
-- Parquet for the trainer (hrnn_core.data.transforms.export_snapshot). Needs the sessions table.
with events as (
    select
        s.owner_id,
        s.owner_position,
        i.event_id,
        i."timestamp",
        ix.item_idx,
        i.event_type,
        i.event_value,
        s.time_delta,
        s.is_session_start,
        i.impression,
        i.context
    from interactions as i
    join sessions as s using (event_id)
    join item_index as ix using (item_id)
    where i."timestamp" < $as_of
),

final as (
    select
        ux.user_idx,
        e.owner_id,
        count(*) as n_events,
        list(e.event_id order by e.owner_position) as event_ids,
        list(e."timestamp" order by e.owner_position) as timestamps,
        list(e.item_idx order by e.owner_position) as item_idx,
        list(e.event_type order by e.owner_position) as event_types,
        list(e.event_value order by e.owner_position) as event_values,
        list(e.time_delta order by e.owner_position) as time_deltas,
        list(e.is_session_start order by e.owner_position) as session_starts,
        list(e.impression order by e.owner_position) as impressions,
        list(e.context order by e.owner_position) as contexts
    from events as e
    join user_index as ux on ux.user_id = e.owner_id
    group by ux.user_idx, e.owner_id
)

select * from final
order by user_idx
