package devenv

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

func TestCitusRequired(t *testing.T) {
	t.Parallel()
	for env, want := range map[string]bool{"": false, "CI=1": true, "TALLY_REQUIRE_CITUS=1": true, "CI=0": false} {
		getenv := func(key string) string {
			if k, v, ok := strings.Cut(env, "="); ok && k == key {
				return v
			}
			return ""
		}
		require.Equal(t, want, CitusRequired(getenv), env)
	}
}

// requireCitus is pgtest.RequireCitus, which this package cannot import: pgtest uses it.
func requireCitus(t *testing.T) {
	t.Helper()
	if err := CitusInstalled(context.Background()); err != nil {
		if CitusRequired(os.Getenv) {
			t.Fatalf("the Citus tests are required here: %v", err)
		}
		t.Skip(err)
	}
}

// A cluster of a coordinator and two workers spreads a distributed table's shards over both
// workers, routes a row to one of them, and comes back with its data after a restart.
func TestStartCitus(t *testing.T) {
	requireCitus(t)
	t.Parallel()
	ctx := context.Background()
	dir := reachableTempDir(t)
	c, err := StartCitus(ctx, dir, 2, quiet)
	require.NoError(t, err)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			require.NoError(t, c.Stop(quiet))
		}
	})
	require.Len(t, c.Workers, 2)

	conn, err := pgx.Connect(ctx, c.Coordinator.URL)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "CREATE TABLE things (id bigint PRIMARY KEY, name text NOT NULL)")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "SELECT create_distributed_table('things', 'id')")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "INSERT INTO things SELECT g, 'thing ' || g FROM generate_series(1, 100) g")
	require.NoError(t, err)

	var ports []int
	rows, err := conn.Query(ctx, `SELECT DISTINCT nodeport FROM citus_shards WHERE table_name = 'things'::regclass ORDER BY 1`)
	require.NoError(t, err)
	ports, err = pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	require.ElementsMatch(t, []int{c.Workers[0].Port, c.Workers[1].Port}, ports, "shards on both workers")
	for _, w := range c.Workers {
		wconn, err := pgx.Connect(ctx, w.URL)
		require.NoError(t, err)
		var shards int
		// Citus hides shards from catalog queries unless asked not to.
		_, err = wconn.Exec(ctx, "SET citus.override_table_visibility = off")
		require.NoError(t, err)
		require.NoError(t, wconn.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relname LIKE 'things\_%' AND relkind = 'r'`).Scan(&shards))
		require.NoError(t, wconn.Close(ctx))
		require.Positive(t, shards, "worker on port %d holds shards", w.Port)
	}
	require.NoError(t, conn.Close(ctx))

	require.NoError(t, c.Stop(quiet))
	stopped = true
	c, err = StartCitus(ctx, dir, 2, quiet)
	require.NoError(t, err)
	stopped = false
	conn, err = pgx.Connect(ctx, c.Coordinator.URL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM things").Scan(&n))
	require.Equal(t, 100, n)

	// A killed worker restarts and serves its shards again.
	require.NoError(t, c.Workers[1].Kill())
	require.NoError(t, c.RestartWorker(ctx, 1, quiet))
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM things").Scan(&n))
	require.Equal(t, 100, n)
}
