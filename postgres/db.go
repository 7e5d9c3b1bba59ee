// Package postgres is everything in tally that speaks SQL: the pool, transactions,
// migrations and the queries behind the ledger.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-ledger/tally/ledger"
)

// DB is tally's PostgreSQL store.
type DB struct {
	pool        *pgxpool.Pool
	eventSource string
	batcher     *batcher // nil when write batching is off
	guesses     *guessCache
	metrics     batchMetrics
	layout      atomic.Int32 // layoutUnknown until the first query that tells
}

// The database's layout, read once: plain PostgreSQL, or tables distributed by Citus.
const (
	layoutUnknown int32 = iota
	layoutPlain
	layoutCitus
)

// distributedSQL tells a distributed schema: tally_distribute() creates transaction_uids
// exactly when it distributes the tables.
const distributedSQL = "SELECT to_regclass('transaction_uids') IS NOT NULL"

// Distributed reports whether the schema is distributed by Citus, in which case writes and
// reads take the statements that Citus routes to one shard (write.go), and write batching is
// off. It asks the database the first time only: instances are stopped while a database is
// distributed (design.md, "Citus installed later").
func (db *DB) Distributed(ctx context.Context) (bool, error) {
	switch db.layout.Load() {
	case layoutPlain:
		return false, nil
	case layoutCitus:
		return true, nil
	}
	var distributed bool
	if err := db.pool.QueryRow(ctx, distributedSQL).Scan(&distributed); err != nil {
		return false, dbErr(fmt.Errorf("read the database's layout: %w", err))
	}
	if distributed {
		db.layout.Store(layoutCitus)
	} else {
		db.layout.Store(layoutPlain)
	}
	return distributed, nil
}

// DefaultEventSource is the source of events until SetEventSource changes it; tally serve
// sets DatabaseEventSource's answer unless EVENT_SOURCE is given.
const DefaultEventSource = "tally"

// SetEventSource names this deployment in the source attribute of the events it writes.
func (db *DB) SetEventSource(source string) { db.eventSource = source }

// EventSource is the source attribute of the events this DB writes.
func (db *DB) EventSource() string { return db.eventSource }

// DatabaseEventSourceSQL is a query for the default event source: the database named by its
// cluster's system identifier and its own name, so that two deployments sharing a broker never
// share a source unless they are told to. Data loaded as SQL (sql_data/demo.sql) uses it too.
const DatabaseEventSourceSQL = "SELECT format('" + DefaultEventSource + "/%s/%s', system_identifier, current_database()) FROM pg_control_system()"

// DatabaseEventSource reads the default event source of this database (DatabaseEventSourceSQL).
func (db *DB) DatabaseEventSource(ctx context.Context) (string, error) {
	var source string
	if err := db.pool.QueryRow(ctx, DatabaseEventSourceSQL).Scan(&source); err != nil {
		return "", fmt.Errorf("read the database's identity for the event source (set EVENT_SOURCE to skip): %w", err)
	}
	return source, nil
}

// Option configures Open.
type Option func(*options)

type options struct {
	pool              *pgxpool.Config
	batchMax, workers int
}

// WithTracing makes an OpenTelemetry span of every query and batch.
func WithTracing() Option {
	return func(o *options) { o.pool.ConnConfig.Tracer = tracer{} }
}

// Open connects a pool to databaseURL. Pool size and timeouts come from the URL's
// pool_* parameters (e.g. pool_max_conns=20), as pgxpool reads them.
func Open(ctx context.Context, databaseURL string, opts ...Option) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	o := options{pool: cfg, batchMax: DefaultWriteBatchMax, workers: DefaultWriteWorkers}
	for _, opt := range opts {
		opt(&o)
	}
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	cfg.ConnConfig.RuntimeParams["timezone"] = "UTC"
	closeOnPgError := cfg.ConnConfig.OnPgError
	cfg.ConnConfig.OnPgError = func(conn *pgconn.PgConn, pgErr *pgconn.PgError) bool {
		// A server that refuses writes as read-only (a primary demoted to a standby) refuses
		// them on this connection for good: closing it makes the pool connect again, and the
		// URL's target_session_attrs=read-write finds the new primary.
		if pgErr.Code == readOnlyTransaction {
			return false
		}
		return closeOnPgError == nil || closeOnPgError(conn, pgErr)
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "tally"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	db := &DB{pool: pool, eventSource: DefaultEventSource, guesses: newGuessCache(), metrics: newBatchMetrics()}
	// Each worker holds a connection while it records a batch: leave one for reads and for
	// the requests recorded alone.
	o.workers = min(o.workers, max(1, int(cfg.MaxConns)-1))
	// A database that does not answer yet is asked again by the first request.
	distributed, _ := db.Distributed(ctx)
	if o.batchMax > 1 && o.workers > 0 && !distributed {
		db.batcher = newBatcher(db, o.batchMax, o.workers)
	}
	return db, nil
}

// Close stops the write workers once their batches are done, then waits for connections in
// use to be released and closes the pool.
func (db *DB) Close() {
	if db.batcher != nil {
		db.batcher.close()
	}
	db.pool.Close()
}

