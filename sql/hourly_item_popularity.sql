-- hourly_item_popularity: event counts per item per hour, for one data interval.
-- Parameters: $interval_start, $interval_end (epoch seconds; the caller aligns them to whole
-- hours: start floored, end ceiled). Runs inside one transaction with the delete below
-- (hrnn_core.transforms.update_hourly_popularity), so a re-run of the same interval replaces
-- exactly that interval's rows and leaves the others untouched.
delete from hourly_item_popularity
where hour_start >= $interval_start and hour_start < $interval_end;

insert into hourly_item_popularity
with in_interval as (
    select
        item_id,
        (floor("timestamp" / 3600) * 3600)::bigint as hour_start
    from interactions
    where "timestamp" >= $interval_start and "timestamp" < $interval_end
),

final as (
    select item_id, hour_start, count(*) as events
    from in_interval
    group by item_id, hour_start
)

select * from final;
