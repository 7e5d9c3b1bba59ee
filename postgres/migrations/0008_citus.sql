-- On a Citus cluster (the citus extension in this database) every table a write touches is
-- distributed: users by id, and their transactions and events by user_id in the same
-- colocation group, so one user's writes and reads reach one shard. On plain PostgreSQL this
-- migration only creates the function and the schema stays as it is.
--
-- tally_distribute() is repeatable: it does nothing once users is distributed. tally migrate
-- calls it again whenever it finds the citus extension and users still local, so a database
-- migrated before Citus was installed is distributed on the next migrate.
CREATE FUNCTION tally_distribute() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'users'::regclass) THEN
        RETURN;
    END IF;

    -- Citus keeps a foreign key only between colocated tables: user_requests is distributed
    -- by its key, so its user may live on another shard. The row is written in the same
    -- transaction as the user it names, which is what the key guarded.
    ALTER TABLE user_requests DROP CONSTRAINT user_requests_user_id_fkey;

    -- A distributed table's unique keys must hold the distribution column. The uid's global
    -- uniqueness moves to transaction_uids, distributed by uid.
    ALTER TABLE transactions DROP CONSTRAINT transactions_pkey;
    ALTER TABLE transactions ADD PRIMARY KEY (user_id, uid);
    CREATE TABLE transaction_uids (
        uid     uuid   PRIMARY KEY,
        user_id bigint NOT NULL
    );
    INSERT INTO transaction_uids (uid, user_id) SELECT uid, user_id FROM transactions;

    -- Each user's events are numbered by users.event_seq; (user_id, user_seq) names one.
    -- Stream order (txid, position) stays indexed for readers of the whole outbox. The
    -- wake-up trigger would fire on the workers, where no relay listens.
    ALTER TABLE outbox DROP CONSTRAINT outbox_pkey;
    ALTER TABLE outbox ADD PRIMARY KEY (user_id, user_seq);
    CREATE INDEX outbox_stream ON outbox (txid, position);
    DROP TRIGGER outbox_notify ON outbox;

    PERFORM create_distributed_table('users', 'id');
    PERFORM create_distributed_table('transactions', 'user_id', colocate_with => 'users');
    PERFORM create_distributed_table('outbox', 'user_id', colocate_with => 'users');
    PERFORM create_distributed_table('transaction_uids', 'uid');
    PERFORM create_distributed_table('user_requests', 'key');
    -- The rows were copied to the shards; the coordinator's own copies are unreachable now.
    PERFORM truncate_local_data_after_distributing_table(t)
        FROM unnest(ARRAY['users', 'transactions', 'outbox', 'transaction_uids', 'user_requests']::regclass[]) AS t;
    -- relay_cursor, outbox_pruned and schema_migrations stay local tables on the
    -- coordinator: each is a row or a few, read and written only through the coordinator
    -- and never joined to a distributed table, so nothing gains from copies on the workers.
END
$$;

SELECT tally_distribute();
