package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
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
	RequireCitusInstalled(t)
	if CitusWorkers() == nil {
		if os.Getenv("TALLY_REQUIRE_CITUS") == "1" {
			t.Fatal("TALLY_REQUIRE_CITUS=1 but TEST_CITUS_WORKER_URLS names no Citus workers: run make test-citus")
		}
		t.Skip("no Citus cluster: TEST_CITUS_WORKER_URLS is unset (make test-citus runs these tests)")
	}
}

// RequireCitusInstalled skips the test when Citus is not installed, or fails it when the
// environment asks for the Citus tests (CI=1 or TALLY_REQUIRE_CITUS=1), for a test that starts
// a Citus cluster of its own.
func RequireCitusInstalled(t testing.TB) {
	t.Helper()
	if err := devenv.CitusInstalled(context.Background()); err != nil {
		if devenv.CitusRequired(os.Getenv) {
			t.Fatalf("the Citus tests are required here: %v", err)
		}
		t.Skip(err)
	}
}

// newCitusDatabase makes a database on the coordinator and on every worker, with the citus
// extension in each and the workers added to the coordinator's metadata, and migrates it. A
// Citus database cannot be cloned from a template: the copies would share shard metadata
// that names another database's shards.
func newCitusDatabase(ctx context.Context, name string, workers []string) error {
	if err := createNodeDatabases(ctx, name, workers, true); err != nil {
		return err
	}
	if err := addNodes(ctx, name, workers); err != nil {
		return err
	}
	_, err := postgres.Migrate(ctx, withDatabase(name))
	return err
}

// NewDatabaseBeforeCitus makes a database on every node of the Citus cluster, dropped when
// the test ends, with the citus extension on the workers only and no migration: on the
// coordinator it is a database of plain PostgreSQL. addCitus then does what an operator does
// to install Citus in it: creates the extension and adds the workers.
func NewDatabaseBeforeCitus(t testing.TB) (url string, addCitus func(context.Context) error) {
	t.Helper()
	RequireCitus(t)
	workers := CitusWorkers()
	name := fmt.Sprintf("tally_test_%d_%d", os.Getpid(), counter.Add(1))
	t.Cleanup(func() {
		if err := dropCitusDatabase(context.Background(), name, workers); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
	})
	if err := createNodeDatabases(context.Background(), name, workers, false); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	return withDatabase(name), func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, withDatabase(name))
		if err != nil {
			return err
		}
		_, err = conn.Exec(ctx, "CREATE EXTENSION citus")
		conn.Close(ctx) //nolint:errcheck // nothing is left to flush
		if err != nil {
			return err
		}
		return addNodes(ctx, name, workers)
	}
}

// createNodeDatabases creates database name on the coordinator and the workers side by side
// (creating the extension takes most of a second), with the citus extension on the workers
// and, if onCoordinator, on the coordinator.
func createNodeDatabases(ctx context.Context, name string, workers []string, onCoordinator bool) error {
	nodes := append([]string{AdminURL()}, workers...)
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, node := range nodes {
		wg.Go(func() {
			if err := createCitusDatabase(ctx, node, name, i > 0 || onCoordinator); err != nil {
				errs[i] = fmt.Errorf("node %s: %w", node, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// addNodes names the coordinator and adds the workers in database name's metadata.
func addNodes(ctx context.Context, name string, workers []string) error {
	// Adding nodes propagates roles to the workers, shared catalog rows that two databases'
	// additions at once would update together ("tuple concurrently updated"): one database
	// at a time, across test processes too, under a lock in the admin database.
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock($1)", addNodesLockKey); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, withDatabase(name))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	// Each test makes its own database: 4 shards a table instead of 32 make its migration
	// faster, and still spread every table over the workers.
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+name+" SET citus.shard_count = 4"); err != nil {
		return err
	}
	for i, node := range append([]string{AdminURL()}, workers...) {
		host, port, err := hostPort(node)
		if err != nil {
			return err
		}
		add := "SELECT citus_add_node($1, $2)"
		if i == 0 {
			add = "SELECT citus_set_coordinator_host($1, $2)"
		}
		if _, err := conn.Exec(ctx, add, host, port); err != nil {
			return fmt.Errorf("add node %s:%d: %w", host, port, err)
		}
	}
	_, err = admin.Exec(ctx, "SELECT pg_advisory_unlock($1)", addNodesLockKey)
	return err
}

// addNodesLockKey is the advisory lock newCitusDatabase holds while it adds nodes.
const addNodesLockKey = 7_242_011

// createCitusDatabase creates database name on the server at adminURL, with the citus
// extension in it if extension is set.
func createCitusDatabase(ctx context.Context, adminURL, name string, extension bool) error {
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil || !extension {
		return err
	}
	conn, err := pgx.Connect(ctx, urlWithDatabase(adminURL, name))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE EXTENSION citus")
	return err
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
