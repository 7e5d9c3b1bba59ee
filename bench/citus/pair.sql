-- Two users' rows locked and updated in one transaction: with -D pairs=bench_pairs_same on one
-- worker, with -D pairs=bench_pairs_cross on two (two-phase commit).
\set k random(1, 100)
SELECT a, b FROM :pairs WHERE i = :k \gset
BEGIN;
SELECT balance FROM users WHERE id = :a FOR UPDATE;
UPDATE users SET last_seq = last_seq WHERE id = :b;
UPDATE users SET last_seq = last_seq WHERE id = :a;
COMMIT;
