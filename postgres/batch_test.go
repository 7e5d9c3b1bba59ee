package postgres_test

import (
	"context"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// batchFixture is a store with one write worker, so that a test can make the worker wait
// (on a uid that the test's own transaction inserted and holds uncommitted) while requests
// queue, then let it take them all as one batch in the order they queued.
type batchFixture struct {
	fixture
	reg *prometheus.Registry
}

func setupBatch(t *testing.T) batchFixture {
	t.Helper()
	f := setup(t)
	db, err := postgres.Open(f.ctx, f.url, postgres.WithWriteBatching(64, 1))
	require.NoError(t, err)
	t.Cleanup(db.Close)
	f.db = db
	reg := prometheus.NewRegistry()
	reg.MustRegister(db.WriteCollector())
	return batchFixture{fixture: f, reg: reg}
}

type result struct {
	out ledger.Outcome
	err error
}

// holdLock takes a user's write lock on a connection of the test's own and returns its release.
func (f batchFixture) holdLock(t *testing.T, user int64) func() {
	t.Helper()
	conn, err := pgx.Connect(f.ctx, f.url)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	high, low := postgres.UserLockKey(user)
	_, err = conn.Exec(f.ctx, "SELECT pg_advisory_lock($1::int4, $2::int4)", high, low)
	require.NoError(t, err)
	return func() {
		_, err := conn.Exec(f.ctx, "SELECT pg_advisory_unlock($1::int4, $2::int4)", high, low)
		require.NoError(t, err)
	}
}

// waitForLockWaiters waits until n sessions of the test's database wait on a lock.
func (f batchFixture) waitForLockWaiters(t *testing.T, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		var waiting int
		err := f.db.Pool().QueryRow(f.ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting)
		return err == nil && waiting == n
	}, 10*time.Second, 5*time.Millisecond)
}

// submit sends req in its own goroutine and waits until it is queued as the queued-th request.
func (f batchFixture) submit(t *testing.T, ctx context.Context, req ledger.Request, queued int) <-chan result {
	t.Helper()
	return submitTo(t, ctx, f.db, req, queued)
}

func submitTo(t *testing.T, ctx context.Context, db *postgres.DB, req ledger.Request, queued int) <-chan result {
	t.Helper()
	done := make(chan result, 1)
	go func() {
		out, err := db.Apply(ctx, req, render)
		done <- result{out, err}
	}()
	require.Eventually(t, func() bool { return db.QueuedWrites() == queued }, 10*time.Second, time.Millisecond)
	return done
}

// holdUID inserts a transaction with uid for another user in a transaction of the test's own
// and keeps it uncommitted, so that a batch writing uid waits on it. release rolls it back.
func (f batchFixture) holdUID(t *testing.T, uid uuid.UUID) (release func()) {
	t.Helper()
	conn, err := pgx.Connect(f.ctx, f.url)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	tx, err := conn.Begin(f.ctx)
	require.NoError(t, err)
	_, err = tx.Exec(f.ctx, `INSERT INTO transactions (uid, user_id, seq, type, amount, ts, timestamp_given,
		status, balance_after, response_status, response_body) VALUES ($1, $2, 1, 'DEPOSIT', 5, now(), false, 'APPLIED', 5, 200, '{}')`,
		uid, f.user(t))
	require.NoError(t, err)
	return func() { require.NoError(t, tx.Rollback(f.ctx)) }
}

// stall makes the worker wait on a blocker request whose uid the test holds, and returns the
// release of that uid and the blocker's answer.
func (f batchFixture) stall(t *testing.T) (release func(), blocked <-chan result) {
	t.Helper()
	req := deposit(f.user(t), 1)
	release = f.holdUID(t, req.UID)
	blocked = f.submit(t, f.ctx, req, 0)
	f.waitForLockWaiters(t, 1)
	return release, blocked
}

// batch records reqs as one batch, in this order, and returns their answers.
func (f batchFixture) batch(t *testing.T, reqs ...ledger.Request) []result {
	t.Helper()
	release, blocked := f.stall(t)
	sizeBefore := f.batchSizes(t)
	pending := make([]<-chan result, len(reqs))
	for i, req := range reqs {
		pending[i] = f.submit(t, f.ctx, req, i+1)
	}
	release()
	require.NoError(t, (<-blocked).err)
	results := make([]result, len(reqs))
	for i, p := range pending {
		results[i] = <-p
	}
	require.Equal(t, []float64{sizeBefore[0] + 1, sizeBefore[1] + float64(len(reqs))}, f.batchSizes(t),
		"every request in one batch")
	return results
}

