package postgres_test

import (
	"context"
	"errors"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/postgres"
)

// A migration marked "-- tally:no-transaction" runs outside a transaction, so CREATE INDEX
// CONCURRENTLY works, and is recorded once.
func TestMigrateOutsideTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	files := fstest.MapFS{
		"9001_table.sql": {Data: []byte("CREATE TABLE m_test (id bigint, note text);\n")},
		"9002_index.sql": {Data: []byte("-- tally:no-transaction\n-- Built without blocking writes to m_test.\nCREATE INDEX CONCURRENTLY IF NOT EXISTS m_test_note ON m_test (note);\n")},
	}
	applied, err := postgres.MigrateFiles(ctx, url, files, time.Second)
	require.NoError(t, err)
	require.Equal(t, []string{"9001_table.sql", "9002_index.sql"}, applied)

	conn := connect(t, url)
	var valid bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT indisvalid FROM pg_index WHERE indexrelid = 'm_test_note'::regclass`).Scan(&valid))
	require.True(t, valid)
	var lockTimeout string
	require.NoError(t, conn.QueryRow(ctx, "SHOW lock_timeout").Scan(&lockTimeout))
	require.Equal(t, "0", lockTimeout, "another session's setting is untouched")

	applied, err = postgres.MigrateFiles(ctx, url, files, time.Second)
	require.NoError(t, err)
	require.Empty(t, applied, "applied migrations are skipped")

	// The same statement unmarked is refused by PostgreSQL inside the transaction.
	_, err = postgres.MigrateFiles(ctx, url, fstest.MapFS{
		"9003_index.sql": {Data: []byte("CREATE INDEX CONCURRENTLY m_test_id ON m_test (id);\n")},
	}, time.Second)
	requireSQLState(t, err, "25001") // active_sql_transaction
	requireNotRecorded(t, conn, 9003)
}

// A no-transaction migration holds one statement: two are refused before either runs.
func TestMigrateOutsideTransactionOneStatement(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	_, err := postgres.MigrateFiles(ctx, url, fstest.MapFS{
		"9001_two.sql": {Data: []byte("-- tally:no-transaction\nCREATE TABLE m_one (id bigint);\nCREATE TABLE m_two (id bigint);\n")},
	}, time.Second)
	requireSQLState(t, err, "42601") // syntax_error: cannot insert multiple commands into a prepared statement
	conn := connect(t, url)
	var exists bool
	require.NoError(t, conn.QueryRow(ctx, "SELECT to_regclass('m_one') IS NOT NULL").Scan(&exists))
	require.False(t, exists)
	requireNotRecorded(t, conn, 9001)
}

// A migration that cannot get its table's lock gives up after the lock timeout with nothing
// applied, in a transaction or outside one, instead of queueing every later query behind it.
func TestMigrateLockTimeout(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, sql string
	}{
		{name: "in a transaction", sql: "ALTER TABLE users ADD COLUMN m_note text;\n"},
		{name: "outside a transaction", sql: "-- tally:no-transaction\nALTER TABLE users ADD COLUMN m_note text;\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			url := pgtest.NewDatabase(t)
			holder := connect(t, url)
			tx, err := holder.Begin(ctx)
			require.NoError(t, err)
			defer tx.Rollback(context.Background()) //nolint:errcheck // the test ends
			_, err = tx.Exec(ctx, "LOCK TABLE users IN ACCESS SHARE MODE")
			require.NoError(t, err)

			began := time.Now()
			_, err = postgres.MigrateFiles(ctx, url, fstest.MapFS{"9001_column.sql": {Data: []byte(tc.sql)}}, 300*time.Millisecond)
			requireSQLState(t, err, "55P03") // lock_not_available
			waited := time.Since(began)
			require.GreaterOrEqual(t, waited, 300*time.Millisecond)
			require.Less(t, waited, 5*time.Second)
			require.NoError(t, tx.Rollback(ctx))

			conn := connect(t, url)
			var exists bool
			require.NoError(t, conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'm_note')`).Scan(&exists))
			require.False(t, exists)
			requireNotRecorded(t, conn, 9001)

			// With the lock free, the same migration applies.
			applied, err := postgres.MigrateFiles(ctx, url, fstest.MapFS{"9001_column.sql": {Data: []byte(tc.sql)}}, 300*time.Millisecond)
			require.NoError(t, err)
			require.Equal(t, []string{"9001_column.sql"}, applied)
		})
	}
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) }) //nolint:errcheck // the test ends
	return conn
}

func requireSQLState(t *testing.T, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "want SQLSTATE %s, got %v", code, err)
	require.Equal(t, code, pgErr.Code, pgErr.Message)
}

func requireNotRecorded(t *testing.T, conn *pgx.Conn, version int) {
	t.Helper()
	var recorded bool
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)", version).Scan(&recorded))
	require.False(t, recorded, "migration %d recorded", version)
}
