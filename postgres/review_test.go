package postgres_test

import (
	"context"
	"math/rand"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// openAlso opens another store on the fixture's database.
func openAlso(t *testing.T, f fixture, max, workers int, params ...string) *postgres.DB {
	t.Helper()
	url := f.url
	for _, p := range params {
		url += "&" + p
	}
	db, err := postgres.Open(f.ctx, url, postgres.WithWriteBatching(max, workers))
	require.NoError(t, err)
	t.Cleanup(db.Close)
	return db
}

// lockWaiters counts the sessions of the fixture's database waiting on a lock.
func lockWaiters(t *testing.T, f fixture) int {
	t.Helper()
	var n int
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n))
	return n
}

// applyAsync runs Apply in a goroutine.
func applyAsync(ctx context.Context, db *postgres.DB, req ledger.Request) <-chan result {
	done := make(chan result, 1)
	go func() {
		out, err := db.Apply(ctx, req, render)
		done <- result{out, err}
	}()
	return done
}

// REVIEW 1 (head-of-line blocking). A user whose lock is held for a while (a long back-dated
// rewrite, another instance's slow batch, any session holding it) stalls the writes of every
// other user on a batching instance: each worker that takes a request for that user waits with
// its whole batch, and once every worker does, nothing is written at all. Without batching
// only that user's writes wait.
func TestReviewOneLockedUserStallsOtherUsersWrites(t *testing.T) {
	bf := setupBatch(t) // fixture helpers only; the store under test is opened below
	f := bf.fixture
	// A pool large enough for the default number of workers (Open keeps one connection free).
	db := openAlso(t, f, postgres.DefaultWriteBatchMax, postgres.DefaultWriteWorkers, "pool_max_conns=8")
	single := openAlso(t, f, 1, 1)
	hot, other := f.user(t), f.user(t)
	release := bf.holdLock(t, hot)

	waitCtx, cancelWaiting := context.WithCancel(f.ctx)
	defer cancelWaiting()
	for i := range postgres.DefaultWriteWorkers {
		applyAsync(waitCtx, db, deposit(hot, 1))
		require.Eventually(t, func() bool { return lockWaiters(t, f) == i+1 }, 10*time.Second, 5*time.Millisecond, "waiters %d at %d", lockWaiters(t, f), i)
	}

	// Control: the single path writes the other user at once.
	ctx, cancel := context.WithTimeout(f.ctx, 3*time.Second)
	_, err := single.Apply(ctx, deposit(other, 100), render)
	cancel()
	require.NoError(t, err, "without batching another user's write is not held up")

	ctx, cancel = context.WithTimeout(f.ctx, 3*time.Second)
	_, err = db.Apply(ctx, deposit(other, 100), render)
	cancel()
	release()
	require.NoError(t, err, "a write to another user is held up by one user's lock")
}

// REVIEW 2 (a cancelled request cannot free its worker; Close hangs). A batch runs under a
// context that never ends, so a batch waiting on a lock waits as long as the lock is held, even
// once every member's caller gave up. The worker is lost for that time (other users' writes
// queue behind it) and Close cannot return. Without batching the cancelled request's wait
// ends at once and Close returns.
func TestReviewCancelledRequestStillHoldsItsWorkerAndClose(t *testing.T) {
	bf := setupBatch(t)
	f := bf.fixture
	hot, other := f.user(t), f.user(t)

	// Control: the single path.
	single := openAlso(t, f, 1, 1)
	release := bf.holdLock(t, hot)
	ctx, cancel := context.WithCancel(f.ctx)
	done := applyAsync(ctx, single, deposit(hot, 1))
	require.Eventually(t, func() bool { return lockWaiters(t, f) == 1 }, 10*time.Second, 5*time.Millisecond)
	cancel()
	require.ErrorIs(t, (<-done).err, context.Canceled)
	require.Eventually(t, func() bool { return lockWaiters(t, f) == 0 }, 3*time.Second, 5*time.Millisecond,
		"the single path stops waiting when its request is cancelled")
	closed := make(chan struct{})
	go func() { single.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		t.Fatal("the single path's Close hangs")
	}

	// The batching path (one worker).
	ctx, cancel = context.WithCancel(f.ctx)
	done = applyAsync(ctx, bf.db, deposit(hot, 1))
	require.Eventually(t, func() bool { return lockWaiters(t, f) == 1 }, 10*time.Second, 5*time.Millisecond)
	cancel()
	require.ErrorIs(t, (<-done).err, context.Canceled)

	ctx, cancel = context.WithTimeout(f.ctx, 3*time.Second)
	_, otherErr := bf.db.Apply(ctx, deposit(other, 100), render)
	cancel()
	closed = make(chan struct{})
	go func() { bf.db.Close(); close(closed) }()
	var closeHung bool
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		closeHung = true
	}
	release()
	<-closed
	require.NoError(t, otherErr, "another user's write waits behind a batch whose only member was cancelled")
	require.False(t, closeHung, "Close hangs while a cancelled request's batch waits on a lock")
}

