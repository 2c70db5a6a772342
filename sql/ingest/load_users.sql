-- users: load one batch's accepted rows (accepted_rows; a later file's row replaces an earlier one of the same
-- user). Returns the number of rows loaded. Parameters: $batch_id.
insert or replace into users
with final as (
    select entity_id as user_id, categorical, numeric, $batch_id
    from accepted_rows
)

select * from final;

select count(*) from users where batch_id = $batch_id;
