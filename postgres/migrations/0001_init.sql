-- Users hold the current balance, the lock that serializes their writes, and the counters
-- the write path needs to decide a request without reading the history.
CREATE TABLE users (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    balance    bigint      NOT NULL DEFAULT 0 CHECK (balance >= 0),
    last_seq   bigint      NOT NULL DEFAULT 0,
    last_ts    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per uid, applied or refused. uid is the idempotency key; the stored response is
-- what every retry gets back.
CREATE TABLE transactions (
    uid             uuid        PRIMARY KEY,
    user_id         bigint      NOT NULL REFERENCES users (id),
    seq             bigint      NOT NULL,
    type            text        NOT NULL CHECK (type IN ('DEPOSIT', 'WITHDRAW')),
    amount          bigint      NOT NULL CHECK (amount > 0),
    ts              timestamptz NOT NULL,
    timestamp_given boolean     NOT NULL,
    status          text        NOT NULL CHECK (status IN ('APPLIED', 'REJECTED')),
    reason          text,
    balance_after   bigint      CHECK (balance_after >= 0),
    response_status smallint    NOT NULL,
    response_body   bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'APPLIED') = (balance_after IS NOT NULL)),
    CHECK ((status = 'REJECTED') = (reason IS NOT NULL))
);

-- The timeline: balance at an instant is one probe for the last applied row at or before it.
CREATE UNIQUE INDEX transactions_timeline ON transactions (user_id, ts, seq) WHERE status = 'APPLIED';
