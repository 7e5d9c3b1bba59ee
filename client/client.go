// Package client is a Go client for tally's HTTP API that makes correct retries the easy path.
//
// A transaction carries a uid, chosen before the first attempt and sent unchanged on every
// retry; tally applies a uid once and answers every repeat with the first answer. So Transact
// (and Deposit, Withdraw) retries network errors, timeouts, 5xx and 429 with exponential
// backoff and jitter, and an answer marked Idempotent-Replayed is a success like any other.
// A 4xx other than 429 is final and comes back as an *Error: a 402 refusal is recorded by
// tally and stays refused however often the uid is sent again.
//
//	c := client.New("http://localhost:8000")
//	amount, _ := client.ParseAmount("12.34")
//	res, err := c.Deposit(ctx, client.NewUID(), userID, amount)
//	switch {
//	case client.IsInsufficientFunds(err): // final; res.Transaction is the refusal
//	case err != nil: // res.UID may be retried later, even by another process
//	}
//
// Reads are retried on the same conditions, and so is CreateUser: each call sends a fresh
// Idempotency-Key, the same on all its attempts, so a retry never creates a second user.
//
// A call retries up to RetryPolicy.MaxAttempts times (by default about 10 to 20 seconds of
// waiting, enough for a restart of tally) and then fails with an error that is ErrGaveUp. With
// WithRetryUntilDefinite it resends instead until a definite answer or the end of its context.
// IsFinal tells the two kinds of error apart without looking at statuses:
//
//	res, err := c.Withdraw(ctx, uid, userID, amount)
//	if !client.IsFinal(err) {
//		// the outcome is unknown: keep uid and send the same withdrawal again later
//	}
//
// Events: Follow reads the event feed from a cursor with long polls and hands over typed
// events (Event, with the constants EventBalanceFunded and the others) page by page, with
// the cursor to store alongside their effects; DecodeEvent reads one event, such as a
// JetStream message's body.
//
// A uid protects against duplicates only while it is kept. A caller that may crash between
// attempts should store the uid (with whatever the transfer belongs to) before calling
// Transact, and resend that uid after a restart.
package client

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Defaults of a Client made without options. Between its 10 attempts a call waits about 10 to
// 20 seconds in all, long enough for tally to restart; the attempts themselves add to that.
const (
	DefaultMaxAttempts    = 10
	DefaultBaseDelay      = 100 * time.Millisecond
	DefaultMaxDelay       = 5 * time.Second
	DefaultAttemptTimeout = 10 * time.Second
)

// RetryPolicy says how often and how patiently a call is repeated.
type RetryPolicy struct {
	// MaxAttempts counts every try, the first included; 1 turns retries off.
	MaxAttempts int
	// BaseDelay is the wait before the second try; it doubles each time up to MaxDelay. Each
	// wait is drawn at random from its upper half, so that many clients failing together do
	// not retry in step. A 429 or 5xx answer's Retry-After lengthens the wait, even past
	// MaxDelay; when the context's deadline comes first, the call gives up at once.
	BaseDelay time.Duration
	MaxDelay  time.Duration
}

