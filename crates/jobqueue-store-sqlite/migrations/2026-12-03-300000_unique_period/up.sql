-- Unique periods: a job enqueued with `unique_for` holds its key for the
-- window of the period it was created in, in every state, until its row is
-- deleted. `period_key` is the key, the window's start and the period
-- (`<key>@<start>/<seconds>s`, see jobqueue_core::unique), NULL for the
-- other jobs. The writer looks a key up before it inserts (one writer, so
-- the look and the insert cannot interleave); the unique index serves the
-- look and holds the rule should anything else write the file.
ALTER TABLE jobs ADD COLUMN period_key TEXT;
CREATE UNIQUE INDEX jobs_period_key ON jobs (period_key) WHERE period_key IS NOT NULL;