// Pool exposes the pool for metrics and tests.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// Ready reports whether the database answers and carries this binary's schema.
func (db *DB) Ready(ctx context.Context) error {
	var version int
	err := db.pool.QueryRow(ctx, "SELECT COALESCE(max(version), 0) FROM schema_migrations").Scan(&version)
	if err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if want := SchemaVersion(); version < want {
		return fmt.Errorf("schema version %d is older than %d: run tally migrate", version, want)
	}
	return nil
}

// maxAttempts bounds retries of serialization failures and deadlocks.
const maxAttempts = 5

// retry runs one attempt after another, at most maxAttempts: serialization failures and
// deadlocks are retried after a short backoff, and, when retryUnique is set, a unique
// violation at once: another request with the same key committed first, and the next
// attempt reads its row. It is the write paths' one retry loop.
func retry[T any](ctx context.Context, retryUnique bool, attempt func() (T, error)) (T, error) {
	for n := 1; ; n++ {
		out, err := attempt()
		switch {
		case n == maxAttempts:
		case retryUnique && isUniqueViolation(err):
			continue
		case retryable(err):
			if !sleep(ctx, time.Duration(n*n)*5*time.Millisecond) {
				return out, errors.Join(err, ctx.Err())
			}
			continue
		}
		return out, err
	}
}

// withTx runs fn in one read-committed transaction and commits it, retried as retry does;
// inside fn only tx may be used, because a query on the pool while holding a transaction can
// exhaust the pool.
func (db *DB) withTx(ctx context.Context, fn func(pgx.Tx) error) error {
	_, err := retry(ctx, false, func() (struct{}, error) { return struct{}{}, db.runTx(ctx, fn) })
	return err
}

func (db *DB) runTx(ctx context.Context, fn func(pgx.Tx) error) error {
	tx, err := db.pool.Begin(ctx)
	if err != nil {
		return err
	}
	// A cancelled request must still release its locks promptly.
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// pipelinedTx is a read-committed transaction on one pooled connection whose BEGIN is sent
// with the first batch and whose COMMIT with the last, saving two round trips a write.
type pipelinedTx struct {
	conn             *pgxpool.Conn
	begun, committed bool
}

// send sends batch in one round trip, behind the BEGIN if it is the first, and followed by the
// COMMIT if commit is set.
func (tx *pipelinedTx) send(ctx context.Context, batch *pgx.Batch, commit bool) error {
	if !tx.begun {
		batch.QueuedQueries = append([]*pgx.QueuedQuery{{SQL: "BEGIN"}}, batch.QueuedQueries...)
		tx.begun = true
	}
	if commit {
		batch.Queue("COMMIT")
	}
	if err := tx.conn.SendBatch(ctx, batch).Close(); err != nil {
		return err
	}
	tx.committed = commit
	return nil
}

// withPipelinedTx runs fn in a pipelined transaction: fn sends its batches with send, the
// last with commit set. A transaction begun and not committed is rolled back, even if ctx was
// cancelled.
func (db *DB) withPipelinedTx(ctx context.Context, fn func(*pipelinedTx) error) error {
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release() // a connection left in a transaction is closed, not reused
	tx := &pipelinedTx{conn: conn}
	err = fn(tx)
	if tx.begun && !tx.committed {
		if _, rbErr := conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rbErr != nil && err == nil {
			err = rbErr
		}
	}
	return err
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "40001" || pgErr.Code == "40P01"
	}
	return false
}

// dbErr turns a lost or refused database connection into ledger's unavailable error, which
// the API answers with 503 and Retry-After; other errors pass unchanged.
func dbErr(err error) error {
	if err == nil || ledger.ErrorCode(err) != "" {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Class 08: connection exceptions; 57P0x: the server is shutting down or starting;
		// 53300: too many connections; 25006: a read-only server, such as a primary demoted
		// during a failover, still reached by a connection opened before it.
		if strings.HasPrefix(pgErr.Code, "08") || strings.HasPrefix(pgErr.Code, "57P0") || pgErr.Code == "53300" || pgErr.Code == readOnlyTransaction {
			return ledger.Unavailable(err)
		}
		if pgErr.Code == "XX000" && citusLostWorker(pgErr.Message) {
			return ledger.Unavailable(err)
		}
		return err
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	if errors.As(err, &connectErr) || errors.As(err, &netErr) || errors.Is(err, io.ErrUnexpectedEOF) || pgconn.SafeToRetry(err) {
		return ledger.Unavailable(err)
	}
	return err
}

// citusLostWorker reports whether a Citus coordinator's error says that it lost or cannot
// reach a worker. Citus gives most of these class 08 (connection_failure), as "connection to
// the remote node ... failed" or "could not establish any connections to the node ...", but
// a connection lost inside a transaction as "failure on connection marked as essential",
// with SQLSTATE XX000; the messages are Citus's own and not translated.
func citusLostWorker(message string) bool {
	for _, prefix := range []string{"failure on connection marked as essential", "connection to the remote node", "could not establish any connections to the node"} {
		if strings.HasPrefix(message, prefix) {
			return true
		}
	}
	return false
}

// readOnlyTransaction is SQLSTATE read_only_sql_transaction.
const readOnlyTransaction = "25006"

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}
