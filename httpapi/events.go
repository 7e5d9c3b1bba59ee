package httpapi

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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
// `next_cursor` sees every event exactly once.
func handleEvents(store Store, log *slog.Logger, health *Health) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
		if wait > 0 {
			// The server's write timeout is shorter than the longest wait.
			rc := http.NewResponseController(w)
			rc.SetWriteDeadline(time.Now().Add(wait + 10*time.Second)) //nolint:errcheck // best effort
		}
		deadline := time.Now().Add(wait)
		for {
			events, err := store.Events(r.Context(), after, limit)
			if err != nil {
				writeError(w, r, log, err)
				return
			}
			// A server shutting down answers at once, so long polls do not hold up its drain.
			if len(events) > 0 || !time.Now().Before(deadline) || health.ShuttingDown() {
				body := eventsJSON{Events: make([]json.RawMessage, 0, len(events)), NextCursor: encodeEventCursor(after)}
				for _, e := range events {
					body.Events = append(body.Events, e.Body)
				}
				if len(events) > 0 {
					body.NextCursor = encodeEventCursor(events[len(events)-1].Cursor)
				}
				body.Next = body.NextCursor
				encode(w, http.StatusOK, body)
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(eventPollEvery):
			}
		}
	})
}

// parseEventsQuery reads the feed's parameters; given says whether a cursor was passed.
func parseEventsQuery(r *http.Request) (after ledger.EventCursor, given bool, limit int, wait time.Duration, err error) {
	q := r.URL.Query()
	c, alias := q.Get("cursor"), q.Get("after")
	if c != "" && alias != "" && c != alias {
		return after, false, 0, 0, ledger.Invalid("cursor", "cursor and after name the same thing; pass only cursor")
	}
	field := "cursor"
	if c == "" {
		field = "after"
	}
	if c = cmp.Or(c, alias); c == "end" {
		after, given = endOfFeed, true
	} else if c != "" {
		if after, err = decodeEventCursor(field, c); err != nil {
			return after, false, 0, 0, err
		}
		given = true
	}
	limit = defaultEventPage
	if q.Has("limit") {
		if limit, err = parseLimit(q.Get("limit"), maxEventPage); err != nil {
			return after, false, 0, 0, err
		}
	}
	if q.Has("wait") {
		text := q.Get("wait")
		s, err := strconv.ParseFloat(text, 64)
		// Plain decimals only: ParseFloat also reads "1_0", "0x1p-2" and "Inf".
		if !plainSeconds.MatchString(text) || err != nil || s > maxEventWait.Seconds() {
			return after, false, 0, 0, ledger.Invalid("wait", fmt.Sprintf("wait must be a number of seconds from 0 to %d", int(maxEventWait.Seconds())))
		}
		wait = time.Duration(s * float64(time.Second))
	}
	return after, given, limit, wait, nil
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
