#!/usr/bin/env bash
# Runs the black-box acceptance suite against the real binary: a fresh database, bin/tally
# serve on it, pytest over HTTP, then the server stopped and the database dropped.
#
#   TEST_DATABASE_URL  an existing database to connect to for CREATE/DROP DATABASE
#                      (default postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable)
#   ACCEPTANCE_PORT    the port to serve on (default 8000; a free one if 8000 is busy)
#   ACCEPTANCE_INSTANCES  how many instances of bin/tally serve the database (default 1); the
#                      suite sends each request to the next (TALLY_URLS); the others take free ports
#   TEST_CITUS_WORKER_URLS  the workers' admin URLs, comma-separated, when TEST_DATABASE_URL is
#                      a Citus coordinator: the database is made on every node and distributed
#   ACCEPTANCE_THEN    a command run after the suite passed, with the servers still up and
#                      DATABASE_URL and TALLY_URLS set (make test-citus runs tally bench --verify)
#   extra arguments    passed to pytest, e.g. ./acceptance/run.sh -k idempotency
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=/usr/bin/python3
TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}

if [[ ! -x bin/tally ]]; then
	echo "acceptance: bin/tally is missing; run make build (or make acceptance)" >&2
	exit 1
fi

db_name="tally_acceptance_$$"
# A database's URL is an admin URL with its path replaced; user, host and options stay.
with_db() {
	"$PYTHON" -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))
' "$1" "$2"
}
db_url=$(with_db "$TEST_DATABASE_URL" "$db_name")
IFS=, read -ra citus_workers <<<"${TEST_CITUS_WORKER_URLS:-}"

port_free() {
	"$PYTHON" -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go listeners do, so TIME_WAIT is no obstacle
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except (OSError, OverflowError, ValueError):
    sys.exit(1)
' "$1"
}

if [[ -n "${ACCEPTANCE_PORT:-}" ]]; then
	port=$ACCEPTANCE_PORT
	port_free "$port" || { echo "acceptance: ACCEPTANCE_PORT $port is in use or not a port" >&2; exit 1; }
else
	port=8000
	if ! port_free "$port"; then
		port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
		echo "acceptance: port 8000 is in use; serving on $port"
	fi
fi
export TALLY_URL="http://127.0.0.1:$port"
ports=("$port")
for _ in $(seq 2 "${ACCEPTANCE_INSTANCES:-1}"); do
	ports+=("$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')")
done
TALLY_URLS=$(printf 'http://127.0.0.1:%s,' "${ports[@]}")
export TALLY_URLS=${TALLY_URLS%,}

workdir=$(mktemp -d)
server_pids=()
db_created=""

cleanup() {
	for pid in "${server_pids[@]}"; do
		if kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -9 "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
	done
	if [[ -n "$db_created" ]]; then
		for admin in "$TEST_DATABASE_URL" "${citus_workers[@]}"; do
			psql "$admin" -qX -v ON_ERROR_STOP=1 \
				-c "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)" >/dev/null ||
				echo "acceptance: could not drop database $db_name" >&2
		done
	fi
	rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

psql "$TEST_DATABASE_URL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db_name\"" >/dev/null
db_created=1
if [[ ${#citus_workers[@]} -gt 0 ]]; then
	# Every node gets the database with the extension; the coordinator's metadata lists the
	# workers. tally serve's migration then distributes the tables.
	host_port() { "$PYTHON" -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(p.hostname, p.port)' "$1"; }
	add_nodes="SELECT citus_set_coordinator_host('$(host_port "$TEST_DATABASE_URL" | cut -d' ' -f1)', $(host_port "$TEST_DATABASE_URL" | cut -d' ' -f2));"
	for w in "${citus_workers[@]}"; do
		psql "$w" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db_name\"" >/dev/null
		psql "$(with_db "$w" "$db_name")" -qX -v ON_ERROR_STOP=1 -c "CREATE EXTENSION citus" >/dev/null
		read -r host wport <<<"$(host_port "$w")"
		add_nodes+="SELECT citus_add_node('$host', $wport);"
	done
	psql "$db_url" -qX -v ON_ERROR_STOP=1 -c "CREATE EXTENSION citus" -c "$add_nodes" >/dev/null
fi

# The first instance migrates; the others start on the migrated database.
for i in "${!ports[@]}"; do
	DATABASE_URL="$db_url" PORT="${ports[$i]}" ADMIN_PORT=0 bin/tally serve >"$workdir/server$i.log" 2>&1 &
	server_pids+=($!)
	ready=""
	for _ in $(seq 200); do # 200 × 0.1 s = 20 s
		if ! kill -0 "${server_pids[$i]}" 2>/dev/null; then
			break
		fi
		# The log line proves the answer comes from this server, not another one on the port.
		if grep -q '"msg":"listening"' "$workdir/server$i.log" &&
			curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:${ports[$i]}/readyz" 2>/dev/null; then
			ready=1
			break
		fi
		sleep 0.1
	done
	if [[ -z "$ready" ]]; then
		echo "acceptance: bin/tally did not become ready at http://127.0.0.1:${ports[$i]}/readyz; server log:" >&2
		cat "$workdir/server$i.log" >&2
		exit 1
	fi
done

status=0
PYTHONDONTWRITEBYTECODE=1 "$PYTHON" -m pytest -q -p no:cacheprovider acceptance "$@" || status=$?
if [[ $status -eq 5 ]]; then
	echo "acceptance: pytest collected no tests" >&2
	status=1
fi
if [[ $status -eq 0 && -n "${ACCEPTANCE_THEN:-}" ]]; then
	DATABASE_URL="$db_url" bash -c "$ACCEPTANCE_THEN" || status=$?
fi
if [[ $status -ne 0 ]]; then
	for i in "${!ports[@]}"; do
		# Requests are logged one line each; only warnings and errors help explain a failure.
		if grep -E '"level":"(WARN|ERROR)"' "$workdir/server$i.log" >&2; then
			echo "acceptance: (above: warnings and errors of the server on port ${ports[$i]})" >&2
		fi
		if ! kill -0 "${server_pids[$i]}" 2>/dev/null; then
			echo "acceptance: the server on port ${ports[$i]} exited during the run; its log:" >&2
			cat "$workdir/server$i.log" >&2
		fi
	done
fi
exit "$status"
