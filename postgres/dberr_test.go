package postgres_test

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// A Citus coordinator that cannot reach a worker answers 503 with Retry-After (unavailable),
// whichever of its errors says so; other internal errors stay internal. The messages are
// those Citus 13 sends (src/backend/distributed/connection and transaction).
func TestCitusWorkerErrorsAreUnavailable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code, message string
		unavailable   bool
	}{
		{"08006", "connection to the remote node postgres@127.0.0.1:5433 failed with the following error: Connection refused", true},
		{"08006", "could not establish any connections to the node 127.0.0.1:5433 after 5000 ms", true},
		{"XX000", "failure on connection marked as essential: 127.0.0.1:5433", true},
		{"XX000", "connection to the remote node postgres@127.0.0.1:5433 failed", true},
		{"57P01", "terminating connection due to administrator command", true},
		{"XX000", "could not find shard placement", false},
		{"23505", "duplicate key value violates unique constraint", false},
	} {
		err := postgres.DBErr(&pgconn.PgError{Code: tc.code, Message: tc.message})
		if tc.unavailable {
			require.Equal(t, ledger.CodeUnavailable, ledger.ErrorCode(err), tc.message)
		} else {
			require.Empty(t, ledger.ErrorCode(err), tc.message)
			var pgErr *pgconn.PgError
			require.True(t, errors.As(err, &pgErr))
		}
	}
}
