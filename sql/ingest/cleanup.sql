-- Drop one file's work tables (temporary, so a failed ingest's are gone with its connection).
drop view if exists accepted_rows;
drop table if exists raw_rows;
drop table if exists raw_rejects;
drop table if exists raw_json;
drop table if exists typed_rows;
drop table if exists dup_rows;
drop table if exists bad_rows;
drop table if exists guard_rows;
drop table if exists hrnn_rejects;
drop table if exists hrnn_reject_scans;
