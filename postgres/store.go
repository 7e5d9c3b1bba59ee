package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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

// createUserOnce is one attempt, in one transaction.
func (db *DB) createUserOnce(ctx context.Context, key, name string, render func(ledger.User) ledger.Reply) (out ledger.UserOutcome, err error) {
	err = db.runTx(ctx, func(tx pgx.Tx) error {
		var storedName string
		err := tx.QueryRow(ctx, "SELECT name, user_id, response_status, response_body FROM user_requests WHERE key = $1", key).
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
		_, err = tx.Exec(ctx, `INSERT INTO user_requests (key, name, user_id, response_status, response_body)
			VALUES ($1, $2, $3, $4, $5)`, key, name, out.User.ID, out.Reply.Status, out.Reply.Body)
		return err
	})
	return out, err
}

// insertUser stores a user with a zero balance and its user.created event, inside tx.
func (db *DB) insertUser(ctx context.Context, tx pgx.Tx, name string) (ledger.User, error) {
	u := ledger.User{Name: name}
	err := tx.QueryRow(ctx,
		"INSERT INTO users (name, event_seq) VALUES ($1, 1) RETURNING id, created_at", name,
	).Scan(&u.ID, &u.CreatedAt)
	if err != nil {
		return u, err
	}
	u.CreatedAt = u.CreatedAt.UTC()
	ids, seqs, types, bodies := db.outboxColumns([]ledger.Event{ledger.UserCreatedEvent(u)})
	_, err = tx.Exec(ctx, `INSERT INTO outbox (id, user_id, user_seq, type, event)
		SELECT e.id, $1, e.seq, e.type, e.body::json
		FROM unnest($2::uuid[], $3::bigint[], $4::text[], $5::text[]) AS e(id, seq, type, body)`,
		u.ID, ids, seqs, types, bodies)
	return u, err
}

// outboxColumns lays one user's events out as the arrays the outbox inserts unnest, so that
// any number of events is one statement.
func (db *DB) outboxColumns(events []ledger.Event) (ids []uuid.UUID, seqs []int64, types, bodies []string) {
	for _, e := range events {
		ids, seqs = append(ids, e.ID), append(seqs, e.Seq)
		types, bodies = append(types, string(e.Type)), append(bodies, string(e.CloudEvent(db.eventSource)))
	}
	return ids, seqs, types, bodies
}

