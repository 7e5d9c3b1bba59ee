package postgres

import (
	"context"
	"io/fs"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

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