// batchSizes lists the sizes of the batches recorded so far, in the histogram's terms: the
// count of batches and their total size.
func (f batchFixture) batchSizes(t *testing.T) []float64 {
	t.Helper()
	families, err := f.reg.Gather()
	require.NoError(t, err)
	for _, mf := range families {
		if mf.GetName() == "tally_write_batch_size" {
			h := mf.GetMetric()[0].GetHistogram()
			return []float64{float64(h.GetSampleCount()), h.GetSampleSum()}
		}
	}
	t.Fatal("no tally_write_batch_size")
	return nil
}

func deposit(user int64, cents ledger.Amount) ledger.Request {
	return ledger.Request{UID: uuid.New(), UserID: user, Type: ledger.Deposit, Amount: cents}
}

func withdraw(user int64, cents ledger.Amount) ledger.Request {
	return ledger.Request{UID: uuid.New(), UserID: user, Type: ledger.Withdraw, Amount: cents}
}

// One batch holding one user many times decides each request on the state the one before
// left: an overdraft in the middle is refused and the rest apply in arrival order.
func TestBatchCarriesAUsersStateForward(t *testing.T) {
	f := setupBatch(t)
	u := f.user(t)
	reqs := []ledger.Request{deposit(u, 10000), withdraw(u, 3000), withdraw(u, 10000), deposit(u, 5000), withdraw(u, 12000)}
	results := f.batch(t, reqs...)

	want := []struct {
		status       ledger.Status
		balanceAfter ledger.Amount
	}{{ledger.Applied, 10000}, {ledger.Applied, 7000}, {ledger.Rejected, 0}, {ledger.Applied, 12000}, {ledger.Applied, 0}}
	for i, r := range results {
		require.NoError(t, r.err)
		tx := r.out.Tx
		require.Equal(t, reqs[i].UID, tx.UID)
		require.Equal(t, want[i].status, tx.Status, "request %d", i)
		require.Equal(t, int64(i+1), tx.Seq, "request %d", i)
		if want[i].status == ledger.Applied {
			require.Equal(t, want[i].balanceAfter, *tx.BalanceAfter, "request %d", i)
			require.Equal(t, 200, r.out.Reply.Status)
		} else {
			require.Equal(t, ledger.CodeInsufficientFunds, tx.Reason)
			require.Equal(t, 402, r.out.Reply.Status)
		}
		stored, err := f.db.Transaction(f.ctx, reqs[i].UID)
		require.NoError(t, err)
		require.Equal(t, tx.Status, stored.Status)
	}
	require.Equal(t, ledger.Amount(0), f.balance(t, u))
	require.Len(t, f.checkTimeline(t, u), 4)

	var types []string
	var seqs []int64
	// Three users created (u, the blocker and the holder of its uid), the blocker's deposit
	// (applied, funded), then u's events.
	for _, e := range f.readEvents(t, 3+2+7) {
		if e.UserID == u {
			types, seqs = append(types, string(e.Type)), append(seqs, e.Seq)
		}
	}
	require.Equal(t, []string{"user.created", "transaction.applied", "balance.funded", "transaction.applied",
		"transaction.rejected", "transaction.applied", "transaction.applied", "balance.depleted"}, types)
	require.Equal(t, []int64{1, 2, 3, 4, 5, 6, 7, 8}, seqs)
}

