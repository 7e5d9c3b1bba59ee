package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// render stores the transaction's status and balance so tests can see what was answered.
func render(t ledger.Transaction) ledger.Reply {
	b, _ := json.Marshal(map[string]any{"status": t.Status, "balance_after": t.BalanceAfter, "reason": t.Reason})
	if t.Status == ledger.Applied {
		return ledger.Reply{Status: 200, Body: b}
	}
	return ledger.Reply{Status: 402, Body: b}
}

func at(s string) *time.Time {
	t, err := ledger.ParseTime("timestamp", s)
	if err != nil {
		panic(err)
	}
	return &t
}

type fixture struct {
	db  *postgres.DB
	url string
	ctx context.Context
}

func setup(t *testing.T) fixture {
	t.Helper()
	t.Parallel()
	db, url := pgtest.NewDB(t)
	return fixture{db: db, url: url, ctx: context.Background()}
}

func (f fixture) user(t *testing.T) int64 {
	t.Helper()
	u, err := f.db.CreateUser(f.ctx, "petya")
	require.NoError(t, err)
	return u.ID
}

func (f fixture) apply(t *testing.T, user int64, typ ledger.Type, cents ledger.Amount, ts *time.Time) ledger.Outcome {
	t.Helper()
	out, err := f.db.Apply(f.ctx, ledger.Request{UID: uuid.New(), UserID: user, Type: typ, Amount: cents, Timestamp: ts}, render)
	require.NoError(t, err)
	return out
}

func (f fixture) balanceAt(t *testing.T, user int64, ts string) ledger.Amount {
	t.Helper()
	u, err := f.db.UserAt(f.ctx, user, *at(ts))
	require.NoError(t, err)
	return u.Balance
}

func (f fixture) balance(t *testing.T, user int64) ledger.Amount {
	t.Helper()
	u, err := f.db.User(f.ctx, user)
	require.NoError(t, err)
	return u.Balance
}

// timeline returns the user's applied transactions in order, checking that the stored
// balance_after chain equals the running sum and never dips below zero.
func (f fixture) checkTimeline(t *testing.T, user int64) []ledger.Transaction {
	t.Helper()
	txs, next, err := f.db.History(f.ctx, ledger.HistoryQuery{UserID: user, Limit: 100000})
	require.NoError(t, err)
	require.Nil(t, next)
	var sum ledger.Amount
	for _, tx := range txs {
		if tx.Type == ledger.Deposit {
			sum += tx.Amount
		} else {
			sum -= tx.Amount
		}
		require.GreaterOrEqual(t, sum, ledger.Amount(0), "balance below zero after %s", tx.UID)
		require.Equal(t, sum, *tx.BalanceAfter, "balance_after of %s", tx.UID)
	}
	require.Equal(t, sum, f.balance(t, user), "current balance equals the timeline's end")
	return txs
}

func TestAssignmentScenario(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	require.Equal(t, ledger.Amount(0), f.balance(t, u))
	require.Equal(t, 200, f.apply(t, u, ledger.Deposit, 10000, at("2023-01-04T00:00:00")).Reply.Status)
	require.Equal(t, 200, f.apply(t, u, ledger.Withdraw, 5000, at("2023-01-05T00:00:00")).Reply.Status)
	refused := f.apply(t, u, ledger.Withdraw, 6000, nil)
	require.Equal(t, 402, refused.Reply.Status)
	require.Equal(t, ledger.Rejected, refused.Tx.Status)
	require.Equal(t, 200, f.apply(t, u, ledger.Withdraw, 1000, at("2023-02-05T00:00:00")).Reply.Status)
	require.Equal(t, ledger.Amount(4000), f.balance(t, u))
	require.Equal(t, ledger.Amount(5000), f.balanceAt(t, u, "2023-01-30T00:00:00"))
	f.checkTimeline(t, u)
}

