package ledger_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tally-ledger/tally/ledger"
)

// requireInvalid fails unless err is a *ledger.Error with CodeInvalid for field whose
// Detail names the field, so a client can tell which input to fix.
func requireInvalid(t *testing.T, err error, field string) {
	t.Helper()
	var e *ledger.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v (%T), want *ledger.Error", err, err)
	}
	if e.Code != ledger.CodeInvalid {
		t.Fatalf("code = %q, want %q (detail %q)", e.Code, ledger.CodeInvalid, e.Detail)
	}
	if e.Field != field {
		t.Fatalf("field = %q, want %q", e.Field, field)
	}
	if !strings.Contains(e.Detail, field) {
		t.Fatalf("detail %q does not mention the field %q", e.Detail, field)
	}
}

// mustTime parses an RFC 3339 instant for test fixtures.
func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("bad fixture time %q: %v", s, err)
	}
	return at.UTC()
}