// The same uid twice in one batch takes effect once: the same body gets the first answer
// byte for byte, another body an idempotency conflict. A uid whose first use was refused as
// unknown stored nothing, so its next use in the batch is decided on its own.
func TestBatchDuplicateUIDs(t *testing.T) {
	f := setupBatch(t)
	u, other := f.user(t), f.user(t)
	first := deposit(u, 2500)
	otherBody := first
	otherBody.Amount = 2600
	unknown := deposit(999999, 100)
	known := unknown
	known.UserID = other
	results := f.batch(t, first, first, otherBody, unknown, known)

	require.NoError(t, results[0].err)
	require.False(t, results[0].out.Replayed)
	require.NoError(t, results[1].err)
	require.True(t, results[1].out.Replayed)
	require.Equal(t, results[0].out.Reply, results[1].out.Reply)
	require.Equal(t, ledger.CodeIdempotencyConflict, ledger.ErrorCode(results[2].err))
	require.Equal(t, ledger.CodeNotFound, ledger.ErrorCode(results[3].err))
	require.NoError(t, results[4].err)
	require.Equal(t, ledger.Applied, results[4].out.Tx.Status)

	require.Equal(t, ledger.Amount(2500), f.balance(t, u))
	require.Equal(t, ledger.Amount(100), f.balance(t, other))
	again, err := f.db.Apply(f.ctx, first, render)
	require.NoError(t, err)
	require.True(t, again.Replayed)
	require.Equal(t, results[0].out.Reply, again.Reply)
}

// A member that makes the batch's statement fail does not fail its neighbours: they commit,
// and only it gets the error. A trigger stands in for any failure one row can cause.
func TestBatchIsolatesAFailingMember(t *testing.T) {
	f := setupBatch(t)
	_, err := f.db.Pool().Exec(f.ctx, `
		CREATE FUNCTION refuse_13() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.amount = 13 THEN RAISE EXCEPTION 'amount 13 refused by the test'; END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER refuse_13 BEFORE INSERT ON transactions FOR EACH ROW EXECUTE FUNCTION refuse_13();`)
	require.NoError(t, err)
	u, other := f.user(t), f.user(t)
	results := f.batch(t, deposit(u, 100), deposit(other, 13), deposit(u, 200), deposit(other, 300))

	require.NoError(t, results[0].err)
	require.Error(t, results[1].err)
	require.Empty(t, ledger.ErrorCode(results[1].err), "an internal error, not a client's")
	require.NoError(t, results[2].err)
	require.NoError(t, results[3].err)
	require.Equal(t, ledger.Amount(300), f.balance(t, u))
	require.Equal(t, ledger.Amount(300), f.balance(t, other))
	f.checkTimeline(t, u)
	f.checkTimeline(t, other)
}

// A uid that another writer commits while the batch waits on it (here for another user)
// fails the batch's statement; the retry reads it and answers that member alone with a
// conflict, and the rest commit.
func TestBatchSurvivesAUIDCommittedElsewhere(t *testing.T) {
	f := setupBatch(t)
	u, other := f.user(t), f.user(t)
	taken := deposit(u, 700)

	elsewhere, err := pgx.Connect(f.ctx, f.url)
	require.NoError(t, err)
	defer elsewhere.Close(f.ctx)
	tx, err := elsewhere.Begin(f.ctx)
	require.NoError(t, err)
	_, err = tx.Exec(f.ctx, `INSERT INTO transactions (uid, user_id, seq, type, amount, ts, timestamp_given,
		status, balance_after, response_status, response_body) VALUES ($1, $2, 1, 'DEPOSIT', 5, now(), false, 'APPLIED', 5, 200, '{}')`,
		taken.UID, other)
	require.NoError(t, err)

	release, blocked := f.stall(t)
	reqs := []ledger.Request{deposit(u, 100), taken, deposit(other, 50)}
	pending := make([]<-chan result, len(reqs))
	for i, req := range reqs {
		pending[i] = f.submit(t, f.ctx, req, i+1)
	}
	release()
	require.NoError(t, (<-blocked).err)
	f.waitForLockWaiters(t, 1) // the batch waits on the uncommitted uid
	require.NoError(t, tx.Commit(f.ctx))

	require.NoError(t, (<-pending[0]).err)
	require.Equal(t, ledger.CodeIdempotencyConflict, ledger.ErrorCode((<-pending[1]).err))
	require.NoError(t, (<-pending[2]).err)
	require.Equal(t, ledger.Amount(100), f.balance(t, u))
}

