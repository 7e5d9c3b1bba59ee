package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
)

// fault is what the proxy does to one request.
type fault int

const (
	forward fault = iota
	// dropAfterForward lets tally commit, then closes the connection without an answer.
	dropAfterForward
	// gatewayTimeoutAfterForward lets tally commit, then answers 504 instead of tally's answer.
	gatewayTimeoutAfterForward
	// delayAfterForward lets tally commit, then holds the answer until the client gives up.
	delayAfterForward
	// failBeforeForward answers 500 without forwarding.
	failBeforeForward
	// unavailableBeforeForward answers 503 with Retry-After: 1 without forwarding.
	unavailableBeforeForward
)

// seenRequest is one request that reached the proxy.
type seenRequest struct {
	route string // method and path
	uid   string // the body's uid, if any
	key   string // the Idempotency-Key header, if any
	at    time.Time
}

// proxy stands between the client and tally and injects faults into chosen requests.
type proxy struct {
	*httptest.Server
	upstream string
	http     *http.Client

	mu    sync.Mutex
	plans map[string][]fault // route → faults for its next requests, in order
	seen  []seenRequest
}

func newProxy(t *testing.T, upstream string) *proxy {
	p := &proxy{upstream: upstream, http: &http.Client{Transport: &http.Transport{}}, plans: map[string][]fault{}}
	p.Server = httptest.NewServer(p)
	t.Cleanup(func() {
		p.Close()
		p.http.CloseIdleConnections()
	})
	return p
}

// plan makes the next requests of route meet faults, one each; later ones are forwarded.
func (p *proxy) plan(route string, faults ...fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.plans[route] = append(p.plans[route], faults...)
}

// requests returns the requests of route that reached the proxy.
func (p *proxy) requests(route string) []seenRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []seenRequest
	for _, r := range p.seen {
		if r.route == route {
			out = append(out, r)
		}
	}
	return out
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	var fields struct {
		UID string `json:"uid"`
	}
	json.Unmarshal(body, &fields) //nolint:errcheck // only bodies with a uid matter
	route := r.Method + " " + r.URL.Path

	p.mu.Lock()
	p.seen = append(p.seen, seenRequest{route: route, uid: fields.UID, key: r.Header.Get("Idempotency-Key"), at: time.Now()})
	f := forward
	if plan := p.plans[route]; len(plan) > 0 {
		f, p.plans[route] = plan[0], plan[1:]
	}
	p.mu.Unlock()

	switch f {
	case failBeforeForward:
		http.Error(w, "injected failure", http.StatusInternalServerError)
		return
	case unavailableBeforeForward:
		w.Header().Set("Retry-After", "1")
		http.Error(w, "injected unavailability", http.StatusServiceUnavailable)
		return
	}

	// tally must finish a write even if the client has gone: that is the failure to test. A
	// read, such as a long poll of the feed, ends with its client.
	ctx := r.Context()
	if r.Method != http.MethodGet {
		ctx = context.WithoutCancel(ctx)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, p.upstream+r.URL.RequestURI(), strings.NewReader(string(body)))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := p.http.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}

	switch f {
	case dropAfterForward:
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close() //nolint:errcheck // closing it unanswered is the fault
		}
		return
	case gatewayTimeoutAfterForward:
		http.Error(w, "injected gateway timeout", http.StatusGatewayTimeout)
		return
	case delayAfterForward:
		select {
		case <-r.Context().Done():
			return
		case <-time.After(time.Minute):
		}
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	w.Write(answer) //nolint:errcheck // the client may be gone
}

// bundle is what a test needs: a client through the fault proxy and one straight to tally.
type bundle struct {
	client *client.Client
	direct *client.Client
	proxy  *proxy
}

// fastRetries keeps tests quick: the backoff is short, but the rules are the same.
var fastRetries = client.WithRetryPolicy(client.RetryPolicy{MaxAttempts: 5, BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond})

// setup starts tally on a fresh database behind a fault proxy.
func setup(t *testing.T, opts ...client.Option) bundle {
	t.Helper()
	db, _ := pgtest.NewDB(t)
	tally := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
	t.Cleanup(tally.Close)
	p := newProxy(t, tally.URL)
	opts = append([]client.Option{fastRetries, client.WithAttemptTimeout(5 * time.Second)}, opts...)
	return bundle{client: client.New(p.URL, opts...), direct: client.New(tally.URL), proxy: p}
}

