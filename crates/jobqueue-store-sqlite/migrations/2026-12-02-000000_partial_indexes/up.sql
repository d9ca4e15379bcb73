-- Indexes hold only the rows their queries look for, so the writes that
-- do not concern them (most inserts and most status changes) skip their
-- b-trees. Measured per job on the noop_1phase benchmark; see
-- docs/performance.md.

-- The claim looks only at queued jobs (its statement says
-- `status = 'queued'` literally, so the planner can use this index). A job
-- leaves this index when it is claimed and comes back only when queued
-- again. The status stays its first column so that the planner sees the
-- equality and the order both served, as with the full index before.
DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (status, priority DESC, run_at, created_at, id)
    WHERE status = 'queued';

-- Retention asks for `finished_at < ?` and `stale_at < ?`, unique keys for
-- `unique_key = ?`: each implies the column is not NULL, which it is for
-- every job that has not ended (and for every job without a key).
DROP INDEX jobs_finished;
CREATE INDEX jobs_finished ON jobs (finished_at, id) WHERE finished_at IS NOT NULL;
DROP INDEX jobs_stale;
CREATE INDEX jobs_stale ON jobs (stale_at, id) WHERE stale_at IS NOT NULL;
DROP INDEX jobs_unique_key;
CREATE INDEX jobs_unique_key ON jobs (unique_key) WHERE unique_key IS NOT NULL;
