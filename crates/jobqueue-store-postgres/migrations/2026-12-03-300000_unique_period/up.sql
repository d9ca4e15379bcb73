-- Unique periods: a job enqueued with `unique_for` holds its key for the
-- window of the period it was created in, in every state, until its row is
-- deleted. `period_key` is the key, the window's start and the period
-- (`<key>@<start>/<seconds>s`, see jobqueue_core::unique), NULL for the
-- other jobs. Held by a unique index across all states, so of two
-- processes enqueueing one window only one commits; a violation (SQLSTATE
-- 23505 on this index) is a `Duplicate`.
ALTER TABLE jobs ADD COLUMN period_key TEXT;
CREATE UNIQUE INDEX jobs_period_key ON jobs (period_key) WHERE period_key IS NOT NULL;
