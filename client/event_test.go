package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
)

// collect follows the feed in the background and sends each page it is handed.
func collect(t *testing.T, c *client.Client, cursor string) (<-chan client.EventPage, func() (string, error)) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	pages := make(chan client.EventPage, 100)
	type result struct {
		cursor string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		cur, err := c.Follow(ctx, cursor, func(_ context.Context, p client.EventPage) error {
			pages <- p
			return nil
		})
		done <- result{cur, err}
	}()
	stop := sync.OnceValues(func() (string, error) {
		cancel()
		r := <-done
		return r.cursor, r.err
	})
	t.Cleanup(func() { stop() }) //nolint:errcheck // the test has read what it needs
	return pages, stop
}

// nextEvents reads pages until n events have come, failing after the timeout.
func nextEvents(t *testing.T, pages <-chan client.EventPage, n int, timeout time.Duration) []client.Event {
	t.Helper()
	var events []client.Event
	deadline := time.After(timeout)
	for len(events) < n {
		select {
		case p := <-pages:
			require.NotEmpty(t, p.Cursor)
			events = append(events, p.Events...)
		case <-deadline:
			require.FailNow(t, "events did not arrive", "%d of %d in %s", len(events), n, timeout)
		}
	}
	require.Len(t, events, n)
	return events
}

// The feed's events decode into typed events with exact amounts, as tally writes them for
// each of the five types.
func TestFollowDecodesEveryEventType(t *testing.T) {
	t.Parallel()
	b := setup(t)
	user := b.newUser(t, "25.00")
	refused, err := b.direct.Withdraw(t.Context(), "", user, amount(t, "30.00"))
	require.True(t, client.IsInsufficientFunds(err), "%v", err)
	emptied, err := b.direct.Withdraw(t.Context(), "", user, amount(t, "25.00"))
	require.NoError(t, err)

	pages, _ := collect(t, b.client, "")
	events := nextEvents(t, pages, 6, 10*time.Second)
	for i, want := range []struct {
		typ          client.EventType
		balance      string
		uid          string
		txType       client.TransactionType
		amount       string
		status       client.Status
		reason       string
		balanceAfter string
	}{
		{typ: client.EventUserCreated, balance: "0.00"},
		{typ: client.EventTransactionApplied, balance: "25.00", txType: client.Deposit, amount: "25.00", status: client.Applied, balanceAfter: "25.00"},
		{typ: client.EventBalanceFunded, balance: "25.00", txType: client.Deposit, amount: "25.00", status: client.Applied, balanceAfter: "25.00"},
		{typ: client.EventTransactionRejected, balance: "25.00", uid: refused.UID, txType: client.Withdraw, amount: "30.00", status: client.Rejected, reason: "insufficient_funds"},
		{typ: client.EventTransactionApplied, balance: "0.00", uid: emptied.UID, txType: client.Withdraw, amount: "25.00", status: client.Applied, balanceAfter: "0.00"},
		{typ: client.EventBalanceDepleted, balance: "0.00", uid: emptied.UID, txType: client.Withdraw, amount: "25.00", status: client.Applied, balanceAfter: "0.00"},
	} {
		e := events[i]
		t.Run(string(want.typ), func(t *testing.T) {
			require.Equal(t, "1.0", e.SpecVersion)
			require.NotEmpty(t, e.ID)
			require.NotEmpty(t, e.Source)
			require.Equal(t, want.typ, e.Type)
			require.Equal(t, "users/1", e.Subject)
			require.Equal(t, "application/json", e.DataContentType)
			require.WithinDuration(t, time.Now(), e.Time, time.Minute)
			require.Equal(t, time.UTC, e.Time.Location())
			require.Equal(t, user, e.Data.UserID)
			require.Equal(t, int64(i+1), e.Data.Sequence)
			require.Equal(t, want.balance, e.Data.Balance.String())
			if want.uid != "" {
				require.Equal(t, want.uid, e.Data.UID)
			}
			require.Equal(t, want.txType, e.Data.Type)
			require.Equal(t, want.status, e.Data.Status)
			require.Equal(t, want.reason, e.Data.Reason)
			if want.typ == client.EventUserCreated {
				require.Equal(t, "vasya", e.Data.Name)
				require.Nil(t, e.Data.Amount)
				require.True(t, e.Data.Timestamp.IsZero())
				return
			}
			require.NotEmpty(t, e.Data.UID)
			require.Equal(t, want.amount, e.Data.Amount.String())
			require.WithinDuration(t, time.Now(), e.Data.Timestamp, time.Minute)
			if want.balanceAfter == "" {
				require.Nil(t, e.Data.BalanceAfter)
			} else {
				require.Equal(t, want.balanceAfter, e.Data.BalanceAfter.String())
			}
		})
	}
}

