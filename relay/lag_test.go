package relay_test

import (
	"context"
	"encoding/json"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/relay"
)

// lagRate is how many deposits per second BenchmarkOutboxLag writes.
const lagRate = 200

// BenchmarkOutboxLag measures the time from a deposit's event `time` (the database clock
// inside the writing transaction, just before it commits) to its receipt by a JetStream
// consumer, through a relay with the default settings, while deposits arrive at a steady
// lagRate: "notify" as the relay runs, woken by the outbox's notifications, and "poll" with
// them turned off, the relay finding events by its poll alone. Each iteration is one
// deposit: -benchtime 1000x writes for five seconds.
func BenchmarkOutboxLag(b *testing.B) {
	b.Run("poll", func(b *testing.B) { benchmarkOutboxLag(b, true) })
	b.Run("notify", func(b *testing.B) { benchmarkOutboxLag(b, false) })
}

func benchmarkOutboxLag(b *testing.B, pollOnly bool) {
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	db, _ := pgtest.NewDB(b)
	nc, err := nats.Connect(natsURL())
	require.NoError(b, err, "NATS with JetStream must run at %s", natsURL())
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(b, err)
	name := "L" + uuid.NewString()[:8]
	defer js.DeleteStream(context.Background(), name) //nolint:errcheck // best effort
	cfg := relay.Config{Stream: name, SubjectPrefix: "l" + name, PollOnly: pollOnly}
	r, err := relay.New(db, nc, httpapi.NewLogger(io.Discard, 0), cfg)
	require.NoError(b, err)
	relayDone := make(chan struct{})
	go func() { defer close(relayDone); r.Run(ctx) }() //nolint:errcheck // Run returns nil on cancel
	defer func() { cancel(); <-relayDone }()

	users := make([]int64, 10)
	for i := range users {
		u, err := db.CreateUser(ctx, "lag")
		require.NoError(b, err)
		users[i] = u.ID
	}
	uids := make([]uuid.UUID, b.N)
	timed := make(map[string]bool, b.N)
	for i := range uids {
		uids[i] = uuid.New()
		timed[uids[i].String()] = true
	}
	require.Eventually(b, func() bool { _, err := js.Stream(ctx, name); return err == nil },
		30*time.Second, 10*time.Millisecond, "the relay never created the stream")
	cons, err := js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{cfg.SubjectPrefix + "." + string(ledger.EventTransactionApplied)}})
	require.NoError(b, err)
	lags := make(chan time.Duration, b.N)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		received := time.Now()
		var ce struct {
			Time time.Time
			Data struct{ UID string }
		}
		if json.Unmarshal(m.Data(), &ce) == nil && timed[ce.Data.UID] {
			lags <- received.Sub(ce.Time)
		}
	})
	require.NoError(b, err)
	defer cc.Stop()

	b.ResetTimer()
	tick := time.NewTicker(time.Second / lagRate)
	defer tick.Stop()
	writes := make([]time.Duration, 0, b.N)
	for i, uid := range uids {
		<-tick.C
		began := time.Now()
		_, err := db.Apply(ctx, ledger.Request{UID: uid, UserID: users[i%len(users)], Type: ledger.Deposit, Amount: 100}, httpapi.RenderTransaction)
		require.NoError(b, err)
		writes = append(writes, time.Since(began))
	}
	samples := make([]time.Duration, 0, b.N)
	deadline := time.After(60 * time.Second)
	for len(samples) < b.N {
		select {
		case d := <-lags:
			samples = append(samples, d)
		case <-deadline:
			b.Fatalf("received %d of %d events within 60s of the last write", len(samples), b.N)
		}
	}
	b.StopTimer()
	ms := func(d []time.Duration, q float64) float64 {
		slices.Sort(d)
		return float64(d[int(q*float64(len(d)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(0, "ns/op") // the pace of the writes, not a cost
	b.ReportMetric(ms(samples, 0.5), "p50-ms")
	b.ReportMetric(ms(samples, 0.99), "p99-ms")
	b.ReportMetric(ms(samples, 1), "max-ms")
	// The writes' own duration, a part of which (the commit) precedes any relay's first look.
	b.ReportMetric(ms(writes, 0.5), "write-p50-ms")
}
