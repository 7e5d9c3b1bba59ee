package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/bench"
	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/postgres"
)

// citusUnderLoad is a migrated Citus cluster of a coordinator and two workers with two tally
// instances on the coordinator, as in production.
type citusUnderLoad struct {
	cluster     *devenv.Citus
	dir         string
	log         *slog.Logger
	coordinator *pgx.Conn
	a, b        served
	// With a relay (instance a runs one): the NATS server and the stream it publishes to.
	natsURL, stream, prefix string
}

// startCitusUnderLoad starts the cluster and the instances; withRelay runs a relay beside
// instance a, publishing to a stream of the test's own on the NATS server of NATS_URL.
func startCitusUnderLoad(ctx context.Context, t *testing.T, source string, withRelay bool) *citusUnderLoad {
	t.Helper()
	pgtest.RequireCitus(t)
	c := &citusUnderLoad{dir: reachableTempDir(t), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var err error
	c.cluster, err = devenv.StartCitus(ctx, c.dir, 2, c.log)
	require.NoError(t, err)
	t.Cleanup(func() { c.cluster.Stop(c.log) }) //nolint:errcheck // a test may have killed a node
	c.coordinator, err = pgx.Connect(ctx, c.cluster.Coordinator.URL)
	require.NoError(t, err)
	t.Cleanup(func() { c.coordinator.Close(context.Background()) }) //nolint:errcheck // nothing to flush
	// Four shards per table instead of Citus's 32: a shard move takes seconds here (logical
	// replication's setup and catch-up), and 32 shards in each of three colocation groups
	// took about four minutes to rebalance from two workers to three. The migration's session
	// reads the setting when it distributes the tables.
	_, err = c.coordinator.Exec(ctx, "ALTER DATABASE tally SET citus.shard_count = 4")
	require.NoError(t, err)
	_, err = postgres.Migrate(ctx, c.cluster.Coordinator.URL)
	require.NoError(t, err)
	env := map[string]string{"DATABASE_URL": c.cluster.Coordinator.URL, "MIGRATE_ON_START": "false", "EVENT_SOURCE": source}
	if withRelay {
		id := uuid.NewString()[:8]
		c.natsURL, c.stream, c.prefix = cmp.Or(os.Getenv("NATS_URL"), nats.DefaultURL), "CITUS"+id, "citus"+id
		env["NATS_URL"], env["NATS_STREAM"], env["NATS_SUBJECT_PREFIX"] = c.natsURL, c.stream, c.prefix
		nc, err := nats.Connect(c.natsURL)
		require.NoError(t, err, "NATS with JetStream must run at %s", c.natsURL)
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		t.Cleanup(func() { js.DeleteStream(context.Background(), c.stream) }) //nolint:errcheck // best effort
	}
	c.a, c.b = startServe(ctx, t, env, withRelay), startServe(ctx, t, env, false)
	return c
}

// requireStreamOnceInOrder reads the relay's whole stream and requires every outbox event on
// it once (by Nats-Msg-Id), each user's events in sequence order with no gap.
func (c *citusUnderLoad) requireStreamOnceInOrder(ctx context.Context, t *testing.T) {
	t.Helper()
	var events int
	require.NoError(t, c.coordinator.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&events))
	nc, err := nats.Connect(c.natsURL)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	got := readStream(ctx, t, js, c.stream, events)
	t.Logf("%d events in the outbox, %d on the stream, %d duplicated, %d out of order", events, got.events, got.duplicates, got.outOfOrder)
	require.Equal(t, streamCount{events: events}, got, "every outbox event on the stream once, each user's in order")
}

// benchArgs are tally bench's arguments for a load on both instances, audited, with its
// results in out.
func (c *citusUnderLoad) benchArgs(out string, args ...string) []string {
	if c.natsURL != "" {
		args = append(args, "--nats-url", c.natsURL, "--stream", c.stream, "--subject-prefix", c.prefix)
	}
	return append([]string{
		"--url", c.a.base + "," + c.b.base, "--database-url", c.cluster.Coordinator.URL,
		"--workers", "8", "--users", "40", "--initial", "50.00", "--amount-max", "20.00",
		"--timeout", "5s", "--verify", "--verify-sample", "20", "--json", out,
	}, args...)
}

// load runs tally bench against both instances, with the audit, and returns when its load
// has begun; the channel receives the bench's error when it has ended.
func (c *citusUnderLoad) load(ctx context.Context, t *testing.T, out string, benchLog io.Writer, args ...string) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	loadRuns := &firstWrite{c: make(chan struct{})}
	go func() { done <- bench.Run(ctx, c.benchArgs(out, args...), benchLog, loadRuns) }()
	// The bench reports progress once its users exist and the load runs: a user creation cut
	// off by a fault would not be retried (it has no Idempotency-Key).
	select {
	case <-loadRuns.c:
	case err := <-done:
		t.Fatalf("the bench ended before its load: %v\n%s", err, benchLog)
	}
	return done
}

