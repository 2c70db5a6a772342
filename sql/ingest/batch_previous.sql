-- ingestion_batches: the batch that already loaded this file (same sha256, same table), if any.
-- Parameters: $checksum, $table.
select batch_id, rows_in
from ingestion_batches
where checksum = $checksum and table_name = $table;