func TestBalanceAtInstants(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	f.apply(t, u, ledger.Deposit, 10000, at("2023-01-04T00:00:00"))
	f.apply(t, u, ledger.Withdraw, 2500, at("2023-01-05T12:00:00.123456"))
	for _, c := range []struct {
		at   string
		want ledger.Amount
	}{
		{"2023-01-03T23:59:59.999999", 0},
		{"2023-01-04T00:00:00", 10000},
		{"2023-01-05T12:00:00.123455", 10000},
		{"2023-01-05T12:00:00.123456", 7500},
		{"2030-01-01", 7500},
		{"1970-01-01", 0},
	} {
		require.Equal(t, c.want, f.balanceAt(t, u, c.at), "balance at %s", c.at)
	}
	_, err := f.db.UserAt(f.ctx, u+1000, *at("2023-01-04"))
	require.Equal(t, ledger.CodeNotFound, ledger.ErrorCode(err))
}

func TestReplayReturnsFirstAnswer(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	req := ledger.Request{UID: uuid.New(), UserID: u, Type: ledger.Deposit, Amount: 10000, Timestamp: at("2023-01-04T00:00:00")}
	first, err := f.db.Apply(f.ctx, req, render)
	require.NoError(t, err)
	require.False(t, first.Replayed)
	// A later back-dated deposit moves this transaction's balance_after; the replay must not.
	f.apply(t, u, ledger.Deposit, 500, at("2023-01-01T00:00:00"))
	again, err := f.db.Apply(f.ctx, req, render)
	require.NoError(t, err)
	require.True(t, again.Replayed)
	require.Equal(t, first.Reply.Status, again.Reply.Status)
	require.Equal(t, first.Reply.Body, again.Reply.Body)
	stored, err := f.db.Transaction(f.ctx, req.UID)
	require.NoError(t, err)
	require.Equal(t, ledger.Amount(10500), *stored.BalanceAfter)
	require.Equal(t, ledger.Amount(10500), f.balance(t, u))
}

func TestReplayOfOmittedTimestamp(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	req := ledger.Request{UID: uuid.New(), UserID: u, Type: ledger.Deposit, Amount: 100}
	first, err := f.db.Apply(f.ctx, req, render)
	require.NoError(t, err)
	again, err := f.db.Apply(f.ctx, req, render)
	require.NoError(t, err)
	require.True(t, again.Replayed)
	require.Equal(t, first.Reply.Body, again.Reply.Body)
	// The same uid with the stored timestamp spelled out is a different body.
	ts := first.Tx.Timestamp
	req.Timestamp = &ts
	_, err = f.db.Apply(f.ctx, req, render)
	require.Equal(t, ledger.CodeIdempotencyConflict, ledger.ErrorCode(err))
}

func TestRefusalStaysRefused(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	req := ledger.Request{UID: uuid.New(), UserID: u, Type: ledger.Withdraw, Amount: 5000}
	first, err := f.db.Apply(f.ctx, req, render)
	require.NoError(t, err)
	require.Equal(t, 402, first.Reply.Status)
	f.apply(t, u, ledger.Deposit, 10000, nil)
	again, err := f.db.Apply(f.ctx, req, render)
	require.NoError(t, err)
	require.True(t, again.Replayed)
	require.Equal(t, 402, again.Reply.Status)
	require.Equal(t, first.Reply.Body, again.Reply.Body)
	require.Equal(t, ledger.Amount(10000), f.balance(t, u))
}

func TestUIDReuseWithAnotherBody(t *testing.T) {
	f := setup(t)
	u, other := f.user(t), f.user(t)
	req := ledger.Request{UID: uuid.New(), UserID: u, Type: ledger.Deposit, Amount: 10000, Timestamp: at("2023-01-04")}
	_, err := f.db.Apply(f.ctx, req, render)
	require.NoError(t, err)
	for name, change := range map[string]func(*ledger.Request){
		"amount":      func(r *ledger.Request) { r.Amount = 10001 },
		"type":        func(r *ledger.Request) { r.Type = ledger.Withdraw },
		"user":        func(r *ledger.Request) { r.UserID = other },
		"unknownUser": func(r *ledger.Request) { r.UserID = other + 100 },
		"timestamp":   func(r *ledger.Request) { r.Timestamp = at("2023-01-05") },
		"omitted":     func(r *ledger.Request) { r.Timestamp = nil },
	} {
		changed := req
		change(&changed)
		_, err := f.db.Apply(f.ctx, changed, render)
		require.Equal(t, ledger.CodeIdempotencyConflict, ledger.ErrorCode(err), name)
	}
	require.Equal(t, ledger.Amount(10000), f.balance(t, u))
	require.Equal(t, ledger.Amount(0), f.balance(t, other))
}

