-- tally's write path as plain SQL, for pgbench: the statements one deposit runs, in the same
-- transaction, on tables shaped like tally's (see baseline.sh). Compared with baseline.sql it
-- adds the uid lookup, the outbox row and the stored answer; compared with tally over HTTP it
-- leaves out HTTP, JSON and Go.
\set user_id random(1, :users)
\set r random(1, 1000000000)
BEGIN;
SELECT balance, last_seq FROM baseline_users WHERE id = :user_id FOR UPDATE \gset
-- The uid lookup, as an index probe for a uid that is not there (a new transaction).
SELECT uid FROM baseline_transactions WHERE uid = md5(:r::text)::uuid;
WITH stored AS (
    INSERT INTO baseline_transactions (uid, user_id, seq, type, amount, ts, timestamp_given, status,
        balance_after, response_status, response_body)
    VALUES (gen_random_uuid(), :user_id, :last_seq + 1, 'DEPOSIT', 100, clock_timestamp(), false, 'APPLIED',
        :balance + 100, 200, convert_to(repeat('x', 260), 'UTF8'))),
events AS (
    INSERT INTO baseline_outbox (id, user_id, user_seq, type, event)
    VALUES (gen_random_uuid(), :user_id, :last_seq + 1, 'transaction.applied', ('{"data":"' || repeat('x', 330) || '"}')::json))
UPDATE baseline_users SET balance = balance + 100, last_seq = last_seq + 1, last_ts = clock_timestamp()
    WHERE id = :user_id;
COMMIT;
