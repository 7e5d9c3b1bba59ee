package main

import (
	"context"
	"time"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// replicaReads is the API's store when READ_DATABASE_URL is set: history, balances at a past
// instant and the event feed's pages are read from the replica, which may lag behind the
// primary (docs/operations.md#read-replicas); everything else, writes, replays, current
// balances and the feed's cursor checks, stays on the primary. While the replica cannot be
// reached its reads go to the primary, so a replica outage costs capacity, not answers.
type replicaReads struct {
	*postgres.DB
	replica *postgres.DB
}

func (s replicaReads) UserAt(ctx context.Context, id int64, at time.Time) (ledger.User, error) {
	u, err := s.replica.UserAt(ctx, id, at)
	if ledger.ErrorCode(err) == ledger.CodeUnavailable {
		return s.DB.UserAt(ctx, id, at)
	}
	return u, err
}

func (s replicaReads) History(ctx context.Context, q ledger.HistoryQuery) ([]ledger.Transaction, *ledger.Cursor, error) {
	page, next, err := s.replica.History(ctx, q)
	if ledger.ErrorCode(err) == ledger.CodeUnavailable {
		return s.DB.History(ctx, q)
	}
	return page, next, err
}

// Events reads a page from the replica. The cursor was checked on the primary, so a replica
// behind it returns no events yet (a long poll waits) rather than refusing the cursor.
func (s replicaReads) Events(ctx context.Context, after ledger.EventCursor, limit int) ([]ledger.StoredEvent, error) {
	events, err := s.replica.Events(ctx, after, limit)
	if ledger.ErrorCode(err) == ledger.CodeUnavailable {
		return s.DB.Events(ctx, after, limit)
	}
	return events, err
}