// readResults requires a clean audit and returns the bench's results.
func readResults(t *testing.T, out string, benchLog fmt.Stringer) bench.Results {
	t.Helper()
	raw, err := os.ReadFile(out)
	require.NoError(t, err)
	var res bench.Results
	require.NoError(t, json.Unmarshal(raw, &res))
	require.NotNil(t, res.Audit)
	require.Empty(t, res.Audit.Violations, "%s", benchLog)
	require.Zero(t, res.Writes.Unknown, "every write ends with an answer, retried across the fault\n%s", benchLog)
	require.Positive(t, res.Writes.Applied)
	return res
}

// requestsBetween counts the bench's requests completed in the seconds from one instant to
// another; the load began at loadStarted.
func requestsBetween(res bench.Results, loadStarted, from, to time.Time) int64 {
	var n int64
	for _, p := range res.Series {
		at := loadStarted.Add(time.Duration(p.T * float64(time.Second)))
		if !at.Before(from) && !at.After(to) {
			n += p.Requests
		}
	}
	return n
}

// shardNode returns the port of the worker that holds the shard of a table distributed by
// users' ids (users and its colocated tables) or by uids (transaction_uids) for value.
func shardNode(ctx context.Context, t *testing.T, conn *pgx.Conn, table string, value any) int {
	t.Helper()
	sqlType := map[string]string{"users": "bigint", "transaction_uids": "uuid"}[table]
	require.NotEmpty(t, sqlType, table)
	var port int
	require.NoError(t, conn.QueryRow(ctx, `
		SELECT nodeport FROM citus_shards
		WHERE shardid = get_shard_id_for_distribution_column($1::regclass, $2::`+sqlType+`)`, table, value).Scan(&port))
	return port
}

// Under write load from two tally instances, one with a relay, a third worker joins and the
// rebalancer moves shards onto it: the audit finds nothing lost, nothing applied twice and no
// negative balance at any instant, requests went on while shards moved, and every event
// reached JetStream once, each user's in sequence order. One audited run spans both steps,
// open loop at a rate that leaves the two cores room: a node took 20–40 s to join when the
// load saturated them, the rebalance 20–30 s.
func TestCitusRebalanceUnderLoadLosesNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := startCitusUnderLoad(ctx, t, "citus-rebalance-test", true)
	out := filepath.Join(t.TempDir(), "bench.json")
	var benchLog strings.Builder
	const duration = 90 * time.Second
	benchDone := c.load(ctx, t, out, &benchLog, "--duration", duration.String(), "--rate", "60", "--attempts", "20")
	loadStarted := time.Now()

	third, err := c.cluster.AddWorker(ctx, filepath.Join(c.dir, "worker3"), c.log)
	require.NoError(t, err)
	started := time.Now()
	_, err = c.coordinator.Exec(ctx, "SELECT citus_rebalance_start()")
	require.NoError(t, err)
	_, err = c.coordinator.Exec(ctx, "SELECT citus_rebalance_wait()")
	require.NoError(t, err)
	finished := time.Now()
	t.Logf("the third worker joined in %.1fs, the rebalance took %.1fs", started.Sub(loadStarted).Seconds(), finished.Sub(started).Seconds())
	var moved int
	require.NoError(t, c.coordinator.QueryRow(ctx,
		"SELECT count(*) FROM citus_shards WHERE nodeport = $1 AND table_name = 'users'::regclass", third.Port).Scan(&moved))
	require.Positive(t, moved, "the rebalancer moved users' shards to the new worker")
	var unfinished int
	require.NoError(t, c.coordinator.QueryRow(ctx,
		"SELECT count(*) FROM pg_dist_background_job WHERE state <> 'finished'").Scan(&unfinished))
	require.Zero(t, unfinished, "every rebalance job finished")

	require.NoError(t, <-benchDone, "the audit found a violation:\n%s", benchLog.String())
	res := readResults(t, out, &benchLog)
	require.Less(t, finished.Sub(loadStarted), duration, "the rebalance ended while the load still ran")
	during := requestsBetween(res, loadStarted, started, finished)
	require.Positive(t, during, "requests were answered while shards moved")
	t.Logf("the rebalance ran from %.1fs to %.1fs of the load; %d requests answered meanwhile\n%s",
		started.Sub(loadStarted).Seconds(), finished.Sub(loadStarted).Seconds(), during, benchLog.String())
	c.requireStreamOnceInOrder(ctx, t)
}

