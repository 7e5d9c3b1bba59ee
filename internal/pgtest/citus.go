package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/postgres"
)

// CitusWorkers are the admin URLs of the workers of the Citus cluster whose coordinator is
// AdminURL, from TEST_CITUS_WORKER_URLS (comma-separated; `testenv -citus` sets it), or nil
// when the tests run on plain PostgreSQL.
func CitusWorkers() []string {
	if v := os.Getenv("TEST_CITUS_WORKER_URLS"); v != "" {
		return strings.Split(v, ",")
	}
	return nil
}

// RequireCitus skips the test unless the tests run on a Citus cluster (CitusWorkers). It
// fails it instead where the environment asks for the Citus tests (CI=1 or
// TALLY_REQUIRE_CITUS=1) and Citus is not installed, and under TALLY_REQUIRE_CITUS=1 (`make
// test-citus`) when no cluster was given: there a skip would hide that they did not run.
// Under CI=1 alone `make test` skips them when Citus is installed, for `make test-citus` runs
// them.
func RequireCitus(t testing.TB) {
	t.Helper()
	if err := devenv.CitusInstalled(context.Background()); err != nil {
		if devenv.CitusRequired(os.Getenv) {
			t.Fatalf("the Citus tests are required here: %v", err)
		}
		t.Skip(err)
	}
	if CitusWorkers() == nil {
		if os.Getenv("TALLY_REQUIRE_CITUS") == "1" {
			t.Fatal("TALLY_REQUIRE_CITUS=1 but TEST_CITUS_WORKER_URLS names no Citus workers: run make test-citus")
		}
		t.Skip("no Citus cluster: TEST_CITUS_WORKER_URLS is unset (make test-citus runs these tests)")
	}
}

// newCitusDatabase makes a database on the coordinator and on every worker, with the citus
// extension in each and the workers added to the coordinator's metadata, and migrates it. A
// Citus database cannot be cloned from a template: the copies would share shard metadata
// that names another database's shards.
func newCitusDatabase(ctx context.Context, name string, workers []string) error {
	for _, w := range workers {
		if err := createCitusDatabase(ctx, w, name, nil); err != nil {
			return fmt.Errorf("worker %s: %w", w, err)
		}
	}
	err := createCitusDatabase(ctx, AdminURL(), name, func(conn *pgx.Conn) error {
		host, port, err := hostPort(AdminURL())
		if err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, "SELECT citus_set_coordinator_host($1, $2)", host, port); err != nil {
			return err
		}
		for _, w := range workers {
			host, port, err := hostPort(w)
			if err != nil {
				return err
			}
			if _, err := conn.Exec(ctx, "SELECT citus_add_node($1, $2)", host, port); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	_, err = postgres.Migrate(ctx, withDatabase(name))
	return err
}

// createCitusDatabase creates database name on the server at adminURL with the citus
// extension in it, then runs then on it.
func createCitusDatabase(ctx context.Context, adminURL, name string, then func(*pgx.Conn) error) error {
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, urlWithDatabase(adminURL, name))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE EXTENSION citus"); err != nil {
		return err
	}
	if then == nil {
		return nil
	}
	return then(conn)
}

// dropCitusDatabase drops database name on the coordinator and on every worker.
func dropCitusDatabase(ctx context.Context, name string, workers []string) error {
	for _, u := range append([]string{AdminURL()}, workers...) {
		conn, err := pgx.Connect(ctx, u)
		if err != nil {
			return err
		}
		_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		conn.Close(ctx) //nolint:errcheck // nothing is left to flush
		if err != nil {
			return err
		}
	}
	return nil
}

func hostPort(rawURL string) (string, int, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return "", 0, fmt.Errorf("%s names no port: %w", u.Redacted(), err)
	}
	return u.Hostname(), port, nil
}
