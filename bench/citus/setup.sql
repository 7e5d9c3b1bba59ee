-- Pairs of users on one worker (pairs_same) and on two workers (pairs_cross), as local tables
-- on the coordinator, for pair.sql. Needs users 1..248 (tally bench's setup, or
-- the demo plus a load, makes them).
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench_user_worker, bench_pairs_same, bench_pairs_cross;
CREATE TABLE bench_user_worker AS
    SELECT u.id, p.nodeport FROM (SELECT id FROM users WHERE id <= 248) u,
    LATERAL (SELECT nodeport FROM pg_dist_shard_placement
             WHERE shardid = get_shard_id_for_distribution_column('users', u.id::text)) p;
CREATE TABLE bench_pairs_same AS
    SELECT row_number() OVER (ORDER BY a) AS i, a, b FROM (
        SELECT a.id AS a,
            (SELECT min(b.id) FROM bench_user_worker b WHERE b.nodeport = a.nodeport AND b.id > a.id) AS b
        FROM bench_user_worker a) p
    WHERE b IS NOT NULL;
CREATE TABLE bench_pairs_cross AS
    SELECT row_number() OVER (ORDER BY a) AS i, a, b FROM (
        SELECT a.id AS a,
            (SELECT min(b.id) FROM bench_user_worker b WHERE b.nodeport <> a.nodeport AND b.id > a.id) AS b
        FROM bench_user_worker a) p
    WHERE b IS NOT NULL;
