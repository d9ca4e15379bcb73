-- Dependencies between jobs (`NewJob::depends_on`): one row per job and
-- dependency it still waits for. A row goes when its dependency completes
-- or is deleted, so a queued job is claimable exactly when it has no row
-- here: the claim adds `NOT EXISTS (... WHERE job_id = jobs.id)`, one probe
-- of the primary key per candidate. `on_failure` is the dependent's option
-- ('cancel' or 'fail') for when the dependency fails or is cancelled.
-- No foreign key on `depends_on`: deleting a dependency must not be
-- refused, the store drops its rows itself.
CREATE TABLE job_dependencies (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    depends_on TEXT NOT NULL,
    on_failure TEXT NOT NULL,
    PRIMARY KEY (job_id, depends_on)
) WITHOUT ROWID;
-- The dependents of a job that ends: released, cancelled or failed.
CREATE INDEX job_dependencies_depends_on ON job_dependencies (depends_on, job_id);
