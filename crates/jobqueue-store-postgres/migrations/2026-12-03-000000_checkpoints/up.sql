-- The last checkpoint a phase saved while it ran (its own state, as JSON,
-- like results), which its next run resumes from; NULL when it saved none,
-- and again once the phase completed.
ALTER TABLE phases ADD COLUMN checkpoint JSON;
