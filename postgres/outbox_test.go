package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
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
	first, err := f.db.AcquireLease(f.ctx, 99, postgres.LeaseConfig{Poll: 20 * time.Millisecond})
	require.NoError(t, err)
	got := make(chan struct{})
	go func() {
		second, err := f.db.AcquireLease(f.ctx, 99, postgres.LeaseConfig{Poll: 20 * time.Millisecond})
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

// Property: however writes to the same users interleave, across several pools, each user's
// events appear in the feed with sequence 1, 2, 3, ... in that order. Each seed is a random
// workload of deposits and withdrawals, current and back-dated, many of them refused.
func TestEachUsersEventsLeaveInSequenceOrder(t *testing.T) {
	t.Parallel()
	for seed := range int64(3) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			f := setup(t)
			users := []int64{f.user(t), f.user(t), f.user(t), f.user(t)}
			pools := []*postgres.DB{f.db}
			for range 2 {
				db, err := postgres.Open(f.ctx, f.url)
				require.NoError(t, err)
				t.Cleanup(db.Close)
				pools = append(pools, db)
			}
			base := time.Now().UTC().Add(-1000 * time.Hour)
			var wg sync.WaitGroup
			for w := range 12 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewSource(seed*100 + int64(w)))
					for range 25 {
						req := randomRequest(rng, users, base)
						if rng.Intn(3) == 0 {
							req.Timestamp = nil // now: never back-dated
						}
						if _, err := pools[w%len(pools)].Apply(f.ctx, req, render); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			var committed, missed float64
			for _, db := range pools {
				c, m := db.GuessOutcomes()
				committed, missed = committed+c, missed+m
			}
			require.Positive(t, committed, "batches decided on an instance's copy of its users raced too")
			require.Positive(t, missed, "and copies went stale under another instance's writes")

			var total int64
			require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT sum(event_seq) FROM users").Scan(&total))
			last := map[int64]int64{}
			for _, e := range f.readEvents(t, int(total)) {
				require.Equal(t, last[e.UserID]+1, e.Seq, "user %d: sequence %d after %d", e.UserID, e.Seq, last[e.UserID])
				require.Equal(t, e.Seq, decodeEvent(t, e).Data.Sequence)
				last[e.UserID] = e.Seq
			}
			for _, u := range users {
				var eventSeq int64
				require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT event_seq FROM users WHERE id = $1", u).Scan(&eventSeq))
				require.Equal(t, eventSeq, last[u], "user %d: every event numbered is in the feed", u)
			}
		})
	}
}

// A user's write lock is never a lease: the user whose id equals a lease's key writes while
// that lease is held for the life of a process.
func TestUserWritesNeverWaitOnALease(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		key  int64
	}{
		{name: "migration lock", key: 7_242_001},
		{name: "relay lease", key: 7_242_002},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t)
			_, err := f.db.Pool().Exec(f.ctx, "INSERT INTO users (id, name) OVERRIDING SYSTEM VALUE VALUES ($1, 'lease')", tc.key)
			require.NoError(t, err)
			lease, err := f.db.AcquireLease(f.ctx, tc.key, postgres.LeaseConfig{})
			require.NoError(t, err)
			defer lease.Release()
			ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
			defer cancel()
			out, err := f.db.Apply(ctx, ledger.Request{UID: uuid.New(), UserID: tc.key, Type: ledger.Deposit, Amount: 100}, render)
			require.NoError(t, err)
			require.Equal(t, 200, out.Reply.Status)
			select {
			case <-lease.Lost():
				t.Fatal("the lease ended before the write")
			default:
			}
		})
	}
}

// requireSilence fails the test if the lease's channel announces anything within 300 ms.
func requireSilence(t *testing.T, lease *postgres.Lease, why string) {
	t.Helper()
	select {
	case <-lease.Notifications():
		t.Fatal(why)
	case <-time.After(300 * time.Millisecond):
	}
}

// The outbox's trigger wakes a lease holder that listens, once the writing transaction
// commits, and not for one that rolls back; only while the wake-up is wanted.
func TestLeaseDeliversOutboxNotifications(t *testing.T) {
	f := setup(t)
	lease, err := f.db.AcquireLease(f.ctx, 98, postgres.LeaseConfig{Listen: "tally_outbox"})
	require.NoError(t, err)
	defer lease.Release()

	// Off, as migrated: writers do not notify.
	quiet, err := f.db.CreateUser(f.ctx, "unannounced")
	require.NoError(t, err)
	_, err = f.db.Apply(f.ctx, ledger.Request{UID: uuid.New(), UserID: quiet.ID, Type: ledger.Deposit, Amount: 100}, render)
	require.NoError(t, err)
	requireSilence(t, lease, "notified while the wake-up is off")
	require.NoError(t, f.db.SetOutboxWakeup(f.ctx, true))

	tx, err := f.db.Pool().Begin(f.ctx)
	require.NoError(t, err)
	_, err = tx.Exec(f.ctx, `INSERT INTO outbox (id, user_id, user_seq, type, event) VALUES (gen_random_uuid(), 1, 1, 'x', '{}')`)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(f.ctx))
	requireSilence(t, lease, "notified of a rolled-back write")

	u, err := f.db.CreateUser(f.ctx, "woken")
	require.NoError(t, err)
	select {
	case <-lease.Notifications():
	case <-time.After(5 * time.Second):
		t.Fatal("no notification for a committed write")
	}
	_, err = f.db.Apply(f.ctx, ledger.Request{UID: uuid.New(), UserID: u.ID, Type: ledger.Deposit, Amount: 100}, render)
	require.NoError(t, err)
	select {
	case <-lease.Notifications():
	case <-time.After(5 * time.Second):
		t.Fatal("no notification for a committed write")
	}
	require.True(t, lease.Held())

	require.NoError(t, f.db.SetOutboxWakeup(f.ctx, false))
	_, err = f.db.Apply(f.ctx, ledger.Request{UID: uuid.New(), UserID: u.ID, Type: ledger.Deposit, Amount: 100}, render)
	require.NoError(t, err)
	requireSilence(t, lease, "notified after the wake-up was turned off")
}
