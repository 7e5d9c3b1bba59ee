#!/usr/bin/env bash
# make bench: every figure of docs/performance.md, measured side by side in one run on this
# machine, then plotted. Not part of `make test`: it takes about thirty-five minutes.
#
#   BENCH_ROUNDS=3 BENCH_SECONDS=15 BENCH_CLIENTS="1 4 16 64 256" bench/run.sh
#   BENCH_PARTS=writes bench/run.sh    # throughput and latency only
#
# Tables land in bin/bench/, plots in docs/img/, a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${BENCH_ROUNDS:-3}
secs=${BENCH_SECONDS:-15}
users=${BENCH_USERS:-1000}
pool=${BENCH_POOL:-16}
admin_url=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
out=bin/bench
# Both sides talk to PostgreSQL over loopback TCP without TLS.
export PGSSLMODE=disable
if ! command -v wrk >/dev/null; then
	echo "run.sh: wrk not found; tally's writes are driven by it (Debian: apt-get install wrk)" >&2
	exit 1
fi
rm -rf "$out" && mkdir -p "$out"
make -s build

db_url() { echo "$admin_url" | sed -E "s#/[^/?]+(\?|$)#/$1\1#"; }
server=
cleanup() {
	[ -n "$server" ] && kill "$server" 2>/dev/null || true
	psql -q "$admin_url" -c "DROP DATABASE IF EXISTS tally_bench WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# start_tally [batch max]: a fresh database and one `tally serve` on :18080 with a pool of
# $pool; a batch max of 1 turns group commit off.
start_tally() {
	cleanup
	psql -q "$admin_url" -c "CREATE DATABASE tally_bench"
	url="$(db_url tally_bench)"
	case "$url" in *\?*) url="$url&pool_max_conns=$pool" ;; *) url="$url?pool_max_conns=$pool" ;; esac
	url="$url&sslmode=disable"
	DATABASE_URL=$url PORT=18080 ADMIN_PORT=0 LOG_LEVEL=warn WRITE_BATCH_MAX=${1:-64} bin/tally serve >"$out/serve.log" 2>&1 &
	server=$!
	for _ in $(seq 1 200); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && return; sleep 0.05; done
	echo "tally did not become ready" >&2
	exit 1
}
stop_tally() { kill "$server"; wait "$server" 2>/dev/null || true; server=; }

