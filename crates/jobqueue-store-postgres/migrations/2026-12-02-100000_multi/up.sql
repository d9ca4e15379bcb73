-- Singleton work among the processes sharing the database: one leader per
-- role (retention, lease rescue), holding it until `expires_at` unless it
-- renews it. A leader that dies is replaced by the first process to ask
-- after its term ended. Times come from the callers' clocks, like every
-- other time in the store.
CREATE TABLE leaders (
    role TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- Who runs the current attempt (the claiming process's name), for
-- operators; NULL before the first claim.
ALTER TABLE jobs ADD COLUMN worker TEXT;
