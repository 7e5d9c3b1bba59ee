-- One row per Idempotency-Key of a user creation, kept forever like a transaction's uid. The
-- key alone is the primary key, so the table shards by it as transactions do by uid. The
-- stored response is what every retry with the key gets back; name is what a retry must send
-- again to get it.
CREATE TABLE user_requests (
    key             text        PRIMARY KEY CHECK (key ~ '^[!-~]{1,255}$'),
    name            text        NOT NULL,
    user_id         bigint      NOT NULL REFERENCES users (id),
    response_status smallint    NOT NULL,
    response_body   bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