// Client calls one tally service. It is safe for concurrent use.
type Client struct {
	baseURL        string
	httpClient     *http.Client
	retry          RetryPolicy
	attemptTimeout time.Duration
	untilDefinite  bool
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sends requests through h instead of http.DefaultClient.
func WithHTTPClient(h *http.Client) Option {
	return func(c *Client) { c.httpClient = h }
}

// WithRetryPolicy replaces the default retry policy; zero fields keep their defaults.
func WithRetryPolicy(p RetryPolicy) Option {
	return func(c *Client) {
		if p.MaxAttempts > 0 {
			c.retry.MaxAttempts = p.MaxAttempts
		}
		if p.BaseDelay > 0 {
			c.retry.BaseDelay = p.BaseDelay
		}
		if p.MaxDelay > 0 {
			c.retry.MaxDelay = p.MaxDelay
		}
	}
}

// WithRetryUntilDefinite makes every call resend its request, unchanged, until tally gives a
// definite answer (a success or a final error, see IsFinal) or the context ends: MaxAttempts
// no longer bounds it, while the backoff still grows to MaxDelay and honours Retry-After.
// This is what a uid is for: a payment that must not be lost nor made twice is sent until
// its outcome is known, through restarts and outages of tally. Bound it with the context.
func WithRetryUntilDefinite() Option {
	return func(c *Client) { c.untilDefinite = true }
}

// WithAttemptTimeout bounds each attempt, so that a hung connection is abandoned and retried
// while the caller's context still has time; 0 leaves attempts bounded by the context only.
func WithAttemptTimeout(d time.Duration) Option {
	return func(c *Client) { c.attemptTimeout = d }
}

// New returns a client of the tally service at baseURL, such as "http://localhost:8000".
func New(baseURL string, opts ...Option) *Client {
	c := &Client{
		baseURL:        strings.TrimRight(baseURL, "/"),
		httpClient:     http.DefaultClient,
		retry:          RetryPolicy{MaxAttempts: DefaultMaxAttempts, BaseDelay: DefaultBaseDelay, MaxDelay: DefaultMaxDelay},
		attemptTimeout: DefaultAttemptTimeout,
	}
	for _, opt := range opts {
		opt(c)
	}
	return c
}

// NewUID returns a fresh transaction uid (a random UUID). Choose it before the first attempt
// and keep it for every retry of the same transaction.
func NewUID() string { return uuid.NewString() }

// call is one logical request, sent as often as the retry rules allow.
type call struct {
	method, path string
	query        url.Values
	body         []byte // the same bytes on every attempt
	// idempotencyKey, when set, goes in the Idempotency-Key header.
	idempotencyKey string
	// longPoll is how long the server may hold the request; it extends the attempt timeout.
	longPoll time.Duration
	// untilDefinite retries past MaxAttempts, as WithRetryUntilDefinite does for every call.
	untilDefinite bool
}

// answer is an HTTP response read in full.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// do sends the call until it succeeds, fails for good, or runs out of attempts or context.
// Every call of this client is safe to repeat: reads change nothing, and writes carry an
// idempotency key chosen before the first attempt.
// It returns the last answer received, if any, with an *Error for a non-2xx one.
func (c *Client) do(ctx context.Context, cl call) (answer, error) {
	var last answer
	untilDefinite := c.untilDefinite || cl.untilDefinite
	for attempt := 1; ; attempt++ {
		ans, err := c.send(ctx, cl)
		var retryAfter time.Duration
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return last, fmt.Errorf("tally: %s %s: %w", cl.method, cl.path, err)
			}
		case ans.status >= 200 && ans.status < 300:
			return ans, nil
		default:
			last = ans
			err = newError(ans)
			if !retryableStatus(ans.status) {
				return last, err
			}
			retryAfter = parseRetryAfter(ans.header)
		}
		if !untilDefinite && attempt >= c.retry.MaxAttempts {
			return last, fmt.Errorf("tally: %s %s: %w after %d attempts: %w", cl.method, cl.path, ErrGaveUp, attempt, err)
		}
		wait := max(c.retry.delay(attempt), retryAfter)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return last, fmt.Errorf("tally: %s %s: %w after %d attempts, the context ends before the next: %w", cl.method, cl.path, ErrGaveUp, attempt, err)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return last, fmt.Errorf("tally: %s %s: %w after %d attempts, the last failed: %w", cl.method, cl.path, ctx.Err(), attempt, err)
		case <-timer.C:
		}
	}
}

// send makes one attempt and reads the whole answer within the attempt's timeout.
func (c *Client) send(ctx context.Context, cl call) (answer, error) {
	if c.attemptTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.attemptTimeout+cl.longPoll)
		defer cancel()
	}
	target := c.baseURL + cl.path
	if len(cl.query) > 0 {
		target += "?" + cl.query.Encode()
	}
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, target, body)
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	if cl.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if cl.idempotencyKey != "" {
		req.Header.Set("Idempotency-Key", cl.idempotencyKey)
	}
	resp, err := c.httpClient.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, fmt.Errorf("read the answer to %s %s: %w", cl.method, cl.path, err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// retryableStatus lists the answers that say "not done, or done and the answer lost":
// every 5xx, and 429 Too Many Requests.
func retryableStatus(status int) bool {
	return status >= 500 || status == http.StatusTooManyRequests
}

// parseRetryAfter reads a Retry-After header of 429 and 503 answers: seconds or an HTTP date.
func parseRetryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(time.Until(at), 0)
	}
	return 0
}

// delay is the wait after the given failed attempt: exponential, in its upper half at random.
func (p RetryPolicy) delay(attempt int) time.Duration {
	d := p.BaseDelay
	for i := 1; i < attempt && d < p.MaxDelay; i++ {
		d *= 2
	}
	d = min(d, p.MaxDelay)
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}
