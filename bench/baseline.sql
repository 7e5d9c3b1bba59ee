-- The least SQL one tally write needs, for pgbench: lock and update one user's balance,
-- insert one transactions row like tally's (with its stored answer), commit. Run by
-- baseline.sh against its own tables; -D users=N sets how many users the writes spread over.
\set user_id random(1, :users)
BEGIN;
UPDATE baseline_users SET balance = balance + 100, last_seq = last_seq + 1, last_ts = clock_timestamp()
    WHERE id = :user_id RETURNING last_seq, balance, last_ts \gset
INSERT INTO baseline_transactions (uid, user_id, seq, type, amount, ts, timestamp_given, status,
        balance_after, response_status, response_body)
    VALUES (gen_random_uuid(), :user_id, :last_seq, 'DEPOSIT', 100, :last_ts, false, 'APPLIED',
        :balance, 200, convert_to(repeat('x', 260), 'UTF8'));
COMMIT;
