package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// citusFeedFixture is a server on a Citus database with two users: the first has five events
// (created, then three deposits: applied and funded, applied, applied), the second one.
func citusFeedFixture(t *testing.T) (db *postgres.DB, base string, first, second int64) {
	t.Helper()
	pgtest.RequireCitus(t)
	t.Parallel()
	db, _ = pgtest.NewDB(t)
	srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	a, err := db.CreateUser(ctx, "vasya")
	require.NoError(t, err)
	b, err := db.CreateUser(ctx, "petya")
	require.NoError(t, err)
	for range 3 {
		deposit(t, db, a.ID)
	}
	return db, srv.URL, a.ID, b.ID
}

func deposit(t *testing.T, db *postgres.DB, user int64) {
	t.Helper()
	_, err := db.Apply(context.Background(), ledger.Request{UID: uuid.New(), UserID: user, Type: ledger.Deposit, Amount: 100}, httpapi.RenderTransaction)
	require.NoError(t, err)
}

// sequences are the data.sequence of a page's events, each checked to be the user's.
func sequences(t *testing.T, user int64, page feedPage) []int64 {
	t.Helper()
	var seqs []int64
	for _, raw := range page.events {
		var e struct {
			Subject string
			Data    struct{ Sequence int64 }
		}
		require.NoError(t, json.Unmarshal(raw, &e))
		require.Equal(t, fmt.Sprintf("users/%d", user), e.Subject)
		seqs = append(seqs, e.Data.Sequence)
	}
	return seqs
}

// On Citus the feed is one user's events in sequence order after a sequence; without a user it
// is refused with a reason, as are cursors that would skip events.
func TestCitusUserFeed(t *testing.T) {
	_, base, first, second := citusFeedFixture(t)
	user := func(id int64) string { return "user_id=" + strconv.FormatInt(id, 10) }
	runFeedCases(t, base, []feedCase{
		{name: "without user_id", query: "", wantStatus: 422, wantType: "urn:tally:problem:invalid-request", wantField: "user_id"},
		{name: "without user_id but with a cursor", query: "cursor=3", wantStatus: 422, wantType: "urn:tally:problem:invalid-request", wantField: "user_id"},
		{name: "a user_id that is not one", query: "user_id=abc", wantStatus: 422, wantType: "urn:tally:problem:invalid-request", wantField: "user_id"},
		{name: "a user that does not exist", query: "user_id=999999999", wantStatus: 404, wantType: "urn:tally:problem:not-found"},
		{name: "no cursor starts at the beginning", query: user(first), wantStatus: 200, wantEvents: 5, wantNext: "5"},
		{name: "only the user's events", query: user(second), wantStatus: 200, wantEvents: 1, wantNext: "1"},
		{name: "a page", query: user(first) + "&limit=2", wantStatus: 200, wantEvents: 2, wantNext: "2"},
		{name: "the next page", query: user(first) + "&limit=2&cursor=2", wantStatus: 200, wantEvents: 2, wantNext: "4"},
		{name: "after is an alias of cursor", query: user(first) + "&after=4", wantStatus: 200, wantEvents: 1, wantNext: "5"},
		{name: "cursor zero is the beginning", query: user(first) + "&cursor=0", wantStatus: 200, wantEvents: 5, wantNext: "5"},
		{name: "the last sequence gives an empty page that keeps it", query: user(first) + "&cursor=5", wantStatus: 200, wantNext: "5"},
		{name: "end", query: user(first) + "&cursor=end", wantStatus: 200, wantNext: "5"},
		{name: "a cursor beyond the newest event", query: user(first) + "&cursor=6", wantStatus: 409, wantType: "urn:tally:problem:cursor-ahead", wantField: "cursor"},
		{name: "ahead, under the old parameter name", query: user(second) + "&after=2", wantStatus: 409, wantType: "urn:tally:problem:cursor-ahead", wantField: "after"},
		{name: "a cursor that is not a sequence", query: user(first) + "&cursor=01", wantStatus: 422, wantType: "urn:tally:problem:invalid-request", wantField: "cursor"},
		{name: "a global feed's cursor", query: user(first) + "&cursor=" + feedCursor(ledger.EventCursor{TxID: 9, Position: 1}), wantStatus: 422, wantType: "urn:tally:problem:invalid-request", wantField: "cursor"},
	})
	t.Run("sequence order", func(t *testing.T) {
		require.Equal(t, []int64{1, 2, 3, 4, 5}, sequences(t, first, getFeed(t, base, user(first))))
	})
}

// A long poll from the end answers with the user's next event once it commits.
func TestCitusUserFeedLongPoll(t *testing.T) {
	db, base, first, _ := citusFeedFixture(t)
	go func() {
		time.Sleep(300 * time.Millisecond)
		deposit(t, db, first)
	}()
	start := time.Now()
	page := getFeed(t, base, fmt.Sprintf("user_id=%d&cursor=5&wait=10", first))
	require.Equal(t, 200, page.status)
	require.Equal(t, []int64{6}, sequences(t, first, page))
	require.Equal(t, "6", page.nextCursor)
	require.Less(t, time.Since(start), 10*time.Second, "answered when the event committed")
}

// Events pruned after publishing take the cursors before them out of the feed: those are
// refused, and a reader without a cursor starts after them.
func TestCitusUserFeedAfterPruning(t *testing.T) {
	db, base, first, _ := citusFeedFixture(t)
	ctx := context.Background()
	_, err := db.Pool().Exec(ctx, "UPDATE outbox SET published_at = now() - interval '8 days' WHERE user_id = $1 AND user_seq <= 2", first)
	require.NoError(t, err)
	n, err := db.PrunePublished(ctx, time.Now().Add(-7*24*time.Hour))
	require.NoError(t, err)
	require.Equal(t, int64(2), n)
	user := "user_id=" + strconv.FormatInt(first, 10)
	runFeedCases(t, base, []feedCase{
		{name: "a cursor before the pruned events", query: user + "&cursor=0", wantStatus: 410, wantType: "urn:tally:problem:cursor-expired", wantField: "cursor"},
		{name: "a cursor among them", query: user + "&cursor=1", wantStatus: 410, wantType: "urn:tally:problem:cursor-expired", wantField: "cursor"},
		{name: "the last pruned event's sequence", query: user + "&cursor=2", wantStatus: 200, wantEvents: 3, wantNext: "5"},
		{name: "no cursor reads what is kept", query: user, wantStatus: 200, wantEvents: 3, wantNext: "5"},
	})
}
