-- Warehouse schema: the base tables that ingest writes. Derived tables have their own files.
-- Idempotent: every statement is "if not exists", so it runs on every connection open.

-- One row per accepted interaction. event_id is assigned at ingest in file order, so it is both
-- the event's stable identity and the tie-breaker for events with equal timestamps.
create table if not exists interactions (
    event_id     bigint not null,    -- unique (checked by checks/interactions_unique.sql)
    user_id      varchar,            -- null for anonymous logs (then session_id is set)
    session_id   varchar,            -- given sessions; null when sessions are inferred
    item_id      varchar not null,
    "timestamp"  double not null,    -- epoch seconds (UTC)
    event_type   varchar not null,
    event_value  double,             -- feedback value (rating, price, dwell); null when absent
    impression   varchar,            -- items shown at that request, "a|b|c"
    context      map(varchar, varchar), -- any other column: request context (device, locale...)
    batch_id     bigint not null     -- ingestion_batches.batch_id that loaded it
);

-- Users and items: attributes split by kind. Categorical values may be multi-valued ("a|b").
create table if not exists users (
    user_id      varchar primary key,
    categorical  map(varchar, varchar),
    numeric      map(varchar, double),
    batch_id     bigint not null
);

create table if not exists items (
    item_id             varchar primary key,
    categorical         map(varchar, varchar),
    numeric             map(varchar, double),
    creation_timestamp  double,      -- epoch seconds; null when unknown
    batch_id            bigint not null
);

-- Rows that broke the contract, with the reason. Nothing is silently dropped.
create table if not exists quarantine (
    batch_id     bigint not null,
    table_name   varchar not null,
    source_file  varchar not null,
    row_number   bigint,             -- data row (1 = first row after the header); null if unknown
    reason       varchar not null,
    raw          varchar             -- the row as read (JSON object or the raw CSV line)
);

-- One row per processed file: what came in and where it went.
create table if not exists ingestion_batches (
    batch_id     bigint primary key,
    table_name   varchar not null,
    source_file  varchar not null,
    checksum     varchar not null,   -- sha256 of the file's bytes
    rows_in      bigint not null,
    accepted     bigint not null,
    duplicates   bigint not null,
    quarantined  bigint not null,
    started_at   timestamp not null,
    finished_at  timestamp not null
);

-- Stable integer indices. A run appends new ids after the current maximum; existing ids are
-- never renumbered, so a model's embedding row for an id stays valid across nightly runs.
create table if not exists user_index (
    user_idx     integer primary key,
    user_id      varchar not null unique   -- the sequence owner: hrnn_core.data.contract.owner_id
);

create table if not exists item_index (
    item_idx     integer primary key,
    item_id      varchar not null unique
);

-- Model registry history. Artifacts live in the BentoML model store (tag = name:version);
-- these tables record what was registered and every change of champion, for queries and
-- plots. The champion is the tag of the latest 'promote' or 'rollback' event.
create table if not exists model_registry (
    tag                  varchar primary key,  -- BentoML tag, e.g. hrnn-meta:lyvwjtxki6wsgax4
    kind                 varchar not null,     -- hrnn | pop | recent_pop | bpr | fm | gru
    registered_at        timestamp not null,
    data_interval_start  double,               -- epoch seconds of the training data interval
    data_interval_end    double,
    snapshot_id          varchar,
    protocol             varchar,              -- evaluation protocol of the metrics
    metrics              json,                 -- {"ndcg@10": ..., ...}
    code_version         varchar
);

create table if not exists model_events (
    event_seq    bigint not null,              -- order of events
    happened_at  timestamp not null,
    tag          varchar not null,
    action       varchar not null,             -- register | promote | reject | rollback
    previous     varchar,                      -- champion before this event
    note         varchar
);
