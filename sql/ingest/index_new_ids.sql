-- user_index, item_index: give one batch's new owners and items the next stable indices in order of
-- first appearance (existing ids are never renumbered). Items enter from an interactions file (by
-- their first event) or from an items file (when they enter the catalog, so items nobody
-- interacted with yet can be recommended from their metadata). A users file adds nothing.
-- Parameters: $batch_id, $session_prefix (hrnn_core.data.contract.SESSION_OWNER_PREFIX).
create or replace temp table batch_first_seen as
with batch_ids as (
    select 'user' as kind, coalesce(user_id, $session_prefix || session_id) as id, event_id as first_seen
    from interactions where batch_id = $batch_id
    union all
    select 'item' as kind, item_id as id, event_id as first_seen from interactions where batch_id = $batch_id
    union all
    select 'item' as kind, item_id as id, 0 as first_seen from items where batch_id = $batch_id
)

select kind, id, min(first_seen) as first_seen from batch_ids group by kind, id;

insert into user_index
select ((select coalesce(max(user_idx), -1) from user_index) + row_number() over (order by first_seen, id))::integer, id
from batch_first_seen as s anti join user_index as x on x.user_id = s.id
where s.kind = 'user';

insert into item_index
select ((select coalesce(max(item_idx), -1) from item_index) + row_number() over (order by first_seen, id))::integer, id
from batch_first_seen as s anti join item_index as x on x.item_id = s.id
where s.kind = 'item';

drop table batch_first_seen;
