-- Eight users' rows locked and updated in one transaction, as a batch of eight, over every worker.
\set u1 random(1, 31)
\set u2 random(32, 62)
\set u3 random(63, 93)
\set u4 random(94, 124)
\set u5 random(125, 155)
\set u6 random(156, 186)
\set u7 random(187, 217)
\set u8 random(218, 248)
BEGIN;
SELECT balance FROM users WHERE id = :u1 FOR UPDATE;
UPDATE users SET last_seq = last_seq WHERE id = :u1;
SELECT balance FROM users WHERE id = :u2 FOR UPDATE;
UPDATE users SET last_seq = last_seq WHERE id = :u2;
SELECT balance FROM users WHERE id = :u3 FOR UPDATE;
UPDATE users SET last_seq = last_seq WHERE id = :u3;
SELECT balance FROM users WHERE id = :u4 FOR UPDATE;
UPDATE users SET last_seq = last_seq WHERE id = :u4;
SELECT balance FROM users WHERE id = :u5 FOR UPDATE;
UPDATE users SET last_seq = last_seq WHERE id = :u5;
SELECT balance FROM users WHERE id = :u6 FOR UPDATE;
UPDATE users SET last_seq = last_seq WHERE id = :u6;
SELECT balance FROM users WHERE id = :u7 FOR UPDATE;
UPDATE users SET last_seq = last_seq WHERE id = :u7;
SELECT balance FROM users WHERE id = :u8 FOR UPDATE;
UPDATE users SET last_seq = last_seq WHERE id = :u8;
COMMIT;