// newUser creates a user straight at tally, with a first deposit when funds is not "".
func (b bundle) newUser(t *testing.T, funds string) int64 {
	t.Helper()
	u, err := b.direct.CreateUser(t.Context(), "vasya")
	require.NoError(t, err)
	if funds != "" {
		_, err := b.direct.Deposit(t.Context(), "", u.ID, amount(t, funds))
		require.NoError(t, err)
	}
	return u.ID
}

// requireMovedOnce checks, through both the balance and the history, that the user's money
// moved exactly once, to balance.
func (b bundle) requireMovedOnce(t *testing.T, user int64, balance string) {
	t.Helper()
	got, err := b.direct.Balance(t.Context(), user)
	require.NoError(t, err)
	require.Equal(t, balance, got.Balance.String())
	page, err := b.direct.History(t.Context(), user, client.HistoryQuery{})
	require.NoError(t, err)
	require.Len(t, page.Items, 1, "history %+v", page.Items)
}

func amount(t testing.TB, s string) client.Amount {
	t.Helper()
	a, err := client.ParseAmount(s)
	require.NoError(t, err)
	return a
}

const postTransaction = "POST /v1/transaction"

// lostAnswers are the ways an answer is lost after tally committed the request.
var lostAnswers = []struct {
	name   string
	faults []fault
	opts   []client.Option
}{
	{"connection dropped twice", []fault{dropAfterForward, dropAfterForward}, nil},
	{"gateway timeout", []fault{gatewayTimeoutAfterForward}, nil},
	{"answer delayed past the attempt timeout", []fault{delayAfterForward}, []client.Option{client.WithAttemptTimeout(300 * time.Millisecond)}},
}

// A deposit whose answer is lost after tally committed it is retried with the uid chosen
// before the first attempt; the retry gets the recorded answer and the money moves once.
func TestTransactRetriesLostAnswersWithOneUID(t *testing.T) {
	t.Parallel()
	for _, tc := range lostAnswers {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tc.opts...)
			user := b.newUser(t, "")
			b.proxy.plan(postTransaction, tc.faults...)

			res, err := b.client.Deposit(t.Context(), "", user, amount(t, "12.34"))
			require.NoError(t, err)
			require.True(t, res.Replayed, "the last attempt must be answered from the recorded transaction")
			require.NotEmpty(t, res.UID)
			require.Equal(t, res.UID, res.Transaction.UID)
			require.Equal(t, client.Applied, res.Transaction.Status)
			require.Equal(t, "12.34", res.Transaction.Amount.String())

			seen := b.proxy.requests(postTransaction)
			require.Len(t, seen, len(tc.faults)+1)
			for _, r := range seen {
				require.Equal(t, res.UID, r.uid, "every attempt carries the uid chosen before the first")
			}
			b.requireMovedOnce(t, user, "12.34")
		})
	}
}

// A 5xx from something in front of tally, which never forwarded the request, is retried;
// the request then reaches tally once and is not a replay.
func TestTransactRetriesFailuresBeforeTally(t *testing.T) {
	t.Parallel()
	b := setup(t)
	user := b.newUser(t, "")
	b.proxy.plan(postTransaction, failBeforeForward, failBeforeForward)

	uid := client.NewUID()
	when := time.Date(2023, 1, 4, 0, 0, 0, 0, time.UTC)
	res, err := b.client.Transact(t.Context(), client.TransactionRequest{UID: uid, UserID: user, Type: client.Deposit, Amount: amount(t, "100"), Timestamp: &when})
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, uid, res.UID)
	require.True(t, when.Equal(res.Transaction.Timestamp))
	require.Len(t, b.proxy.requests(postTransaction), 3)
	b.requireMovedOnce(t, user, "100.00")
}

// A 503 with Retry-After is retried no sooner than the server asked, even though the
// backoff alone would have retried at once.
func TestRetryAfterIsHonoured(t *testing.T) {
	t.Parallel()
	b := setup(t)
	user := b.newUser(t, "")
	b.proxy.plan(postTransaction, unavailableBeforeForward)

	_, err := b.client.Deposit(t.Context(), "", user, amount(t, "1.00"))
	require.NoError(t, err)
	seen := b.proxy.requests(postTransaction)
	require.Len(t, seen, 2)
	require.GreaterOrEqual(t, seen[1].at.Sub(seen[0].at), time.Second)
}

