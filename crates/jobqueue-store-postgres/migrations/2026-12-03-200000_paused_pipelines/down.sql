-- Back to job ids that are never NULL: the events and deliveries about a
-- pipeline go, since the older schema cannot hold them.
DELETE FROM webhook_deliveries WHERE job_id IS NULL;
ALTER TABLE webhook_deliveries ALTER COLUMN job_id SET NOT NULL;
DELETE FROM events WHERE job_id IS NULL;
ALTER TABLE events ALTER COLUMN job_id SET NOT NULL;
DROP TABLE paused_pipelines;
