package postgres

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLockKey is the advisory lock that lets many replicas start at once: one migrates,
// the others wait and then find nothing left to do.
const migrationLockKey = 7_242_001

// MigrationLockTimeout bounds how long a migration waits for a lock (SET lock_timeout). A DDL
// statement that waits for its table's lock also makes every later query on that table wait
// behind it, so a migration that cannot get its lock soon fails instead (SQLSTATE 55P03), with
// nothing applied, and is run again later.
const MigrationLockTimeout = 5 * time.Second

// noTransactionMarker, as a migration file's first line, runs it outside a transaction, as
// CREATE INDEX CONCURRENTLY requires. Such a file holds exactly one statement.
const noTransactionMarker = "-- tally:no-transaction"

type migration struct {
	version       int
	name          string
	sql           string
	noTransaction bool
}

func migrations(fsys fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		prefix, _, ok := strings.Cut(e.Name(), "_")
		version, err := strconv.Atoi(prefix)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must start with a number and '_'", e.Name())
		}
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, err
		}
		first, _, _ := strings.Cut(string(body), "\n")
		out = append(out, migration{version: version, name: e.Name(), sql: string(body),
			noTransaction: strings.TrimSpace(first) == noTransactionMarker})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

func embeddedMigrations() ([]migration, error) {
	fsys, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	return migrations(fsys)
}

// SchemaVersion is the newest migration this binary carries.
func SchemaVersion() int {
	ms, err := embeddedMigrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

// Migrate applies every embedded migration not yet applied, each in its own transaction (or,
// marked "-- tally:no-transaction", alone outside one) under MigrationLockTimeout, while
// holding a session advisory lock. It returns the names it applied.
func Migrate(ctx context.Context, databaseURL string) ([]string, error) {
	ms, err := embeddedMigrations()
	if err != nil {
		return nil, err
	}
	return migrate(ctx, databaseURL, ms, MigrationLockTimeout)
}

func migrate(ctx context.Context, databaseURL string, ms []migration, lockTimeout time.Duration) ([]string, error) {
	// pgxpool's parser accepts (and drops) the pool_* parameters that DATABASE_URL may carry.
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLockKey); err != nil {
		return nil, fmt.Errorf("take migration lock: %w", err)
	}
	// Closing the session releases the lock too; unlocking explicitly frees it sooner.
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrationLockKey) //nolint:errcheck
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	timeout := strconv.FormatInt(lockTimeout.Milliseconds(), 10) // lock_timeout counts milliseconds
	var applied []string
	for _, m := range ms {
		var done bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)", m.version).Scan(&done); err != nil {
			return applied, err
		}
		if done {
			continue
		}
		if m.noTransaction {
			err = applyAlone(ctx, conn, m, timeout)
		} else {
			err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				// is_local: the setting ends with the transaction.
				if _, err := tx.Exec(ctx, "SELECT set_config('lock_timeout', $1, true)", timeout); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, m.sql); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name)
				return err
			})
		}
		if err != nil {
			return applied, fmt.Errorf("migration %s: %w", m.name, err)
		}
		applied = append(applied, m.name)
	}
	// A database migrated before Citus was installed in it is distributed now: the function
	// (0008_citus.sql) does nothing on plain PostgreSQL or once the tables are distributed.
	if _, err := conn.Exec(ctx, distributeSQL); err != nil {
		return applied, fmt.Errorf("distribute the tables on Citus: %w", err)
	}
	return applied, nil
}

// distributeSQL calls tally_distribute where a migration created it.
const distributeSQL = `DO $$ BEGIN
	IF to_regproc('tally_distribute') IS NOT NULL THEN PERFORM tally_distribute(); END IF;
END $$`

// applyAlone runs a no-transaction migration: its one statement, then its record. The extended
// protocol runs exactly one statement and outside a transaction block, as CREATE INDEX
// CONCURRENTLY needs (the simple protocol would wrap several in one implicit transaction); a
// file with two statements is refused before anything runs. If the statement succeeds and the
// record fails, the next run repeats the statement, so write it to be repeatable (IF NOT EXISTS).
func applyAlone(ctx context.Context, conn *pgx.Conn, m migration, lockTimeout string) error {
	if _, err := conn.Exec(ctx, "SELECT set_config('lock_timeout', $1, false)", lockTimeout); err != nil {
		return err
	}
	defer conn.Exec(context.WithoutCancel(ctx), "RESET lock_timeout") //nolint:errcheck // the session ends soon anyway
	if _, err := conn.PgConn().ExecParams(ctx, m.sql, nil, nil, nil, nil).Close(); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name)
	return err
}
