package postgres_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// BenchmarkBalanceAt reads a balance at a date in the middle of histories of different
// lengths, and the current balance of the same users.
// Run: go test ./postgres -run '^$' -bench 'BalanceAt|CurrentBalance' -count 5
func BenchmarkBalanceAt(b *testing.B) {
	benchmarkHistories(b, func(b *testing.B, db *postgres.DB, user int64, n int) {
		mid := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(n/2) * time.Minute)
		for b.Loop() {
			got, err := db.UserAt(context.Background(), user, mid)
			if err != nil || got.Balance != ledger.Amount(n/2) {
				b.Fatalf("balance %v, %v", got.Balance, err)
			}
		}
	})
}

// BenchmarkBalanceSeries reads the console chart's 200 points over a whole history: one index
// probe a point, so the time stays flat as the history grows.
// Run: BENCH_LONG_HISTORY=1 go test ./postgres -run '^$' -bench 'BalanceSeries' -count 5
func BenchmarkBalanceSeries(b *testing.B) {
	benchmarkHistories(b, func(b *testing.B, db *postgres.DB, user int64, n int) {
		start := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
		instants := ledger.SeriesInstants(start, start.Add(time.Duration(n)*time.Minute), 200)
		for b.Loop() {
			points, err := db.BalanceSeries(context.Background(), user, instants)
			if err != nil || points[199].Balance != ledger.Amount(n) {
				b.Fatalf("series %v, %v", len(points), err)
			}
		}
	})
}

func BenchmarkCurrentBalance(b *testing.B) {
	benchmarkHistories(b, func(b *testing.B, db *postgres.DB, user int64, n int) {
		for b.Loop() {
			got, err := db.User(context.Background(), user)
			if err != nil || got.Balance != ledger.Amount(n) {
				b.Fatalf("balance %v, %v", got.Balance, err)
			}
		}
	})
}

// benchUser opens a fresh database holding one user.
func benchUser(b *testing.B) (*postgres.DB, ledger.User) {
	db, _ := pgtest.NewDB(b)
	u, err := db.CreateUser(context.Background(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	return db, u
}

// historySizes are the history lengths compared; BENCH_LONG_HISTORY adds one of a million.
func historySizes() []int {
	sizes := []int{100, 1_000, 20_000}
	if os.Getenv("BENCH_LONG_HISTORY") != "" {
		sizes = append(sizes, 1_000_000)
	}
	return sizes
}

// benchmarkHistories runs read for a user with n transactions of 0.01 each, one a minute.
func benchmarkHistories(b *testing.B, read func(b *testing.B, db *postgres.DB, user int64, n int)) {
	for _, n := range historySizes() {
		b.Run(fmt.Sprintf("history=%d", n), func(b *testing.B) {
			db, u := benchUser(b)
			ctx := context.Background()
			_, err := db.Pool().Exec(ctx, `INSERT INTO transactions (uid, user_id, seq, type, amount, ts,
				timestamp_given, status, balance_after, response_status, response_body)
				SELECT gen_random_uuid(), $1, g, 'DEPOSIT', 1, '2020-01-01'::timestamptz + g * interval '1 minute',
				       true, 'APPLIED', g, 200, '\x'
				FROM generate_series(1, $2::int) g`, u.ID, n)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := db.Pool().Exec(ctx, "UPDATE users SET balance = $2 WHERE id = $1", u.ID, n); err != nil {
				b.Fatal(err)
			}
			// A checkpoint now, so that writing out the inserted history does not run during
			// the measurement.
			for _, sql := range []string{"VACUUM ANALYZE transactions", "CHECKPOINT"} {
				if _, err := db.Pool().Exec(ctx, sql); err != nil {
					b.Fatal(err)
				}
			}
			read(b, db, u.ID, n)
		})
	}
}

// BenchmarkAppend measures one deposit through the whole write path, sequentially.
func BenchmarkAppend(b *testing.B) {
	db, u := benchUser(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := db.Apply(ctx, ledger.Request{UID: uuid.New(), UserID: u.ID, Type: ledger.Deposit, Amount: 100}, render); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendConcurrent measures deposits from 16 goroutines at once, all to one user
// (they queue on its lock) or each to a user of its own.
// Run: go test ./postgres -run '^$' -bench AppendConcurrent -count 5
func BenchmarkAppendConcurrent(b *testing.B) {
	for _, shared := range []bool{true, false} {
		b.Run(fmt.Sprintf("one-user=%t", shared), func(b *testing.B) {
			db, u := benchUser(b)
			ctx := context.Background()
			b.SetParallelism(8) // 16 goroutines on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				user := u.ID
				if !shared {
					own, err := db.CreateUser(ctx, "bench")
					if err != nil {
						b.Error(err)
						return
					}
					user = own.ID
				}
				for pb.Next() {
					if _, err := db.Apply(ctx, ledger.Request{UID: uuid.New(), UserID: user, Type: ledger.Deposit, Amount: 100}, render); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkBackdated measures a back-dated deposit as a function of the rows after it: each
// one goes just before the last k of a 20,000-transaction history, so k rows move every time.
// Run: go test ./postgres -run '^$' -bench Backdated -count 5
func BenchmarkBackdated(b *testing.B) {
	for _, k := range []int{0, 10, 100, 1_000, 10_000} {
		b.Run(fmt.Sprintf("after=%d", k), func(b *testing.B) {
			const n = 20_000
			db, u := benchUser(b)
			ctx := context.Background()
			start := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
			_, err := db.Pool().Exec(ctx, `INSERT INTO transactions (uid, user_id, seq, type, amount, ts,
				timestamp_given, status, balance_after, response_status, response_body)
				SELECT gen_random_uuid(), $1, g, 'DEPOSIT', 1, $2::timestamptz + g * interval '1 minute',
				       true, 'APPLIED', g, 200, '\x'
				FROM generate_series(1, $3::int) g`, u.ID, start, n)
			if err != nil {
				b.Fatal(err)
			}
			last := start.Add(n * time.Minute)
			if _, err := db.Pool().Exec(ctx, "UPDATE users SET balance = $2, last_seq = $2, last_ts = $3 WHERE id = $1", u.ID, n, last); err != nil {
				b.Fatal(err)
			}
			if _, err := db.Pool().Exec(ctx, "VACUUM ANALYZE transactions"); err != nil {
				b.Fatal(err)
			}
			// Just after the (n-k)th row: exactly k rows follow; earlier inserts stay before them.
			at := start.Add(time.Duration(n-k)*time.Minute + time.Second)
			var moved int64
			for b.Loop() {
				out, err := db.Apply(ctx, ledger.Request{UID: uuid.New(), UserID: u.ID, Type: ledger.Deposit, Amount: 1, Timestamp: &at}, render)
				if err != nil || out.Reply.Status != 200 {
					b.Fatalf("status %d, %v", out.Reply.Status, err)
				}
				moved = out.RowsMoved
			}
			if moved != int64(k) {
				b.Fatalf("moved %d rows, want %d", moved, k)
			}
			b.ReportMetric(float64(moved), "rows-moved")
		})
	}
}
