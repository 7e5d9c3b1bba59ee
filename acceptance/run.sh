#!/usr/bin/env bash
# Runs the black-box acceptance suite against the real binary: a fresh database, bin/tally
# serve on it, pytest over HTTP, then the server stopped and the database dropped.
#
#   TEST_DATABASE_URL  an existing database to connect to for CREATE/DROP DATABASE
#                      (default postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable)
#   ACCEPTANCE_PORT    the port to serve on (default 8000; a free one if 8000 is busy)
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
# The new database's URL is the admin URL with its path replaced; user, host and options stay.
db_url=$("$PYTHON" -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))
' "$TEST_DATABASE_URL" "$db_name")

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

workdir=$(mktemp -d)
server_log="$workdir/server.log"
server_pid=""
db_created=""

cleanup() {
	if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
		kill "$server_pid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	if [[ -n "$db_created" ]]; then
		psql "$TEST_DATABASE_URL" -qX -v ON_ERROR_STOP=1 \
			-c "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)" >/dev/null ||
			echo "acceptance: could not drop database $db_name" >&2
	fi
	rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

psql "$TEST_DATABASE_URL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db_name\"" >/dev/null
db_created=1

DATABASE_URL="$db_url" PORT="$port" ADMIN_PORT=0 bin/tally serve >"$server_log" 2>&1 &
server_pid=$!

ready=""
for _ in $(seq 200); do # 200 × 0.1 s = 20 s
	if ! kill -0 "$server_pid" 2>/dev/null; then
		break
	fi
	# The log line proves the answer comes from this server, not another one on the port.
	if grep -q '"msg":"listening"' "$server_log" &&
		curl -fsS -o /dev/null --max-time 1 "$TALLY_URL/readyz" 2>/dev/null; then
		ready=1
		break
	fi
	sleep 0.1
done
if [[ -z "$ready" ]]; then
	echo "acceptance: bin/tally did not become ready at $TALLY_URL/readyz; server log:" >&2
	cat "$server_log" >&2
	exit 1
fi

status=0
PYTHONDONTWRITEBYTECODE=1 "$PYTHON" -m pytest -q -p no:cacheprovider acceptance "$@" || status=$?
if [[ $status -eq 5 ]]; then
	echo "acceptance: pytest collected no tests" >&2
	status=1
fi
if [[ $status -ne 0 ]]; then
	# Requests are logged one line each; only warnings and errors help explain a failure.
	if grep -E '"level":"(WARN|ERROR)"' "$server_log" >&2; then
		echo "acceptance: (above: server warnings and errors)" >&2
	fi
	if ! kill -0 "$server_pid" 2>/dev/null; then
		echo "acceptance: the server exited during the run; its log:" >&2
		cat "$server_log" >&2
	fi
fi
exit "$status"
