package httpapi

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"time"

	"github.com/tally-ledger/tally/ledger"
)

// Limits of the event feed.
const (
	defaultEventPage = 100
	maxEventPage     = 1000
	maxEventWait     = 30 * time.Second
	eventPollEvery   = 100 * time.Millisecond
)

type eventsJSON struct {
	Events     []json.RawMessage `json:"events"`
	NextCursor string            `json:"next_cursor"`
	// Next repeats NextCursor under the feed's first name, kept for this major version.
	Next string `json:"next"`
}

// handleEvents serves the event feed: events in stream order after a cursor, long-polling up
// to ?wait= seconds when there are none yet. A consumer that resumes from its last
// `next_cursor` sees every event exactly once. On Citus there is no stream order across
// nodes, and the feed is one user's events (handleUserEvents).
func handleEvents(store Store, log *slog.Logger, health *Health) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		perUser, err := store.Distributed(r.Context())
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		if perUser {
			serveUserEvents(w, r, store, log, health)
			return
		}
		if r.URL.Query().Has("user_id") {
			writeError(w, r, log, ledger.Invalid("user_id", "this deployment serves one feed of every user's events, in the order they commit; it has no per-user feed (that is for deployments on Citus). Omit user_id and select a user's events by their subject"))
			return
		}
		after, given, limit, wait, err := parseEventsQuery(r)
		switch {
		case err != nil:
		case given && after == endOfFeed:
			after, err = store.EventEnd(r.Context())
		case given:
			// Also the first cursor: a reader handed it by an empty feed has read nothing since.
			err = store.CheckEventCursor(r.Context(), after)
			var e *ledger.Error
			if errors.As(err, &e) && !r.URL.Query().Has("cursor") {
				e.Field = "after" // the name the client used
			}
		default:
			after, err = store.EventStart(r.Context())
		}
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		pollEvents(w, r, log, health, wait, func(ctx context.Context) ([]ledger.StoredEvent, string, error) {
			events, err := store.Events(ctx, after, limit)
			if len(events) > 0 {
				after = events[len(events)-1].Cursor
			}
			return events, encodeEventCursor(after), err
		})
	})
}

// serveUserEvents is the feed on Citus: one user's events in sequence order after a cursor,
// which is the last sequence read. Each page is one query routed to the shard that holds the
// user; the whole stream, in commit order, is JetStream's.
func serveUserEvents(w http.ResponseWriter, r *http.Request, store Store, log *slog.Logger, health *Health) {
	q := r.URL.Query()
	if !q.Has("user_id") {
		writeError(w, r, log, ledger.Invalid("user_id", "user_id is required: this deployment runs on Citus, where events have no order across the cluster's nodes, so the feed is per user, in sequence order. Read one user's events with user_id, or all events from the NATS stream"))
		return
	}
	userID, err := parseID("user_id", q.Get("user_id"))
	if err != nil {
		writeError(w, r, log, err)
		return
	}
	after, field, err := parseUserEventCursor(q)
	if err != nil {
		writeError(w, r, log, err)
		return
	}
	limit, wait, err := parseLimitAndWait(q)
	if err != nil {
		writeError(w, r, log, err)
		return
	}
	// The first page settles the cursor, refused or not; later polls read on from it.
	events, next, err := store.UserEvents(r.Context(), userID, after, limit)
	var e *ledger.Error
	if errors.As(err, &e) && e.Field == "cursor" {
		e.Field = field
	}
	if err != nil {
		writeError(w, r, log, err)
		return
	}
	first := true
	pollEvents(w, r, log, health, wait, func(ctx context.Context) ([]ledger.StoredEvent, string, error) {
		if !first {
			events, next, err = store.UserEvents(ctx, userID, next, limit)
		}
		first = false
		return events, strconv.FormatInt(next, 10), err
	})
}

// pollEvents answers a feed request with the first page fetch returns that holds events, or
// with its last page once wait has passed: a long poll.
func pollEvents(w http.ResponseWriter, r *http.Request, log *slog.Logger, health *Health, wait time.Duration,
	fetch func(context.Context) ([]ledger.StoredEvent, string, error)) {
	if wait > 0 {
		// The server's write timeout is shorter than the longest wait.
		rc := http.NewResponseController(w)
		rc.SetWriteDeadline(time.Now().Add(wait + 10*time.Second)) //nolint:errcheck // best effort
	}
	deadline := time.Now().Add(wait)
	for {
		events, next, err := fetch(r.Context())
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		// A server shutting down answers at once, so long polls do not hold up its drain.
		if len(events) > 0 || !time.Now().Before(deadline) || health.ShuttingDown() {
			body := eventsJSON{Events: make([]json.RawMessage, 0, len(events)), NextCursor: next, Next: next}
			for _, e := range events {
				body.Events = append(body.Events, e.Body)
			}
			encode(w, http.StatusOK, body)
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(eventPollEvery):
		}
	}
}

