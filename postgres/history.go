package postgres

import (
	"context"
	"strconv"

	"github.com/tally-ledger/tally/ledger"
)

// History returns a page of a user's transactions in timeline order and, when more follow,
// the cursor of the next page. Applied and refused transactions each have their own partial
// index on (user_id, ts, seq); ALL merges the two ordered scans, so a page reads about limit
// rows of each whatever the history's length. seq numbers all of a user's transactions, so
// (ts, seq) is unique across both.
func (db *DB) History(ctx context.Context, q ledger.HistoryQuery) (_ []ledger.Transaction, _ *ledger.Cursor, err error) {
	defer func() { err = dbErr(err) }()
	var exists bool
	if err := db.pool.QueryRow(ctx, userExistsSQL, q.UserID).Scan(&exists); err != nil {
		return nil, nil, err
	}
	if !exists {
		return nil, nil, ledger.NotFound("user %d does not exist", q.UserID)
	}
	sql, args := historySQL(q)
	rows, err := db.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var page []ledger.Transaction
	for rows.Next() {
		t, err := scanTransaction(rows)
		if err != nil {
			return nil, nil, err
		}
		page = append(page, t)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	if len(page) <= q.Limit {
		return page, nil, nil
	}
	page = page[:q.Limit]
	last := page[len(page)-1]
	return page, &ledger.Cursor{Time: last.Timestamp, Seq: last.Seq}, nil
}

const userExistsSQL = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)"

// historySQL is the query for a page of q and its arguments. Every branch names the user, so
// on Citus the query reaches the user's shard only.
func historySQL(q ledger.HistoryQuery) (string, []any) {
	args := []any{q.UserID}
	where := ""
	if q.From != nil {
		args = append(args, *q.From)
		where += " AND ts >= $" + strconv.Itoa(len(args))
	}
	if q.To != nil {
		args = append(args, *q.To)
		where += " AND ts <= $" + strconv.Itoa(len(args))
	}
	if q.After != nil {
		args = append(args, q.After.Time, q.After.Seq)
		where += " AND (ts, seq) > ($" + strconv.Itoa(len(args)-1) + ", $" + strconv.Itoa(len(args)) + ")"
	}
	args = append(args, q.Limit+1)
	limit := " ORDER BY ts, seq LIMIT $" + strconv.Itoa(len(args))
	branch := func(status ledger.Status) string {
		return "SELECT " + txColumns + " FROM transactions WHERE user_id = $1 AND status = '" + string(status) + "'" + where + limit
	}
	switch q.Status {
	case ledger.HistoryRejected:
		return branch(ledger.Rejected), args
	case ledger.HistoryAll:
		return "SELECT * FROM ((" + branch(ledger.Applied) + ") UNION ALL (" + branch(ledger.Rejected) + ")) t" + limit, args
	default:
		return branch(ledger.Applied), args
	}
}
