// Package pgtest gives each test a fresh, migrated PostgreSQL database, cloned in
// milliseconds from a template that is migrated once per test process.
package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tally-ledger/tally/postgres"
)

// AdminURL is the server the tests use: TEST_DATABASE_URL, or the local PostgreSQL.
func AdminURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

var (
	templateOnce sync.Once
	templateName string
	templateErr  error
	counter      atomic.Int64
)

// withDatabase returns AdminURL pointing at another database.
func withDatabase(name string) string { return urlWithDatabase(AdminURL(), name) }

// urlWithDatabase returns rawURL pointing at database name.
func urlWithDatabase(rawURL, name string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		panic(err)
	}
	u.Path = "/" + name
	return u.String()
}

func adminExec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// NewDatabase creates a migrated database for this test, dropped when the test ends, and
// returns its URL. On a Citus cluster (CitusWorkers) it is distributed.
func NewDatabase(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	if workers := CitusWorkers(); workers != nil {
		name := fmt.Sprintf("tally_test_%d_%d", os.Getpid(), counter.Add(1))
		t.Cleanup(func() {
			if err := dropCitusDatabase(context.Background(), name, workers); err != nil {
				t.Logf("drop test database %s: %v", name, err)
			}
		})
		if err := newCitusDatabase(ctx, name, workers); err != nil {
			t.Fatalf("create Citus test database: %v", err)
		}
		return withDatabase(name)
	}
	templateOnce.Do(func() {
		templateName = fmt.Sprintf("tally_tmpl_%d", os.Getpid())
		dropStale(ctx)
		if templateErr = adminExec(ctx, "DROP DATABASE IF EXISTS "+templateName); templateErr != nil {
			return
		}
		if templateErr = adminExec(ctx, "CREATE DATABASE "+templateName); templateErr != nil {
			return
		}
		_, templateErr = postgres.Migrate(ctx, withDatabase(templateName))
	})
	if templateErr != nil {
		t.Fatalf("prepare template database: %v", templateErr)
	}
	name := fmt.Sprintf("tally_test_%d_%d", os.Getpid(), counter.Add(1))
	if err := adminExec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+templateName); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		if err := adminExec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
	})
	return withDatabase(name)
}

// NewDB opens a pool on a fresh database; it is closed when the test ends.
func NewDB(t testing.TB) (*postgres.DB, string) {
	t.Helper()
	url := NewDatabase(t)
	db, err := postgres.Open(context.Background(), url)
	if err != nil {
		t.Fatalf("open database: %v", err)
	}
	t.Cleanup(db.Close)
	return db, url
}

// dropStale removes databases left by test processes that died before their cleanup ran.
func dropStale(ctx context.Context) {
	conn, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT datname, split_part(datname, '_', 3) FROM pg_database
		WHERE datname ~ '^tally_(tmpl|test)_[0-9]+'`)
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) ([2]string, error) {
		var n [2]string
		return n, row.Scan(&n[0], &n[1])
	})
	if err != nil {
		return
	}
	for _, n := range names {
		if _, err := os.Stat("/proc/" + n[1]); err == nil {
			continue // its process still runs
		}
		conn.Exec(ctx, "DROP DATABASE IF EXISTS "+n[0]+" WITH (FORCE)") //nolint:errcheck // best effort
	}
}
