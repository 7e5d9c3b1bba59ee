package postgres

import (
	"context"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tally-ledger/tally/ledger"
)

// UserAtSQL lets tests explain the query behind UserAt.
const UserAtSQL = userAtSQL

// QueuedWrites counts the transaction requests waiting for a write worker.
func (db *DB) QueuedWrites() int { return len(db.batcher.queue) }

// UserLockKey is a user's advisory lock key as userLockKeySQL computes it, for tests that hold
// a user's lock from a connection of their own.
func UserLockKey(id int64) (int32, int32) { return int32(id >> 32), int32(uint32(id)) }

// ExplainWrite runs the statement that writes a batch, one deposit for each of users, under
// EXPLAIN ANALYZE in a transaction it rolls back, and returns the plan.
func (db *DB) ExplainWrite(ctx context.Context, users []int64) (string, error) {
	var writes writeSet
	now := time.Now().UTC()
	for _, id := range users {
		balance := ledger.Amount(100)
		t := ledger.Transaction{UID: uuid.New(), UserID: id, Type: ledger.Deposit, Amount: balance, Timestamp: now,
			Status: ledger.Applied, BalanceAfter: &balance, Seq: 1, CreatedAt: now}
		writes.transaction(t, ledger.Reply{Status: 200, Body: []byte("{}")})
		d := ledger.Decision{Tx: t, NewBalance: balance}
		for _, e := range d.Events(0, 1) {
			writes.event(e, db.eventSource)
		}
		// read is left zero: the users' rows as the callers insert them.
		writes.user(id, &userState{UserState: ledger.UserState{Balance: balance, LastSeq: 1, LastTime: now}, eventSeq: 3})
	}
	tx, err := db.pool.Begin(ctx)
	if err != nil {
		return "", err
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, COSTS OFF) "+writeSQL, writes.args()...)
	if err != nil {
		return "", err
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return strings.Join(lines, "\n"), err
}

// SeriesSQL and UsersSQL let tests explain the queries behind BalanceSeries and Users.
const (
	SeriesSQL = seriesSQL
	UsersSQL  = usersSQL
)

// MigrateFiles applies the migrations in fsys as Migrate applies the embedded ones, with the
// given lock timeout.
func MigrateFiles(ctx context.Context, databaseURL string, fsys fs.FS, lockTimeout time.Duration) ([]string, error) {
	ms, err := migrations(fsys)
	if err != nil {
		return nil, err
	}
	return migrate(ctx, databaseURL, ms, lockTimeout)
}

// Statement is one SQL statement a request runs, with arguments.
type Statement struct {
	Name string
	SQL  string
	Args []any
}

// RoutedStatements lists every statement the requests run on Citus, with arguments for user
// userID, transaction uid, user creation key and instant at.
func RoutedStatements(userID int64, uid uuid.UUID, key string, at time.Time) []Statement {
	now := time.Now().UTC()
	after := ledger.Amount(100)
	var history []Statement
	for _, status := range []ledger.HistoryStatus{ledger.HistoryApplied, ledger.HistoryRejected, ledger.HistoryAll} {
		sql, args := historySQL(ledger.HistoryQuery{UserID: userID, Status: status, From: &at, To: &now,
			After: &ledger.Cursor{Time: at, Seq: 1}, Limit: 10})
		history = append(history, Statement{"history " + string(status), sql, args})
	}
	return append([]Statement{
		{"create user: insert", insertUserSQL, []any{"petya"}},
		{"create user: event", insertEventSQL, []any{uuid.New(), userID, 1, "user.created", "{}"}},
		{"create user once: find key", findUserRequestSQL, []any{key}},
		{"create user once: store key", insertUserRequestSQL, []any{key, "petya", userID, 201, []byte("{}")}},
		{"write: lock user", lockUserRowSQL, []any{userID}},
		{"write: find uid of user", findUserUIDSQL, []any{userID, uid}},
		{"write: find uid's owner", findUIDOwnerSQL, []any{uid}},
		{"write: back-dated state", backDatedStateSQL, []any{userID, at}},
		{"write: shift later balances", shiftLaterSQL, []any{userID, at, 5}},
		{"write: store uid", insertUIDSQL, []any{uid, userID}},
		{"write: store transaction", insertTransactionSQL, []any{uid, userID, 1, "DEPOSIT", 100, at, true, "APPLIED",
			nil, &after, 200, []byte("{}"), now}},
		{"write: store event", insertEventSQL, []any{uuid.New(), userID, 2, "transaction.applied", "{}"}},
		{"write: update user", updateUserSQL, []any{userID, 100, 1, at, 2}},
		{"balance", userSQL, []any{userID}},
		{"dated balance", userAtSQL, []any{userID, at}},
		{"history: user exists", userExistsSQL, []any{userID}},
		{"transaction: uid's owner", findUIDOwnerSQL, []any{uid}},
		{"transaction: read", userTransactionSQL, []any{userID, uid}},
		{"events of a user", userEventsSQL, []any{userID, 0, 100}},
	}, history...)
}

// DBErr is dbErr, for tests of how errors are classified.
var DBErr = dbErr

// WritePlans returns the generic plan the write path runs for each of its statements, as
// EXPLAIN EXECUTE shows it under the write transaction's settings (genericPlansSQL).
func (db *DB) WritePlans(ctx context.Context) (map[string]string, error) {
	statements := map[string]string{"tryUsers": tryUsersSQL, "waitForUsers": waitForUsersSQL,
		"readUsers": readUsersSQL, "findUIDs": findUIDsSQL, "write": writeSQL,
		"backDatedState": backDatedStateSQL, "shiftLater": shiftLaterSQL}
	plans := map[string]string{}
	for name, sql := range statements {
		params := len(slices.Compact(slices.Sorted(slices.Values(regexp.MustCompile(`\$\d+`).FindAllString(sql, -1)))))
		plan, err := explainGeneric(ctx, db, sql, params)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		plans[name] = plan
	}
	return plans, nil
}

func explainGeneric(ctx context.Context, db *DB, sql string, params int) (string, error) {
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Release()
	// A prepared statement outlives its transaction.
	defer conn.Exec(context.WithoutCancel(ctx), "DEALLOCATE write_statement") //nolint:errcheck
	tx, err := conn.Begin(ctx)
	if err != nil {
		return "", err
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, genericPlansSQL); err != nil {
		return "", err
	}
	if _, err := tx.Exec(ctx, "PREPARE write_statement AS "+sql); err != nil {
		return "", err
	}
	nulls := strings.TrimSuffix(strings.Repeat("NULL, ", params), ", ")
	rows, err := tx.Query(ctx, "EXPLAIN (COSTS OFF) EXECUTE write_statement("+nulls+")")
	if err != nil {
		return "", err
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return strings.Join(lines, "\n"), err
}

// GuessOutcomes counts the guessed batches that committed and those the database refused.
func (db *DB) GuessOutcomes() (committed, missed float64) {
	return testutil.ToFloat64(db.metrics.guesses.WithLabelValues("committed")),
		testutil.ToFloat64(db.metrics.guesses.WithLabelValues("missed"))
}

// SkewGuessClock moves this instance's estimate of the database's clock by d, as a step of
// this machine's clock would.
func (db *DB) SkewGuessClock(d time.Duration) {
	db.guesses.mu.Lock()
	defer db.guesses.mu.Unlock()
	db.guesses.offset += d
}
