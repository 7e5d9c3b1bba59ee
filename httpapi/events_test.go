package httpapi_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// feedPage is an answer of GET /v1/events: a page or a problem.
type feedPage struct {
	status     int
	events     []json.RawMessage
	nextCursor string
	next       string
	problem    string // the problem type, for an error
	field      string // the problem's field
}

func getFeed(t *testing.T, base, query string) feedPage {
	t.Helper()
	resp, err := http.Get(base + "/v1/events?" + query)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var body struct {
		Events     []json.RawMessage
		NextCursor string `json:"next_cursor"`
		Next       string
		Type       string
		Field      string
	}
	require.NoError(t, json.Unmarshal(b, &body), string(b))
	return feedPage{status: resp.StatusCode, events: body.Events, nextCursor: body.NextCursor, next: body.Next, problem: body.Type, field: body.Field}
}

// feedCursor writes a cursor as the service does; clients treat it as opaque.
func feedCursor(c ledger.EventCursor) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%d.%d", c.TxID, c.Position))
}

// feedFixture is a server on a database holding three users' events, all visible.
func feedFixture(t *testing.T) (*postgres.DB, string, []ledger.StoredEvent) {
	t.Helper()
	db, _ := pgtest.NewDB(t)
	srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
	t.Cleanup(srv.Close)
	for range 3 {
		_, err := db.CreateUser(context.Background(), "vasya")
		require.NoError(t, err)
	}
	var events []ledger.StoredEvent
	// Events become visible once older transactions of the whole cluster have ended.
	require.Eventually(t, func() bool {
		var err error
		events, err = db.Events(context.Background(), ledger.EventCursor{}, 10)
		return err == nil && len(events) == 3
	}, 20*time.Second, 20*time.Millisecond)
	return db, srv.URL, events
}

func TestFeedCursor(t *testing.T) {
	t.Parallel()
	_, base, events := feedFixture(t)
	second := feedCursor(events[1].Cursor)
	runFeedCases(t, base, []feedCase{
		{name: "no cursor starts at the beginning", query: "", wantStatus: 200, wantEvents: 3, wantNext: feedCursor(events[2].Cursor)},
		{name: "a cursor the feed returned", query: "cursor=" + second, wantStatus: 200, wantEvents: 1, wantNext: feedCursor(events[2].Cursor)},
		{name: "after is an alias of cursor", query: "after=" + second, wantStatus: 200, wantEvents: 1, wantNext: feedCursor(events[2].Cursor)},
		{name: "cursor and after may agree", query: "cursor=" + second + "&after=" + second, wantStatus: 200, wantEvents: 1, wantNext: feedCursor(events[2].Cursor)},
		{name: "the last cursor gives an empty page that keeps it", query: "cursor=" + feedCursor(events[2].Cursor), wantStatus: 200, wantNext: feedCursor(events[2].Cursor)},
		{name: "cursor and after that differ", query: "cursor=" + second + "&after=" + feedCursor(events[0].Cursor), wantStatus: 422, wantType: "urn:tally:problem:invalid-request", wantField: "cursor"},
		{name: "a cursor that is not one", query: "cursor=abc", wantStatus: 422, wantType: "urn:tally:problem:invalid-request", wantField: "cursor"},
		{name: "an after that is not one", query: "after=abc", wantStatus: 422, wantType: "urn:tally:problem:invalid-request", wantField: "after"},
		{name: "a transaction id no transaction has had yet", query: "cursor=" + feedCursor(ledger.EventCursor{TxID: 1 << 40, Position: 1}),
			wantStatus: 409, wantType: "urn:tally:problem:cursor-ahead", wantField: "cursor"},
		{name: "a position never handed out", query: "cursor=" + feedCursor(ledger.EventCursor{TxID: events[2].Cursor.TxID, Position: events[2].Cursor.Position + 1}),
			wantStatus: 409, wantType: "urn:tally:problem:cursor-ahead", wantField: "cursor"},
		{name: "ahead, under the old parameter name", query: "after=" + feedCursor(ledger.EventCursor{TxID: 1 << 40, Position: 1}),
			wantStatus: 409, wantType: "urn:tally:problem:cursor-ahead", wantField: "after"},
		{name: "the per-user feed is Citus's", query: "user_id=1", wantStatus: 422, wantType: "urn:tally:problem:invalid-request", wantField: "user_id"},
	})
}

// feedCase is a feed request and the answer it must get.
type feedCase struct {
	name       string
	query      string
	wantStatus int
	wantEvents int
	wantNext   string // next_cursor, and next too; empty for a problem
	wantType   string // the problem type; empty for a page
	wantField  string // the parameter the problem names
}

