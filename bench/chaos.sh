#!/usr/bin/env bash
# make chaos: three `tally serve` instances and two relays on one database, under load from
# `tally bench`, while instances are SIGKILLed every few seconds, PostgreSQL restarts once, NATS
# stops for 20 seconds and relays are SIGKILLed; then the bench's audit (--verify).
#
# It restarts the local PostgreSQL cluster (pg_ctlcluster) and starts a NATS server of its own:
# run it on a development machine, not beside anything else that uses that PostgreSQL.
#
#   CHAOS_DURATION=180 CHAOS_WORKERS=16 bench/chaos.sh
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${CHAOS_DURATION:-180}
workers=${CHAOS_WORKERS:-16}
admin_url=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
out=${CHAOS_OUT:-bin/chaos}
db=tally_chaos_$$
db_url=$(echo "$admin_url" | sed -E "s#/[^/?]+(\?|$)#/$db\1#")
nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
cluster=$(ls /etc/postgresql | sort -V | tail -1)

rm -rf "$out" && mkdir -p "$out"
faults="$out/faults.log"
start=$(date +%s.%N)
since() { awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
note() { printf '%6s s  %s\n' "$(since)" "$*" | tee -a "$faults"; }

pids=()
cleanup() {
	for p in "${serve[@]:-}" "${relay[@]:-}" "${nats:-}" "${pids[@]:-}"; do
		[ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
	done
	psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

make -s build
psql -q "$admin_url" -c "CREATE DATABASE $db"
DATABASE_URL=$db_url bin/tally migrate >/dev/null

nats_port=14222
start_nats() {
	"$nats_bin" -a 127.0.0.1 -p $nats_port -js -sd "$out/nats" >>"$out/nats.log" 2>&1 &
	nats=$!
	disown
}
start_nats

serve=()
start_serve() { # index
	DATABASE_URL=$db_url PORT=$((18001 + $1)) ADMIN_PORT=0 LOG_LEVEL=warn \
		bin/tally serve >>"$out/serve-$1.log" 2>&1 &
	serve[$1]=$!
	disown
}
relay=()
start_relay() { # index
	DATABASE_URL=$db_url NATS_URL=nats://127.0.0.1:$nats_port ADMIN_PORT=0 LOG_LEVEL=info \
		bin/tally relay >>"$out/relay-$1.log" 2>&1 &
	relay[$1]=$!
	disown
}
for i in 0 1 2; do start_serve $i; done
for i in 0 1; do start_relay $i; done
for i in 0 1 2; do
	for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$((18001 + i))/readyz" >/dev/null && break; sleep 0.1; done
done
note "3 serve instances, 2 relays, NATS on :$nats_port ready"

urls="http://127.0.0.1:18001,http://127.0.0.1:18002,http://127.0.0.1:18003"
bin/tally bench --url "$urls" --database-url "$db_url" --workers "$workers" --duration "${duration}s" \
	--users 200 --initial 50.00 --amount-max 20.00 --retry-share 0.1 --backdate-share 0.05 --verify --json "$out/chaos.json" \
	--nats-url "nats://127.0.0.1:$nats_port" \
	>"$out/bench.log" 2>"$out/bench.progress" &
bench=$!
pids+=("$bench")

elapsed() { since | cut -d. -f1; }
# Faults start once the load does: the bench creates its users first, and a user creation cut
# off by a crash is not retried (it has no idempotency key).
for _ in $(seq 1 600); do
	[ -s "$out/bench.progress" ] && break
	kill -0 "$bench" 2>/dev/null || break
	sleep 0.1
done
note "load running"

pg_done=0 nats_done=0 relay_done=0
t0=$(elapsed)
while kill -0 "$bench" 2>/dev/null; do
	t=$(( $(elapsed) - t0 ))
	if [ "$t" -ge "$duration" ]; then sleep 1; continue; fi
	victim=$((RANDOM % 3))
	kill -9 "${serve[$victim]}" 2>/dev/null || true
	note "SIGKILL serve-$victim"
	sleep 1
	start_serve $victim
	note "restarted serve-$victim"
	if [ $pg_done = 0 ] && [ "$t" -ge $((duration / 3)) ]; then
		note "restarting PostgreSQL"
		pg_ctlcluster --skip-systemctl-redirect "$cluster" main restart -m fast
		note "PostgreSQL back"
		pg_done=1
	fi
	if [ $nats_done = 0 ] && [ "$t" -ge $((duration / 2)) ]; then
		kill "$nats" 2>/dev/null || true
		while kill -0 "$nats" 2>/dev/null; do sleep 0.1; done
		note "NATS stopped for 20 s"
		( sleep 20 ) & pids+=($!)
		nats_stop_at=$(elapsed)
		nats_done=1
	fi
	if [ $nats_done = 1 ] && [ -n "${nats_stop_at:-}" ] && [ $(( $(elapsed) - nats_stop_at )) -ge 20 ]; then
		start_nats
		note "NATS restarted"
		nats_stop_at=
	fi
	if [ $relay_done = 0 ] && [ "$t" -ge $((duration * 2 / 3)) ]; then
		for i in 0 1; do
			kill -9 "${relay[$i]}" 2>/dev/null || true
			note "SIGKILL relay-$i"
			sleep 2
			start_relay $i
			note "restarted relay-$i"
		done
		relay_done=1
	fi
	sleep 4
done
if [ -n "${nats_stop_at:-}" ]; then start_nats; note "NATS restarted"; fi

set +e
wait "$bench"
status=$?
set -e
cat "$out/bench.log"
note "bench and audit exited with $status"
exit $status