// A Retry-After that the caller's deadline cannot wait for ends the call at once.
func TestRetryAfterPastTheDeadlineGivesUp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	user := b.newUser(t, "")
	b.proxy.plan(postTransaction, unavailableBeforeForward)

	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := b.client.Deposit(ctx, "", user, amount(t, "1.00"))
	require.Error(t, err)
	require.Less(t, time.Since(start), 400*time.Millisecond)
	var e *client.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusServiceUnavailable, e.Status)
	require.NotEmpty(t, res.UID, "the uid is returned so that the caller can retry later")
	require.Len(t, b.proxy.requests(postTransaction), 1)
}

// A withdrawal the balance cannot cover is refused once, never retried, and stays refused
// for its uid even after the money arrives.
func TestInsufficientFundsIsFinal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	user := b.newUser(t, "10.00")

	res, err := b.client.Withdraw(t.Context(), "", user, amount(t, "20.00"))
	require.True(t, client.IsInsufficientFunds(err), "%v", err)
	var e *client.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusPaymentRequired, e.Status)
	require.Equal(t, client.ProblemInsufficientFunds, e.Type)
	require.NotEmpty(t, e.Detail)
	require.NotNil(t, e.Transaction)
	require.Equal(t, client.Rejected, res.Transaction.Status)
	require.Equal(t, "insufficient_funds", res.Transaction.Reason)
	require.Equal(t, res.UID, res.Transaction.UID)
	require.Nil(t, res.Transaction.BalanceAfter)
	require.False(t, res.Replayed)
	require.Len(t, b.proxy.requests(postTransaction), 1, "a 402 is not retried")

	_, err = b.direct.Deposit(t.Context(), "", user, amount(t, "100.00"))
	require.NoError(t, err)
	again, err := b.client.Withdraw(t.Context(), res.UID, user, amount(t, "20.00"))
	require.True(t, client.IsInsufficientFunds(err), "%v", err)
	require.True(t, again.Replayed)
	require.Equal(t, client.Rejected, again.Transaction.Status)
	require.Len(t, b.proxy.requests(postTransaction), 2)

	got, err := b.direct.Balance(t.Context(), user)
	require.NoError(t, err)
	require.Equal(t, "110.00", got.Balance.String())
	stored, err := b.direct.Transaction(t.Context(), res.UID)
	require.NoError(t, err)
	require.Equal(t, client.Rejected, stored.Status)
}

// 422 and 404 answers are final: sent once, returned as a typed error.
func TestClientErrorsAreNotRetried(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		send   func(t *testing.T, b bundle, user int64) error
		status int
		check  func(error) bool
		field  string
	}{
		{"zero amount", func(t *testing.T, b bundle, user int64) error {
			_, err := b.client.Deposit(t.Context(), "", user, 0)
			return err
		}, http.StatusUnprocessableEntity, func(error) bool { return true }, "amount"},
		{"timestamp in the future", func(t *testing.T, b bundle, user int64) error {
			future := time.Now().Add(time.Hour)
			_, err := b.client.Transact(t.Context(), client.TransactionRequest{UserID: user, Type: client.Deposit, Amount: amount(t, "1"), Timestamp: &future})
			return err
		}, http.StatusUnprocessableEntity, func(error) bool { return true }, "timestamp"},
		{"uid reused for another amount", func(t *testing.T, b bundle, user int64) error {
			uid := client.NewUID()
			_, err := b.direct.Deposit(t.Context(), uid, user, amount(t, "1.00"))
			require.NoError(t, err)
			_, err = b.client.Deposit(t.Context(), uid, user, amount(t, "2.00"))
			return err
		}, http.StatusUnprocessableEntity, client.IsConflict, "uid"},
		{"unknown user", func(t *testing.T, b bundle, user int64) error {
			_, err := b.client.Deposit(t.Context(), "", user+1, amount(t, "1.00"))
			return err
		}, http.StatusNotFound, client.IsNotFound, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			user := b.newUser(t, "")
			err := tc.send(t, b, user)
			var e *client.Error
			require.ErrorAs(t, err, &e)
			require.Equal(t, tc.status, e.Status, "%v", err)
			require.True(t, tc.check(err), "%v", err)
			require.Equal(t, tc.field, e.Field)
			require.False(t, client.IsInsufficientFunds(err))
			require.Len(t, b.proxy.requests(postTransaction), 1)
		})
	}
}

