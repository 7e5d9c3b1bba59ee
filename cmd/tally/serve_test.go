package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/postgres"
)

// On shutdown readiness fails first, a request in flight still completes, then serve returns.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := startServe(ctx, t, map[string]string{"DATABASE_URL": url, "SHUTDOWN_DELAY": "700ms"}, false)
	base, admin, done := s.base, s.admin, s.done
	requireReady(t, http.StatusOK, `{"status":"ready"}`, base, admin)
	resp, err := http.Post(base+"/v1/user", "application/json", strings.NewReader(`{"name":"vasya"}`))
	require.NoError(t, err)
	resp.Body.Close()

	// Hold the user's row lock from another connection so that a deposit stays in flight.
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SELECT 1 FROM users WHERE id = 1 FOR UPDATE")
	require.NoError(t, err)
	inFlight := make(chan int, 1)
	go func() {
		body := fmt.Sprintf(`{"uid":%q,"user_id":1,"type":"DEPOSIT","amount":"5"}`, uuid.NewString())
		resp, err := http.Post(base+"/v1/transaction", "application/json", strings.NewReader(body))
		if err != nil {
			inFlight <- 0
			return
		}
		resp.Body.Close()
		inFlight <- resp.StatusCode
	}()
	time.Sleep(200 * time.Millisecond)

	cancel()
	require.Eventually(t, func() bool { return get(t, base+"/readyz") == http.StatusServiceUnavailable },
		500*time.Millisecond, 20*time.Millisecond, "readiness fails as soon as shutdown begins")
	requireReady(t, http.StatusServiceUnavailable, `{"status":"shutting down"}`, base, admin)
	select {
	case err := <-done:
		t.Fatalf("serve returned while a request was in flight: %v", err)
	case <-time.After(800 * time.Millisecond):
	}
	require.NoError(t, tx.Rollback(context.Background()))
	require.Equal(t, http.StatusOK, <-inFlight)
	require.NoError(t, <-done)
}

// served is a serve started by startServe.
type served struct {
	base, admin string // http://host:port of the API and of the admin port
	host        string // the address the API listens on
	done        <-chan error
}

// startServe runs serve with env (PORT and ADMIN_PORT free ports unless given), and with the
// relay if withRelay, until ctx ends, and waits until it listens.
func startServe(ctx context.Context, t *testing.T, env map[string]string, withRelay bool) served {
	t.Helper()
	env = maps.Clone(env)
	if env["PORT"] == "" {
		env["PORT"] = "0"
	}
	if env["ADMIN_PORT"] == "" {
		port, err := devenv.FreePort(ctx)
		require.NoError(t, err)
		env["ADMIN_PORT"] = strconv.Itoa(port)
	}
	cfg, err := loadConfig(func(k string) string { return env[k] })
	require.NoError(t, err)
	cfg.relay = withRelay
	listening := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, httpapi.NewLogger(io.Discard, 0), listening) }()
	select {
	case addr := <-listening:
		host, _, err := net.SplitHostPort(addr)
		require.NoError(t, err)
		return served{base: "http://" + strings.Replace(addr, "[::]", "127.0.0.1", 1),
			admin: "http://127.0.0.1:" + env["ADMIN_PORT"], host: host, done: done}
	case err := <-done:
		t.Fatal(err)
	}
	return served{}
}

// requireReady checks that /readyz answers the same on the API and the admin port.
func requireReady(t *testing.T, status int, body string, bases ...string) {
	t.Helper()
	for _, base := range bases {
		resp, err := http.Get(base + "/readyz")
		require.NoError(t, err)
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, status, resp.StatusCode, base)
		require.JSONEq(t, body, string(got), base)
	}
}

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// HOST chooses the interface the API listens on; by default it is every interface.
func TestServeListensOnHost(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	for _, tc := range []struct {
		name     string
		host     string
		wantHost string
	}{
		{name: "default: all interfaces", host: "", wantHost: "::"},
		{name: "loopback only, for a sidecar", host: "127.0.0.1", wantHost: "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s := startServe(ctx, t, map[string]string{"DATABASE_URL": url, "HOST": tc.host, "MIGRATE_ON_START": "false"}, false)
			require.Equal(t, http.StatusOK, get(t, s.base+"/healthz"))
			cancel()
			require.NoError(t, <-s.done)
			require.Equal(t, tc.wantHost, s.host)
		})
	}
}

// Without GOGC and GOMEMLIMIT, serve collects at 400% under its own soft memory limit. (Every
// serve this package starts has the default MAX_CONNECTIONS, so all set the same two
// process-wide values; a smaller GOMEMLIMIT given to `go test` stands instead.)
func TestServeSetsTheCollectorsTargetAndLimit(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := startServe(ctx, t, map[string]string{"DATABASE_URL": pgtest.NewDatabase(t)}, false)
	samples := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	metrics.Read(samples)
	require.Equal(t, uint64(serveGCPercent), samples[0].Value.Uint64())
	own := uint64(serveMemoryLimit(httpapi.DefaultMaxConnections))
	if os.Getenv("GOMEMLIMIT") == "" {
		require.Equal(t, own, samples[1].Value.Uint64())
	} else {
		require.LessOrEqual(t, samples[1].Value.Uint64(), own)
	}
	cancel()
	require.NoError(t, <-s.done)
}