// DecodeEvent refuses what is not a tally event, so that a consumer can set it aside.
func TestDecodeEventRefusesOtherBodies(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, body string }{
		{"not JSON", `not json`},
		{"empty object", `{}`},
		{"other spec version", `{"specversion":"0.3","id":"a","source":"s","type":"tally.user.created","data":{"user_id":1,"sequence":1}}`},
		{"no id", `{"specversion":"1.0","source":"s","type":"tally.user.created","data":{"user_id":1,"sequence":1}}`},
		{"no source", `{"specversion":"1.0","id":"a","type":"tally.user.created","data":{"user_id":1,"sequence":1}}`},
		{"no type", `{"specversion":"1.0","id":"a","source":"s","data":{"user_id":1,"sequence":1}}`},
		{"no user", `{"specversion":"1.0","id":"a","source":"s","type":"tally.user.created","data":{"sequence":1}}`},
		{"no sequence", `{"specversion":"1.0","id":"a","source":"s","type":"tally.user.created","data":{"user_id":1}}`},
		{"amount as a float", `{"specversion":"1.0","id":"a","source":"s","type":"tally.transaction.applied","data":{"user_id":1,"sequence":2,"amount":"1.005"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.DecodeEvent([]byte(tc.body))
			require.ErrorIs(t, err, client.ErrNotAnEvent)
		})
	}
}

// Follow hands over each event as it commits, long-polling in between, and returns the
// cursor to resume from when its context ends; resuming reads only what came after.
func TestFollowDeliversEventsAsTheyCommit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	user := b.newUser(t, "")
	pages, stop := collect(t, b.client, "")
	nextEvents(t, pages, 1, 10*time.Second)

	for _, tc := range []struct {
		sum   string
		types []client.EventType
	}{
		{"1.00", []client.EventType{client.EventTransactionApplied, client.EventBalanceFunded}},
		{"2.00", []client.EventType{client.EventTransactionApplied}},
		{"3.00", []client.EventType{client.EventTransactionApplied}},
	} {
		start := time.Now()
		_, err := b.direct.Deposit(t.Context(), "", user, amount(t, tc.sum))
		require.NoError(t, err)
		events := nextEvents(t, pages, len(tc.types), 5*time.Second)
		for i, e := range events {
			require.Equal(t, tc.types[i], e.Type)
			require.Equal(t, tc.sum, e.Data.Amount.String())
		}
		require.Less(t, time.Since(start), 3*time.Second, "the long poll answers when the event commits")
	}
	cursor, err := stop()
	require.ErrorIs(t, err, context.Canceled)
	require.NotEmpty(t, cursor)

	_, err = b.direct.Withdraw(t.Context(), "", user, amount(t, "6.00"))
	require.NoError(t, err)
	resumed, _ := collect(t, b.client, cursor)
	events := nextEvents(t, resumed, 2, 10*time.Second)
	require.Equal(t, []client.EventType{client.EventTransactionApplied, client.EventBalanceDepleted}, []client.EventType{events[0].Type, events[1].Type})
	require.Equal(t, int64(6), events[0].Data.Sequence)
}

// Follow keeps reading through more failures than the client's retry policy allows a call,
// and stops at once on a final answer, returning it.
func TestFollowRetriesUntilAFinalAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.newUser(t, "")
	b.proxy.plan("GET /v1/events", failBeforeForward, failBeforeForward, failBeforeForward, unavailableBeforeForward,
		failBeforeForward, failBeforeForward, dropAfterForward)
	pages, _ := collect(t, b.client, "")
	events := nextEvents(t, pages, 1, 20*time.Second)
	require.Equal(t, client.EventUserCreated, events[0].Type)
	require.GreaterOrEqual(t, len(b.proxy.requests("GET /v1/events")), 8)

	cursor, err := b.client.Follow(t.Context(), "not-a-cursor", func(context.Context, client.EventPage) error {
		return errors.New("no page expected")
	})
	require.Equal(t, "not-a-cursor", cursor)
	var e *client.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusUnprocessableEntity, e.Status)
	require.True(t, client.IsFinal(err))
}

// A page its handler refuses is not skipped: Follow returns the cursor before it.
func TestFollowReturnsTheCursorBeforeARefusedPage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.newUser(t, "")
	refusal := errors.New("the consumer's database is down")
	cursor, err := b.client.Follow(t.Context(), "", func(context.Context, client.EventPage) error { return refusal })
	require.ErrorIs(t, err, refusal)
	require.Empty(t, cursor)
	pages, _ := collect(t, b.client, cursor)
	require.Equal(t, client.EventUserCreated, nextEvents(t, pages, 1, 10*time.Second)[0].Type)
}

// Events reads the feed's cursor as next_cursor, the name history uses, and else as next,
// and sends it back as after, which the feed accepts under either naming.
func TestEventsReadsEitherCursorName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, body, want string }{
		{"next_cursor and next", `{"events":[],"next_cursor":"c2","next":"c2"}`, "c2"},
		{"next_cursor alone", `{"events":[],"next_cursor":"c2"}`, "c2"},
		{"next alone", `{"events":[],"next":"c1"}`, "c1"},
		{"neither", `{"events":[]}`, "c0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var sent string
			feed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				sent = r.URL.Query().Get("after")
				w.Header().Set("Content-Type", "application/json")
				w.Write([]byte(tc.body)) //nolint:errcheck // the test reads what arrived
			}))
			t.Cleanup(feed.Close)
			_, next, err := client.New(feed.URL).Events(t.Context(), "c0", 0, 0)
			require.NoError(t, err)
			require.Equal(t, "c0", sent)
			require.Equal(t, tc.want, next)
		})
	}
}