func TestUnknownUserIsNotRecorded(t *testing.T) {
	f := setup(t)
	req := ledger.Request{UID: uuid.New(), UserID: 424242, Type: ledger.Deposit, Amount: 100}
	_, err := f.db.Apply(f.ctx, req, render)
	require.Equal(t, ledger.CodeNotFound, ledger.ErrorCode(err))
	_, err = f.db.Transaction(f.ctx, req.UID)
	require.Equal(t, ledger.CodeNotFound, ledger.ErrorCode(err))
	// The client fixes the user and resends with the same uid.
	req.UserID = f.user(t)
	out, err := f.db.Apply(f.ctx, req, render)
	require.NoError(t, err)
	require.Equal(t, 200, out.Reply.Status)
}

func TestBackDating(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	f.apply(t, u, ledger.Deposit, 10000, at("2023-01-10"))
	f.apply(t, u, ledger.Withdraw, 8000, at("2023-01-20"))
	// Back-dated deposit before everything shifts both later rows.
	f.apply(t, u, ledger.Deposit, 1000, at("2023-01-01"))
	require.Equal(t, ledger.Amount(3000), f.balance(t, u))
	require.Equal(t, ledger.Amount(11000), f.balanceAt(t, u, "2023-01-15"))
	// A back-dated withdrawal affordable at its instant but not later is refused.
	refused := f.apply(t, u, ledger.Withdraw, 5000, at("2023-01-15"))
	require.Equal(t, 402, refused.Reply.Status)
	require.Equal(t, ledger.CodeInsufficientFunds, refused.Tx.Reason)
	require.Equal(t, ledger.Amount(3000), f.balance(t, u))
	require.Equal(t, ledger.Amount(11000), f.balanceAt(t, u, "2023-01-15"))
	// One that leaves every later instant at or above zero is applied.
	ok := f.apply(t, u, ledger.Withdraw, 3000, at("2023-01-15"))
	require.Equal(t, 200, ok.Reply.Status)
	require.Equal(t, ledger.Amount(8000), *ok.Tx.BalanceAfter)
	require.Equal(t, ledger.Amount(0), f.balance(t, u))
	require.Equal(t, ledger.Amount(0), f.balanceAt(t, u, "2023-01-20"))
	// Before the first transaction nothing can be withdrawn.
	require.Equal(t, 402, f.apply(t, u, ledger.Withdraw, 1, at("2022-12-31")).Reply.Status)
	f.checkTimeline(t, u)
}

func TestEqualTimestampsApplyInAcceptanceOrder(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	ts := at("2023-03-01T10:00:00")
	f.apply(t, u, ledger.Deposit, 1000, ts)
	f.apply(t, u, ledger.Withdraw, 1000, ts)
	// At the same instant the balance is zero now: a third withdrawal at that instant is refused
	// even though a later deposit at an equal timestamp comes after it.
	require.Equal(t, 402, f.apply(t, u, ledger.Withdraw, 1, ts).Reply.Status)
	f.apply(t, u, ledger.Deposit, 700, ts)
	txs := f.checkTimeline(t, u)
	require.Len(t, txs, 3)
	require.Equal(t, []ledger.Amount{1000, 0, 700}, []ledger.Amount{*txs[0].BalanceAfter, *txs[1].BalanceAfter, *txs[2].BalanceAfter})
	require.Equal(t, ledger.Amount(700), f.balanceAt(t, u, "2023-03-01T10:00:00"))
	// A back-dated deposit at an earlier instant moves all three.
	f.apply(t, u, ledger.Deposit, 5, at("2023-03-01T09:59:59"))
	txs = f.checkTimeline(t, u)
	require.Equal(t, ledger.Amount(705), *txs[3].BalanceAfter)
}