func runFeedCases(t *testing.T, base string, cases []feedCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			page := getFeed(t, base, tc.query)
			require.Equal(t, tc.wantStatus, page.status)
			require.Equal(t, tc.wantType, page.problem)
			require.Equal(t, tc.wantField, page.field)
			require.Len(t, page.events, tc.wantEvents)
			require.Equal(t, tc.wantNext, page.nextCursor)
			require.Equal(t, page.nextCursor, page.next, "next repeats next_cursor")
		})
	}
}

// A cursor before events that pruning deleted is refused; the pruning horizon and later
// cursors are read as before.
func TestFeedCursorBeforePrunedEvents(t *testing.T) {
	t.Parallel()
	db, base, events := feedFixture(t)
	n, err := db.PruneEvents(context.Background(), time.Now().Add(time.Hour), events[1].Cursor)
	require.NoError(t, err)
	require.Equal(t, int64(2), n)
	last := feedCursor(events[2].Cursor)
	runFeedCases(t, base, []feedCase{
		{name: "a cursor before the pruned events", query: "cursor=" + feedCursor(ledger.EventCursor{}), wantStatus: 410, wantType: "urn:tally:problem:cursor-expired", wantField: "cursor"},
		{name: "a cursor among the pruned events", query: "cursor=" + feedCursor(events[0].Cursor), wantStatus: 410, wantType: "urn:tally:problem:cursor-expired", wantField: "cursor"},
		{name: "the last pruned event's cursor", query: "cursor=" + feedCursor(events[1].Cursor), wantStatus: 200, wantEvents: 1, wantNext: last},
		{name: "no cursor reads what is kept", query: "", wantStatus: 200, wantEvents: 1, wantNext: last},
		{name: "after names itself in the problem", query: "after=" + feedCursor(ledger.EventCursor{}), wantStatus: 410, wantType: "urn:tally:problem:cursor-expired", wantField: "after"},
	})
}

// With every event pruned, a reader that starts without a cursor gets an empty page whose
// cursor it can read on from, not a cursor the feed then refuses as expired.
func TestFeedStartsAfterPrunedEvents(t *testing.T) {
	t.Parallel()
	db, base, events := feedFixture(t)
	_, err := db.PruneEvents(context.Background(), time.Now().Add(time.Hour), events[2].Cursor)
	require.NoError(t, err)
	start := feedCursor(events[2].Cursor)
	runFeedCases(t, base, []feedCase{
		{name: "no cursor starts after the pruned events", query: "", wantStatus: 200, wantNext: start},
		{name: "that cursor reads on", query: "cursor=" + start, wantStatus: 200, wantNext: start},
	})
}

// A server that is shutting down answers a long poll at once, so the poll does not hold up
// its drain.
func TestFeedLongPollEndsOnShutdown(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.NewDB(t)
	health := &httpapi.Health{}
	srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), health))
	t.Cleanup(srv.Close)
	answered := make(chan int, 1)
	go func() {
		resp, err := http.Get(srv.URL + "/v1/events?wait=30")
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close() //nolint:errcheck // only the status matters
		answered <- resp.StatusCode
	}()
	time.Sleep(300 * time.Millisecond) // the poll is waiting
	health.ShutDown()
	select {
	case status := <-answered:
		require.Equal(t, http.StatusOK, status)
	case <-time.After(5 * time.Second):
		t.Fatal("the long poll did not end when the server began to shut down")
	}
}

// cursor=end starts at the newest visible event: nothing of the history comes back, and an
// event that commits later does.
func TestFeedFromTheEnd(t *testing.T) {
	t.Parallel()
	db, base, events := feedFixture(t)
	page := getFeed(t, base, "cursor=end")
	require.Equal(t, 200, page.status)
	require.Empty(t, page.events)
	require.Equal(t, feedCursor(events[2].Cursor), page.nextCursor)

	_, err := db.CreateUser(context.Background(), "petya")
	require.NoError(t, err)
	var later feedPage
	require.Eventually(t, func() bool {
		later = getFeed(t, base, "cursor="+page.nextCursor)
		return later.status == 200 && len(later.events) == 1
	}, 20*time.Second, 20*time.Millisecond)
	require.Contains(t, string(later.events[0]), `"petya"`)
	require.Equal(t, 200, getFeed(t, base, "after=end").status, "the old name takes it too")

	// An empty outbox (everything pruned) ends where pruning stopped.
	empty, _ := pgtest.NewDB(t)
	srv := httptest.NewServer(httpapi.NewServer(empty, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
	t.Cleanup(srv.Close)
	require.Equal(t, feedCursor(ledger.EventCursor{}), getFeed(t, srv.URL, "cursor=end").nextCursor)
}