// parseEventsQuery reads the feed's parameters; given says whether a cursor was passed.
func parseEventsQuery(r *http.Request) (after ledger.EventCursor, given bool, limit int, wait time.Duration, err error) {
	q := r.URL.Query()
	c, field, err := cursorParam(q)
	if err != nil {
		return after, false, 0, 0, err
	}
	if c == "end" {
		after, given = endOfFeed, true
	} else if c != "" {
		if after, err = decodeEventCursor(field, c); err != nil {
			return after, false, 0, 0, err
		}
		given = true
	}
	limit, wait, err = parseLimitAndWait(q)
	return after, given, limit, wait, err
}

// cursorParam reads the cursor under either of its names, and says which the client used.
func cursorParam(q url.Values) (cursor, field string, err error) {
	c, alias := q.Get("cursor"), q.Get("after")
	if c != "" && alias != "" && c != alias {
		return "", "", ledger.Invalid("cursor", "cursor and after name the same thing; pass only cursor")
	}
	field = "cursor"
	if c == "" {
		field = "after"
	}
	return cmp.Or(c, alias), field, nil
}

// parseUserEventCursor reads the per-user feed's cursor: the last sequence read, end, or
// nothing (ledger.UserFeedStart).
func parseUserEventCursor(q url.Values) (after int64, field string, err error) {
	c, field, err := cursorParam(q)
	switch {
	case err != nil:
		return 0, field, err
	case c == "":
		return ledger.UserFeedStart, field, nil
	case c == "end":
		return ledger.UserFeedEnd, field, nil
	case c == "0":
		return 0, field, nil
	}
	n, err := strconv.ParseInt(c, 10, 64)
	if !plainDigits(c) || err != nil {
		return 0, field, ledger.Invalid(field, field+" is not a cursor of this user's feed; pass next_cursor from the previous page, end to start at the newest event, or nothing to start at the beginning")
	}
	return n, field, nil
}

// parseLimitAndWait reads the feed's page size and long-poll wait.
func parseLimitAndWait(q url.Values) (limit int, wait time.Duration, err error) {
	limit = defaultEventPage
	if q.Has("limit") {
		if limit, err = parseLimit(q.Get("limit"), maxEventPage); err != nil {
			return 0, 0, err
		}
	}
	if q.Has("wait") {
		text := q.Get("wait")
		s, err := strconv.ParseFloat(text, 64)
		// Plain decimals only: ParseFloat also reads "1_0", "0x1p-2" and "Inf".
		if !plainSeconds.MatchString(text) || err != nil || s > maxEventWait.Seconds() {
			return 0, 0, ledger.Invalid("wait", fmt.Sprintf("wait must be a number of seconds from 0 to %d", int(maxEventWait.Seconds())))
		}
		wait = time.Duration(s * float64(time.Second))
	}
	return limit, wait, nil
}

// endOfFeed stands for cursor=end, the newest event now: a reader that wants only what
// commits from now on starts there. No cursor the feed hands out is negative.
var endOfFeed = ledger.EventCursor{TxID: -1, Position: -1}

// plainSeconds is how wait is written: decimal seconds, such as 5 or 0.25.
var plainSeconds = regexp.MustCompile(`^(0|[1-9][0-9]*)(\.[0-9]{1,6})?$`)

// An event cursor is "<txid>.<position>".
func encodeEventCursor(c ledger.EventCursor) string { return encodePair(c.TxID, c.Position) }

func decodeEventCursor(field, s string) (ledger.EventCursor, error) {
	txid, position, ok := decodePair(s)
	if !ok || txid < 0 || position < 0 {
		return ledger.EventCursor{}, ledger.Invalid(field, field+" is not a cursor this service returned; pass next_cursor from the previous page, end to start at the newest event, or nothing to start at the beginning")
	}
	return ledger.EventCursor{TxID: txid, Position: position}, nil
}
