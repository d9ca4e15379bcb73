-- Paused pipelines, and events about a pipeline rather than a job.

-- The pipelines whose queued jobs no claim hands out, until resumed. A row
-- per paused pipeline; resuming deletes it. The claim reads this table in
-- the same statement that claims.
CREATE TABLE paused_pipelines (
    pipeline TEXT PRIMARY KEY NOT NULL,
    paused_at INTEGER NOT NULL
) WITHOUT ROWID;

-- `pipeline.paused` and `pipeline.resumed` are about a pipeline: their
-- `job_id` is NULL. SQLite cannot drop a NOT NULL constraint, so both
-- tables that hold an event's job id are rebuilt with the same columns in
-- the same order (rows, rowids and sequence numbers kept) and their indexes
-- made again.
CREATE TABLE events_new (
    seq INTEGER PRIMARY KEY NOT NULL,
    job_id TEXT,
    pipeline TEXT NOT NULL,
    event_type TEXT NOT NULL,
    at INTEGER NOT NULL,
    data TEXT NOT NULL
);
INSERT INTO events_new (seq, job_id, pipeline, event_type, at, data)
    SELECT seq, job_id, pipeline, event_type, at, data FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_job ON events (job_id, seq);

CREATE TABLE webhook_deliveries_new (
    id TEXT PRIMARY KEY NOT NULL,
    event_seq INTEGER NOT NULL,
    job_id TEXT,
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
INSERT INTO webhook_deliveries_new
    SELECT id, event_seq, job_id, target, url, event_pipeline, event_type, event_at,
        event_data, status, attempts, last_status, last_error, next_attempt_at, created_at
    FROM webhook_deliveries;
DROP TABLE webhook_deliveries;
ALTER TABLE webhook_deliveries_new RENAME TO webhook_deliveries;
CREATE INDEX deliveries_due ON webhook_deliveries (status, next_attempt_at, event_seq, id);
CREATE INDEX deliveries_seq ON webhook_deliveries (event_seq, id);
CREATE INDEX deliveries_job ON webhook_deliveries (job_id, event_seq, id);
CREATE INDEX deliveries_ended ON webhook_deliveries (status, created_at, id);