# Writes only: half deposits, half withdrawals, no duplicates or back-dating.
writes="--deposit 50 --withdraw 50 --balance 0 --balance-at 0 --retry-share 0 --backdate-share 0 --users $users"
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# 1. Throughput against clients: the pgbench baseline, tally with batching off and on, side by
# side, $rounds rounds; the HTTP ceiling (/healthz, no database) at the top client count.
printf '# system\tclients\tround\ttps\n' >"$out/throughput.tsv"
printf '# clients\tround\tpeak_rss_kib\n' >"$out/rss.tsv"
for round in $(seq 1 "$rounds"); do
	for clients in ${BENCH_CLIENTS:-1 4 16 64 256}; do
		# PostgreSQL serves 100 connections: the baseline's clients stop at 90.
		tps=$(bench/baseline.sh "$((clients > 90 ? 90 : clients))" "$secs" "$users" | sed -n 's/^baseline: \([0-9.]*\) tps.*/\1/p')
		printf 'pgbench baseline\t%s\t%s\t%s\n' "$clients" "$round" "$tps" >>"$out/throughput.tsv"
		for batching in off on; do
			max=1
			[ "$batching" = on ] && max=64
			start_tally "$max"
			( while kill -0 "$server" 2>/dev/null; do grep VmRSS "/proc/$server/status" | awk '{print $2}'; sleep 0.2; done ) >"$out/rss.samples" &
			sampler=$!
			# The load comes from wrk (bench/wrk-writes.lua), a client in C as pgbench is: the Go
			# client costs 1.4 to 3.4 times pgbench's processor time a request, on the same two
			# cores (performance.md, "The load generator"). --verify audits every run, wrk's
			# writes included: nothing lost, nothing applied twice, no negative instant.
			if ! bin/tally bench --url http://127.0.0.1:18080 --workers "$clients" $writes \
				--load-with "wrk -t$((clients < 2 ? clients : 2)) -c$clients -d${secs}s -s bench/wrk-writes.lua \"\$TALLY_URL\"" \
				--verify --database-url "$(db_url tally_bench)" \
				--json "$out/tally-$batching-$clients-$round.json" >"$out/tally-$batching-$clients-$round.txt" 2>&1; then
				echo "tally bench --verify failed: $out/tally-$batching-$clients-$round.txt" >&2
				exit 1
			fi
			stop_tally
			wait "$sampler" 2>/dev/null || true
			if [ "$batching" = on ]; then
				printf '%s\t%s\t%s\n' "$clients" "$round" "$(sort -n "$out/rss.samples" | tail -1)" >>"$out/rss.tsv"
			fi
			tps=$(json "$out/tally-$batching-$clients-$round.json" "d['throughput']")
			printf 'tally, batching %s\t%s\t%s\t%s\n' "$batching" "$clients" "$round" "$tps" >>"$out/throughput.tsv"
		done
		echo "round $round, $clients clients: baseline and tally measured"
	done
	start_tally
	wrk -t2 -c64 -d"${secs}s" http://127.0.0.1:18080/healthz >"$out/ceiling-$round.txt"
	stop_tally
	printf 'HTTP ceiling (/healthz)\t64\t%s\t%s\n' "$round" "$(awk '/^Requests\/sec/ { print $2 }' "$out/ceiling-$round.txt")" >>"$out/throughput.tsv"
done

# 2. Latency against offered load, open loop: requests start on a schedule, whatever the
# answers do, and each is timed from its scheduled start. The pgbench baseline (pgbench -R, 64
# clients), tally with batching off and on (wrk with bench/wrk-writes.lua and a rate, 256
# connections, audited like the closed loop), each at shares of its own peak, its best median
# over the client counts, $rounds rounds: "p99 at half of peak" is the 0.5 rows of each. The
# plot draws each rate's median.
peak() {
	local p=0 m clients
	for clients in ${BENCH_CLIENTS:-1 4 16 64 256}; do
		m=$(awk -F'\t' -v c="$clients" -v s="$1" '$1 == s && $2 == c { print $4 }' "$out/throughput.tsv" | median)
		p=$(awk -v a="$p" -v b="$m" 'BEGIN { print (b > a ? b : a) }')
	done
	echo "$p"
}
# percentiles FILE: the three figures of an "open loop: ..." line, tab-separated.
percentiles() {
	local p
	p=$(sed -n 's/^.*open loop: .*p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms, p99.9 \([0-9.]*\) ms$/\1\t\2\t\3/p' "$1")
	if [ -z "$p" ]; then
		echo "run.sh: no open-loop percentiles in $1" >&2
		return 1
	fi
	echo "$p"
}
printf '# system\toffered_rate\tp50_ms\tp99_ms\tp999_ms\tserved_rate\n' >"$out/latency.tsv"
for share in $(for _ in $(seq 1 "$rounds"); do echo 0.25 0.5 0.75 0.9 1.2; done); do
	rate=$(awk -v p="$(peak "pgbench baseline")" -v s="$share" 'BEGIN { printf "%d", p * s }')
	run="$out/rate-baseline-$rate-$(date +%s%N)"
	BASELINE_RATE=$rate bench/baseline.sh 64 "$secs" "$users" >"$run.txt"
	p=$(percentiles "$run.txt")
	printf 'pgbench baseline\t%s\t%s\t%s\n' "$rate" "$p" "$(sed -n 's/^tps = \([0-9]*\).*/\1/p' "$run.txt")" >>"$out/latency.tsv"
	for batching in off on; do
		max=1
		[ "$batching" = on ] && max=64
		rate=$(awk -v p="$(peak "tally, batching $batching")" -v s="$share" 'BEGIN { printf "%d", p * s }')
		start_tally "$max"
		run="$out/rate-$batching-$rate-$(date +%s%N)"
		if ! bin/tally bench --url http://127.0.0.1:18080 --workers 64 $writes \
			--load-with "wrk -t1 -c256 -d${secs}s --timeout 60s -s bench/wrk-writes.lua \"\$TALLY_URL\" -- $rate" \
			--verify --database-url "$(db_url tally_bench)" --json "$run.json" >"$run.txt" 2>&1; then
			echo "tally bench --verify failed: $run.txt" >&2
			exit 1
		fi
		stop_tally
		p=$(percentiles "$run.txt")
		printf 'tally, batching %s\t%s\t%s\t%s\n' "$batching" "$rate" "$p" "$(json "$run.json" "round(d['throughput'])")" >>"$out/latency.tsv"
	done
