-- ingestion_batches: the id the next batch gets.
select coalesce(max(batch_id), 0) + 1 from ingestion_batches;