// REVIEW 3 (docs vs code: a lost connection is not retried). design.md ("Failures") and
// record's comment say a lost connection retries the whole batch; retryable only knows 40001
// and 40P01, so a batch whose connection dies answers 503 to every member.
func TestReviewLostConnectionRetriesTheBatch(t *testing.T) {
	bf := setupBatch(t)
	f := bf.fixture
	u := f.user(t)
	release := bf.holdLock(t, u)
	req := deposit(u, 100)
	done := applyAsync(f.ctx, bf.db, req)
	bf.waitForLockWaiters(t, 1)
	var killed bool
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&killed))
	require.True(t, killed)
	time.Sleep(200 * time.Millisecond) // a retry would wait on the lock again
	release()
	r := <-done
	require.NoError(t, r.err, "a batch whose connection was lost is retried, as the docs say")
	require.Equal(t, ledger.Amount(100), f.balance(t, u))
}

// REVIEW 4 (docs vs code: batches can deadlock). design.md says that because every lock is
// taken in id order, two batches never wait on each other in a cycle. Unique-key waits are
// not ordered: two batches, on two instances, carrying the same two uids for different users
// in opposite orders each insert their first uid and then wait on the other's. PostgreSQL's
// deadlock detector breaks the cycle after deadlock_timeout (1 s) and retry recovers, so the
// answers are right; the claim is not. The trigger only makes the interleaving certain: it
// sleeps before each batch's second row, after its first is in the unique index.
func TestReviewTwoBatchesNeverDeadlock(t *testing.T) {
	f := setup(t)
	p := openAlso(t, f, 64, 1)
	q := openAlso(t, f, 64, 1)
	u1, u2, u3, u4 := f.user(t), f.user(t), f.user(t), f.user(t)
	blockP, blockQ := f.user(t), f.user(t)
	x, y := uuid.New(), uuid.New()
	_, err := f.db.Pool().Exec(f.ctx, `
		CREATE FUNCTION slow_second() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF (NEW.uid = '`+y.String()+`' AND NEW.user_id = `+itoa(u2)+`) OR
			   (NEW.uid = '`+x.String()+`' AND NEW.user_id = `+itoa(u4)+`) THEN
				PERFORM pg_sleep(0.5);
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER slow_second BEFORE INSERT ON transactions FOR EACH ROW EXECUTE FUNCTION slow_second();`)
	require.NoError(t, err)

	deadlocks := func() int64 {
		conn, err := f.db.Pool().Acquire(f.ctx)
		require.NoError(t, err)
		defer conn.Release()
		_, err = conn.Exec(f.ctx, "SELECT pg_stat_clear_snapshot()")
		require.NoError(t, err)
		var n int64
		require.NoError(t, conn.QueryRow(f.ctx, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").Scan(&n))
		return n
	}
	before := deadlocks()

	bf := batchFixture{fixture: f}
	releaseP, releaseQ := bf.holdLock(t, blockP), bf.holdLock(t, blockQ)
	stallP := applyAsync(f.ctx, p, deposit(blockP, 1))
	stallQ := applyAsync(f.ctx, q, deposit(blockQ, 1))
	require.Eventually(t, func() bool { return lockWaiters(t, f) == 2 }, 10*time.Second, 5*time.Millisecond)
	queue := func(db *postgres.DB, reqs ...ledger.Request) []<-chan result {
		var out []<-chan result
		for i, req := range reqs {
			out = append(out, applyAsync(f.ctx, db, req))
			require.Eventually(t, func() bool { return db.QueuedWrites() == i+1 }, 10*time.Second, time.Millisecond)
		}
		return out
	}
	reqX1 := ledger.Request{UID: x, UserID: u1, Type: ledger.Deposit, Amount: 10}
	reqY2 := ledger.Request{UID: y, UserID: u2, Type: ledger.Deposit, Amount: 20}
	reqY3 := ledger.Request{UID: y, UserID: u3, Type: ledger.Deposit, Amount: 30}
	reqX4 := ledger.Request{UID: x, UserID: u4, Type: ledger.Deposit, Amount: 40}
	onP := queue(p, reqX1, reqY2)
	onQ := queue(q, reqY3, reqX4)
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
	require.Never(t, func() bool { return deadlocks() > before }, 15*time.Second, 200*time.Millisecond,
		"two batches deadlocked on each other's uids")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// CHECK (expected to pass): batched and unbatched instances writing the same users, with
// back-dated requests and duplicates, leave every user's events in the outbox in sequence
// order, numbered without gaps, and each user's event_seq equals its count of events.
func TestReviewOutboxOrderUnderBatching(t *testing.T) {
	f := setup(t)
	users := []int64{f.user(t), f.user(t), f.user(t), f.user(t)}
	var instances []*postgres.DB
	for _, max := range []int{64, 64, 1} {
		instances = append(instances, openAlso(t, f, max, 2))
	}
	base := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(100 + w)))
			for range 25 {
				req := randomRequest(rng, users, base)
				if rng.Intn(2) == 0 {
					req.Timestamp = nil
				}
				var pair sync.WaitGroup
				for i := range 1 + rng.Intn(2) {
					pair.Add(1)
					go func() {
						defer pair.Done()
						if _, err := instances[(w+i)%len(instances)].Apply(f.ctx, req, render); err != nil {
							t.Error(err)
						}
					}()
				}
				pair.Wait()
			}
		}()
	}
	wg.Wait()
	var n int
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT count(*) FROM outbox").Scan(&n))
	next := map[int64]int64{}
	for _, e := range f.readEvents(t, n) {
		next[e.UserID]++
		require.Equal(t, next[e.UserID], e.Seq, "user %d's events in sequence order", e.UserID)
	}
	for _, u := range users {
		f.checkTimeline(t, u)
		var eventSeq int64
		require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT event_seq FROM users WHERE id = $1", u).Scan(&eventSeq))
		require.Equal(t, next[u], eventSeq)
	}
}

