package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// LeaseConfig tunes AcquireLease; zero values take the defaults.
type LeaseConfig struct {
	// TTL bounds how long the lease outlives a holder that stopped answering: a frozen
	// process, or a node that vanished. Default 5s.
	TTL time.Duration
	// Poll is how often a waiting caller tries for the lease; default 250ms, at most TTL/2.
	Poll time.Duration
	// Listen, if set, is a channel the lease's connection LISTENs on once the lease is held;
	// Notifications delivers its notifications.
	Listen string
	// Shared takes the lock in share mode: any number of holders at once, each counted by
	// LockHolders. Relays announce themselves this way, so that each knows how many share
	// the outbox's slices.
	Shared bool
	// Eligible, if set, is asked before every try: the caller tries for the lock only while it
	// answers true. A relay at its share of slices stops reaching for more this way, without
	// giving up its connection.
	Eligible func() bool
}

func (c *LeaseConfig) defaults() {
	if c.TTL <= 0 {
		c.TTL = 5 * time.Second
	}
	c.TTL = max(c.TTL, 100*time.Millisecond) // idle_session_timeout counts milliseconds; 0 would turn it off
	if c.Poll <= 0 {
		c.Poll = 250 * time.Millisecond
	}
	c.Poll = min(c.Poll, c.TTL/2)
}

// Lease is a session advisory lock held on a connection of its own: whoever holds it is the
// one active relay.
//
// A session lock lasts as long as its session, and a session whose client is frozen
// (SIGSTOP, a paused VM) or gone with its node lasts until TCP notices, which for a frozen
// process is never (its kernel still acknowledges) and otherwise takes the keepalive time
// (two hours by default). So the lease's session runs with idle_session_timeout = TTL: the
// server ends it, and frees the lock, once the holder has sent nothing for TTL. The holder
// pings five times per TTL, and counts itself the holder only while its last answered ping
// is younger than TTL/2 (Held), so it stops before anyone else can start.
type Lease struct {
	conn      *pgx.Conn
	ttl       time.Duration
	confirmed atomic.Int64 // when the last answered ping was sent, in ns since created
	created   time.Time    // carries the monotonic clock, which runs on while a process is stopped
	lost      chan struct{}
	notified  chan struct{}
	ctx       context.Context
	cancel    context.CancelFunc
}

// AcquireLease waits until it holds the advisory lock key, trying every cfg.Poll.
func (db *DB) AcquireLease(ctx context.Context, key int64, cfg LeaseConfig) (*Lease, error) {
	cfg.defaults()
	conn, err := pgx.ConnectConfig(ctx, db.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("lease connection: %w", err)
	}
	fail := func(err error) (*Lease, error) {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	// Both ends notice a dead peer within seconds. The server's keepalives and user timeout
	// cover a node that vanished with the session open; idle_session_timeout also covers a
	// client that is alive to TCP but frozen. A server older than 14 refuses the last one.
	ms := cfg.TTL.Milliseconds()
	if _, err := conn.Exec(ctx, fmt.Sprintf(`SET idle_session_timeout = %d; SET tcp_keepalives_idle = %d;
		SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3; SET tcp_user_timeout = %d`,
		ms, max(1, ms/2000), ms)); err != nil {
		return fail(fmt.Errorf("lease session settings (PostgreSQL 14 or later): %w", err))
	}
	try := "SELECT pg_try_advisory_lock($1)"
	if cfg.Shared {
		try = "SELECT pg_try_advisory_lock_shared($1)"
	}
	for {
		var got bool
		if cfg.Eligible == nil || cfg.Eligible() {
			if err := conn.QueryRow(ctx, try, key).Scan(&got); err != nil {
				return fail(fmt.Errorf("try lease: %w", err))
			}
		} else if err := conn.Ping(ctx); err != nil { // the waiting session is idle too
			return fail(fmt.Errorf("lease connection: %w", err))
		}
		if got {
			break
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(cfg.Poll):
		}
	}
	l := &Lease{conn: conn, ttl: cfg.TTL, created: time.Now(), lost: make(chan struct{}), notified: make(chan struct{}, 1)}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	if cfg.Listen != "" {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{cfg.Listen}.Sanitize()); err != nil {
			return fail(fmt.Errorf("listen: %w", err))
		}
	}
	go l.watch()
	return l, nil
}

// watch owns the connection: it waits for notifications and pings between them. When a ping
// fails the session may be gone, and the lock someone else's.
func (l *Lease) watch() {
	defer close(l.lost)
	every := l.ttl / 5
	for {
		sent := time.Now()
		ctx, cancel := context.WithTimeout(l.ctx, every)
		err := l.conn.Ping(ctx)
		cancel()
		if err != nil {
			return
		}
		l.confirmed.Store(int64(sent.Sub(l.created)))
		next := sent.Add(every)
		for {
			ctx, cancel := context.WithDeadline(l.ctx, next)
			_, err := l.conn.WaitForNotification(ctx)
			cancel()
			if err == nil {
				select {
				case l.notified <- struct{}{}:
				default:
				}
				continue
			}
			if l.ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
				return
			}
			break // time to ping
		}
	}
}

// Held reports whether the lease is certainly still this holder's: its last answered ping
// was sent less than TTL/2 ago, so the server cannot have ended the session yet.
func (l *Lease) Held() bool {
	select {
	case <-l.lost:
		return false
	default:
	}
	return time.Since(l.created)-time.Duration(l.confirmed.Load()) < l.ttl/2
}

// Lost is closed when the lease ends.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Notifications receives a value after notifications arrived on the LISTEN channel; several
// arriving together are delivered as one.
func (l *Lease) Notifications() <-chan struct{} { return l.notified }

// Release gives the lease up by closing its connection, which frees the lock.
func (l *Lease) Release() {
	l.cancel()
	<-l.lost
	l.conn.Close(context.Background())
}

// LockHolders counts the sessions of this database that hold the advisory lock key, in either
// mode: how many relays run, when each holds the key shared.
func (db *DB) LockHolders(ctx context.Context, key int64) (n int, err error) {
	defer func() { err = dbErr(err) }()
	// A bigint advisory key shows in pg_locks as its high half in classid, its low half in
	// objid and objsubid 1.
	err = db.pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND objsubid = 1
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid`, key).Scan(&n)
	return n, err
}
