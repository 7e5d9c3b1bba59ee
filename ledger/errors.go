package ledger

import (
	"errors"
	"fmt"
)

// Code names a kind of domain error; the HTTP layer maps each code to one status.
type Code string

// The error codes the ledger returns.
const (
	CodeInvalid             Code = "invalid"
	CodeNotFound            Code = "not_found"
	CodeInsufficientFunds   Code = "insufficient_funds"
	CodeBalanceLimit        Code = "balance_limit_exceeded"
	CodeIdempotencyConflict Code = "idempotency_conflict"
	// CodeCursorAhead means an event cursor lies beyond anything written: reading from it would skip events.
	CodeCursorAhead Code = "cursor_ahead"
	// CodeCursorExpired means events after an event cursor were pruned.
	CodeCursorExpired Code = "cursor_expired"
	// CodeUnavailable means the database could not be reached; the request may be retried.
	CodeUnavailable Code = "unavailable"
)

// Error is a domain error a client can act on.
type Error struct {
	Code   Code
	Field  string // the request field at fault, if any
	Detail string // a sentence for a person
	Cause  error  // for logs; never shown to clients
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return string(e.Code) + ": " + e.Detail + ": " + e.Cause.Error()
	}
	return string(e.Code) + ": " + e.Detail
}

func (e *Error) Unwrap() error { return e.Cause }

// Unavailable wraps an error that means the database could not be reached.
func Unavailable(cause error) *Error {
	return &Error{Code: CodeUnavailable, Detail: "the database is unavailable for a moment; retry, with the same uid for a transaction", Cause: cause}
}

// Invalid reports a request field that cannot be accepted.
func Invalid(field, detail string) *Error {
	return &Error{Code: CodeInvalid, Field: field, Detail: detail}
}

// NotFound reports a missing user or transaction.
func NotFound(format string, args ...any) *Error {
	return &Error{Code: CodeNotFound, Detail: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of a domain error, or "" for any other error.
func ErrorCode(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}
