-- One user's row locked and updated, as a request recorded alone.
\set u random(1, 248)
BEGIN;
SELECT balance FROM users WHERE id = :u FOR UPDATE;
UPDATE users SET last_seq = last_seq WHERE id = :u;
COMMIT;
