package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
)

func setupEngine(t *testing.T) *engine {
	t.Helper()
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), pgtest.NewDatabase(t))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	e := &engine{pool: pool, log: slog.New(slog.NewJSONHandler(io.Discard, nil)), source: testSource}
	require.NoError(t, e.createSchema(t.Context()))
	require.NoError(t, e.createSchema(t.Context()), "creating the tables again is a no-op")
	return e
}

// testSource is the EVENT_SOURCE of the engine's tally in these tests.
const testSource = "tally/engine-test"

// cloudEvent is the body tally's relay publishes for an event of the user.
func cloudEvent(typ ledger.EventType, userID, seq int64, uid uuid.UUID) []byte {
	return sourcedEvent(testSource, typ, userID, seq, uid)
}

// sourcedEvent is the body the relay of the tally with that EVENT_SOURCE publishes.
func sourcedEvent(source string, typ ledger.EventType, userID, seq int64, uid uuid.UUID) []byte {
	data := ledger.EventData{UserID: userID, Sequence: seq, Balance: 100}
	if uid != uuid.Nil {
		data.UID = uid.String()
	}
	return ledger.Event{ID: uuid.Must(uuid.NewV7()), Type: typ, UserID: userID, Seq: seq, Time: time.Now(), Data: data}.
		CloudEvent(source)
}

func TestRedeliveryTakesEffectOnce(t *testing.T) {
	e := setupEngine(t)
	ctx := t.Context()
	uid := uuid.New()
	applied := cloudEvent(ledger.EventTransactionApplied, 7, 2, uid)
	funded := cloudEvent(ledger.EventBalanceFunded, 7, 3, uuid.Nil)
	for i, want := range []outcome{outcomeApplied, outcomeDuplicate, outcomeDuplicate} {
		got, err := e.handle(ctx, applied)
		require.NoError(t, err)
		require.Equal(t, want, got, "delivery %d", i+1)
		got, err = e.handle(ctx, funded)
		require.NoError(t, err)
		require.Equal(t, want, got, "delivery %d", i+1)
	}
	var effects, deliveries int64
	require.NoError(t, e.pool.QueryRow(ctx, "SELECT effects FROM applied_seen WHERE uid = $1", uid).Scan(&effects))
	require.Equal(t, int64(1), effects)
	require.NoError(t, e.pool.QueryRow(ctx, "SELECT sum(count) FROM deliveries").Scan(&deliveries))
	require.Equal(t, int64(6), deliveries)
	users, err := e.fundedUsers(ctx)
	require.NoError(t, err)
	require.Equal(t, []int64{7}, users)
}

func TestStaleCrossingIsIgnored(t *testing.T) {
	e := setupEngine(t)
	ctx := t.Context()
	steps := []struct {
		typ    ledger.EventType
		seq    int64
		want   outcome
		funded []int64
	}{
		{ledger.EventBalanceFunded, 3, outcomeApplied, []int64{9}},
		{ledger.EventBalanceDepleted, 6, outcomeApplied, nil},
		{ledger.EventBalanceFunded, 5, outcomeStale, nil}, // older than the depletion
		{ledger.EventBalanceFunded, 8, outcomeApplied, []int64{9}},
		{ledger.EventBalanceDepleted, 6, outcomeStale, []int64{9}}, // a new id, an old sequence
	}
	for i, s := range steps {
		got, err := e.handle(ctx, cloudEvent(s.typ, 9, s.seq, uuid.Nil))
		require.NoError(t, err)
		require.Equal(t, s.want, got, "step %d", i+1)
		users, err := e.fundedUsers(ctx)
		require.NoError(t, err)
		require.ElementsMatch(t, s.funded, users, "step %d", i+1)
	}
}

func TestOtherEventsAndPoison(t *testing.T) {
	e := setupEngine(t)
	ctx := t.Context()
	got, err := e.handle(ctx, cloudEvent(ledger.EventUserCreated, 1, 1, uuid.Nil))
	require.NoError(t, err)
	require.Equal(t, outcomeIgnored, got)
	got, err = e.handle(ctx, cloudEvent(ledger.EventTransactionRejected, 1, 2, uuid.New()))
	require.NoError(t, err)
	require.Equal(t, outcomeIgnored, got)
	for _, body := range []string{`not json`, `{}`, `{"id":"` + uuid.NewString() + `","type":"tally.transaction.applied","data":{"user_id":1,"uid":"x"}}`} {
		_, err := e.handle(ctx, []byte(body))
		require.ErrorIs(t, err, errPoison, body)
	}
	var n int
	require.NoError(t, e.pool.QueryRow(ctx, "SELECT count(*) FROM inbox").Scan(&n))
	require.Zero(t, n)
}

// Another deployment's events on a shared stream, for the same user ids, change nothing: not
// the funded flags, not the inbox, not the applied transactions.
func TestOtherDeploymentsEventsAreIgnored(t *testing.T) {
	e := setupEngine(t)
	ctx := t.Context()
	steps := []struct {
		name   string
		body   []byte
		want   outcome
		funded []int64
	}{
		{"ours funds user 4", cloudEvent(ledger.EventBalanceFunded, 4, 3, uuid.Nil), outcomeApplied, []int64{4}},
		{"theirs depletes user 4", sourcedEvent("tally", ledger.EventBalanceDepleted, 4, 9, uuid.Nil), outcomeForeign, []int64{4}},
		{"theirs funds user 5", sourcedEvent("tally/other", ledger.EventBalanceFunded, 5, 2, uuid.Nil), outcomeForeign, []int64{4}},
		{"theirs applies to user 5", sourcedEvent("tally/other", ledger.EventTransactionApplied, 5, 3, uuid.New()), outcomeForeign, []int64{4}},
		{"ours depletes user 4", cloudEvent(ledger.EventBalanceDepleted, 4, 5, uuid.Nil), outcomeApplied, nil},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			got, err := e.handle(ctx, s.body)
			require.NoError(t, err)
			require.Equal(t, s.want, got)
			users, err := e.fundedUsers(ctx)
			require.NoError(t, err)
			require.ElementsMatch(t, s.funded, users)
		})
	}
	var inbox, effects int
	require.NoError(t, e.pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM inbox), (SELECT count(*) FROM applied_seen)").Scan(&inbox, &effects))
	require.Equal(t, 2, inbox)
	require.Zero(t, effects)
}

func TestServerAtLeast(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]bool{"2.9.10": false, "2.10.0": true, "2.15.2": true, "3.0.0": true, "1.20": false, "": false, "x.y": false} {
		require.Equal(t, want, serverAtLeast(v, 2, 10), v)
	}
}

func TestConfig(t *testing.T) {
	t.Parallel()
	env := map[string]string{"ADENGINE_DATABASE_URL": "postgres://x"}
	_, err := loadConfig(func(k string) string { return env[k] })
	require.ErrorContains(t, err, "TALLY_EVENT_SOURCE")
	env["TALLY_EVENT_SOURCE"] = "tally/1/x"
	cfg, err := loadConfig(func(k string) string { return env[k] })
	require.NoError(t, err)
	require.Equal(t, config{databaseURL: "postgres://x", eventSource: "tally/1/x", natsURL: "nats://127.0.0.1:4222", stream: "TALLY",
		subjectPrefix: "tally", durable: "adengine", ackWait: 30 * time.Second}, cfg)
	env["ADENGINE_ACK_WAIT"] = "10ms"
	_, err = loadConfig(func(k string) string { return env[k] })
	require.Error(t, err)
	_, err = loadConfig(func(string) string { return "" })
	require.Error(t, err)
}
