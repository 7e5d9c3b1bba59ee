package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
)

// refuseConnectionsFor makes an HTTP client whose connections are refused, as by a stopped
// server, for the given time from now; it counts the attempts.
func refuseConnectionsFor(t *testing.T, down time.Duration) (*http.Client, *atomic.Int32) {
	t.Helper()
	upAt := time.Now().Add(down)
	var dials atomic.Int32
	var dialer net.Dialer
	transport := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		if time.Now().Before(upAt) {
			return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("injected: connection refused")}
		}
		return dialer.DialContext(ctx, network, addr)
	}}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport}, &dials
}

// A deposit sent until definite outlasts an outage longer than the retry policy's window,
// then moves the money once even though the first answer after the outage is lost; the same
// deposit on a client without the mode gives up during the outage.
func TestRetryUntilDefiniteOutlastsAnOutage(t *testing.T) {
	t.Parallel()
	const outage = 1500 * time.Millisecond // the fast policy's 5 attempts wait at most 150ms
	for _, tc := range []struct {
		name          string
		untilDefinite bool
	}{
		{"without the mode the call gives up", false},
		{"until definite the call succeeds once", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hc, dials := refuseConnectionsFor(t, outage)
			opts := []client.Option{client.WithHTTPClient(hc)}
			if tc.untilDefinite {
				opts = append(opts, client.WithRetryUntilDefinite())
			}
			b := setup(t, opts...)
			user := b.newUser(t, "")
			b.proxy.plan(postTransaction, dropAfterForward)

			start := time.Now()
			res, err := b.client.Deposit(t.Context(), "", user, amount(t, "7.00"))
			if !tc.untilDefinite {
				require.ErrorIs(t, err, client.ErrGaveUp)
				require.False(t, client.IsFinal(err))
				require.Less(t, time.Since(start), outage)
				require.Equal(t, int32(5), dials.Load())
				require.Empty(t, b.proxy.requests(postTransaction))
				return
			}
			require.NoError(t, err)
			require.Greater(t, dials.Load(), int32(5), "more attempts than the policy's MaxAttempts")
			require.True(t, res.Replayed, "the answer after the outage was lost; the resend got the recorded one")
			require.Len(t, b.proxy.requests(postTransaction), 2)
			b.requireMovedOnce(t, user, "7.00")
		})
	}
}

// Until definite, a call still ends with the context, and at once on a final answer.
func TestRetryUntilDefiniteEnds(t *testing.T) {
	t.Parallel()
	b := setup(t, client.WithRetryUntilDefinite())
	user := b.newUser(t, "1.00")
	faults := make([]fault, 1000)
	for i := range faults {
		faults[i] = failBeforeForward
	}
	b.proxy.plan("GET /v1/user/1/balance", faults...)

	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(500*time.Millisecond, cancel)
	_, err := b.client.Balance(ctx, user)
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, client.IsFinal(err))
	require.Greater(t, len(b.proxy.requests("GET /v1/user/1/balance")), 5)

	_, err = b.client.Withdraw(t.Context(), "", user, amount(t, "2.00"))
	require.True(t, client.IsInsufficientFunds(err), "%v", err)
	require.True(t, client.IsFinal(err))
	require.Len(t, b.proxy.requests(postTransaction), 1)
}

// IsFinal tells a definite outcome from one that calls for sending the same request again.
func TestIsFinal(t *testing.T) {
	t.Parallel()
	gaveUp := func(status int) error {
		return fmt.Errorf("tally: POST /v1/transaction: %w after 5 attempts: %w", client.ErrGaveUp, &client.Error{Status: status})
	}
	for _, tc := range []struct {
		name  string
		err   error
		final bool
	}{
		{"success", nil, true},
		{"insufficient funds", &client.Error{Status: http.StatusPaymentRequired, Type: client.ProblemInsufficientFunds}, true},
		{"invalid request", &client.Error{Status: http.StatusUnprocessableEntity, Type: client.ProblemInvalidRequest}, true},
		{"uid reused", &client.Error{Status: http.StatusUnprocessableEntity, Type: client.ProblemIdempotencyConflict}, true},
		{"not found", fmt.Errorf("wrapped: %w", &client.Error{Status: http.StatusNotFound}), true},
		{"cursor expired", &client.Error{Status: http.StatusGone, Type: client.ProblemCursorExpired}, true},
		{"internal error", &client.Error{Status: http.StatusInternalServerError}, false},
		{"unavailable", &client.Error{Status: http.StatusServiceUnavailable, Type: client.ProblemUnavailable}, false},
		{"too many requests", &client.Error{Status: http.StatusTooManyRequests}, false},
		{"gave up after 5xx", gaveUp(http.StatusBadGateway), false},
		{"connection refused", &net.OpError{Op: "dial", Err: errors.New("refused")}, false},
		{"context ended", fmt.Errorf("tally: %w", context.DeadlineExceeded), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.final, client.IsFinal(tc.err), "%v", tc.err)
		})
	}
}
