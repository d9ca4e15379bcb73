-- History the store keeps outside the rows of live jobs, so that it neither
-- reuses a number nor grows without bound.

-- The highest event sequence number ever handed out. Events are pruned
-- (retention), so max(events.seq) could go back and numbers would be used
-- twice; this row only goes up. The writer updates it with every group
-- commit that appended events.
CREATE TABLE store_state (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last_seq INTEGER NOT NULL
);
INSERT INTO store_state (id, last_seq) SELECT 1, coalesce(max(seq), 0) FROM events;

-- The `job.deleted` events that outlive their jobs, by when the job was
-- deleted, so retention prunes them without scanning every event.
CREATE TABLE tombstones (
    seq INTEGER PRIMARY KEY NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX tombstones_at ON tombstones (at, seq);
INSERT INTO tombstones (seq, at) SELECT seq, at FROM events WHERE event_type = 'job.deleted';

-- Retention prunes ended deliveries (delivered or failed) by age.
CREATE INDEX deliveries_ended ON webhook_deliveries (status, created_at, id);
