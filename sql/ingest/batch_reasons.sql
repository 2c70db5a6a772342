-- quarantine: one batch's quarantined rows by reason (every "malformed row: <detail>" counts as
-- the one reason "malformed row"). Parameters: $batch_id.
with reasons as (
    select case when reason like 'malformed row:%' then 'malformed row' else reason end as category
    from quarantine
    where batch_id = $batch_id
),

final as (
    select category, count(*) as n
    from reasons
    group by category
)

select * from final order by category;
