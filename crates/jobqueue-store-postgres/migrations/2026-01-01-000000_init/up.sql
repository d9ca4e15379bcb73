-- The first schema of the jobqueue PostgreSQL store.
--
-- Conventions: ids are UUIDs (UUIDv7 for jobs, so their order is creation
-- order); times are TIMESTAMPTZ (microseconds, the precision every store
-- keeps); JSON values are JSON, which keeps the text as written, so a value
-- reads back exactly (JSONB would reorder object keys, drop duplicate keys
-- and rewrite numbers); enums are their string names from jobqueue-core.
--
-- The tables live in the store's schema (`search_path`), so one database can
-- hold several queues, one per schema.

CREATE TABLE jobs (
    id UUID PRIMARY KEY,
    pipeline TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'stale')),
    input JSON NOT NULL,
    priority INTEGER NOT NULL,
    unique_key TEXT,
    attempt BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    run_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    stale_at TIMESTAMPTZ,
    error_phase TEXT,
    error_message TEXT,
    error_attempt BIGINT,
    interrupted_phase TEXT,
    interrupted_at TIMESTAMPTZ,
    interrupted_percent SMALLINT,
    interrupted_message TEXT,
    webhook_url TEXT,
    cancel_requested BOOLEAN NOT NULL,
    lease UUID,
    lease_expires_at TIMESTAMPTZ
);

-- Claims: the queued jobs in claim order (priority DESC, run_at, created_at,
-- id), which the claim walks until it has its batch. Partial on the literal
-- status, which the claim repeats as a literal (a bound parameter would not
-- prove the predicate to a generic plan).
CREATE INDEX jobs_claim ON jobs (priority DESC, run_at, created_at, id)
    WHERE status = 'queued';
-- Recovery: running jobs by lease expiry.
CREATE INDEX jobs_running ON jobs (lease_expires_at, id) WHERE status = 'running';
-- Unique keys: at most one queued or running job holds a key. A violation
-- (SQLSTATE 23505 on this index) is a `Duplicate`.
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE status IN ('queued', 'running');
-- Retention: mark_stale by finished_at, delete_stale by stale_at.
CREATE INDEX jobs_finished ON jobs (finished_at, id)
    WHERE status IN ('completed', 'failed', 'cancelled');
CREATE INDEX jobs_stale ON jobs (stale_at, id) WHERE status = 'stale';
-- Lists filtered by status or pipeline, newest first.
CREATE INDEX jobs_status_id ON jobs (status, id);
CREATE INDEX jobs_pipeline_id ON jobs (pipeline, id);

-- One row per job and phase, in pipeline order.
CREATE TABLE phases (
    job_id UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    attempts BIGINT NOT NULL,
    progress_percent SMALLINT,
    progress_message TEXT,
    result JSON,
    error TEXT,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (job_id, idx)
);

-- Every event, by its store-wide sequence number. No foreign key to jobs: a
-- job's `job.deleted` event outlives the job.
CREATE TABLE events (
    seq BIGINT PRIMARY KEY,
    job_id UUID NOT NULL,
    pipeline TEXT NOT NULL,
    event_type TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    data JSON NOT NULL
);
CREATE INDEX events_job ON events (job_id, seq);
-- Retention prunes the `job.deleted` events of long-deleted jobs by age.
CREATE INDEX events_tombstones ON events (at, seq) WHERE event_type = 'job.deleted';

-- The webhook outbox: one row per event and endpoint, with a snapshot of the
-- event, so a delivery never needs its job's rows (no foreign keys).
CREATE TABLE webhook_deliveries (
    id UUID PRIMARY KEY,
    event_seq BIGINT NOT NULL,
    job_id UUID NOT NULL,
    target TEXT NOT NULL CHECK (target IN ('endpoint', 'job')),
    url TEXT NOT NULL,
    event_pipeline TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_at TIMESTAMPTZ NOT NULL,
    event_data JSON NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    next_attempt_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL
);
-- Due deliveries: pending ones by next attempt.
CREATE INDEX deliveries_due ON webhook_deliveries (next_attempt_at, event_seq, id)
    WHERE status = 'pending';
CREATE INDEX deliveries_seq ON webhook_deliveries (event_seq, id);
CREATE INDEX deliveries_job ON webhook_deliveries (job_id, event_seq, id);
-- Retention prunes ended deliveries (delivered or failed) by age.
CREATE INDEX deliveries_ended ON webhook_deliveries (created_at, id)
    WHERE status <> 'pending';

-- The event counter: the highest sequence number handed out. It only goes
-- up: events are pruned, numbers are never reused.
CREATE TABLE store_state (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    last_seq BIGINT NOT NULL
);
INSERT INTO store_state (id, last_seq) VALUES (1, 0);

-- Numbers handed out to transactions that have not committed yet. A
-- transaction about to append events takes its numbers from the counter and
-- records them here in one short statement of its own, committed at once;
-- its own commit inserts the events and deletes this row. Readers read
-- events only below the first number of a row whose owner may still commit
-- (its transaction id, `owner`, is in progress, or committed after the
-- reader's snapshot), so no number can become visible behind a reader.
CREATE TABLE seq_reservations (
    first_seq BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    owner BIGINT NOT NULL
);
