-- items: load one batch's accepted rows (accepted_rows; a later file's row replaces an earlier one
-- of the same item); new catalog items are indexed next (index_new_ids.sql). Returns the number of
-- rows loaded. Parameters: $batch_id.
insert or replace into items
with final as (
    select entity_id as item_id, categorical, numeric, cts, $batch_id
    from accepted_rows
)

select * from final;

select count(*) from items where batch_id = $batch_id;
