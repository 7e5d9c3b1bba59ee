package postgres_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/devenv"
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

// A database migrated on plain PostgreSQL is distributed by the first migrate after Citus is
// installed in it, with its rows: balances, history, stored answers and uids keep working, and
// a uid used before is still refused for another user.
func TestMigrateDistributesWhenCitusArrives(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, addCitus := pgtest.NewDatabaseBeforeCitus(t)
	_, err := postgres.Migrate(ctx, url)
	require.NoError(t, err)
	db, err := postgres.Open(ctx, url)
	require.NoError(t, err)
	u, err := db.CreateUser(ctx, "petya")
	require.NoError(t, err)
	uid := uuid.New()
	req := ledger.Request{UID: uid, UserID: u.ID, Type: ledger.Deposit, Amount: 500, Timestamp: at("2023-01-04")}
	first, err := db.Apply(ctx, req, render)
	require.NoError(t, err)
	db.Close()

	require.NoError(t, addCitus(ctx))
	applied, err := postgres.Migrate(ctx, url)
	require.NoError(t, err)
	require.Empty(t, applied, "no migration was left; the tables are distributed all the same")

	db, err = postgres.Open(ctx, url)
	require.NoError(t, err)
	defer db.Close()
	distributed, err := db.Distributed(ctx)
	require.NoError(t, err)
	require.True(t, distributed)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var tables []string
	rows, err := conn.Query(ctx, "SELECT logicalrelid::text FROM pg_dist_partition ORDER BY 1")
	require.NoError(t, err)
	tables, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"outbox", "transaction_uids", "transactions", "user_requests", "users"}, tables)
	var localBytes int64
	require.NoError(t, conn.QueryRow(ctx, "SELECT sum(pg_relation_size(logicalrelid)) FROM pg_dist_partition").Scan(&localBytes))
	require.Zero(t, localBytes, "the coordinator's copies of the rows were emptied once they were on the shards")

	again, err := db.Apply(ctx, req, render)
	require.NoError(t, err)
	require.True(t, again.Replayed)
	require.Equal(t, first.Reply, again.Reply)
	other, err := db.CreateUser(ctx, "olga")
	require.NoError(t, err)
	require.Greater(t, other.ID, u.ID, "ids go on from the coordinator's sequence")
	stolen := req
	stolen.UserID = other.ID
	_, err = db.Apply(ctx, stolen, render)
	require.Equal(t, ledger.CodeIdempotencyConflict, ledger.ErrorCode(err))
	stored, err := db.Transaction(ctx, uid)
	require.NoError(t, err)
	require.Equal(t, u.ID, stored.UserID)
	user, err := db.User(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, ledger.Amount(500), user.Balance)
}

// While a worker is down, requests for the users it holds are unavailable (503 with
// Retry-After at the API), not internal errors, and users on the other worker go on; once it
// is back, so are its users. The cluster is the test's own, since it kills a node.
func TestCitusWorkerDown(t *testing.T) {
	pgtest.RequireCitusInstalled(t)
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	// PostgreSQL runs as another user when the tests run as root; it must reach the cluster.
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	require.NoError(t, os.Chmod(dir, 0o755))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := devenv.StartCitus(ctx, dir, 2, log)
	require.NoError(t, err)
	defer func() { require.NoError(t, c.Stop(log)) }()
	_, err = postgres.Migrate(ctx, c.Coordinator.URL)
	require.NoError(t, err)
	db, err := postgres.Open(ctx, c.Coordinator.URL)
	require.NoError(t, err)
	defer db.Close()
	conn, err := pgx.Connect(ctx, c.Coordinator.URL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	// workerOf is the port of the worker holding key's shard of table.
	workerOf := func(table string, key any) int {
		var port int
		require.NoError(t, conn.QueryRow(ctx, `SELECT nodeport FROM pg_dist_shard_placement
			WHERE shardid = get_shard_id_for_distribution_column($1, $2::text)`, table, fmt.Sprint(key)).Scan(&port))
		return port
	}
	up, down := c.Workers[0].Port, c.Workers[1].Port
	users := map[int]int64{}
	for len(users) < 2 {
		u, err := db.CreateUser(ctx, "petya")
		require.NoError(t, err)
		users[workerOf("users", u.ID)] = u.ID
	}
	// uidOn is a new uid whose transaction_uids shard is on the worker at port.
	uidOn := func(port int) uuid.UUID {
		for {
			if uid := uuid.New(); workerOf("transaction_uids", uid.String()) == port {
				return uid
			}
		}
	}
	deposit := func(user int64, uid uuid.UUID) error {
		_, err := db.Apply(ctx, ledger.Request{UID: uid, UserID: user, Type: ledger.Deposit, Amount: 100}, render)
		return err
	}

	require.NoError(t, c.Workers[1].Kill())
	_, err = db.User(ctx, users[down])
	require.Equal(t, ledger.CodeUnavailable, ledger.ErrorCode(err), "%v", err)
	require.Equal(t, ledger.CodeUnavailable, ledger.ErrorCode(deposit(users[down], uidOn(up))))
	require.Equal(t, ledger.CodeUnavailable, ledger.ErrorCode(deposit(users[up], uidOn(down))), "the uid's shard is down")
	require.NoError(t, deposit(users[up], uidOn(up)))
	u, err := db.User(ctx, users[up])
	require.NoError(t, err)
	require.Equal(t, ledger.Amount(100), u.Balance)

	require.NoError(t, c.RestartWorker(ctx, 1, log))
	require.NoError(t, deposit(users[down], uidOn(down)))
	u, err = db.User(ctx, users[down])
	require.NoError(t, err)
	require.Equal(t, ledger.Amount(100), u.Balance)
}
