-- ingestion_batches: record one processed file and where its rows went.
-- Parameters: $batch_id, $table, $source, $checksum, $rows_in, $accepted, $duplicates,
-- $quarantined, $started (epoch seconds).
insert into ingestion_batches
select
    $batch_id, $table, $source, $checksum, $rows_in, $accepted, $duplicates, $quarantined,
    to_timestamp($started), now();
