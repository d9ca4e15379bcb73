-- The first schema of the jobqueue SQLite store.
--
-- Conventions: ids are hyphenated lowercase UUID text (UUIDv7 for jobs, so
-- text order is creation order); times are INTEGER unix microseconds; JSON
-- values are TEXT; enums are their string names from jobqueue-core.

CREATE TABLE jobs (
    id TEXT PRIMARY KEY NOT NULL,
    pipeline TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    priority INTEGER NOT NULL,
    unique_key TEXT,
    attempt INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    run_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    stale_at INTEGER,
    error_phase TEXT,
    error_message TEXT,
    error_attempt INTEGER,
    interrupted_phase TEXT,
    interrupted_at INTEGER,
    interrupted_percent INTEGER,
    interrupted_message TEXT,
    webhook_url TEXT,
    cancel_requested BOOLEAN NOT NULL,
    lease TEXT,
    lease_expires_at INTEGER
);

-- Claims: status = 'queued' in (priority DESC, run_at, created_at, id) order.
-- Recovery uses its status prefix.
CREATE INDEX jobs_claim ON jobs (status, priority DESC, run_at, created_at, id);
-- Lists filtered by status or pipeline, newest first.
CREATE INDEX jobs_status_id ON jobs (status, id);
CREATE INDEX jobs_pipeline_id ON jobs (pipeline, id);
-- Retention: mark_stale by finished_at, delete_stale by stale_at.
--
-- No partial indexes, on purpose: to decide whether a partial index applies,
-- SQLite's planner compares the index's WHERE with the query's and records
-- the bound parameters it looked at; rebinding any of them then forces a
-- re-prepare of the statement on every execution, which doubled the cost
-- of every statement on jobs.
CREATE INDEX jobs_finished ON jobs (finished_at, id);
CREATE INDEX jobs_stale ON jobs (stale_at, id);
-- Unique keys: at most one queued or running job holds a key. The writer
-- checks it before every enqueue and manual retry (one writer, so the check
-- and the write cannot interleave); this index serves the check.
CREATE INDEX jobs_unique_key ON jobs (unique_key);

-- One row per job and phase, in pipeline order.
CREATE TABLE phases (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    progress_percent INTEGER,
    progress_message TEXT,
    result TEXT,
    error TEXT,
    started_at INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;

-- Every event, by its store-wide sequence number (the rowid). No foreign key
-- to jobs: a job's `job.deleted` event outlives the job.
CREATE TABLE events (
    seq INTEGER PRIMARY KEY NOT NULL,
    job_id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    event_type TEXT NOT NULL,
    at INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_job ON events (job_id, seq);

-- The webhook outbox: one row per event and endpoint, with a snapshot of the
-- event, so a delivery never needs its job's rows (no foreign keys).
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    event_seq INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    target TEXT NOT NULL,
    url TEXT NOT NULL,
    event_pipeline TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_at INTEGER NOT NULL,
    event_data TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    next_attempt_at INTEGER,
    created_at INTEGER NOT NULL
);
-- Due deliveries: pending ones by next attempt.
CREATE INDEX deliveries_due ON webhook_deliveries (status, next_attempt_at, event_seq, id);
CREATE INDEX deliveries_seq ON webhook_deliveries (event_seq, id);
CREATE INDEX deliveries_job ON webhook_deliveries (job_id, event_seq, id);