func TestHistoryPages(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	for day := 1; day <= 25; day++ {
		f.apply(t, u, ledger.Deposit, ledger.Amount(day), at(fmt.Sprintf("2023-01-%02d", day)))
	}
	var seen []ledger.Transaction
	q := ledger.HistoryQuery{UserID: u, From: at("2023-01-03"), To: at("2023-01-22"), Limit: 7}
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10)
		page, next, err := f.db.History(f.ctx, q)
		require.NoError(t, err)
		seen = append(seen, page...)
		if next == nil {
			break
		}
		q.After = next
	}
	require.Len(t, seen, 20)
	require.True(t, sort.SliceIsSorted(seen, func(i, j int) bool { return seen[i].Timestamp.Before(seen[j].Timestamp) }))
	require.Equal(t, ledger.Amount(3), seen[0].Amount)
	require.Equal(t, ledger.Amount(22), seen[19].Amount)
	_, _, err := f.db.History(f.ctx, ledger.HistoryQuery{UserID: u + 99, Limit: 1})
	require.Equal(t, ledger.CodeNotFound, ledger.ErrorCode(err))
}

func TestDatabaseRefusesNegativeBalances(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	f.apply(t, u, ledger.Deposit, 100, at("2023-01-01"))
	conn := f.db.Pool()
	_, err := conn.Exec(f.ctx, "UPDATE users SET balance = -1 WHERE id = $1", u)
	require.ErrorContains(t, err, "users_balance_check")
	_, err = conn.Exec(f.ctx, "UPDATE transactions SET balance_after = balance_after - 101 WHERE user_id = $1", u)
	require.ErrorContains(t, err, "transactions_balance_after_check")
}

// The balance at a date is one index probe whatever the history's length: the plan reads one
// row of the timeline index, for a user with 20,000 transactions as for one with 1.
func TestBalanceAtIsOneIndexProbe(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	_, err := f.db.Pool().Exec(f.ctx, `INSERT INTO transactions (uid, user_id, seq, type, amount, ts,
		timestamp_given, status, balance_after, response_status, response_body)
		SELECT gen_random_uuid(), $1, g, 'DEPOSIT', 1, '2020-01-01'::timestamptz + g * interval '1 minute',
		       true, 'APPLIED', g, 200, '\x'
		FROM generate_series(1, 20000) g`, u)
	require.NoError(t, err)
	_, err = f.db.Pool().Exec(f.ctx, "ANALYZE transactions")
	require.NoError(t, err)
	require.Equal(t, ledger.Amount(10000), f.balanceAt(t, u, "2020-01-07T22:40:00"))

	rows, err := f.db.Pool().Query(f.ctx, "EXPLAIN (ANALYZE, FORMAT TEXT) "+postgres.UserAtSQL, u, *at("2020-01-07T22:40:00"))
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	plan := strings.Join(lines, "\n")
	require.Contains(t, plan, "Index Scan Backward using transactions_timeline")
	require.Contains(t, plan, "rows=1 loops=1")
	require.NotContains(t, plan, "Seq Scan")
	require.False(t, strings.Contains(plan, "Sort"), plan)
}

// 200 withdrawals of 1.00 race against a balance of 100.00 on separate connections: exactly
// 100 succeed and the balance ends at zero.
func TestConcurrentWithdrawals(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	f.apply(t, u, ledger.Deposit, 10000, nil)
	var wg sync.WaitGroup
	statuses := make(chan int, 200)
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := f.db.Apply(f.ctx, ledger.Request{UID: uuid.New(), UserID: u, Type: ledger.Withdraw, Amount: 100}, render)
			if err != nil {
				t.Error(err)
				return
			}
			statuses <- out.Reply.Status
		}()
	}
	wg.Wait()
	close(statuses)
	counts := map[int]int{}
	for s := range statuses {
		counts[s]++
	}
	require.Equal(t, map[int]int{200: 100, 402: 100}, counts)
	require.Equal(t, ledger.Amount(0), f.balance(t, u))
	f.checkTimeline(t, u)
}

