package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// A database whose relay published on plain PostgreSQL keeps what it published when Citus
// arrives: events up to the relay's cursor are marked published, the others wait for the
// relay on Citus, and only those.
func TestCitusOutboxKeepsWhatWasPublished(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, addCitus := pgtest.NewDatabaseBeforeCitus(t)
	_, err := postgres.Migrate(ctx, url)
	require.NoError(t, err)
	db, err := postgres.Open(ctx, url)
	require.NoError(t, err)
	published, err := db.CreateUser(ctx, "petya")
	require.NoError(t, err)
	waiting, err := db.CreateUser(ctx, "olga")
	require.NoError(t, err)
	// The feed shows an event once every older transaction on the server ended: other tests'
	// transactions on the same server may hold it back for a moment.
	var events []ledger.StoredEvent
	require.Eventually(t, func() bool {
		events, err = db.Events(ctx, ledger.EventCursor{}, 10)
		return err == nil && len(events) == 2
	}, 30*time.Second, 20*time.Millisecond, "both users' events visible")
	require.Equal(t, published.ID, events[0].UserID)
	require.NoError(t, db.SaveRelayCursor(ctx, "jetstream", events[0].Cursor))
	db.Close()

	require.NoError(t, addCitus(ctx))
	_, err = postgres.Migrate(ctx, url)
	require.NoError(t, err)
	db, err = postgres.Open(ctx, url)
	require.NoError(t, err)
	defer db.Close()
	pending, err := db.PendingEvents(ctx, 1, []int{0}, 0, 10)
	require.NoError(t, err)
	require.Len(t, pending, 1)
	require.Equal(t, waiting.ID, pending[0].UserID)
	require.Equal(t, events[1].ID, pending[0].ID)
}
