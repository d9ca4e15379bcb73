-- Two events of one job that one write appends one after the other (a
-- claim's `job.started` and `job.phase.started`; a phase's
-- `job.phase.completed` and the `job.phase.started` or `job.completed`
-- after it) are stored as one row: the first as before, the second, whose
-- sequence number is the row's plus one, in these columns (its job,
-- pipeline and time are the first's). NULL for a row of one event. The
-- store splits such a row when it reads it; every event keeps its own
-- number. One row and one `events_job` entry fewer per pair was about a
-- tenth of the writer's work per job.
ALTER TABLE events ADD COLUMN event_type2 TEXT;
ALTER TABLE events ADD COLUMN data2 TEXT;
