-- Who runs the current attempt: the name the claim gave
-- (`ClaimRequest::worker`, the runtime's process name), for operators, as
-- the PostgreSQL store records it; NULL before the first claim, or when the
-- claim gave none.
ALTER TABLE jobs ADD COLUMN worker TEXT;
