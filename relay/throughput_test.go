package relay_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/relay"
)

// BenchmarkRelayThroughput measures how fast one relay with the default settings publishes a
// backlog of b.N events (ten per user) to a private JetStream: on plain PostgreSQL by its
// cursor, and on Citus (the tests' database on a Citus cluster, as make test-citus gives) by
// slices, reading unpublished events and marking them. It reports events per second.
//
//	go test ./relay -run '^$' -bench RelayThroughput -benchtime 20000x -count 3
func BenchmarkRelayThroughput(b *testing.B) {
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	db, _ := pgtest.NewDB(b)
	distributed, err := db.Distributed(ctx)
	require.NoError(b, err)
	ns, err := devenv.StartNATS(0, b.TempDir())
	require.NoError(b, err)
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(b, err)
	defer nc.Close()
	f := &fixture{db: db, ctx: ctx}
	f.backlog(b, max(1, b.N/10), 10)

	r, err := relay.New(db, nc, httpapi.NewLogger(io.Discard, 0), relay.Config{})
	require.NoError(b, err)
	b.ResetTimer()
	start := time.Now()
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }() //nolint:errcheck // Run returns nil on cancel
	defer func() { cancel(); <-done }()
	require.Eventually(b, func() bool { return r.Published.Load() >= int64(f.events) }, 10*time.Minute, time.Millisecond)
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(f.events)/elapsed.Seconds(), "events/s")
	b.Logf("distributed=%v: %d events in %v", distributed, f.events, elapsed.Round(time.Millisecond))
}