// REVIEW 5 (README: "each decided in arrival order on the state the one before it left ...
// one bad member never fails its neighbours"). When one member makes the batch's statement
// fail, every member is recorded again alone, each by its own caller, all at once: the
// arrival order is lost, so a withdrawal that arrived after the deposit paying for it can be
// refused for want of it. The neighbour is not failed, but it is decided differently.
func TestReviewIsolationKeepsArrivalOrder(t *testing.T) {
	f := setupBatch(t)
	_, err := f.db.Pool().Exec(f.ctx, `
		CREATE FUNCTION refuse_13() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.amount = 13 THEN RAISE EXCEPTION 'amount 13 refused by the test'; END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER refuse_13 BEFORE INSERT ON transactions FOR EACH ROW EXECUTE FUNCTION refuse_13();`)
	require.NoError(t, err)
	culprit := f.user(t)
	var reqs []ledger.Request
	for range 20 {
		u := f.user(t)
		reqs = append(reqs, deposit(u, 100), withdraw(u, 100))
	}
	reqs = append(reqs, deposit(culprit, 13))
	results := f.batch(t, reqs...)
	require.Error(t, results[len(results)-1].err)
	var refused int
	for i := 1; i < len(reqs)-1; i += 2 {
		require.NoError(t, results[i].err)
		if results[i].out.Tx.Status != ledger.Applied {
			refused++
		}
	}
	require.Zero(t, refused, "withdrawals refused although the deposit before them in the batch covered them")
}