// Cancelling the caller's context stops the retries at once.
func TestCancelStopsRetries(t *testing.T) {
	t.Parallel()
	b := setup(t, client.WithRetryPolicy(client.RetryPolicy{MaxAttempts: 1000, BaseDelay: 10 * time.Millisecond, MaxDelay: 20 * time.Millisecond}))
	user := b.newUser(t, "")
	faults := make([]fault, 1000)
	for i := range faults {
		faults[i] = failBeforeForward
	}
	b.proxy.plan(postTransaction, faults...)

	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(200*time.Millisecond, cancel)
	res, err := b.client.Deposit(ctx, "", user, amount(t, "1.00"))
	require.ErrorIs(t, err, context.Canceled)
	require.NotEmpty(t, res.UID)
	sent := len(b.proxy.requests(postTransaction))
	require.GreaterOrEqual(t, sent, 2, "it retried until cancelled")
	// Unstopped, the 10-20ms backoff would make about ten more attempts in this pause; one
	// attempt already on the wire at the cancellation may still reach the proxy.
	time.Sleep(200 * time.Millisecond)
	require.LessOrEqual(t, len(b.proxy.requests(postTransaction)), sent+1, "no attempt after the cancellation")
}

// When every attempt fails the call gives up after MaxAttempts with the last answer, an
// error that is ErrGaveUp and holds the last *Error.
func TestRetriesAreBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, client.WithRetryPolicy(client.RetryPolicy{MaxAttempts: 3}))
	user := b.newUser(t, "")
	b.proxy.plan(postTransaction, failBeforeForward, failBeforeForward, failBeforeForward, failBeforeForward)

	_, err := b.client.Deposit(t.Context(), "", user, amount(t, "1.00"))
	var e *client.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusInternalServerError, e.Status)
	require.ErrorIs(t, err, client.ErrGaveUp)
	require.False(t, client.IsFinal(err))
	require.Len(t, b.proxy.requests(postTransaction), 3)
}

// Reads are retried on the same conditions as transactions, and a 404 is final.
func TestReadsAreRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	user := b.newUser(t, "5.00")
	route := "GET /v1/user/1/balance"
	require.Equal(t, int64(1), user)
	b.proxy.plan(route, failBeforeForward, dropAfterForward, gatewayTimeoutAfterForward)

	got, err := b.client.Balance(t.Context(), user)
	require.NoError(t, err)
	require.Equal(t, "5.00", got.Balance.String())
	require.Len(t, b.proxy.requests(route), 4)

	_, err = b.client.User(t.Context(), 99)
	require.True(t, client.IsNotFound(err), "%v", err)
	require.Len(t, b.proxy.requests("GET /v1/user/99"), 1)
}

// A user creation whose answer is lost is retried with the Idempotency-Key chosen before the
// first attempt; tally answers the retry with the user it created, and creates no other.
// (Failures before tally are retried like a transaction's: TestTransactRetriesFailuresBeforeTally.)
func TestCreateUserRetriesLostAnswersWithOneKey(t *testing.T) {
	t.Parallel()
	for _, tc := range lostAnswers {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tc.opts...)
			b.proxy.plan("POST /v1/user", tc.faults...)
			u, err := b.client.CreateUser(t.Context(), "petya")
			require.NoError(t, err)
			require.Equal(t, "petya", u.Name)

			seen := b.proxy.requests("POST /v1/user")
			require.Len(t, seen, len(tc.faults)+1)
			for _, r := range seen {
				require.NotEmpty(t, r.key)
				require.Equal(t, seen[0].key, r.key, "every attempt carries the key chosen before the first")
			}
			again, err := b.client.CreateUser(t.Context(), "petya")
			require.NoError(t, err)
			require.Equal(t, u.ID+1, again.ID, "the retries created no other user; a new call creates one")
			require.NotEqual(t, seen[0].key, b.proxy.requests("POST /v1/user")[len(seen)].key, "a new call, a new key")
		})
	}
}