func TestConfigRejectsBadValues(t *testing.T) {
	t.Parallel()
	for _, env := range []map[string]string{
		{"PORT": "eighty"},
		{"PORT": "70000"},
		{"SHUTDOWN_DELAY": "soon"},
		{"MIGRATE_ON_START": "maybe"},
		{"LOG_LEVEL": "loud"},
		{"NATS_STREAM": "tally.events"},
		{"NATS_SUBJECT_PREFIX": "tally.>"},
		{"NATS_SUBJECT_PREFIX": "tally."},
		{"MAX_CONNECTIONS": "0"},
		{"MAX_CONNECTIONS": "many"},
		{"WRITE_BATCH_MAX": "0"},
		{"WRITE_WORKERS": "-1"},
		{"NATS_URL": "nats://a:4222,:::"},
		{"NATS_URL": "nats-0"},
		{"NATS_CREDS": "/var/run/nats/tally.creds", "NATS_USER": "u", "NATS_PASSWORD": "p"},
		{"NATS_USER": "u"},
		{"NATS_STREAM_REPLICAS": "0"},
		{"RELAY_SLICES": "0"},
		{"RELAY_SLICES": "257"},
		{"NATS_STREAM_REPLICAS": "three"},
		{"NATS_STREAM_MAX_BYTES": "-1"},
		{"NATS_STREAM_MAX_AGE": "a week"},
		{"RELAY_LEASE_TTL": "-1s"},
		{"TALLY_REQUIRE_TOKENS": "true"},
		{"TALLY_REQUIRE_TOKENS": "true", "TALLY_TOKENS": " , "},
		{"TALLY_REQUIRE_TOKENS": "yes please", "TALLY_TOKENS": "s3cret-token-value:read"},
	} {
		_, err := loadConfig(func(k string) string { return env[k] })
		require.Error(t, err, "%v", env)
	}
	cfg, err := loadConfig(func(k string) string {
		return map[string]string{"TALLY_REQUIRE_TOKENS": "true", "TALLY_TOKENS": "0123456789abcdef:write"}[k]
	})
	require.NoError(t, err)
	require.Len(t, cfg.tokens, 1)
	cfg, err = loadConfig(func(string) string { return "" })
	require.NoError(t, err)
	require.Equal(t, "8000", cfg.port)
	require.True(t, cfg.migrateOnStart)
	require.Equal(t, "TALLY", cfg.natsStream)
	require.Equal(t, "tally", cfg.subjectPrefix)
	require.Equal(t, httpapi.DefaultMaxConnections, cfg.maxConnections)
	require.Equal(t, postgres.DefaultWriteBatchMax, cfg.writeBatchMax)
	require.Equal(t, serveGCPercent, cfg.gcPercent)
	require.True(t, cfg.memoryLimit)
	require.Equal(t, int64(2*1000*108<<10+64<<20), serveMemoryLimit(1000))
	cfg, err = loadConfig(func(k string) string { return map[string]string{"RELAY_SLICES": "8", "GOGC": "100"}[k] })
	require.NoError(t, err)
	require.Equal(t, 8, cfg.relaySlices)
	require.Zero(t, cfg.gcPercent, "GOGC set: the runtime's own setting stands")
	require.False(t, cfg.memoryLimit)
	cfg, err = loadConfig(func(k string) string { return map[string]string{"GOMEMLIMIT": "off"}[k] })
	require.NoError(t, err)
	require.Equal(t, serveGCPercent, cfg.gcPercent)
	require.False(t, cfg.memoryLimit, "GOMEMLIMIT=off: no limit, as asked")
	own := serveMemoryLimit(httpapi.DefaultMaxConnections)
	require.Equal(t, own, serveSoftLimit(math.MaxInt64, httpapi.DefaultMaxConnections), "GOMEMLIMIT unset")
	require.Equal(t, own, serveSoftLimit(512<<20, httpapi.DefaultMaxConnections), "a container's limit above serve's own")
	require.Equal(t, int64(256<<20), serveSoftLimit(256<<20, httpapi.DefaultMaxConnections), "a smaller GOMEMLIMIT wins")
	cfg, err = loadConfig(func(k string) string {
		return map[string]string{"MAX_CONNECTIONS": "50", "WRITE_BATCH_MAX": "1", "WRITE_WORKERS": "2"}[k]
	})
	require.NoError(t, err)
	require.Equal(t, 50, cfg.maxConnections)
	require.Equal(t, 1, cfg.writeBatchMax)
	require.Equal(t, 2, cfg.writeWorkers)
}

func TestRunNeedsACommand(t *testing.T) {
	t.Parallel()
	var stderr strings.Builder
	err := run(context.Background(), nil, func(string) string { return "" }, io.Discard, &stderr)
	require.Error(t, err)
	require.Contains(t, stderr.String(), "usage: tally")
	require.ErrorContains(t, run(context.Background(), []string{"serve"}, func(string) string { return "" }, io.Discard, io.Discard), "DATABASE_URL")
}
