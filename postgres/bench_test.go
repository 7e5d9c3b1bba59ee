package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
)

// BenchmarkBalanceAt reads a balance at a date in the middle of histories of different lengths.
// Run: go test ./postgres -run '^$' -bench BalanceAt -count 5
func BenchmarkBalanceAt(b *testing.B) {
	for _, n := range []int{100, 20_000} {
		b.Run(fmt.Sprintf("history=%d", n), func(b *testing.B) {
			db, _ := pgtest.NewDB(b)
			ctx := context.Background()
			u, err := db.CreateUser(ctx, "bench")
			if err != nil {
				b.Fatal(err)
			}
			_, err = db.Pool().Exec(ctx, `INSERT INTO transactions (uid, user_id, seq, type, amount, ts,
				timestamp_given, status, balance_after, response_status, response_body)
				SELECT gen_random_uuid(), $1, g, 'DEPOSIT', 1, '2020-01-01'::timestamptz + g * interval '1 minute',
				       true, 'APPLIED', g, 200, '\x'
				FROM generate_series(1, $2::int) g`, u.ID, n)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := db.Pool().Exec(ctx, "VACUUM ANALYZE transactions"); err != nil {
				b.Fatal(err)
			}
			mid := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(n/2) * time.Minute)
			b.ResetTimer()
			for b.Loop() {
				got, err := db.UserAt(ctx, u.ID, mid)
				if err != nil || got.Balance != ledger.Amount(n/2) {
					b.Fatalf("balance %v, %v", got.Balance, err)
				}
			}
		})
	}
}

// BenchmarkAppend measures one deposit through the whole write path, sequentially.
func BenchmarkAppend(b *testing.B) {
	db, _ := pgtest.NewDB(b)
	ctx := context.Background()
	u, err := db.CreateUser(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := db.Apply(ctx, ledger.Request{UID: uuid.New(), UserID: u.ID, Type: ledger.Deposit, Amount: 100}, render); err != nil {
			b.Fatal(err)
		}
	}
}