// A worker's PostgreSQL is SIGKILLed under load and started again: meanwhile requests for
// users on that worker are answered 503 with Retry-After, users on the other worker are
// served, and afterwards the audit finds every acknowledged write, once.
func TestCitusWorkerKilledUnderLoadKeepsAcknowledgedWrites(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := startCitusUnderLoad(ctx, t, "citus-kill-test", false)
	dead, live := c.cluster.Workers[0], c.cluster.Workers[1]

	// answer is one request's outcome; err is set when no answer came.
	type answer struct {
		status int
		header http.Header
		body   map[string]any
		err    error
	}
	call := func(method, path, body string) answer {
		req, err := http.NewRequestWithContext(ctx, method, c.a.base+path, strings.NewReader(body))
		if err != nil {
			return answer{err: err}
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return answer{err: err}
		}
		defer resp.Body.Close()
		a := answer{status: resp.StatusCode, header: resp.Header}
		a.err = json.NewDecoder(resp.Body).Decode(&a.body)
		return a
	}
	balance := func(user int64) answer { return call(http.MethodGet, fmt.Sprintf("/v1/user/%d/balance", user), "") }
	// uidOn returns a new uid whose transaction_uids row lands on the worker at port.
	uidOn := func(t *testing.T, port int) string {
		for {
			uid := uuid.NewString()
			if shardNode(ctx, t, c.coordinator, "transaction_uids", uid) == port {
				return uid
			}
		}
	}
	deposit := func(t *testing.T, user int64, uid string) answer {
		a := call(http.MethodPost, "/v1/transaction", fmt.Sprintf(`{"uid":%q,"user_id":%d,"type":"DEPOSIT","amount":"1.00"}`, uid, user))
		require.NoError(t, a.err)
		return a
	}
	requireUnavailable := func(t *testing.T, a answer) {
		t.Helper()
		require.NoError(t, a.err)
		require.Equal(t, http.StatusServiceUnavailable, a.status, "%v", a.body)
		require.NotEmpty(t, a.header.Get("Retry-After"))
	}

	// One user on each worker, with money, before the load.
	users := map[int]int64{}
	for len(users) < 2 {
		a := call(http.MethodPost, "/v1/user", `{"name":"probe"}`)
		require.NoError(t, a.err)
		require.Equal(t, http.StatusCreated, a.status, "%v", a.body)
		id := int64(a.body["id"].(float64))
		users[shardNode(ctx, t, c.coordinator, "users", id)] = id
	}
	onDead, onLive := users[dead.Port], users[live.Port]
	require.Equal(t, http.StatusOK, deposit(t, onDead, uidOn(t, dead.Port)).status)

	out := filepath.Join(t.TempDir(), "bench.json")
	var benchLog strings.Builder
	benchDone := c.load(ctx, t, out, &benchLog, "--duration", "15s", "--attempts", "40")
	loadStarted := time.Now()
	time.Sleep(1500 * time.Millisecond)
	killed := time.Now()
	require.NoError(t, dead.Kill())

	t.Run("users on the dead worker: 503 with Retry-After", func(t *testing.T) {
		var a answer
		require.Eventually(t, func() bool {
			a = balance(onDead)
			return a.err == nil && a.status != http.StatusOK
		}, 5*time.Second, 50*time.Millisecond)
		requireUnavailable(t, a)
		requireUnavailable(t, deposit(t, onDead, uidOn(t, live.Port)))
	})
	t.Run("users on the other worker go on", func(t *testing.T) {
		a := balance(onLive)
		require.NoError(t, a.err)
		require.Equal(t, http.StatusOK, a.status, "%v", a.body)
		a = deposit(t, onLive, uidOn(t, live.Port))
		require.Equal(t, http.StatusOK, a.status, "%v", a.body)
	})
	// The uid table is distributed by uid: a write whose uid's row lives on the dead worker
	// waits for it too, whichever worker holds the user.
	t.Run("a write whose uid lives on the dead worker: 503", func(t *testing.T) {
		requireUnavailable(t, deposit(t, onLive, uidOn(t, dead.Port)))
	})

	time.Sleep(time.Until(killed.Add(3 * time.Second)))
	require.NoError(t, c.cluster.RestartWorker(ctx, 0, c.log))
	restarted := time.Now()
	t.Logf("worker restarted %.1fs after the kill", restarted.Sub(killed).Seconds())
	require.Eventually(t, func() bool {
		a := balance(onDead)
		return a.err == nil && a.status == http.StatusOK
	}, 30*time.Second, 100*time.Millisecond, "the dead worker's users are served again")

	require.NoError(t, <-benchDone, "the audit found a violation:\n%s", benchLog.String())
	res := readResults(t, out, &benchLog)
	require.Positive(t, requestsBetween(res, loadStarted, killed, restarted), "requests were answered while the worker was down")
	require.Positive(t, requestsBetween(res, loadStarted, restarted.Add(time.Second), time.Now()), "and after it came back")
	t.Logf("bench:\n%s", benchLog.String())
}
