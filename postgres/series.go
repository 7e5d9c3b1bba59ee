package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tally-ledger/tally/ledger"
)

// afterEveryName follows every name that starts with a prefix: U+10FFFF is the greatest code
// point and, as a noncharacter, is never part of a name (ledger.ParseName), so in byte order
// prefix+"\U0010FFFF" is above every name beginning with prefix and below the next prefix.
const afterEveryName = "\U0010FFFF"

// usersSQL reads one range of the users_name index from just after the cursor.
const usersSQL = `SELECT id, name, balance, created_at FROM users
	WHERE name COLLATE "C" >= $1 AND name COLLATE "C" < $2
	  AND (name COLLATE "C", id) > ($3 COLLATE "C", $4)
	ORDER BY name COLLATE "C", id LIMIT $5`

// Users returns a page of users whose name starts with q.NamePrefix (case-sensitive), in byte
// order of name and then id, and the cursor of the next page when more follow. The prefix is
// one range of the users_name index, so no LIKE pattern is built from input.
func (db *DB) Users(ctx context.Context, q ledger.UserQuery) (_ []ledger.User, _ *ledger.UserCursor, err error) {
	defer func() { err = dbErr(err) }()
	after := ledger.UserCursor{Name: "", ID: 0}
	if q.After != nil {
		after = *q.After
	}
	rows, err := db.pool.Query(ctx, usersSQL, q.NamePrefix, q.NamePrefix+afterEveryName, after.Name, after.ID, q.Limit+1)
	if err != nil {
		return nil, nil, err
	}
	page, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ledger.User, error) {
		var u ledger.User
		err := row.Scan(&u.ID, &u.Name, &u.Balance, &u.CreatedAt)
		u.CreatedAt = u.CreatedAt.UTC()
		return u, err
	})
	if err != nil || len(page) <= q.Limit {
		return page, nil, err
	}
	page = page[:q.Limit]
	last := page[len(page)-1]
	return page, &ledger.UserCursor{Name: last.Name, ID: last.ID}, nil
}

// seriesSQL answers every instant of $2 with one probe of the timeline index, the probe of
// balanceAtSQL, and returns the transaction it finds with the balance. No row comes back when
// the user does not exist.
const seriesSQL = `SELECT p.at, t.uid, t.type, t.amount, t.ts, t.timestamp_given, t.balance_after, t.seq, t.created_at
	FROM users u
	CROSS JOIN unnest($2::timestamptz[]) WITH ORDINALITY AS p(at, n)
	LEFT JOIN LATERAL (
		SELECT uid, type, amount, ts, timestamp_given, balance_after, seq, created_at FROM transactions
		WHERE user_id = u.id AND status = 'APPLIED' AND ts <= p.at
		ORDER BY ts DESC, seq DESC LIMIT 1) t ON true
	WHERE u.id = $1
	ORDER BY p.n`

// seriesStartSQL is where a series without a start begins: the user's first applied
// transaction (one probe) or its creation, whichever is earlier.
const seriesStartSQL = `SELECT LEAST(created_at, (
	SELECT ts FROM transactions WHERE user_id = u.id AND status = 'APPLIED' ORDER BY ts, seq LIMIT 1))
	FROM users u WHERE id = $1`

// SeriesStart returns where a series of the user's balance without a start begins.
func (db *DB) SeriesStart(ctx context.Context, userID int64) (start time.Time, err error) {
	defer func() { err = dbErr(err) }()
	err = db.pool.QueryRow(ctx, seriesStartSQL, userID).Scan(&start)
	if errors.Is(err, pgx.ErrNoRows) {
		return start, ledger.NotFound("user %d does not exist", userID)
	}
	return start.UTC(), err
}

// BalanceSeries returns the user's balance at each of the instants, in their order, with the
// transaction that set it. Its cost is one index probe per instant, whatever the history's
// length.
func (db *DB) BalanceSeries(ctx context.Context, userID int64, instants []time.Time) (_ []ledger.SeriesPoint, err error) {
	defer func() { err = dbErr(err) }()
	rows, err := db.pool.Query(ctx, seriesSQL, userID, instants)
	if err != nil {
		return nil, err
	}
	points, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ledger.SeriesPoint, error) {
		var (
			p              ledger.SeriesPoint
			uid            *uuid.UUID
			typ            *ledger.Type
			amount, after  *ledger.Amount
			ts, createdAt  *time.Time
			timestampGiven *bool
			seq            *int64
		)
		if err := row.Scan(&p.At, &uid, &typ, &amount, &ts, &timestampGiven, &after, &seq, &createdAt); err != nil {
			return p, err
		}
		p.At = p.At.UTC()
		if uid != nil {
			p.Balance = *after
			p.Tx = &ledger.Transaction{UID: *uid, UserID: userID, Type: *typ, Amount: *amount,
				Timestamp: ts.UTC(), TimestampGiven: *timestampGiven, Status: ledger.Applied,
				BalanceAfter: after, Seq: *seq, CreatedAt: createdAt.UTC()}
		}
		return p, nil
	})
	if err != nil {
		return nil, err
	}
	if len(points) == 0 {
		return nil, ledger.NotFound("user %d does not exist", userID)
	}
	return points, nil
}
