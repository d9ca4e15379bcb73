ALTER TABLE phases DROP COLUMN checkpoint;
