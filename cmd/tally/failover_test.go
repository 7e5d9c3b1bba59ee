package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/bench"
	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// replicatedPair is a private primary with a streaming standby, both real PostgreSQL servers.
type replicatedPair struct {
	primary, standby *devenv.Postgres
	// url reaches whichever of the two accepts writes, as a multi-host DATABASE_URL does.
	url string
}

// startReplicatedPair starts a primary and a standby cloned from it, synchronous when sync is
// set, and stops both when the test ends.
func startReplicatedPair(t *testing.T, sync bool) replicatedPair {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// PostgreSQL may run as another user (tests run as root in CI), and t.TempDir is private.
	dir := t.TempDir()
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	require.NoError(t, os.Chmod(dir, 0o755))
	primary, err := devenv.StartPostgres(ctx, filepath.Join(dir, "primary"), log)
	require.NoError(t, err)
	t.Cleanup(func() { primary.Kill() }) //nolint:errcheck // a test may have killed it already
	standby, err := devenv.StartStandby(ctx, primary, filepath.Join(dir, "standby"), log)
	require.NoError(t, err)
	t.Cleanup(func() { standby.Kill() }) //nolint:errcheck // nothing of it is kept
	if sync {
		require.NoError(t, primary.SetSynchronousStandbys(ctx, "*"))
	}
	return replicatedPair{primary: primary, standby: standby, url: fmt.Sprintf(
		"postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/tally?sslmode=disable&target_session_attrs=read-write&connect_timeout=2",
		primary.Port, standby.Port)}
}

// The primary is SIGKILLed under load and its synchronous standby promoted, as a failover
// manager would: two tally instances find the new primary through the multi-host
// DATABASE_URL, writes resume, and the audit finds every acknowledged write exactly once.
func TestFailoverToSynchronousStandbyLosesNoAcknowledgedWrite(t *testing.T) {
	t.Parallel()
	pair := startReplicatedPair(t, true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := postgres.Migrate(ctx, pair.url)
	require.NoError(t, err)
	env := map[string]string{"DATABASE_URL": pair.url, "MIGRATE_ON_START": "false", "EVENT_SOURCE": "failover-test"}
	a, b := startServe(ctx, t, env, false), startServe(ctx, t, env, false)

	out := filepath.Join(t.TempDir(), "bench.json")
	benchDone := make(chan error, 1)
	var benchLog strings.Builder
	loadRuns := &firstWrite{c: make(chan struct{})}
	go func() {
		benchDone <- bench.Run(ctx, []string{
			"--url", a.base + "," + b.base, "--database-url", pair.url,
			"--workers", "8", "--duration", "8s", "--users", "20", "--initial", "50.00", "--amount-max", "20.00",
			"--attempts", "20", "--timeout", "5s", "--verify", "--verify-sample", "20", "--json", out,
		}, &benchLog, loadRuns)
	}()
	// The bench reports progress once its users exist and the load runs: a user creation cut
	// off by the crash would not be retried (it has no Idempotency-Key).
	select {
	case <-loadRuns.c:
	case err := <-benchDone:
		t.Fatalf("the bench ended before its load: %v\n%s", err, benchLog.String())
	}
	time.Sleep(1500 * time.Millisecond)
	killed := time.Now()
	require.NoError(t, pair.primary.Kill())
	require.NoError(t, pair.standby.Promote(ctx))
	promoted := time.Now()
	t.Logf("standby promoted %.1fs after the kill", promoted.Sub(killed).Seconds())

	require.NoError(t, <-benchDone, "the audit found a violation:\n%s", benchLog.String())
	res := readResults(t, out, &benchLog)
	// Requests were answered after the failover too, by the promoted standby.
	var after int64
	for _, p := range res.Series {
		if res.Started.Add(time.Duration(p.T * float64(time.Second))).After(promoted.Add(time.Second)) {
			after += p.Requests
		}
	}
	require.Positive(t, after, "requests completed after the failover\n%s", benchLog.String())
	t.Logf("bench:\n%s", benchLog.String())
}

// firstWrite closes c on the first write to it.
type firstWrite struct {
	once sync.Once
	c    chan struct{}
}

func (w *firstWrite) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.c) })
	return len(p), nil
}

// A server that turned read-only under tally's feet (a demoted primary, reached by a
// connection opened before) answers writes with 25006: that is a 503 to retry, not a 500, and
// the connection is closed so that the pool's next one can find the new primary.
func TestReadOnlyServerIsUnavailableAndItsConnectionDropped(t *testing.T) {
	t.Parallel()
	pair := startReplicatedPair(t, false)
	ctx := context.Background()
	_, err := postgres.Migrate(ctx, pair.primary.URL)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		db, err := postgres.Open(ctx, pair.standby.URL)
		require.NoError(t, err)
		defer db.Close()
		return db.Ready(ctx) == nil
	}, 10*time.Second, 50*time.Millisecond, "the standby has replayed the schema")

	db, err := postgres.Open(ctx, pair.standby.URL+"&pool_max_conns=1")
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.Pool().Ping(ctx))
	require.EqualValues(t, 1, db.Pool().Stat().TotalConns())
	_, err = db.CreateUser(ctx, "vasya")
	require.Equal(t, ledger.CodeUnavailable, ledger.ErrorCode(err), "%v", err)
	require.Eventually(t, func() bool { return db.Pool().Stat().TotalConns() == 0 }, 2*time.Second, 10*time.Millisecond,
		"the read-only connection was closed")
}
