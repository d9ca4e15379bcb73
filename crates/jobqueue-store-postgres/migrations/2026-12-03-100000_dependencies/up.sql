-- Dependencies between jobs (`NewJob::depends_on`): one row per job and
-- dependency it still waits for. A row goes when its dependency completes
-- or is deleted, so a queued job is claimable exactly when it has no row
-- here: the claim adds `NOT EXISTS (... WHERE job_id = jobs.id)`, one probe
-- of the primary key per candidate. `on_failure` is the dependent's option
-- for when the dependency fails or is cancelled. No foreign key on
-- `depends_on`: deleting a dependency must not be refused, the store drops
-- its rows itself (and an enqueue locks each dependency `FOR SHARE` while
-- it writes rows for it, so no row is written for a job that just ended).
CREATE TABLE job_dependencies (
    job_id UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    depends_on UUID NOT NULL,
    on_failure TEXT NOT NULL CHECK (on_failure IN ('cancel', 'fail')),
    PRIMARY KEY (job_id, depends_on)
);
-- The dependents of a job that ends: released, cancelled or failed.
CREATE INDEX job_dependencies_depends_on ON job_dependencies (depends_on, job_id);
