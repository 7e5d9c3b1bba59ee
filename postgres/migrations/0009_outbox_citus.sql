-- On Citus the outbox has no stream order across nodes (each worker has its own transaction
-- ids, and a shard move copies rows with theirs), so the relay cannot keep one cursor there.
-- Each event carries published_at instead, NULL until JetStream acknowledged it, and a partial
-- index holds only the unpublished events: the relay reads the events it has to publish, not
-- the history. On plain PostgreSQL this migration only creates the function: the relay keeps
-- its cursor and writes pay for no extra index.
--
-- tally_distribute_outbox() is repeatable, and tally migrate calls it after tally_distribute()
-- (0008), so a database distributed after this migration ran gets the column then.
CREATE FUNCTION tally_distribute_outbox() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    published_txid xid8;
    published_position bigint;
BEGIN
    -- Separate statements: pg_dist_partition exists only where Citus is.
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'outbox'::regclass)
       OR EXISTS (SELECT 1 FROM pg_attribute
                  WHERE attrelid = 'outbox'::regclass AND attname = 'published_at' AND NOT attisdropped) THEN
        RETURN;
    END IF;
    ALTER TABLE outbox ADD COLUMN published_at timestamptz;
    -- What the relay published before, up to its cursor, stays published. The cursor goes in
    -- as values: Citus sends them to every shard.
    SELECT txid, position INTO published_txid, published_position FROM relay_cursor WHERE name = 'jetstream';
    IF FOUND THEN
        UPDATE outbox SET published_at = now()
        WHERE (txid, position) <= (published_txid, published_position);
    END IF;
    CREATE INDEX outbox_unpublished ON outbox (user_id, user_seq) WHERE published_at IS NULL;
    -- Nothing reads the outbox in stream order on Citus (the relay reads the partial index,
    -- the feed a range of a user's primary key, pruning published_at): an event there pays
    -- for two index entries, one more than on one PostgreSQL, not three.
    DROP INDEX IF EXISTS outbox_stream;
END
$$;

SELECT tally_distribute_outbox();
