package postgres_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// The roles docs/operations.md documents, run as written on an empty database: the migration
// role migrates; the runtime role then serves every path (users, transactions, replays,
// balances, the feed, the relay's cursor and lease, readiness) but cannot change the schema.
func TestDocumentedRoles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	doc, err := os.ReadFile("../docs/operations.md")
	require.NoError(t, err)
	section := regexp.MustCompile("(?s)## Database roles\n.*?```sql\n(.*?)```").FindSubmatch(doc)
	require.NotNil(t, section, "docs/operations.md has no SQL under Database roles")

	// Roles are cluster-wide: names of this test's own, and a database of its own.
	suffix := fmt.Sprintf("%d_%d", os.Getpid(), time.Now().UnixNano()%1_000_000)
	owner, runtime, database := "tally_migrate_"+suffix, "tally_rt_"+suffix, "tally_roles_"+suffix
	sql := string(section[1])
	sql = strings.ReplaceAll(sql, "DATABASE tally ", "DATABASE "+database+" ")
	sql = regexp.MustCompile(`\btally_migrate\b`).ReplaceAllString(sql, owner)
	sql = regexp.MustCompile(`\btally\b`).ReplaceAllString(sql, runtime)

	admin, err := pgx.Connect(ctx, pgtest.AdminURL())
	require.NoError(t, err)
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, "CREATE DATABASE "+database)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, pgtest.AdminURL())
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		defer conn.Close(ctx)
		for _, stmt := range []string{"DROP DATABASE IF EXISTS " + database + " WITH (FORCE)",
			"DROP ROLE IF EXISTS " + owner, "DROP ROLE IF EXISTS " + runtime} {
			if _, err := conn.Exec(ctx, stmt); err != nil {
				t.Logf("cleanup %q: %v", stmt, err)
			}
		}
	})
	asSuperuser := connectAs(t, database, "")
	_, err = asSuperuser.Exec(ctx, sql)
	require.NoError(t, err, sql)

	_, err = postgres.Migrate(ctx, roleURL(database, owner))
	require.NoError(t, err)

	db, err := postgres.Open(ctx, roleURL(database, runtime))
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.Ready(ctx))
	source, err := db.DatabaseEventSource(ctx)
	require.NoError(t, err)
	db.SetEventSource(source)
	u, err := db.CreateUser(ctx, "vasya")
	require.NoError(t, err)
	req := ledger.Request{UID: uuid.New(), UserID: u.ID, Type: ledger.Deposit, Amount: 500}
	_, err = db.Apply(ctx, req, render)
	require.NoError(t, err)
	replay, err := db.Apply(ctx, req, render)
	require.NoError(t, err)
	require.True(t, replay.Replayed)
	_, err = db.Apply(ctx, ledger.Request{UID: uuid.New(), UserID: u.ID, Type: ledger.Withdraw, Amount: 200, Timestamp: at("2020-01-01T00:00:00")}, render)
	require.NoError(t, err)
	got, err := db.User(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, ledger.Amount(500), got.Balance, "the back-dated withdrawal found no funds then")
	// Events show once every older transaction on the server has ended.
	var events []ledger.StoredEvent
	require.Eventually(t, func() bool {
		events, err = db.Events(ctx, ledger.EventCursor{}, 10)
		return err == nil && len(events) > 0
	}, 30*time.Second, 20*time.Millisecond)
	require.NoError(t, db.SaveRelayCursor(ctx, "roles-test", events[len(events)-1].Cursor))
	_, err = db.PruneEvents(ctx, time.Now().Add(time.Hour), events[len(events)-1].Cursor)
	require.NoError(t, err)
	lease, err := db.AcquireLease(ctx, 7_242_999, postgres.LeaseConfig{Poll: 10 * time.Millisecond})
	require.NoError(t, err)
	lease.Release()

	// The runtime role cannot change the schema.
	asRuntime := connectAs(t, database, runtime)
	for _, stmt := range []string{"DROP TABLE transactions", "ALTER TABLE users ADD COLUMN x int", "CREATE TABLE x (id int)", "TRUNCATE users CASCADE"} {
		_, err := asRuntime.Exec(ctx, stmt)
		requireSQLState(t, err, "42501") // insufficient_privilege
	}
}

// roleURL is the admin URL pointing at database as user (the test server trusts local users).
func roleURL(database, user string) string {
	u, err := url.Parse(pgtest.AdminURL())
	if err != nil {
		panic(err)
	}
	u.Path = "/" + database
	if user != "" {
		u.User = url.User(user)
	}
	return u.String()
}

func connectAs(t *testing.T, database, user string) *pgx.Conn {
	t.Helper()
	return connect(t, roleURL(database, user))
}
