DROP INDEX jobs_period_key;
ALTER TABLE jobs DROP COLUMN period_key;
