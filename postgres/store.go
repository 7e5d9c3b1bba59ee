package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tally-ledger/tally/ledger"
)

// CreateUser stores a new user with a zero balance, and its user.created event.
func (db *DB) CreateUser(ctx context.Context, name string) (u ledger.User, err error) {
	defer func() { err = dbErr(err) }()
	err = db.withTx(ctx, func(tx pgx.Tx) error {
		u, err = db.insertUser(ctx, tx, name)
		return err
	})
	return u, err
}

// CreateUserOnce creates a user for a request that carries an idempotency key, and stores
// the rendered answer under the key in the same transaction. A key seen before gets its first
// answer back, or an idempotency conflict if the name differs. Racing requests with one key
// are settled by the key's primary key: the loser's transaction fails with a unique violation
// and is rolled back, user included, and its next attempt reads the winner's answer.
func (db *DB) CreateUserOnce(ctx context.Context, key, name string, render func(ledger.User) ledger.Reply) (out ledger.UserOutcome, err error) {
	defer func() { err = dbErr(err) }()
	return retry(ctx, true, func() (ledger.UserOutcome, error) { return db.createUserOnce(ctx, key, name, render) })
}

const (
	findUserRequestSQL   = "SELECT name, user_id, response_status, response_body FROM user_requests WHERE key = $1"
	insertUserRequestSQL = "INSERT INTO user_requests (key, name, user_id, response_status, response_body) VALUES ($1, $2, $3, $4, $5)"
)

// createUserOnce is one attempt, in one transaction.
func (db *DB) createUserOnce(ctx context.Context, key, name string, render func(ledger.User) ledger.Reply) (out ledger.UserOutcome, err error) {
	err = db.runTx(ctx, func(tx pgx.Tx) error {
		var storedName string
		err := tx.QueryRow(ctx, findUserRequestSQL, key).
			Scan(&storedName, &out.User.ID, &out.Reply.Status, &out.Reply.Body)
		switch {
		case err == nil:
			if storedName != name {
				return &ledger.Error{Code: ledger.CodeIdempotencyConflict, Field: "Idempotency-Key",
					Detail: "this Idempotency-Key was already used to create a user with another name; choose a new key for a new user"}
			}
			out.User.Name, out.Replayed = storedName, true
			return nil
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		if out.User, err = db.insertUser(ctx, tx, name); err != nil {
			return err
		}
		out.Reply = render(out.User)
		_, err = tx.Exec(ctx, insertUserRequestSQL, key, name, out.User.ID, out.Reply.Status, out.Reply.Body)
		return err
	})
	return out, err
}

const insertUserSQL = "INSERT INTO users (name, event_seq) VALUES ($1, 1) RETURNING id, created_at"

// insertUser stores a user with a zero balance and its user.created event, inside tx.
func (db *DB) insertUser(ctx context.Context, tx pgx.Tx, name string) (ledger.User, error) {
	u := ledger.User{Name: name}
	err := tx.QueryRow(ctx, insertUserSQL, name).Scan(&u.ID, &u.CreatedAt)
	if err != nil {
		return u, err
	}
	u.CreatedAt = u.CreatedAt.UTC()
	e := ledger.UserCreatedEvent(u)
	_, err = tx.Exec(ctx, insertEventSQL, e.ID, u.ID, e.Seq, string(e.Type), string(e.CloudEvent(db.eventSource)))
	return u, err
}

const userSQL = "SELECT id, name, balance, created_at FROM users WHERE id = $1"

// User returns a user with its current balance.
func (db *DB) User(ctx context.Context, id int64) (u ledger.User, err error) {
	defer func() { err = dbErr(err) }()
	err = db.pool.QueryRow(ctx, userSQL, id).Scan(&u.ID, &u.Name, &u.Balance, &u.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return u, ledger.NotFound("user %d does not exist", id)
	}
	return u, err
}

// balanceAtSQL finds the balance at an instant with one probe of the timeline index: the
// balance_after of the last applied transaction at or before it. Its cost does not depend on
// the length of the history.
const balanceAtSQL = `COALESCE((
	SELECT t.balance_after FROM transactions t
	WHERE t.user_id = $1 AND t.status = 'APPLIED' AND t.ts <= $2
	ORDER BY t.ts DESC, t.seq DESC LIMIT 1), 0)`

const userAtSQL = "SELECT id, name, " + balanceAtSQL + ", created_at FROM users WHERE id = $1"

// UserAt returns a user whose Balance is the balance at instant at.
func (db *DB) UserAt(ctx context.Context, id int64, at time.Time) (u ledger.User, err error) {
	defer func() { err = dbErr(err) }()
	err = db.pool.QueryRow(ctx, userAtSQL, id, at).Scan(&u.ID, &u.Name, &u.Balance, &u.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return u, ledger.NotFound("user %d does not exist", id)
	}
	return u, err
}

const txColumns = "uid, user_id, type, amount, ts, timestamp_given, status, COALESCE(reason, ''), balance_after, seq, created_at"

func scanTransaction(row pgx.Row, extra ...any) (ledger.Transaction, error) {
	var t ledger.Transaction
	dest := append([]any{&t.UID, &t.UserID, &t.Type, &t.Amount, &t.Timestamp, &t.TimestampGiven,
		&t.Status, &t.Reason, &t.BalanceAfter, &t.Seq, &t.CreatedAt}, extra...)
	err := row.Scan(dest...)
	t.Timestamp, t.CreatedAt = t.Timestamp.UTC(), t.CreatedAt.UTC()
	return t, err
}

// userTransactionSQL reads a user's transaction by uid.
const userTransactionSQL = "SELECT " + txColumns + " FROM transactions WHERE user_id = $1 AND uid = $2"

// Transaction returns the stored transaction with this uid. On Citus the uid's user is read
// first from transaction_uids, so that each of the two queries reaches one shard.
func (db *DB) Transaction(ctx context.Context, uid uuid.UUID) (t ledger.Transaction, err error) {
	defer func() { err = dbErr(err) }()
	distributed, err := db.Distributed(ctx)
	if err != nil {
		return t, err
	}
	if distributed {
		var userID int64
		err = db.pool.QueryRow(ctx, findUIDOwnerSQL, uid).Scan(&userID)
		if err == nil {
			t, err = scanTransaction(db.pool.QueryRow(ctx, userTransactionSQL, userID, uid))
		}
	} else {
		t, err = scanTransaction(db.pool.QueryRow(ctx, "SELECT "+txColumns+" FROM transactions WHERE uid = $1", uid))
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return t, ledger.NotFound("transaction %s does not exist", uid)
	}
	return t, err
}