// A request cancelled while queued is dropped before its batch starts and leaves no trace; one
// cancelled after its batch started is recorded or not with the whole batch, and a retry of
// its uid says which.
func TestBatchCancellation(t *testing.T) {
	f := setupBatch(t)
	u := f.user(t)
	blocker2 := f.user(t)
	release, blocked := f.stall(t)

	queuedCtx, cancelQueued := context.WithCancel(f.ctx)
	dropped := deposit(u, 100)
	droppedDone := f.submit(t, queuedCtx, dropped, 1)
	cancelQueued()
	require.ErrorIs(t, (<-droppedDone).err, context.Canceled)

	// The next batch holds a request for u and one whose uid the test holds.
	held := deposit(blocker2, 1)
	release2 := f.holdUID(t, held.UID)
	midCtx, cancelMid := context.WithCancel(f.ctx)
	mid := deposit(u, 200)
	midDone := f.submit(t, midCtx, mid, 2)
	otherDone := f.submit(t, f.ctx, held, 3)
	release()
	require.NoError(t, (<-blocked).err)
	f.waitForLockWaiters(t, 1) // the batch waits on the held uid
	require.Equal(t, 0, f.db.QueuedWrites())
	cancelMid()
	require.ErrorIs(t, (<-midDone).err, context.Canceled)
	release2()
	require.NoError(t, (<-otherDone).err)

	_, err := f.db.Transaction(f.ctx, dropped.UID)
	require.Equal(t, ledger.CodeNotFound, ledger.ErrorCode(err), "dropped before its batch: absent")
	again, err := f.db.Apply(f.ctx, mid, render)
	require.NoError(t, err)
	require.True(t, again.Replayed, "cancelled mid-batch: recorded with its batch")
	require.Equal(t, ledger.Amount(200), f.balance(t, u))
}

// After Close, writes are refused as unavailable rather than left waiting.
func TestBatchRefusesWritesAfterClose(t *testing.T) {
	f := setupBatch(t)
	u := f.user(t)
	f.db.Close()
	_, err := f.db.Apply(f.ctx, deposit(u, 100), render)
	require.Equal(t, ledger.CodeUnavailable, ledger.ErrorCode(err), "%v", err)
}

