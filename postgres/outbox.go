package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-ledger/tally/ledger"
)

// visibleEventsSQL reads events in stream order, only from transactions older than every
// transaction still running. An event whose transaction commits after a later one's is
// therefore never skipped: it is not visible to anyone until every event before it in the
// order is.
const visibleEventsSQL = `SELECT txid::text::bigint, position, id, user_id, user_seq, type, event::text, created_at
	FROM outbox
	WHERE (txid, position) > ($1::bigint::text::xid8, $2)
	  AND txid < pg_snapshot_xmin(pg_current_snapshot())
	ORDER BY txid, position
	LIMIT $3`

// Events returns up to limit events after the cursor, in stream order.
func (db *DB) Events(ctx context.Context, after ledger.EventCursor, limit int) (_ []ledger.StoredEvent, err error) {
	defer func() { err = dbErr(err) }()
	rows, err := db.pool.Query(ctx, visibleEventsSQL, after.TxID, after.Position, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ledger.StoredEvent, error) {
		var e ledger.StoredEvent
		var body string
		err := row.Scan(&e.Cursor.TxID, &e.Cursor.Position, &e.ID, &e.UserID, &e.Seq, &e.Type, &body, &e.CreatedAt)
		e.Body = []byte(body)
		return e, err
	})
}

// RelayCursor returns how far the named relay has published.
func (db *DB) RelayCursor(ctx context.Context, name string) (ledger.EventCursor, error) {
	var c ledger.EventCursor
	err := db.pool.QueryRow(ctx, "SELECT txid::text::bigint, position FROM relay_cursor WHERE name = $1", name).
		Scan(&c.TxID, &c.Position)
	if errors.Is(err, pgx.ErrNoRows) {
		return ledger.EventCursor{}, nil
	}
	return c, err
}

// SaveRelayCursor records that every event up to c has been acknowledged by the broker. It
// never moves the cursor back: a relay that lost its lease while publishing may finish a batch
// the next leader has already recorded past.
//
// The commit does not wait for the disk: a crash may lose the last few positions recorded, and
// the relay then publishes those events again, which the stream drops as duplicates.
func (db *DB) SaveRelayCursor(ctx context.Context, name string, c ledger.EventCursor) error {
	return db.withTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO relay_cursor (name, txid, position) VALUES ($1, $2::bigint::text::xid8, $3)
		ON CONFLICT (name) DO UPDATE SET txid = excluded.txid, position = excluded.position, published_at = now()
		WHERE (relay_cursor.txid, relay_cursor.position) < (excluded.txid, excluded.position)`,
			name, c.TxID, c.Position)
		return err
	})
}

// SetOutboxWakeup says whether writers should notify the relay's channel when events commit
// (migration 0007). Writing the value it already has changes nothing.
func (db *DB) SetOutboxWakeup(ctx context.Context, wanted bool) error {
	_, err := db.pool.Exec(ctx, "UPDATE outbox_wakeup SET wanted = $1 WHERE wanted <> $1", wanted)
	return err
}

// PruneEvents deletes events created before olderThan that the relay has published, and
// records the greatest position it deleted so that the feed can refuse a cursor before it.
func (db *DB) PruneEvents(ctx context.Context, olderThan time.Time, published ledger.EventCursor) (int64, error) {
	var n int64
	err := db.pool.QueryRow(ctx, `WITH gone AS (
			DELETE FROM outbox WHERE created_at < $1 AND (txid, position) <= ($2::bigint::text::xid8, $3)
			RETURNING txid, position
		), horizon AS (
			INSERT INTO outbox_pruned (txid, position)
			SELECT txid, position FROM gone ORDER BY txid DESC, position DESC LIMIT 1
			ON CONFLICT (only_row) DO UPDATE SET txid = excluded.txid, position = excluded.position, pruned_at = now()
			WHERE (outbox_pruned.txid, outbox_pruned.position) < (excluded.txid, excluded.position)
		)
		SELECT count(*) FROM gone`,
		olderThan, published.TxID, published.Position).Scan(&n)
	return n, err
}

// EventStart is where a reader without a cursor begins: after the last pruned event, so that
// the cursor of its first page, even an empty one, is never refused as expired.
func (db *DB) EventStart(ctx context.Context) (c ledger.EventCursor, err error) {
	defer func() { err = dbErr(err) }()
	err = db.pool.QueryRow(ctx, `SELECT COALESCE(max(txid::text::bigint), 0), COALESCE(max(position), 0) FROM outbox_pruned`).
		Scan(&c.TxID, &c.Position)
	return c, err
}

// EventEnd is the cursor of the newest event a reader can see now: reading on from it gets
// only events that commit later. Every transaction older than the snapshot's xmin has ended,
// so no event can still appear before it. One probe of the outbox's primary key, backwards.
func (db *DB) EventEnd(ctx context.Context) (c ledger.EventCursor, err error) {
	defer func() { err = dbErr(err) }()
	err = db.pool.QueryRow(ctx, `SELECT txid::text::bigint, position FROM outbox
		WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
		ORDER BY txid DESC, position DESC LIMIT 1`).Scan(&c.TxID, &c.Position)
	if errors.Is(err, pgx.ErrNoRows) {
		return db.EventStart(ctx)
	}
	return c, err
}

// CheckEventCursor refuses a feed cursor that reading from would silently skip events: one
// ahead of anything this database has written (a cursor from another database, or from
// before a restore), and one before events that pruning has deleted.
func (db *DB) CheckEventCursor(ctx context.Context, c ledger.EventCursor) (err error) {
	defer func() { err = dbErr(err) }()
	var ahead, expired bool
	// Every cursor the feed hands out has a txid below the snapshot's xmin and a position the
	// sequence has given out, so one beyond either was never handed out here.
	err = db.pool.QueryRow(ctx, `SELECT
			$1::bigint::text::xid8 >= pg_snapshot_xmax(pg_current_snapshot())
			  OR $2 > COALESCE(pg_sequence_last_value(pg_get_serial_sequence('outbox', 'position')::regclass), 0),
			EXISTS (SELECT 1 FROM outbox_pruned WHERE (txid, position) > ($1::bigint::text::xid8, $2))`,
		c.TxID, c.Position).Scan(&ahead, &expired)
	switch {
	case err != nil:
		return err
	case ahead:
		return &ledger.Error{Code: ledger.CodeCursorAhead, Field: "cursor",
			Detail: "cursor is ahead of every event this service has written, so it comes from another deployment or from before a restore; reading on from it would skip events. Start again without a cursor and de-duplicate by event id, or by (subject, sequence)"}
	case expired:
		return &ledger.Error{Code: ledger.CodeCursorExpired, Field: "cursor",
			Detail: "events after this cursor were pruned (see RELAY_RETENTION), so reading on from it would skip them. Start again without a cursor, rebuilding state from the current balances (GET /v1/user/{id}) where events were missed"}
	}
	return nil
}

// Backlog counts the events the relay has not yet published and the age of the oldest.
func (db *DB) Backlog(ctx context.Context, published ledger.EventCursor) (int64, time.Duration, error) {
	var n int64
	var oldest *time.Time
	err := db.pool.QueryRow(ctx, `SELECT count(*), min(created_at) FROM outbox WHERE (txid, position) > ($1::bigint::text::xid8, $2)`,
		published.TxID, published.Position).Scan(&n, &oldest)
	if err != nil || oldest == nil {
		return n, 0, err
	}
	return n, time.Since(*oldest), nil
}
