package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// The problem types tally answers with; branch on these, not on Detail.
const (
	ProblemInvalidRequest       = "urn:tally:problem:invalid-request"
	ProblemNotFound             = "urn:tally:problem:not-found"
	ProblemInsufficientFunds    = "urn:tally:problem:insufficient-funds"
	ProblemBalanceLimitExceeded = "urn:tally:problem:balance-limit-exceeded"
	ProblemIdempotencyConflict  = "urn:tally:problem:idempotency-conflict"
	ProblemUnavailable          = "urn:tally:problem:unavailable"
	ProblemInternal             = "urn:tally:problem:internal"
	// ProblemCursorAhead answers an event cursor ahead of anything the server has written,
	// as after a restore or a failover: start again from a cursor stored before that point.
	ProblemCursorAhead = "urn:tally:problem:cursor-ahead"
	// ProblemCursorExpired answers an event cursor older than the feed's retention: the
	// events after it are gone from the feed and must be recovered another way.
	ProblemCursorExpired = "urn:tally:problem:cursor-expired"
)

// ErrGaveUp marks a call that stopped retrying (its attempts ran out, or its context's
// deadline would come before the next) without a definite answer. errors.As still finds
// the last attempt's *Error in it, if an answer came. Resending the same request later is
// safe: its uid or Idempotency-Key makes it take effect once.
var ErrGaveUp = errors.New("gave up retrying")

// Error is an answer from tally (or a proxy in front of it) that is not a success: an RFC 9457
// problem. A 4xx is final and was not retried; a 5xx is what the last attempt got.
type Error struct {
	Status int    // the HTTP status
	Type   string // the problem type URI, such as ProblemInsufficientFunds; "" if the body was no problem
	Title  string
	Detail string
	Field  string // the request field at fault, if any
	// Transaction is the refused transaction of a recorded refusal (402 insufficient funds,
	// 422 balance limit exceeded); nil otherwise.
	Transaction *Transaction
	RequestID   string // the X-Request-ID tally logged the request under
}

// Error says the status, the title and the detail.
func (e *Error) Error() string {
	title := e.Title
	if title == "" {
		title = http.StatusText(e.Status)
	}
	msg := fmt.Sprintf("tally: %d %s", e.Status, title)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// newError reads a non-2xx answer: tally's problem body, or whatever a proxy sent instead.
func newError(ans answer) *Error {
	e := &Error{Status: ans.status, RequestID: ans.header.Get("X-Request-ID")}
	var p struct {
		Type        string       `json:"type"`
		Title       string       `json:"title"`
		Detail      string       `json:"detail"`
		Field       string       `json:"field"`
		Transaction *Transaction `json:"transaction"`
	}
	if err := json.Unmarshal(ans.body, &p); err == nil && p.Type != "" {
		e.Type, e.Title, e.Detail, e.Field, e.Transaction = p.Type, p.Title, p.Detail, p.Field, p.Transaction
		return e
	}
	e.Title = http.StatusText(ans.status)
	e.Detail = strings.TrimSpace(string(ans.body))
	if len(e.Detail) > 200 {
		e.Detail = e.Detail[:200] + "..."
	}
	return e
}

// problemOf reports whether err holds an *Error of the problem type or, when the answer
// had no problem body (a proxy's), of the status.
func problemOf(err error, problemType string, status int) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	if e.Type != "" {
		return e.Type == problemType
	}
	return e.Status == status
}

// IsInsufficientFunds reports whether err is tally's refusal of a withdrawal the balance
// cannot cover (402). The refusal is recorded: retrying the uid gets the same refusal.
func IsInsufficientFunds(err error) bool {
	return problemOf(err, ProblemInsufficientFunds, http.StatusPaymentRequired)
}

// IsNotFound reports whether err says the user or transaction does not exist (404).
func IsNotFound(err error) bool {
	return problemOf(err, ProblemNotFound, http.StatusNotFound)
}

// IsConflict reports whether err says the uid was already used for a different transaction
// (422 idempotency-conflict): the uid belongs to another request and must not be reused.
func IsConflict(err error) bool {
	return problemOf(err, ProblemIdempotencyConflict, http.StatusConflict)
}

// IsFinal reports whether err settles the request, so that sending it again is pointless: nil
// (a success), or an answer that every resend would repeat, such as a refusal
// (IsInsufficientFunds), invalid input, an unknown user or a reused uid. It is false when the
// outcome is unknown (the connection failed, a 5xx or 429 came last, the retries gave up, the
// context ended): resend the same request, with the same uid, until IsFinal holds.
func IsFinal(err error) bool {
	if err == nil {
		return true
	}
	var e *Error
	return errors.As(err, &e) && !errors.Is(err, ErrGaveUp) && !retryableStatus(e.Status)
}
