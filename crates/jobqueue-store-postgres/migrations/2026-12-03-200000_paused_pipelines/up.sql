-- Paused pipelines, and events about a pipeline rather than a job.

-- The pipelines whose queued jobs no claim hands out, in any process, until
-- resumed. A row per paused pipeline; resuming deletes it. The claim reads
-- this table in the statement that claims, so a pause committed by one
-- process holds for every other's next claim.
CREATE TABLE paused_pipelines (
    pipeline TEXT PRIMARY KEY,
    paused_at TIMESTAMPTZ NOT NULL
);

-- `pipeline.paused` and `pipeline.resumed` are about a pipeline: their
-- `job_id` is NULL (and so is their deliveries').
ALTER TABLE events ALTER COLUMN job_id DROP NOT NULL;
ALTER TABLE webhook_deliveries ALTER COLUMN job_id DROP NOT NULL;
