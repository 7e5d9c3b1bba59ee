package postgres_test

import (
	"context"
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

// On Citus every statement of every request is a router query: Citus sends it to one shard,
// with no step on the coordinator beyond routing. The write path's statements are the ones
// for a request recorded alone, as every request is there.
func TestCitusRoutesEveryStatement(t *testing.T) {
	pgtest.RequireCitus(t)
	f := setup(t)
	distributed, err := f.db.Distributed(f.ctx)
	require.NoError(t, err)
	require.True(t, distributed, "the test database is distributed")
	user := f.user(t)
	uid := uuid.New()
	_, err = f.db.Apply(f.ctx, ledger.Request{UID: uid, UserID: user, Type: ledger.Deposit, Amount: 100, Timestamp: at("2023-01-04")}, render)
	require.NoError(t, err)

	conn, err := pgx.Connect(f.ctx, f.url)
	require.NoError(t, err)
	defer conn.Close(f.ctx)
	for _, s := range postgres.RoutedStatements(user, uid, "key-1", *at("2023-01-03")) {
		// EXPLAIN without ANALYZE runs nothing, writes included.
		rows, err := conn.Query(f.ctx, "EXPLAIN (COSTS OFF) "+s.SQL, s.Args...)
		require.NoError(t, err, s.Name)
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err, s.Name)
		plan := strings.Join(lines, "\n")
		require.True(t, strings.HasPrefix(plan, "Custom Scan (Citus Adaptive)"), "%s: a distributed plan\n%s", s.Name, plan)
		require.Equal(t, 1, strings.Count(plan, "Task Count:"), "%s: one distributed step, no subplans\n%s", s.Name, plan)
		require.Contains(t, plan, "Task Count: 1\n", "%s: one shard\n%s", s.Name, plan)
	}
}

// A uid sent for two users at once is recorded once: one user's request is applied and the
// other's is an idempotency conflict. On Citus the two users' rows may lie on two workers and
// only transaction_uids, distributed by uid, sees both.
func TestUIDRaceAcrossUsers(t *testing.T) {
	f := setup(t)
	a, b := f.user(t), f.user(t)
	// A second pool, as a second API instance would have.
	other, err := postgres.Open(f.ctx, f.url)
	require.NoError(t, err)
	defer other.Close()
	for range 20 {
		uid := uuid.New()
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, s := range []struct {
			db   *postgres.DB
			user int64
		}{{f.db, a}, {other, b}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
				defer cancel()
				_, errs[i] = s.db.Apply(ctx, ledger.Request{UID: uid, UserID: s.user, Type: ledger.Deposit, Amount: 1}, render)
			}()
		}
		wg.Wait()
		applied := 0
		for _, err := range errs {
			if err == nil {
				applied++
				continue
			}
			require.Equal(t, ledger.CodeIdempotencyConflict, ledger.ErrorCode(err), err)
		}
		require.Equal(t, 1, applied, "uid %s", uid)
	}
	require.Equal(t, ledger.Amount(20), f.balance(t, a)+f.balance(t, b))
}
