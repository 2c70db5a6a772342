-- popularity in the window [$at_time - $window_seconds, $at_time): the item-trend estimate q_j(t)
-- of the paper's eq. (5) and the recent-popularity baseline. Uses the hour buckets that lie
-- wholly inside the window (exact when $at_time is on an hour boundary).
with in_window as (
    select item_id, events
    from hourly_item_popularity
    where hour_start >= $at_time - $window_seconds
      and hour_start + 3600 <= $at_time
),

final as (
    select item_id, sum(events)::bigint as events
    from in_window
    group by item_id
)

select * from final
order by events desc, item_id
