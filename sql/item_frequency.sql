-- item_frequency: events per item before $as_of (training data only: no leakage from after the
-- cut), with the item's stable index. Feeds the importance sampler's q (paper section 3.1).
with before_cut as (
    select item_id
    from interactions
    where "timestamp" < $as_of
),

counts as (
    select item_id, count(*) as events
    from before_cut
    group by item_id
),

final as (
    select ix.item_idx, c.item_id, c.events
    from counts as c
    join item_index as ix using (item_id)
)

select * from final
order by item_idx