// User returns a user with its current balance.
func (db *DB) User(ctx context.Context, id int64) (u ledger.User, err error) {
	defer func() { err = dbErr(err) }()
	err = db.pool.QueryRow(ctx,
		"SELECT id, name, balance, created_at FROM users WHERE id = $1", id,
	).Scan(&u.ID, &u.Name, &u.Balance, &u.CreatedAt)
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

// Apply records a transaction request exactly once. Under the user's row lock it reads the
// state the rule needs, decides with ledger.Decide, and stores the row, its answer and the new
// balance in one database transaction. A uid seen before gets its first answer back, or an
// idempotency conflict if the body differs.
func (db *DB) Apply(ctx context.Context, req ledger.Request, render func(ledger.Transaction) ledger.Reply) (_ ledger.Outcome, err error) {
	defer func() { err = dbErr(err) }()
	// A unique violation means another request with this uid committed first, for another
	// user (same-user duplicates queue on the user's locks instead).
	return retry(ctx, true, func() (ledger.Outcome, error) { return db.apply(ctx, req, render) })
}

// apply is one attempt. Its transaction costs two round trips: BEGIN travels with the first
// batch and COMMIT with the last.
func (db *DB) apply(ctx context.Context, req ledger.Request, render func(ledger.Transaction) ledger.Reply) (ledger.Outcome, error) {
	var out ledger.Outcome
	err := db.withPipelinedTx(ctx, func(tx *pipelinedTx) error {
		// Queue on the user's advisory lock, then lock the user's row, then look the uid up.
		// The advisory lock comes first because taking it gives the transaction no id: the
		// row lock does, so each write to a user gets its transaction id only once the
		// previous one committed, and the outbox's transaction order is the user's sequence
		// order. Read committed gives the later statements a fresh snapshot taken after the
		// lock is held, so they see a duplicate that committed while this request waited.
		batch := &pgx.Batch{}
		high, low := userLockKey(req.UserID)
		batch.Queue("SELECT pg_advisory_xact_lock($1::int4, $2::int4)", high, low)
		var state ledger.UserState
		var lastTime *time.Time
		var eventSeq int64
		userFound := true
		batch.Queue("SELECT balance, last_seq, last_ts, event_seq, clock_timestamp() FROM users WHERE id = $1 FOR UPDATE", req.UserID).
			QueryRow(func(row pgx.Row) error {
				err := row.Scan(&state.Balance, &state.LastSeq, &lastTime, &eventSeq, &state.Now)
				if errors.Is(err, pgx.ErrNoRows) {
					userFound = false
					return nil
				}
				return err
			})
		var existing *ledger.Outcome
		batch.Queue("SELECT "+txColumns+", response_status, response_body FROM transactions WHERE uid = $1", req.UID).
			QueryRow(func(row pgx.Row) error {
				var o ledger.Outcome
				t, err := scanTransaction(row, &o.Reply.Status, &o.Reply.Body)
				if errors.Is(err, pgx.ErrNoRows) {
					return nil
				}
				o.Tx, o.Replayed, existing = t, true, &o
				return err
			})
		if err := tx.begin(ctx, batch); err != nil {
			return err
		}
		if existing != nil {
			if !req.Matches(existing.Tx) {
				return idempotencyConflict(req, existing.Tx)
			}
			out = *existing
			return nil
		}
		if !userFound {
			return ledger.NotFound("user %d does not exist", req.UserID)
		}
		state.Now = state.Now.UTC().Truncate(time.Microsecond)
		if lastTime != nil {
			state.LastTime = *lastTime
		}
		at := req.EffectiveTime(state.Now)
		if state.BackDated(at) {
			var minAfter, maxAfter *ledger.Amount
			err := tx.conn.QueryRow(ctx, "SELECT "+balanceAtSQL+", min(balance_after), max(balance_after) "+
				"FROM transactions WHERE user_id = $1 AND status = 'APPLIED' AND ts > $2", req.UserID, at,
			).Scan(&state.BalanceBefore, &minAfter, &maxAfter)
			if err != nil {
				return err
			}
			if minAfter != nil {
				state.HasAfter, state.MinAfter, state.MaxAfter = true, *minAfter, *maxAfter
			}
		}

		d := ledger.Decide(req, state)
		out.Tx = d.Tx
		out.BackDated = state.BackDated(at)
		out.Reply = render(d.Tx)
		t := d.Tx
		var reason *string
		if t.Reason != "" {
			reason = (*string)(&t.Reason)
		}
		batch = &pgx.Batch{}
		if d.Shift != 0 {
			// Back-dating: every later applied transaction's balance moves by the same amount.
			// Decide checked that none goes negative; the CHECK constraint is the backstop.
			batch.Queue(`UPDATE transactions SET balance_after = balance_after + $3
				WHERE user_id = $1 AND status = 'APPLIED' AND ts > $2`, t.UserID, t.Timestamp, d.Shift).
				Exec(func(tag pgconn.CommandTag) error {
					out.RowsMoved = tag.RowsAffected()
					return nil
				})
		}
		lastTS := state.LastTime
		if t.Status == ledger.Applied && t.Timestamp.After(lastTS) {
			lastTS = t.Timestamp
		}
		var lastTSArg *time.Time
		if !lastTS.IsZero() {
			lastTSArg = &lastTS
		}
		events := d.Events(state.Balance, eventSeq)
		ids, seqs, types, bodies := db.outboxColumns(events)
		// One statement stores the row, its events and the user's new state: PostgreSQL's work
		// per statement, not the rows, is what a write mostly costs.
		batch.Queue(`WITH stored AS (
				INSERT INTO transactions (uid, user_id, seq, type, amount, ts, timestamp_given, status,
					reason, balance_after, response_status, response_body, created_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)),
			events AS (
				INSERT INTO outbox (id, user_id, user_seq, type, event)
				SELECT e.id, $2, e.seq, e.type, e.body::json
				FROM unnest($14::uuid[], $15::bigint[], $16::text[], $17::text[]) AS e(id, seq, type, body))
			UPDATE users SET balance = $18, last_seq = $3, last_ts = $19, event_seq = $20 WHERE id = $2`,
			t.UID, t.UserID, t.Seq, t.Type, t.Amount, t.Timestamp, t.TimestampGiven, t.Status,
			reason, t.BalanceAfter, out.Reply.Status, out.Reply.Body, t.CreatedAt,
			ids, seqs, types, bodies,
			d.NewBalance, lastTSArg, eventSeq+int64(len(events)))
		return tx.commit(ctx, batch)
	})
	return out, err
}

// userLockKey is the advisory lock key of a user's writes. Users take the two-int4 key space
// (the user id's high and low halves), which PostgreSQL keeps apart from the one-bigint
// space of the migration lock and the relay lease, so no user id can ever wait on either.
func userLockKey(id int64) (int32, int32) { return int32(id >> 32), int32(uint32(id)) }

func idempotencyConflict(req ledger.Request, t ledger.Transaction) error {
	return &ledger.Error{Code: ledger.CodeIdempotencyConflict, Field: "uid",
		Detail: "uid " + req.UID.String() + " was already used for a different transaction (user, type, amount or timestamp differ); choose a new uid for a new transaction"}
}

// Transaction returns the stored transaction with this uid.
func (db *DB) Transaction(ctx context.Context, uid uuid.UUID) (t ledger.Transaction, err error) {
	defer func() { err = dbErr(err) }()
	t, err = scanTransaction(db.pool.QueryRow(ctx, "SELECT "+txColumns+" FROM transactions WHERE uid = $1", uid))
	if errors.Is(err, pgx.ErrNoRows) {
		return t, ledger.NotFound("transaction %s does not exist", uid)
	}
	return t, err
}
