package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-ledger/tally/client"
)

// schema is the engine's own state. inbox holds the id of every event whose effect is
// committed: it is what makes a redelivery harmless. funding holds, per user, whether the
// user has funds and the sequence of the event that said so. applied_seen counts the
// effects of each transaction.applied by uid and deliveries counts raw deliveries by event
// id; both are there so that a test can see duplicates arrive and leave no second effect.
const schema = `
CREATE TABLE IF NOT EXISTS inbox (
    event_id    uuid        PRIMARY KEY,
    type        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS funding (
    user_id  bigint  PRIMARY KEY,
    funded   boolean NOT NULL,
    sequence bigint  NOT NULL
);
CREATE TABLE IF NOT EXISTS applied_seen (
    uid     uuid   PRIMARY KEY,
    effects bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id uuid   PRIMARY KEY,
    count    bigint NOT NULL
);`

// schemaLockKey serializes schema creation between engines starting together: concurrent
// CREATE TABLE IF NOT EXISTS of one table can fail on the catalog's unique index.
const schemaLockKey = 7_242_101

// outcome says what handling one delivery did.
type outcome int

const (
	outcomeApplied   outcome = iota // the effect is committed
	outcomeDuplicate                // the event id was in the inbox: nothing changed
	outcomeStale                    // a newer funded/depleted of the user came first: ignored
	outcomeIgnored                  // a type the engine does not act on
	outcomeForeign                  // another deployment's event, from a shared stream
)

// errPoison marks a message that no retry can handle: it is not a tally event.
var errPoison = errors.New("poison message")

// engine keeps the set of users with funds, applying each event once.
type engine struct {
	pool *pgxpool.Pool
	log  *slog.Logger
	// source is the EVENT_SOURCE of the tally whose users these are. A stream can hold
	// other deployments' events for the same user ids, and those must change nothing here.
	source string
}

// createSchema creates the engine's tables if they do not exist.
func (e *engine) createSchema(ctx context.Context) error {
	return withTx(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", schemaLockKey); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, schema)
		return err
	})
}

// handle applies one delivered message. The inbox row and the effect commit in one
// transaction, so either both exist or neither does; the caller acks only after handle
// returned without error. A crash before the commit leaves nothing and the message is
// delivered again; a crash after the commit but before the ack also brings the message
// again, and the inbox row turns it into a no-op. At-least-once delivery plus this
// idempotent effect is an effect exactly once.
func (e *engine) handle(ctx context.Context, body []byte) (outcome, error) {
	ev, err := client.DecodeEvent(body)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errPoison, err)
	}
	eventID, err := uuid.Parse(ev.ID)
	if err != nil {
		return 0, fmt.Errorf("%w: id: %w", errPoison, err)
	}
	if ev.Source != e.source {
		e.log.Debug("another deployment's event ignored", "event_id", ev.ID, "source", ev.Source)
		return outcomeForeign, nil
	}
	var uid uuid.UUID
	switch ev.Type {
	case client.EventBalanceFunded, client.EventBalanceDepleted:
	case client.EventTransactionApplied:
		if uid, err = uuid.Parse(ev.Data.UID); err != nil {
			return 0, fmt.Errorf("%w: uid: %w", errPoison, err)
		}
	default:
		// Servers before NATS 2.10 cannot filter a consumer on several subjects, so the
		// other types may arrive; they need no inbox row, as they have no effect.
		return outcomeIgnored, nil
	}

	var result outcome
	err = withTx(ctx, e.pool, func(tx pgx.Tx) error {
		result = outcomeApplied
		if _, err := tx.Exec(ctx, `INSERT INTO deliveries (event_id, count) VALUES ($1, 1)
			ON CONFLICT (event_id) DO UPDATE SET count = deliveries.count + 1`, eventID); err != nil {
			return err
		}
		// The primary key settles a race between two engines handling one event: the
		// second insert waits for the first transaction and then inserts nothing.
		tag, err := tx.Exec(ctx, "INSERT INTO inbox (event_id, type) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
			eventID, ev.Type)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			result = outcomeDuplicate
			return nil
		}
		switch ev.Type {
		case client.EventTransactionApplied:
			// Counting, not a plain insert, so that a second effect would show.
			_, err = tx.Exec(ctx, `INSERT INTO applied_seen (uid, effects) VALUES ($1, 1)
				ON CONFLICT (uid) DO UPDATE SET effects = applied_seen.effects + 1`, uid)
			return err
		default:
			// Events of one user can arrive out of order (see docs/events.md); the user's
			// sequence decides which crossing is the latest.
			tag, err := tx.Exec(ctx, `INSERT INTO funding (user_id, funded, sequence) VALUES ($1, $2, $3)
				ON CONFLICT (user_id) DO UPDATE SET funded = excluded.funded, sequence = excluded.sequence
				WHERE funding.sequence < excluded.sequence`,
				ev.Data.UserID, ev.Type == client.EventBalanceFunded, ev.Data.Sequence)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				result = outcomeStale
			}
			return nil
		}
	})
	if err != nil {
		return 0, err
	}
	switch {
	case result == outcomeApplied && ev.Type == client.EventBalanceFunded:
		e.log.Info(fmt.Sprintf("start campaigns for user %d", ev.Data.UserID), "user_id", ev.Data.UserID, "sequence", ev.Data.Sequence)
	case result == outcomeApplied && ev.Type == client.EventBalanceDepleted:
		e.log.Info(fmt.Sprintf("stop campaigns for user %d", ev.Data.UserID), "user_id", ev.Data.UserID, "sequence", ev.Data.Sequence)
	case result == outcomeStale:
		e.log.Info("stale event ignored", "event_id", ev.ID, "type", ev.Type, "user_id", ev.Data.UserID, "sequence", ev.Data.Sequence)
	case result == outcomeDuplicate:
		e.log.Debug("duplicate delivery", "event_id", ev.ID, "type", ev.Type)
	}
	return result, nil
}

// fundedUsers lists the users who have funds now, in id order.
func (e *engine) fundedUsers(ctx context.Context) ([]int64, error) {
	rows, err := e.pool.Query(ctx, "SELECT user_id FROM funding WHERE funded ORDER BY user_id")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// withTx runs fn in a transaction and commits it. The rollback runs even when ctx has
// ended, so that the connection goes back to the pool clean.
func withTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
