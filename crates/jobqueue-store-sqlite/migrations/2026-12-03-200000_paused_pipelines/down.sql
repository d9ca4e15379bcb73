-- Back to job ids that are never NULL: the events and deliveries about a
-- pipeline go, since the older schema cannot hold them.
DROP TABLE paused_pipelines;

DELETE FROM events WHERE job_id IS NULL;
CREATE TABLE events_old (
    seq INTEGER PRIMARY KEY NOT NULL,
    job_id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    event_type TEXT NOT NULL,
    at INTEGER NOT NULL,
    data TEXT NOT NULL
);
INSERT INTO events_old (seq, job_id, pipeline, event_type, at, data)
    SELECT seq, job_id, pipeline, event_type, at, data FROM events;
DROP TABLE events;
ALTER TABLE events_old RENAME TO events;
CREATE INDEX events_job ON events (job_id, seq);

DELETE FROM webhook_deliveries WHERE job_id IS NULL;
CREATE TABLE webhook_deliveries_old (
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
INSERT INTO webhook_deliveries_old
    SELECT id, event_seq, job_id, target, url, event_pipeline, event_type, event_at,
        event_data, status, attempts, last_status, last_error, next_attempt_at, created_at
    FROM webhook_deliveries;
DROP TABLE webhook_deliveries;
ALTER TABLE webhook_deliveries_old RENAME TO webhook_deliveries;
CREATE INDEX deliveries_due ON webhook_deliveries (status, next_attempt_at, event_seq, id);
CREATE INDEX deliveries_seq ON webhook_deliveries (event_seq, id);
CREATE INDEX deliveries_job ON webhook_deliveries (job_id, event_seq, id);
CREATE INDEX deliveries_ended ON webhook_deliveries (status, created_at, id);
