package main

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// The numbers the README quotes. They change only if the demo generator changes.
const (
	vasyaBalanceAtMay5 ledger.Amount = 290_413 // at "5.05.2022 00:00"
	vasyaBalanceNow    ledger.Amount = 260_843
)

// syncBuffer is a bytes.Buffer several goroutines may write to.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type demoCounts struct{ users, transactions, applied int }

func countDemo(t *testing.T, db *postgres.DB) demoCounts {
	t.Helper()
	var c demoCounts
	err := db.Pool().QueryRow(context.Background(), `SELECT (SELECT count(*) FROM users),
		(SELECT count(*) FROM transactions), (SELECT count(*) FROM transactions WHERE status = 'APPLIED')`,
	).Scan(&c.users, &c.transactions, &c.applied)
	require.NoError(t, err)
	return c
}

func TestDemoGeneratorIsDeterministicAndNeverOverdraws(t *testing.T) {
	t.Parallel()
	total := 0
	for i, user := range demoUsers {
		txs := demoTransactions(i, user)
		require.Equal(t, txs, demoTransactions(i, user), "the same seed must give the same data")
		require.Equal(t, demoUID(user, 1), txs[0].uid)
		var balance ledger.Amount
		for n, tx := range txs {
			require.True(t, !tx.at.Before(demoStart) && tx.at.Before(demoEnd), "%s #%d at %s", user, n+1, tx.at)
			if n > 0 {
				require.True(t, tx.at.After(txs[n-1].at), "%s #%d is not later than the one before", user, n+1)
			}
			require.Positive(t, tx.amount)
			if tx.typ == ledger.Deposit {
				balance += tx.amount
			} else {
				balance -= tx.amount
			}
			require.GreaterOrEqual(t, balance, ledger.Amount(0), "%s #%d overdraws", user, n+1)
		}
		total += len(txs)
	}
	require.True(t, total >= 200 && total <= 600, "%d demo transactions; a few hundred are wanted", total)
}

func TestLoadDemo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	require.NoError(t, loadDemo(ctx, config{databaseURL: url}, log))
	db, err := postgres.Open(ctx, url)
	require.NoError(t, err)
	t.Cleanup(db.Close)

	vasya, err := db.User(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, "Vasya", vasya.Name, "on a fresh database Vasya is user 1")
	require.Equal(t, vasyaBalanceNow, vasya.Balance, "Vasya's current balance is %s", vasya.Balance)
	may5, err := ledger.ParseTime("date", "5.05.2022 00:00")
	require.NoError(t, err)
	at, err := db.UserAt(ctx, 1, may5)
	require.NoError(t, err)
	require.Equal(t, vasyaBalanceAtMay5, at.Balance, "Vasya's balance at 5.05.2022 00:00 is %s", at.Balance)
	require.Contains(t, logs.String(), "balance="+vasyaBalanceAtMay5.String())

	// Recompute both from the raw history, without balance_after.
	var summedAtMay5, summedNow ledger.Amount
	err = db.Pool().QueryRow(ctx, `SELECT
		COALESCE(sum(CASE type WHEN 'DEPOSIT' THEN amount ELSE -amount END) FILTER (WHERE ts <= $2), 0),
		COALESCE(sum(CASE type WHEN 'DEPOSIT' THEN amount ELSE -amount END), 0)
		FROM transactions WHERE user_id = $1 AND status = 'APPLIED'`, 1, may5).Scan(&summedAtMay5, &summedNow)
	require.NoError(t, err)
	require.Equal(t, vasyaBalanceAtMay5, summedAtMay5)
	require.Equal(t, vasyaBalanceNow, summedNow)

	// Every stored balance_after is the running sum of the timeline, and none is negative.
	var wrong, negative int
	err = db.Pool().QueryRow(ctx, `SELECT count(*) FILTER (WHERE balance_after <> running), count(*) FILTER (WHERE balance_after < 0)
		FROM (SELECT balance_after, sum(CASE type WHEN 'DEPOSIT' THEN amount ELSE -amount END)
			OVER (PARTITION BY user_id ORDER BY ts, seq) AS running
			FROM transactions WHERE status = 'APPLIED') t`).Scan(&wrong, &negative)
	require.NoError(t, err)
	require.Zero(t, wrong, "balance_after differs from the running sum")
	require.Zero(t, negative, "a balance_after is negative")

	want := 0
	for i, user := range demoUsers {
		want += len(demoTransactions(i, user))
	}
	loaded := countDemo(t, db)
	require.Equal(t, demoCounts{users: len(demoUsers), transactions: want, applied: want}, loaded)

	t.Run("loading again changes nothing", func(t *testing.T) {
		require.NoError(t, loadDemo(ctx, config{databaseURL: url}, log))
		require.Contains(t, logs.String(), "demo data already loaded")
		require.Equal(t, loaded, countDemo(t, db))
	})

	t.Run("an interrupted load resumes", func(t *testing.T) {
		// Undo the very last demo transaction as if the load had stopped just before it.
		last := len(demoUsers) - 1
		plan := demoTransactions(last, demoUsers[last])
		final, beforeFinal := plan[len(plan)-1], plan[len(plan)-2]
		delta := final.amount
		if final.typ == ledger.Withdraw {
			delta = -delta
		}
		_, err := db.Pool().Exec(ctx, `WITH gone AS (DELETE FROM transactions WHERE uid = $1 RETURNING user_id)
			UPDATE users SET balance = balance - $2, last_seq = last_seq - 1, last_ts = $3
			WHERE id = (SELECT user_id FROM gone)`, final.uid, delta, beforeFinal.at)
		require.NoError(t, err)
		require.Equal(t, loaded.transactions-1, countDemo(t, db).transactions)

		require.NoError(t, loadDemo(ctx, config{databaseURL: url}, log))
		require.Equal(t, loaded, countDemo(t, db), "the resumed load must neither duplicate users nor miss transactions")
	})
}