// CreateUser is retried when the connection could not be made: the server saw nothing.
func TestCreateUserIsRetriedWhenNotConnected(t *testing.T) {
	t.Parallel()
	var dials atomic.Int32
	var dialer net.Dialer
	transport := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dials.Add(1) <= 2 {
			return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("injected: connection refused")}
		}
		return dialer.DialContext(ctx, network, addr)
	}}
	t.Cleanup(transport.CloseIdleConnections)
	b := setup(t, client.WithHTTPClient(&http.Client{Transport: transport}))

	u, err := b.client.CreateUser(t.Context(), "petya")
	require.NoError(t, err)
	require.Equal(t, "petya", u.Name)
	require.Equal(t, int32(3), dials.Load())
	require.Len(t, b.proxy.requests("POST /v1/user"), 1)
}

// The history iterator reads every page, and the balance at a past instant is the one the
// back-dated deposits made.
func TestHistoryAndBalanceAt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	user := b.newUser(t, "")
	day := func(d int) time.Time { return time.Date(2023, 1, d, 0, 0, 0, 0, time.UTC) }
	for d := 1; d <= 5; d++ {
		when := day(d)
		_, err := b.client.Transact(t.Context(), client.TransactionRequest{UserID: user, Type: client.Deposit, Amount: client.Amount(d * 100), Timestamp: &when})
		require.NoError(t, err)
	}

	var amounts []string
	for tx, err := range b.client.HistoryAll(t.Context(), user, client.HistoryQuery{Limit: 2}) {
		require.NoError(t, err)
		amounts = append(amounts, tx.Amount.String())
	}
	require.Equal(t, []string{"1.00", "2.00", "3.00", "4.00", "5.00"}, amounts)
	require.Len(t, b.proxy.requests("GET /v1/user/1/transactions"), 3)

	page, err := b.client.History(t.Context(), user, client.HistoryQuery{From: day(2), To: day(3)})
	require.NoError(t, err)
	require.Len(t, page.Items, 2)
	require.Empty(t, page.NextCursor)
	require.Equal(t, "6.00", page.Items[1].BalanceAfter.String())

	at, err := b.client.BalanceAt(t.Context(), user, day(3).Add(12*time.Hour))
	require.NoError(t, err)
	require.Equal(t, "6.00", at.Balance.String())
	require.True(t, day(3).Add(12*time.Hour).Equal(at.AsOf))
	u, err := b.client.UserAt(t.Context(), user, day(1).Add(-time.Second))
	require.NoError(t, err)
	require.Equal(t, "0.00", u.Balance.String())
	now, err := b.client.User(t.Context(), user)
	require.NoError(t, err)
	require.Equal(t, "15.00", now.Balance.String())
	require.True(t, now.AsOf.IsZero())
}

// Events reads the CloudEvents that tally's changes produced, and long-polls past them for
// longer than the attempt timeout.
func TestEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, client.WithAttemptTimeout(500*time.Millisecond))
	user := b.newUser(t, "1.00")
	require.Equal(t, int64(1), user)

	// Events become visible once every older database transaction has ended, so a consumer
	// long-polls until it has what it expects.
	var types []string
	next := ""
	for len(types) < 3 {
		events, after, err := b.client.Events(t.Context(), next, 100, 5*time.Second)
		require.NoError(t, err)
		require.NotEmpty(t, events, "no event within the wait")
		require.NotEmpty(t, after)
		next = after
		for _, raw := range events {
			var e struct {
				ID, Type, SpecVersion, Subject string
			}
			require.NoError(t, json.Unmarshal(raw, &e))
			require.NotEmpty(t, e.ID)
			require.Equal(t, "1.0", e.SpecVersion)
			require.Equal(t, "users/1", e.Subject)
			types = append(types, e.Type)
		}
	}
	require.Equal(t, []string{"tally.user.created", "tally.transaction.applied", "tally.balance.funded"}, types)

	start := time.Now()
	more, after, err := b.client.Events(t.Context(), next, 100, time.Second)
	require.NoError(t, err)
	require.Empty(t, more)
	require.Equal(t, next, after)
	require.GreaterOrEqual(t, time.Since(start), time.Second)

	time.AfterFunc(200*time.Millisecond, func() {
		b.direct.Deposit(context.Background(), "", user, 100) //nolint:errcheck // the poll below checks it arrived
	})
	start = time.Now()
	more, after, err = b.client.Events(t.Context(), next, 100, 10*time.Second)
	require.NoError(t, err)
	require.Len(t, more, 1)
	require.NotEqual(t, next, after)
	require.Less(t, time.Since(start), 5*time.Second, "the long poll answers when the event arrives")
}
