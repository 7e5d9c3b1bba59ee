#!/usr/bin/env bash
# baseline.sh: how many writes per second PostgreSQL itself allows for tally's write path.
# It creates a scratch database with tables shaped like tally's users and transactions, runs
# bench/baseline.sql under pgbench (the least SQL one write needs), prints the tps, and drops
# the database.
#
#   bench/baseline.sh [clients=16] [seconds=10] [users=1000] [script=baseline.sql]
#
# With script=tally-sql.sql it runs tally's own statements instead (uid lookup, lock, one
# insert-and-update statement with the outbox row), which separates what tally's SQL costs
# from what its HTTP and Go layers cost.
#
# With BASELINE_RATE=n it runs an open loop instead: pgbench starts n transactions a second on
# a schedule (-R), times each from its scheduled start, and this prints their percentiles.
# Connection: PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres); BASELINE_DB names the
# scratch database (tally_baseline).
set -euo pipefail

clients=${1:-16}
seconds=${2:-10}
users=${3:-1000}
script=${4:-baseline.sql}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
db=${BASELINE_DB:-tally_baseline}
here=$(cd "$(dirname "$0")" && pwd)

pgbench=$(command -v pgbench || true)
if [ -z "$pgbench" ] && [ -x /usr/lib/postgresql/15/bin/pgbench ]; then
    pgbench=/usr/lib/postgresql/15/bin/pgbench
fi
if [ -z "$pgbench" ]; then
    echo "baseline.sh: pgbench not found (Debian: apt-get install postgresql-contrib or postgresql)" >&2
    exit 1
fi

PGOPTIONS="-c client_min_messages=warning" psql -d postgres -v ON_ERROR_STOP=1 -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
trap 'psql -d postgres -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT

psql -d "$db" -v ON_ERROR_STOP=1 -q -v users="$users" <<'SQL'
CREATE TABLE baseline_users (
    id         bigint      PRIMARY KEY,
    name       text        NOT NULL,
    balance    bigint      NOT NULL DEFAULT 0 CHECK (balance >= 0),
    last_seq   bigint      NOT NULL DEFAULT 0,
    last_ts    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE baseline_transactions (
    uid             uuid        PRIMARY KEY,
    user_id         bigint      NOT NULL REFERENCES baseline_users (id),
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
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE baseline_outbox (
    position   bigint      GENERATED ALWAYS AS IDENTITY,
    id         uuid        NOT NULL,
    user_id    bigint      NOT NULL,
    user_seq   bigint      NOT NULL,
    type       text        NOT NULL,
    txid       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event      json        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, position)
);
CREATE UNIQUE INDEX baseline_timeline ON baseline_transactions (user_id, ts, seq) WHERE status = 'APPLIED';
INSERT INTO baseline_users (id, name) SELECT i, 'user ' || i FROM generate_series(1, :users) i;
VACUUM ANALYZE;
SQL

# tally's write path reads every table by key with enable_seqscan off (postgres/write.go,
# genericPlansSQL); tally-sql.sql does too: on a table analyzed while empty, its prepared uid
# lookup would otherwise scan the whole table on every write.
pgoptions=${PGOPTIONS:-}
if [ "$script" = tally-sql.sql ]; then
    pgoptions="$pgoptions -c enable_seqscan=off"
fi
open=()
if [ -n "${BASELINE_RATE:-}" ]; then
    logs=$(mktemp -d)
    trap 'rm -rf "$logs"; psql -d postgres -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
    open=(-R "$BASELINE_RATE" -l --log-prefix "$logs/tx")
fi
out=$(PGOPTIONS="$pgoptions" "$pgbench" -n -c "$clients" -j 2 -T "$seconds" -M prepared -D users="$users" "${open[@]}" -f "$here/$script" "$db" 2>&1) || {
    echo "$out" >&2
    exit 1
}
echo "$out" | grep -E '^(number of clients|duration|number of transactions actually processed|number of failed|latency average|tps)'
if [ -n "${BASELINE_RATE:-}" ]; then
    # Each log line: client, transaction, latency from the scheduled start (µs), ...
    cat "$logs"/tx.* | awk '{ print $3 / 1000 }' | sort -n | awk '
        { v[NR] = $1 }
        function at(q,  i) { i = int(q * NR + 0.999999); return v[i < 1 ? 1 : i] }
        END { printf "baseline open loop: %d transactions timed, p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms\n", NR, at(0.5), at(0.99), at(0.999) }'
fi
tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
echo "baseline: $tps tps at $clients clients, $users users"