// Batched and unbatched instances write the same users at once, with duplicates sent to
// both and back-dated requests: no deadlock, and every invariant holds.
func TestBatchingAndSinglePathsSideBySide(t *testing.T) {
	f := setup(t)
	users := []int64{f.user(t), f.user(t), f.user(t)}
	var instances []*postgres.DB
	for _, max := range []int{64, 64, 1} {
		db, err := postgres.Open(f.ctx, f.url, postgres.WithWriteBatching(max, 2))
		require.NoError(t, err)
		t.Cleanup(db.Close)
		instances = append(instances, db)
	}
	base := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	acked := map[uuid.UUID]ledger.Outcome{}
	var wg sync.WaitGroup
	for w := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			for range 30 {
				req := randomRequest(rng, users, base)
				if rng.Intn(2) == 0 {
					req.Timestamp = nil
				}
				// Every request goes to two instances at once: one takes effect, both
				// get its answer.
				outs := make([]result, 2)
				var pair sync.WaitGroup
				for i := range outs {
					pair.Add(1)
					go func() {
						defer pair.Done()
						out, err := instances[(w+i)%len(instances)].Apply(f.ctx, req, render)
						outs[i] = result{out, err}
					}()
				}
				pair.Wait()
				for _, r := range outs {
					if r.err != nil {
						t.Error(r.err)
						return
					}
				}
				if string(outs[0].out.Reply.Body) != string(outs[1].out.Reply.Body) || outs[0].out.Replayed == outs[1].out.Replayed {
					t.Errorf("uid %s: answers %s and %s, replayed %v and %v", req.UID, outs[0].out.Reply.Body,
						outs[1].out.Reply.Body, outs[0].out.Replayed, outs[1].out.Replayed)
				}
				mu.Lock()
				acked[req.UID] = outs[0].out
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, u := range users {
		for _, tx := range f.checkTimeline(t, u) {
			out, ok := acked[tx.UID]
			require.True(t, ok, "applied %s was acknowledged", tx.UID)
			require.Equal(t, ledger.Applied, out.Tx.Status)
		}
	}
	var rows int
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT count(*) FROM transactions").Scan(&rows))
	require.Equal(t, len(acked), rows, "each uid once")
}

// A batch's write reaches its users through the primary key, however many users there are:
// no statement of the write path scans a table.
func TestBatchWriteProbesUsersByKey(t *testing.T) {
	f := setup(t)
	_, err := f.db.Pool().Exec(f.ctx, "INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 1000) g; ANALYZE users")
	require.NoError(t, err)
	plan, err := f.db.ExplainWrite(f.ctx, []int64{3, 70, 500, 900, 999})
	require.NoError(t, err)
	require.NotContains(t, plan, "Seq Scan", plan)
	require.Contains(t, plan, "users_pkey", plan)
}

// The write path runs cached generic plans (no planning per write). Made on a fresh database
// whose users were just inserted and never analyzed, as on a new deployment, they still
// reach every table through its keys.
func TestWritePlansProbeByKeyBeforeAnyAnalyze(t *testing.T) {
	f := setup(t)
	_, err := f.db.Pool().Exec(f.ctx, "INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 1000) g")
	require.NoError(t, err)
	plans, err := f.db.WritePlans(f.ctx)
	require.NoError(t, err)
	require.Len(t, plans, 7)
	for name, plan := range plans {
		require.NotRegexp(t, `Seq Scan on (users|transactions|outbox)\b`, plan, name)
	}
	require.Contains(t, plans["write"], "users_pkey", plans["write"])
	require.Contains(t, plans["readUsers"], "users_pkey", plans["readUsers"])
	require.Contains(t, plans["findUIDs"], "transactions_pkey", plans["findUIDs"])
	require.Contains(t, plans["backDatedState"], "transactions_timeline", plans["backDatedState"])
}

// A user whose lock another transaction holds does not hold up the batch: its request waits
// alone, under its own context, and other users' writes go on.
func TestBatchNeverWaitsOnABusyUser(t *testing.T) {
	f := setupBatch(t)
	hot, other := f.user(t), f.user(t)
	release := f.holdLock(t, hot)

	waiting := make(chan result, 1)
	go func() {
		out, err := f.db.Apply(f.ctx, deposit(hot, 100), render)
		waiting <- result{out, err}
	}()
	f.waitForLockWaiters(t, 1) // the hot user's request, alone
	ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
	defer cancel()
	_, err := f.db.Apply(ctx, deposit(other, 100), render)
	require.NoError(t, err, "another user's write goes on")

	cancelled, cancelWait := context.WithCancel(f.ctx)
	gaveUp := make(chan error, 1)
	go func() {
		_, err := f.db.Apply(cancelled, deposit(hot, 50), render)
		gaveUp <- err
	}()
	f.waitForLockWaiters(t, 2)
	cancelWait()
	require.Error(t, <-gaveUp, "a request waiting for a busy user ends with its context")

	release()
	r := <-waiting
	require.NoError(t, r.err)
	require.Equal(t, ledger.Applied, r.out.Tx.Status)
	require.Equal(t, ledger.Amount(100), f.balance(t, hot))
}

// Two instances' batches that share uids (for different users, so no user lock orders them)
// insert them in uid order, so they never wait on each other in a cycle: no deadlock, and each
// uid takes effect once.
func TestBatchesSharingUIDsNeverDeadlock(t *testing.T) {
	f := setupBatch(t)
	other, err := postgres.Open(f.ctx, f.url, postgres.WithWriteBatching(64, 1))
	require.NoError(t, err)
	t.Cleanup(other.Close)
	deadlocks := func() int64 {
		var n int64
		require.NoError(t, f.db.Pool().QueryRow(f.ctx, `SELECT deadlocks FROM pg_stat_get_db_deadlocks((SELECT oid FROM pg_database
			WHERE datname = current_database())) AS deadlocks`).Scan(&n))
		return n
	}
	before := deadlocks()
	// Each row of the shared uids takes a while to insert, so both batches are inserting at once.
	_, err = f.db.Pool().Exec(f.ctx, `
		CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.amount IN (10, 20, 30, 40) THEN PERFORM pg_sleep(0.3); END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER slow_insert BEFORE INSERT ON transactions FOR EACH ROW EXECUTE FUNCTION slow_insert();`)
	require.NoError(t, err)
	u1, u2, u3, u4 := f.user(t), f.user(t), f.user(t), f.user(t)
	x, y := uuid.New(), uuid.New()

	// Each instance's worker waits on a blocker, while the next batch queues behind it.
	blockP, blockQ := deposit(f.user(t), 1), deposit(f.user(t), 1)
	releaseP, releaseQ := f.holdUID(t, blockP.UID), f.holdUID(t, blockQ.UID)
	stallP, stallQ := submitTo(t, f.ctx, f.db, blockP, 0), submitTo(t, f.ctx, other, blockQ, 0)
	f.waitForLockWaiters(t, 2)
	onP := []<-chan result{
		submitTo(t, f.ctx, f.db, ledger.Request{UID: x, UserID: u1, Type: ledger.Deposit, Amount: 10}, 1),
		submitTo(t, f.ctx, f.db, ledger.Request{UID: y, UserID: u2, Type: ledger.Deposit, Amount: 20}, 2),
	}
	onQ := []<-chan result{
		submitTo(t, f.ctx, other, ledger.Request{UID: y, UserID: u3, Type: ledger.Deposit, Amount: 30}, 1),
		submitTo(t, f.ctx, other, ledger.Request{UID: x, UserID: u4, Type: ledger.Deposit, Amount: 40}, 2),
	}
	releaseP()
	releaseQ()
	require.NoError(t, (<-stallP).err)
	require.NoError(t, (<-stallQ).err)
	var applied, conflicts int
	for _, c := range append(onP, onQ...) {
		r := <-c
		switch {
		case r.err == nil:
			applied++
		case ledger.ErrorCode(r.err) == ledger.CodeIdempotencyConflict:
			conflicts++
		default:
			t.Errorf("unexpected error: %v", r.err)
		}
	}
	require.Equal(t, 2, applied, "each uid takes effect once")
	require.Equal(t, 2, conflicts)
	require.Equal(t, before, deadlocks(), "no deadlock was detected")
}

// A batch whose connection is lost while it runs is recorded again on another connection:
// every member gets its answer, not a 503, and is applied once.
func TestBatchOutlivesALostConnection(t *testing.T) {
	f := setupBatch(t)
	user := f.user(t)
	reqs := []ledger.Request{deposit(user, 100), deposit(user, 200), withdraw(user, 50)}
	releaseMember := f.holdUID(t, reqs[1].UID)
	release, blocked := f.stall(t)
	pending := make([]<-chan result, len(reqs))
	for i, req := range reqs {
		pending[i] = f.submit(t, f.ctx, req, i+1)
	}
	release()
	require.NoError(t, (<-blocked).err)
	// The worker now runs the three as one batch and waits on the held uid: cut its connection.
	f.waitForLockWaiters(t, 1)
	var killed bool
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&killed))
	require.True(t, killed)
	f.waitForLockWaiters(t, 1) // the batch again, on a new connection
	releaseMember()
	for i, p := range pending {
		r := <-p
		require.NoError(t, r.err, "member %d", i)
		require.False(t, r.out.Replayed, "member %d", i)
	}
	require.Equal(t, ledger.Amount(100+200-50), f.balance(t, user))
	var rows int
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT count(*) FROM transactions WHERE user_id = $1", user).Scan(&rows))
	require.Equal(t, 3, rows)
}

