-- users: load one batch's accepted rows (a later file's row replaces an earlier one of the same
-- user). Returns the number of rows loaded. Parameters: $batch_id.
insert or replace into users
with accepted as (
    select t.*
    from typed_rows as t
    anti join dup_rows as d using (__row)
    anti join bad_rows as b using (__row)
),

final as (
    select entity_id as user_id, categorical, numeric, $batch_id
    from accepted
)

select * from final;

select count(*) from users where batch_id = $batch_id;
