package postgres_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// With tracing on, queries and batches become spans under the caller's span.
// Not parallel: it sets the global provider.
func TestQueriesAreTraced(t *testing.T) {
	recorder := tracetest.NewSpanRecorder()
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	previous := otel.GetTracerProvider()
	otel.SetTracerProvider(provider)
	t.Cleanup(func() { otel.SetTracerProvider(previous) })

	db, err := postgres.Open(context.Background(), pgtest.NewDatabase(t), postgres.WithTracing())
	require.NoError(t, err)
	defer db.Close()
	ctx, parent := provider.Tracer("test").Start(context.Background(), "request")
	u, err := db.CreateUser(ctx, "traced")
	require.NoError(t, err)
	_, err = db.Apply(ctx, ledger.Request{UID: uuid.New(), UserID: u.ID, Type: ledger.Deposit, Amount: 100}, render)
	require.NoError(t, err)
	parent.End()

	var names []string
	for _, s := range recorder.Ended() {
		if s.Parent().TraceID() == parent.SpanContext().TraceID() {
			names = append(names, s.Name())
		}
	}
	require.Contains(t, names, "postgres.query")
	require.Contains(t, names, "postgres.batch")
}
