package client

import (
	"context"
	"time"
)

// EventPage is one page of the event feed, in stream order.
type EventPage struct {
	Events []Event
	// Cursor is the place after the page: store it with the page's effects, in one database
	// transaction, and resume from it.
	Cursor string
}

// FeedWait is how long each of Follow's reads lets the server hold the request while no
// event is there: a long poll, below the server's limit of 30 seconds.
const FeedWait = 25 * time.Second

// Follow reads the event feed from cursor ("" for the start) for consumers without NATS, and
// calls handle with each page that holds events, in order, as they commit. It returns when ctx
// ends or handle fails, with the cursor after the last page handle accepted: the one to
// persist. A page handle fails is not skipped; resuming from the returned cursor reads it again.
//
// Reads wait for events with long polls and are retried, unchanged, with capped backoff
// through network errors, 5xx and 429 answers for as long as ctx lasts, as with
// WithRetryUntilDefinite. A final answer ends Follow with its *Error: a cursor ahead of
// the server (ProblemCursorAhead) or past the feed's retention (ProblemCursorExpired), or a
// body that is not a tally event (ErrNotAnEvent).
//
// Events arrive at least once: a consumer that stores the cursor with the effects reads each
// once, and one that may lose them should de-duplicate by id and order by (subject, sequence).
func (c *Client) Follow(ctx context.Context, cursor string, handle func(context.Context, EventPage) error) (string, error) {
	for {
		raw, next, err := c.events(ctx, call{untilDefinite: true}, cursor, 0, FeedWait)
		if err != nil {
			return cursor, err
		}
		page := EventPage{Events: make([]Event, 0, len(raw)), Cursor: next}
		for _, body := range raw {
			e, err := DecodeEvent(body)
			if err != nil {
				return cursor, err
			}
			page.Events = append(page.Events, e)
		}
		if len(page.Events) > 0 {
			if err := handle(ctx, page); err != nil {
				return cursor, err
			}
		}
		cursor = next
	}
}
