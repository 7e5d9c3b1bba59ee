#!/usr/bin/env bash
# cpu.sh: the processor time one write costs, process by process, in the steady state of a
# closed-loop run: the pgbench baseline (pgbench, its PostgreSQL backends), tally with group
# commit (wrk, tally serve, its backends) and the HTTP layer alone
# (/healthz: load generator and tally serve). On a machine whose cores the load generator,
# tally and PostgreSQL share, writes/s can only exceed the baseline's by the ratio of these
# sums; the figures say where the time goes whatever else the machine is doing.
#
#   bench/cpu.sh [clients=64] [seconds=12]
#
# Prints a table: system, process, CPU microseconds per operation. Backends
# only: PostgreSQL's shared background processes (WAL writer, checkpointer) are left out on
# both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-64}
secs=${2:-12}
admin_url=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
export PGSSLMODE=disable
if ! command -v wrk >/dev/null; then
	echo "cpu.sh: wrk not found; tally is driven by it (Debian: apt-get install wrk)" >&2
	exit 1
fi
db_url() { echo "$admin_url" | sed -E "s#/[^/?]+(\?|$)#/$1\1#"; }
make -s build

hz=$(getconf CLK_TCK)
# snap NAME PID...: one "NAME PID TICKS" line per process, its user+system clock ticks so far.
snap() {
	local name=$1 s p
	shift
	for p in "$@"; do
		s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
		s=${s##*) }
		# shellcheck disable=SC2086
		set -- $s
		echo "$name $p $((${12} + ${13}))"
	done
}
backends() { pgrep -f "postgres: .*$1 " || true; }
# sample PID NAME=PIDFUNC...: snapshots of each process set every 0.1 s while PID runs, then
# NAME TICKS lines: the ticks each set used, each process from its first snapshot to its last.
sample() {
	local pid=$1 spec
	shift
	: >/tmp/tally-cpu.samples
	while kill -0 "$pid" 2>/dev/null; do
		for spec in "$@"; do snap "${spec%%=*}" $(${spec#*=}); done >>/tmp/tally-cpu.samples
		sleep 0.1
	done
	awk '!($2 in first) { first[$2] = $3; name[$2] = $1 } { last[$2] = $3 }
		END { for (p in first) t[name[p]] += last[p] - first[p]; for (k in t) print k, t[k] }' /tmp/tally-cpu.samples
}
report() { # system operations: reads NAME TICKS lines
	awk -v sys="$1" -v ops="$2" -v hz="$hz" '{ printf "%s\t%s\t%.0f\n", sys, $1, $2 / hz / ops * 1e6 }'
}

# 1. The baseline: pgbench and its backends from pgbench's start to its end.
baseline_backends() { backends tally_cpu_baseline; }
BASELINE_DB=tally_cpu_baseline bench/baseline.sh "$clients" "$secs" >/tmp/tally-cpu-baseline.txt 2>&1 &
bl=$!
# baseline.sh's own pgbench, found by its database.
until pgbench_pid=$(pgrep -n -f "pgbench .*tally_cpu_baseline"); do sleep 0.01; done
pgbench_pids() { echo "$pgbench_pid"; }
sample "$pgbench_pid" pgbench=pgbench_pids postgres=baseline_backends >/tmp/tally-cpu-baseline.ticks
wait "$bl"
n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' /tmp/tally-cpu-baseline.txt)
report "pgbench baseline" "$n" </tmp/tally-cpu-baseline.ticks
sed -n 's/^baseline: /# baseline: /p' /tmp/tally-cpu-baseline.txt

# 2. tally with group commit, and /healthz on the same server.
psql -q "$admin_url" -c "DROP DATABASE IF EXISTS tally_cpu WITH (FORCE)" -c "CREATE DATABASE tally_cpu" 2>/dev/null
url="$(db_url tally_cpu)"
case "$url" in *\?*) url="$url&pool_max_conns=16" ;; *) url="$url?pool_max_conns=16" ;; esac
DATABASE_URL=$url PORT=18090 ADMIN_PORT=0 LOG_LEVEL=warn bin/tally serve >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; psql -q "$admin_url" -c "DROP DATABASE IF EXISTS tally_cpu WITH (FORCE)" >/dev/null 2>&1' EXIT
until curl -sf http://127.0.0.1:18090/readyz >/dev/null; do sleep 0.05; done
writes="--deposit 50 --withdraw 50 --balance 0 --balance-at 0 --retry-share 0 --backdate-share 0 --users 1000"
# A first short run creates the users, so that the measured one starts loading at once.
bin/tally bench --url http://127.0.0.1:18090 --workers "$clients" --duration 2s $writes >/dev/null 2>&1
serve_pid() { echo "$server"; }
tally_backends() { backends tally_cpu; }
# The load comes from wrk, a client in C as pgbench is (bench/wrk-writes.lua writes to the users
# the run above created, 1..1000).
for what in writes healthz; do
	if [ "$what" = writes ]; then
		target=(-s bench/wrk-writes.lua http://127.0.0.1:18090)
	else
		target=(http://127.0.0.1:18090/healthz)
	fi
	wrk -t"$((clients < 2 ? clients : 2))" -c"$clients" -d"${secs}s" "${target[@]}" >/tmp/tally-cpu-$what.txt 2>&1 &
	run=$!
	client_pid() { echo "$run"; }
	sample "$run" client=client_pid tally-serve=serve_pid postgres=tally_backends >/tmp/tally-cpu-$what.ticks
	wait "$run"
	# 402 refusals are answers too; a socket error is not.
	if grep -q "Socket errors" /tmp/tally-cpu-$what.txt; then
		cat /tmp/tally-cpu-$what.txt >&2
		exit 1
	fi
	n=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' /tmp/tally-cpu-$what.txt)
	if [ "$what" = writes ]; then sys="tally, group commit"; else sys="HTTP alone (/healthz)"; fi
	report "$sys" "$n" </tmp/tally-cpu-$what.ticks
	echo "# $sys: $(awk '/^Requests\/sec/ { printf "%d", $2 }' /tmp/tally-cpu-$what.txt) per second"
done
