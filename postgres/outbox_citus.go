package postgres

import (
	"context"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-ledger/tally/ledger"
)

// On Citus each worker has its own transaction ids and shards move between workers with
// their rows, so the outbox has no one order and pg_snapshot_xmin says nothing about other
// nodes. There, events carry published_at (migration 0009), NULL until JetStream acknowledged
// them, and a partial index holds exactly the unpublished ones. A user's events live on one
// shard, and event N+1 commits only after N did (the user's lock), so whoever reads the user's
// unpublished events in user_seq order never sees N+1 without N, unless N is published.

// pendingEventsSQL reads unpublished events of some slices of the users (user id modulo $1
// in $2) from the partial index, each user's in sequence order, from user $3 on, so that
// successive batches go round the users instead of serving the lowest ids first. Each shard
// answers its part in parallel.
const pendingEventsSQL = `SELECT id, user_id, user_seq, type, event::text, created_at FROM outbox
	WHERE published_at IS NULL AND user_id % $1 = ANY($2::bigint[]) AND user_id >= $3
	ORDER BY user_id, user_seq
	LIMIT $4`

// PendingEvents returns up to limit unpublished events of the users whose id modulo slices is
// one of those in held, from user fromUser on, ordered by user and sequence: a user's events
// form an unbroken run from the user's first unpublished one.
func (db *DB) PendingEvents(ctx context.Context, slices int, held []int, fromUser int64, limit int) (_ []ledger.StoredEvent, err error) {
	defer func() { err = dbErr(err) }()
	rows, err := db.pool.Query(ctx, pendingEventsSQL, slices, held, fromUser, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ledger.StoredEvent, error) {
		var e ledger.StoredEvent
		var body string
		err := row.Scan(&e.ID, &e.UserID, &e.Seq, &e.Type, &body, &e.CreatedAt)
		e.Body = []byte(body)
		return e, err
	})
}

// markPublishedSQL marks, for each user $1[i], the unpublished events up to sequence $2[i].
// The relay publishes a user's unpublished events as one run from the first, so up to the
// last acknowledged one there are no others.
const markPublishedSQL = `UPDATE outbox SET published_at = now()
	WHERE user_id = ANY($1::bigint[]) AND published_at IS NULL
	  AND user_seq <= ($2::bigint[])[array_position($1::bigint[], user_id)]`

// MarkPublished records that JetStream acknowledged events, which PendingEvents returned.
// Marking an event twice changes nothing. A crash before the mark publishes the events again,
// and the stream drops them by their Nats-Msg-Id.
func (db *DB) MarkPublished(ctx context.Context, events []ledger.StoredEvent) error {
	last := map[int64]int64{}
	for _, e := range events {
		last[e.UserID] = max(last[e.UserID], e.Seq)
	}
	users, seqs := make([]int64, 0, len(last)), make([]int64, 0, len(last))
	for u, s := range last {
		users, seqs = append(users, u), append(seqs, s)
	}
	return dbErr(db.withTx(ctx, func(tx pgx.Tx) error {
		// As SaveRelayCursor: a mark lost in a crash only sends the events again. Citus passes
		// the setting on to the workers' part of the transaction.
		if _, err := tx.Exec(ctx, "SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL synchronous_commit = off"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, markPublishedSQL, users, seqs)
		return err
	}))
}

// PrunePublished deletes events published before olderThan. A user's events are published,
// and so deleted, oldest first: what remains of a user's events is an unbroken run up to the
// newest, which the per-user feed relies on to refuse a cursor before it.
func (db *DB) PrunePublished(ctx context.Context, olderThan time.Time) (int64, error) {
	tag, err := db.pool.Exec(ctx, "DELETE FROM outbox WHERE published_at < $1", olderThan)
	return tag.RowsAffected(), dbErr(err)
}

// Unpublished counts the events not yet acknowledged by JetStream and the age of the oldest,
// on Citus.
func (db *DB) Unpublished(ctx context.Context) (int64, time.Duration, error) {
	var n int64
	var oldest *time.Time
	err := db.pool.QueryRow(ctx, "SELECT count(*), min(created_at) FROM outbox WHERE published_at IS NULL").Scan(&n, &oldest)
	if err != nil || oldest == nil {
		return n, 0, dbErr(err)
	}
	return n, time.Since(*oldest), nil
}

// userEventsSQL is a page of the per-user feed and the range the outbox still holds for the
// user, in one query that names one user in every table, so Citus routes it to the one shard
// that holds the user. A user without events after $2 gives one row with NULL event columns.
const userEventsSQL = `SELECT u.event_seq,
		COALESCE((SELECT min(o.user_seq) FROM outbox o WHERE o.user_id = $1), u.event_seq + 1) - 1,
		e.id, e.user_seq, e.type, e.event::text, e.created_at
	FROM users u
	LEFT JOIN LATERAL (
		SELECT id, user_seq, type, event, created_at FROM outbox
		WHERE user_id = $1 AND user_seq > $2
		ORDER BY user_seq LIMIT $3) e ON true
	WHERE u.id = $1
	ORDER BY e.user_seq`

// UserEvents returns up to limit of a user's events after sequence after (or from
// ledger.UserFeedStart or ledger.UserFeedEnd), in sequence order, and the cursor to read on
// from. It refuses a cursor beyond the user's newest event (cursor ahead) and one before
// events pruned already (cursor expired): reading on from either would skip events.
func (db *DB) UserEvents(ctx context.Context, userID, after int64, limit int) (_ []ledger.StoredEvent, next int64, err error) {
	defer func() { err = dbErr(err) }()
	from := after
	switch after {
	case ledger.UserFeedStart:
		from = -1
	case ledger.UserFeedEnd:
		from = math.MaxInt64
	}
	rows, err := db.pool.Query(ctx, userEventsSQL, userID, from, limit)
	if err != nil {
		return nil, 0, err
	}
	var newest, start int64
	found := false
	var events []ledger.StoredEvent
	for rows.Next() {
		found = true
		var id, body *string
		var e ledger.StoredEvent
		var seq *int64
		var typ *string
		var created *time.Time
		if err := rows.Scan(&newest, &start, &id, &seq, &typ, &body, &created); err != nil {
			rows.Close()
			return nil, 0, err
		}
		if id == nil {
			continue
		}
		if err := e.ID.UnmarshalText([]byte(*id)); err != nil {
			rows.Close()
			return nil, 0, err
		}
		e.UserID, e.Seq, e.Type, e.Body, e.CreatedAt = userID, *seq, ledger.EventType(*typ), []byte(*body), *created
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	switch {
	case !found:
		return nil, 0, ledger.NotFound("user %d does not exist", userID)
	case after == ledger.UserFeedEnd:
		return nil, newest, nil
	case after == ledger.UserFeedStart:
		after = start
	case after > newest:
		return nil, 0, &ledger.Error{Code: ledger.CodeCursorAhead, Field: "cursor",
			Detail: "cursor is ahead of this user's newest event, so it comes from another deployment or from before a restore; reading on from it would skip events. Start again without a cursor and de-duplicate by event id, or by (subject, sequence)"}
	case after < start:
		return nil, 0, &ledger.Error{Code: ledger.CodeCursorExpired, Field: "cursor",
			Detail: "this user's events after this cursor were pruned (see RELAY_RETENTION), so reading on from it would skip them. Start again without a cursor, rebuilding state from the current balance (GET /v1/user/{id}) where events were missed"}
	}
	if len(events) > 0 {
		return events, events[len(events)-1].Seq, nil
	}
	return nil, after, nil
}
