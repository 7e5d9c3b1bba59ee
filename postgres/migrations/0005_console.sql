-- The console's reads. Users are found by name prefix in byte order (COLLATE "C"), so a
-- prefix is one range of this index whatever the database's collation, and pages resume
-- after (name, id).
CREATE INDEX users_name ON users (name COLLATE "C", id);

-- Refused transactions in timeline order, for the history's REJECTED and ALL listings. It
-- is partial: applied rows, nearly all of them, are on transactions_timeline and cost this
-- index nothing.
CREATE INDEX transactions_refused ON transactions (user_id, ts, seq) WHERE status = 'REJECTED';