// REVIEW 2b (Apply ignores its context during Close). submit holds the batcher's read lock
// while it waits for room in a full queue; Close then waits for the write lock, and every
// later Apply waits for the read lock, which no context can interrupt. With the workers held
// up (a locked user, REVIEW 2), a request whose deadline passed does not return.
func TestReviewApplyReturnsAtItsDeadlineDuringClose(t *testing.T) {
	bf := setupBatch(t)
	f := bf.fixture
	db := openAlso(t, f, 2, 1) // one worker, a queue of two
	hot, other := f.user(t), f.user(t)
	release := bf.holdLock(t, hot)
	stuck := applyAsync(f.ctx, db, deposit(hot, 1))
	require.Eventually(t, func() bool { return lockWaiters(t, f) == 1 }, 10*time.Second, 5*time.Millisecond)
	queued := []<-chan result{applyAsync(f.ctx, db, deposit(other, 1)), applyAsync(f.ctx, db, deposit(other, 1))}
	require.Eventually(t, func() bool { return db.QueuedWrites() == 2 }, 10*time.Second, time.Millisecond)
	queued = append(queued, applyAsync(f.ctx, db, deposit(other, 1))) // waits for room, holding the read lock
	time.Sleep(100 * time.Millisecond)
	closed := make(chan struct{})
	go func() { db.Close(); close(closed) }()
	time.Sleep(100 * time.Millisecond)

	ctx, cancel := context.WithTimeout(f.ctx, time.Second)
	defer cancel()
	late := applyAsync(ctx, db, deposit(other, 1))
	var r result
	var returned bool
	select {
	case r = <-late:
		returned = true
	case <-time.After(3 * time.Second):
	}
	release()
	<-closed
	<-stuck
	for _, q := range queued {
		<-q
	}
	if !returned {
		r = <-late
	}
	require.True(t, returned, "Apply with a 1 s deadline still waiting after 3 s (it returned %v once Close ended)", r.err)
}

// REVIEW 6 (operations.md: WRITE_WORKERS is "at most pool_max_conns − 1, so that reads always
// find a connection"). The spare connection is shared with the writes recorded alone (a
// back-dated member set aside, every member after a failed batch), which wait on locks like
// any write: with the workers busy, a read then finds no connection.
func TestReviewReadsAlwaysFindAConnection(t *testing.T) {
	bf := setupBatch(t)
	f := bf.fixture
	db := openAlso(t, f, 64, 4, "pool_max_conns=2") // Open keeps one worker
	u, other, blocker := f.user(t), f.user(t), f.user(t)

	// Another writer holds uid x uncommitted: whoever inserts x next waits for it.
	x := uuid.New()
	elsewhere, err := f.db.Pool().Begin(f.ctx)
	require.NoError(t, err)
	defer elsewhere.Rollback(f.ctx) //nolint:errcheck
	_, err = elsewhere.Exec(f.ctx, `INSERT INTO transactions (uid, user_id, seq, type, amount, ts, timestamp_given,
		status, balance_after, response_status, response_body) VALUES ($1, $2, 1, 'DEPOSIT', 5, now(), false, 'APPLIED', 5, 200, '{}')`,
		x, other)
	require.NoError(t, err)

	// A batch whose second member is back-dated against the first: it is set aside and
	// recorded alone, on the spare connection, where it waits on x.
	releaseBlocker := bf.holdLock(t, blocker)
	stall := applyAsync(f.ctx, db, deposit(blocker, 1))
	require.Eventually(t, func() bool { return lockWaiters(t, f) == 1 }, 10*time.Second, 5*time.Millisecond)
	first := applyAsync(f.ctx, db, ledger.Request{UID: uuid.New(), UserID: u, Type: ledger.Deposit, Amount: 100, Timestamp: at("2024-01-02T00:00:00Z")})
	require.Eventually(t, func() bool { return db.QueuedWrites() == 1 }, 10*time.Second, time.Millisecond)
	setAside := applyAsync(f.ctx, db, ledger.Request{UID: x, UserID: u, Type: ledger.Deposit, Amount: 50, Timestamp: at("2024-01-01T00:00:00Z")})
	require.Eventually(t, func() bool { return db.QueuedWrites() == 2 }, 10*time.Second, time.Millisecond)
	releaseBlocker()
	require.NoError(t, (<-stall).err)
	require.NoError(t, (<-first).err)
	require.Eventually(t, func() bool { return lockWaiters(t, f) == 1 }, 10*time.Second, 5*time.Millisecond) // waits on x

	// The worker takes a write that waits on a lock too.
	releaseBlocker = bf.holdLock(t, blocker)
	stall = applyAsync(f.ctx, db, deposit(blocker, 1))
	require.Eventually(t, func() bool { return lockWaiters(t, f) == 2 }, 10*time.Second, 5*time.Millisecond)

	ctx, cancel := context.WithTimeout(f.ctx, 2*time.Second)
	_, readErr := db.User(ctx, u)
	cancel()
	releaseBlocker()
	require.NoError(t, elsewhere.Rollback(f.ctx))
	require.NoError(t, (<-stall).err)
	require.NoError(t, (<-setAside).err)
	require.NoError(t, readErr, "a read finds no connection")
}
