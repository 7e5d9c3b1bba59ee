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
)

// Error is a domain error a client can act on.
type Error struct {
	Code   Code
	Field  string // the request field at fault, if any
	Detail string // a sentence for a person
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Detail }

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