// A panic while a batch is decided (a bug: here in rendering one member's answer) fails that
// batch's members with an error and commits none of them; the worker lives on, and the same
// requests sent again are applied once.
func TestPanicFailsOnlyItsBatch(t *testing.T) {
	f := setupBatch(t)
	user := f.user(t)
	release, blocked := f.stall(t)
	reqs := []ledger.Request{deposit(user, 100), deposit(user, 200)}
	pending := make([]<-chan result, len(reqs))
	for i, req := range reqs {
		renderer := render
		if i == 1 {
			renderer = func(ledger.Transaction) ledger.Reply { panic("render failed") }
		}
		done := make(chan result, 1)
		go func() {
			out, err := f.db.Apply(f.ctx, req, renderer)
			done <- result{out, err}
		}()
		require.Eventually(t, func() bool { return f.db.QueuedWrites() == i+1 }, 10*time.Second, time.Millisecond)
		pending[i] = done
	}
	release()
	require.NoError(t, (<-blocked).err)
	for i, p := range pending {
		require.ErrorContains(t, (<-p).err, "panic", "member %d", i)
	}
	require.Zero(t, f.balance(t, user), "nothing of the failed batch committed")
	for _, req := range reqs {
		out, err := f.db.Apply(f.ctx, req, render)
		require.NoError(t, err)
		require.False(t, out.Replayed)
	}
	require.Equal(t, ledger.Amount(300), f.balance(t, user))
}