// 40 copies of one uid at once apply once; every copy gets the same answer. Copies that name
// another user race through the unique key instead of the user's lock.
func TestConcurrentDuplicates(t *testing.T) {
	f := setup(t)
	u, other := f.user(t), f.user(t)
	req := ledger.Request{UID: uuid.New(), UserID: u, Type: ledger.Deposit, Amount: 10000}
	var wg sync.WaitGroup
	type result struct {
		out ledger.Outcome
		err error
	}
	results := make(chan result, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := req
			if i%5 == 4 {
				r.UserID = other
			}
			out, err := f.db.Apply(f.ctx, r, render)
			results <- result{out, err}
		}()
	}
	wg.Wait()
	close(results)
	var applied, replayed, conflicts int
	var bodies = map[string]bool{}
	for r := range results {
		switch {
		case ledger.ErrorCode(r.err) == ledger.CodeIdempotencyConflict:
			conflicts++
		case r.err != nil:
			t.Fatal(r.err)
		case r.out.Replayed:
			replayed++
			bodies[string(r.out.Reply.Body)] = true
		default:
			applied++
			bodies[string(r.out.Reply.Body)] = true
		}
	}
	winner := f.balance(t, u) == 10000
	if winner {
		require.Equal(t, ledger.Amount(0), f.balance(t, other))
		require.Equal(t, 40, applied+replayed)
		require.Equal(t, 10, conflicts)
	} else {
		require.Equal(t, ledger.Amount(10000), f.balance(t, other))
		require.Equal(t, 10, applied+replayed)
		require.Equal(t, 40, conflicts)
	}
	require.Equal(t, 1, applied)
	require.Len(t, bodies, 1)
}

// A randomized mixed workload from many goroutines, with back-dated writes, checked against
// an in-memory model of each user's timeline rebuilt from what was acknowledged.
func TestRandomizedWorkloadMatchesModel(t *testing.T) {
	f := setup(t)
	users := []int64{f.user(t), f.user(t), f.user(t)}
	base := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)
	type ack struct {
		req ledger.Request
		out ledger.Outcome
	}
	var mu sync.Mutex
	var acks []ack
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			for range 40 {
				req := randomRequest(rng, users, base)
				out, err := f.db.Apply(f.ctx, req, render)
				if err != nil {
					t.Error(err)
					return
				}
				if rng.Intn(4) == 0 { // a retry must change nothing
					again, err := f.db.Apply(f.ctx, req, render)
					if err != nil || !again.Replayed || string(again.Reply.Body) != string(out.Reply.Body) {
						t.Errorf("retry of %s: %v replayed=%v", req.UID, err, again.Replayed)
					}
				}
				mu.Lock()
				acks = append(acks, ack{req, out})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, u := range users {
		txs := f.checkTimeline(t, u)
		applied := map[uuid.UUID]bool{}
		for _, tx := range txs {
			applied[tx.UID] = true
		}
		for _, a := range acks {
			if a.req.UserID != u {
				continue
			}
			require.Equal(t, a.out.Reply.Status == 200, applied[a.req.UID], "uid %s acknowledged with %d", a.req.UID, a.out.Reply.Status)
		}
	}
}

// randomRequest is a deposit or withdrawal of up to 50.00 for one of users, at a random hour
// of the thousand after base: in a concurrent workload many land before a user's latest and
// are back-dated, and many withdrawals are refused.
func randomRequest(rng *rand.Rand, users []int64, base time.Time) ledger.Request {
	req := ledger.Request{UID: uuid.New(), UserID: users[rng.Intn(len(users))], Amount: ledger.Amount(1 + rng.Intn(5000))}
	req.Type = ledger.Deposit
	if rng.Intn(2) == 0 {
		req.Type = ledger.Withdraw
	}
	ts := base.Add(time.Duration(rng.Intn(1000)) * time.Hour)
	req.Timestamp = &ts
	return req
}

// DATABASE_URL may carry pgxpool's parameters; migrations accept them too.
func TestMigrateAcceptsPoolParameters(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	applied, err := postgres.Migrate(context.Background(), url+"&pool_max_conns=3")
	require.NoError(t, err)
	require.Empty(t, applied, "the template was migrated already")
}
