DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (status, priority DESC, run_at, created_at, id);
DROP INDEX jobs_finished;
CREATE INDEX jobs_finished ON jobs (finished_at, id);
DROP INDEX jobs_stale;
CREATE INDEX jobs_stale ON jobs (stale_at, id);
DROP INDEX jobs_unique_key;
CREATE INDEX jobs_unique_key ON jobs (unique_key);
