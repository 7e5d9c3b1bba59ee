-- On Citus the outbox has no stream order across nodes (each worker has its own transaction
-- ids, and a shard move copies rows with theirs), so the relay cannot keep one cursor there.
-- Each event carries published_at instead, NULL until JetStream acknowledged it, and a partial
-- index holds only the unpublished events: the relay reads the events it has to publish, not
-- the history. On plain PostgreSQL this migration does nothing: the relay keeps its cursor and
-- the writes pay for no extra index.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    ALTER TABLE outbox ADD COLUMN published_at timestamptz;
    -- Events the relay published before this migration (up to its cursor) stay published.
    UPDATE outbox SET published_at = c.published_at
    FROM relay_cursor c
    WHERE c.name = 'jetstream' AND (outbox.txid, outbox.position) <= (c.txid, c.position);
    CREATE INDEX outbox_unpublished ON outbox (user_id, user_seq) WHERE published_at IS NULL;
END
$$;
