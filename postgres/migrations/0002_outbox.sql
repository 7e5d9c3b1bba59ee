-- Events for neighbouring services, written in the same transaction as the change they
-- describe. users.event_seq numbers each user's events so a consumer can order them and see
-- a gap.
ALTER TABLE users ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;

CREATE TABLE outbox (
    position   bigint      GENERATED ALWAYS AS IDENTITY,
    id         uuid        NOT NULL, -- UUIDv7, made by the writer
    user_id    bigint      NOT NULL,
    user_seq   bigint      NOT NULL,
    type       text        NOT NULL,
    -- The writing transaction's id: readers take only rows whose transaction is older than
    -- every transaction still running, so a row that commits late is never skipped.
    txid       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event      json        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Stream order is the only way events are read, pruned and counted: one index serves
    -- them all, so an event costs one index entry.
    PRIMARY KEY (txid, position)
);

-- How far the relay has published, advanced only after the broker acknowledged.
CREATE TABLE relay_cursor (
    name         text        PRIMARY KEY,
    txid         xid8        NOT NULL,
    position     bigint      NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);
