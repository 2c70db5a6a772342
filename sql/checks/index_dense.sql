-- user_index / item_index: indices are exactly 0..n-1 and every id in interactions has one.
-- Zero rows when good. $session_prefix: hrnn_core.data.contract.SESSION_OWNER_PREFIX.
with item_gaps as (
    select 'item_index not dense' as problem, count(*)::varchar as detail
    from item_index
    having max(item_idx) <> count(*) - 1 or min(item_idx) <> 0
),

user_gaps as (
    select 'user_index not dense' as problem, count(*)::varchar as detail
    from user_index
    having max(user_idx) <> count(*) - 1 or min(user_idx) <> 0
),

missing_items as (
    select 'item without index' as problem, i.item_id as detail
    from interactions as i
    anti join item_index as ix using (item_id)
),

missing_users as (
    select 'owner without index' as problem, coalesce(i.user_id, $session_prefix || i.session_id) as detail
    from interactions as i
    anti join user_index as ux on ux.user_id = coalesce(i.user_id, $session_prefix || i.session_id)
),

final as (
    select * from item_gaps
    union all select * from user_gaps
    union all select * from missing_items
    union all select * from missing_users
)

select * from final
