#!/usr/bin/env bash
# What a batch and two-phase commit cost on Citus (docs/design.md, "Write batching is off on
# Citus"): pgbench over users' rows on a distributed tally database with at least 248 users.
#
#   bench/citus/run.sh "$DATABASE_URL"    # CLIENTS=8 DURATION=8 ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")"
url=$1
psql "$url" -qX -v ON_ERROR_STOP=1 -f setup.sql
run() {
	printf '%-7s ' "$1"
	shift
	pgbench -n -c "${CLIENTS:-8}" -j 2 -T "${DURATION:-8}" "$@" "$url" 2>/dev/null |
		grep -E 'latency average|^tps' | tr '\n' ' '
	echo
}
for _ in $(seq "${ROUNDS:-2}"); do
	run single -f single.sql
	run batch8 -f batch8.sql
	run same -f pair.sql -D pairs=bench_pairs_same
	run cross -f pair.sql -D pairs=bench_pairs_cross
done