done

if [ "${BENCH_PARTS:-all}" = writes ]; then
	go run ./bench/plot -in "$out" -out docs/img
	tail -n +2 "$out/throughput.tsv"
	tail -n +2 "$out/latency.tsv"
	exit 0
fi

# 3. History: balance reads for 100 to 1,000,000 transactions; 4. back-dating cost.
BENCH_LONG_HISTORY=1 go test ./postgres -run '^$' -bench 'BalanceAt|CurrentBalance' -benchtime 5000x -count 5 >"$out/history.txt"
go test ./postgres -run '^$' -bench 'Backdated' -count 3 >"$out/backdated.txt"
printf '# rows_after\tms_per_write\n' >"$out/backdating.tsv"
grep -E '^BenchmarkBackdated' "$out/backdated.txt" |
	sed -E 's#.*after=([0-9]+)-[0-9]+[[:space:]]+[0-9]+[[:space:]]+([0-9.]+) ns/op.*#\1 \2#' |
	sort -n -k1,1 -k2,2 | awk '{ a[$1] = a[$1] " " $2 } END { for (k in a) { n = split(a[k], v, " "); printf "%s\t%.3f\n", k, v[int((n + 1) / 2)] / 1e6 } }' |
	sort -n >>"$out/backdating.tsv"

# 5. Start to ready, migrations already applied: ten starts.
start_tally
stop_tally
printf '# start_to_ready_ms\n' >"$out/ready.tsv"
for _ in $(seq 1 10); do
	t0=$(date +%s%N)
	DATABASE_URL="$(db_url tally_bench)" PORT=18080 ADMIN_PORT=0 LOG_LEVEL=warn bin/tally serve >/dev/null 2>&1 &
	server=$!
	until curl -sf http://127.0.0.1:18080/readyz >/dev/null; do sleep 0.005; done
	echo $(( ($(date +%s%N) - t0) / 1000000 )) >>"$out/ready.tsv"
	stop_tally
done

go run ./bench/plot -in "$out" -out docs/img

echo
echo "== throughput (writes/s): system, clients, rounds"
awk -F'\t' 'NR > 1 { v[$1 "\t" $2] = v[$1 "\t" $2] " " $4 } END { for (k in v) print k "\t" v[k] }' "$out/throughput.tsv" | sort
echo "== peak RSS of tally serve (KiB): clients, round"
tail -n +2 "$out/rss.tsv"
echo "== latency against offered load: system, rate, p50, p99, p99.9 (ms)"
tail -n +2 "$out/latency.tsv"
echo "== history"
grep -E '^Benchmark' "$out/history.txt"
echo "== back-dating: rows after, ms per write"
tail -n +2 "$out/backdating.tsv"
echo "== start to ready (ms)"
tail -n +2 "$out/ready.tsv" | sort -n | tr '\n' ' '
echo
