package postgres_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
)

type cloudEvent struct {
	SpecVersion     string           `json:"specversion"`
	ID              string           `json:"id"`
	Source          string           `json:"source"`
	Type            string           `json:"type"`
	Subject         string           `json:"subject"`
	Time            string           `json:"time"`
	DataContentType string           `json:"datacontenttype"`
	Data            ledger.EventData `json:"data"`
}

// readEvents reads the feed from the start until it has n events. Events become visible
// once every older write transaction of the cluster has ended, and other tests' transactions
// run on the same cluster, so it waits for them.
func (f fixture) readEvents(t *testing.T, n int) []ledger.StoredEvent {
	t.Helper()
	var all []ledger.StoredEvent
	var after ledger.EventCursor
	deadline := time.Now().Add(20 * time.Second)
	for len(all) < n {
		require.True(t, time.Now().Before(deadline), "only %d of %d events became visible", len(all), n)
		page, err := f.db.Events(f.ctx, after, 3)
		require.NoError(t, err)
		if len(page) == 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		all = append(all, page...)
		after = page[len(page)-1].Cursor
	}
	require.Len(t, all, n)
	return all
}

func decodeEvent(t *testing.T, e ledger.StoredEvent) cloudEvent {
	t.Helper()
	var ce cloudEvent
	require.NoError(t, json.Unmarshal(e.Body, &ce))
	return ce
}

// Every change writes its events in the same transaction; the balance transitions fire once
// per crossing; a replay writes nothing.
func TestEventsFollowChanges(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	req := ledger.Request{UID: uuid.New(), UserID: u, Type: ledger.Deposit, Amount: 500}
	_, err := f.db.Apply(f.ctx, req, render)
	require.NoError(t, err)
	_, err = f.db.Apply(f.ctx, req, render) // replay
	require.NoError(t, err)
	f.apply(t, u, ledger.Deposit, 100, nil)  // still funded: no transition
	f.apply(t, u, ledger.Withdraw, 600, nil) // to zero
	f.apply(t, u, ledger.Withdraw, 1, nil)   // refused
	f.apply(t, u, ledger.Deposit, 1, nil)    // funded again

	events := f.readEvents(t, 9)
	var types []ledger.EventType
	for i, e := range events {
		ce := decodeEvent(t, e)
		require.Equal(t, "1.0", ce.SpecVersion)
		require.Equal(t, e.ID.String(), ce.ID)
		require.Equal(t, uuid.Version(7), e.ID.Version())
		require.Equal(t, "tally", ce.Source)
		require.Equal(t, "tally."+string(e.Type), ce.Type)
		require.Equal(t, "application/json", ce.DataContentType)
		require.Equal(t, int64(i+1), ce.Data.Sequence, "per-user sequence has no gaps")
		require.Equal(t, int64(i+1), e.Seq)
		require.Equal(t, u, ce.Data.UserID)
		types = append(types, e.Type)
	}
	require.Equal(t, []ledger.EventType{
		ledger.EventUserCreated,
		ledger.EventTransactionApplied, ledger.EventBalanceFunded,
		ledger.EventTransactionApplied,
		ledger.EventTransactionApplied, ledger.EventBalanceDepleted,
		ledger.EventTransactionRejected,
		ledger.EventTransactionApplied, ledger.EventBalanceFunded,
	}, types)
	depleted := decodeEvent(t, events[5])
	require.Equal(t, ledger.Amount(0), depleted.Data.Balance)
	applied := decodeEvent(t, events[1])
	require.Equal(t, req.UID.String(), applied.Data.UID)
	require.Equal(t, ledger.Amount(500), *applied.Data.Amount)
	require.Equal(t, ledger.Amount(500), *applied.Data.BalanceAfter)
}

// An event whose transaction commits after a later one's is not skipped: readers do not see
// past a transaction still running, and see its event first once it commits.
func TestEventsNeverSkipALateCommit(t *testing.T) {
	f := setup(t)
	early, late := f.user(t), f.user(t)
	seen := f.readEvents(t, 2)
	cursor := seen[1].Cursor

	// A write path that has taken its transaction id but not yet committed.
	conn, err := pgx.Connect(f.ctx, f.url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	held, err := conn.Begin(f.ctx)
	require.NoError(t, err)
	heldID := uuid.Must(uuid.NewV7())
	_, err = held.Exec(f.ctx, `INSERT INTO outbox (id, user_id, user_seq, type, event) VALUES ($1, $2, 2, 'transaction.applied', '{}')`, heldID, early)
	require.NoError(t, err)

	// Later transactions commit first.
	f.apply(t, late, ledger.Deposit, 100, nil)
	f.apply(t, late, ledger.Deposit, 100, nil)
	page, err := f.db.Events(f.ctx, cursor, 100)
	require.NoError(t, err)
	require.Empty(t, page, "nothing after a running transaction is visible yet")

	require.NoError(t, held.Commit(f.ctx))
	var ids []uuid.UUID
	deadline := time.Now().Add(20 * time.Second)
	for len(ids) < 4 && time.Now().Before(deadline) {
		page, err := f.db.Events(f.ctx, cursor, 1)
		require.NoError(t, err)
		if len(page) == 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		ids = append(ids, page[0].ID)
		cursor = page[0].Cursor
	}
	require.Len(t, ids, 4, "the held event and the three of the later deposits, each once")
	time.Sleep(100 * time.Millisecond)
	page, err = f.db.Events(f.ctx, cursor, 100)
	require.NoError(t, err)
	require.Empty(t, page, "nothing twice")
	require.Equal(t, heldID, ids[0])
}

func TestLeaseIsExclusive(t *testing.T) {
	f := setup(t)
	first, err := f.db.AcquireLease(f.ctx, 99, 20*time.Millisecond)
	require.NoError(t, err)
	got := make(chan struct{})
	go func() {
		second, err := f.db.AcquireLease(f.ctx, 99, 20*time.Millisecond)
		if err == nil {
			close(got)
			second.Release()
		}
	}()
	select {
	case <-got:
		t.Fatal("two holders of one lease")
	case <-time.After(300 * time.Millisecond):
	}
	first.Release()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the lease was not handed over")
	}
}

func TestPruneKeepsUnpublishedEvents(t *testing.T) {
	f := setup(t)
	f.user(t)
	f.user(t)
	events := f.readEvents(t, 2)
	n, err := f.db.PruneEvents(f.ctx, time.Now().Add(time.Hour), events[0].Cursor)
	require.NoError(t, err)
	require.Equal(t, int64(1), n)
	backlog, age, err := f.db.Backlog(f.ctx, events[0].Cursor)
	require.NoError(t, err)
	require.Equal(t, int64(1), backlog)
	require.Positive(t, age)
	require.Equal(t, events[1].ID, f.readEvents(t, 1)[0].ID)
}
