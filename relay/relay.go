// Package relay publishes the outbox to NATS JetStream: one active relay at a time, each
// event marked published only after JetStream acknowledged it.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// DefaultStream is the JetStream stream that holds tally's events unless Config.Stream names
// another.
const DefaultStream = "TALLY"

// DefaultSubjectPrefix starts every subject, "tally.<event type>", unless
// Config.SubjectPrefix names another.
const DefaultSubjectPrefix = "tally"

// leaseKey is the advisory lock that makes one relay the active one.
const leaseKey = 7_242_002

// cursorName names this relay's row in relay_cursor.
const cursorName = "jetstream"

// Config tunes a relay; zero values take the defaults.
type Config struct {
	Stream        string        // default DefaultStream
	SubjectPrefix string        // subjects are "<prefix>.<event type>"; default DefaultSubjectPrefix
	Batch         int           // events per publish round; default 256
	Poll          time.Duration // wait when the outbox is empty; default 25ms (standbys retry at 10×)
	Retention     time.Duration // published events older than this are pruned; default 7 days
	// DuplicateWindow is the stream's de-duplication window. It must be longer than the time
	// an event can spend published but not yet recorded as published; default 10 minutes.
	DuplicateWindow time.Duration
	MaxBackoff      time.Duration // longest wait between retries when NATS fails; default 5s
}

func (c *Config) defaults() {
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	}
	if c.Batch <= 0 {
		c.Batch = 256
	}
	if c.Poll <= 0 {
		c.Poll = 25 * time.Millisecond
	}
	if c.Retention <= 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	if c.DuplicateWindow <= 0 {
		c.DuplicateWindow = 10 * time.Minute
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Second
	}
}

// Relay moves events from the outbox to JetStream.
type Relay struct {
	db     *postgres.DB
	nc     *nats.Conn
	js     jetstream.JetStream
	log    *slog.Logger
	cfg    Config
	leader atomic.Bool
	// Published counts events acknowledged by JetStream, for metrics and tests.
	Published atomic.Int64
}

// New returns a relay publishing through nc.
func New(db *postgres.DB, nc *nats.Conn, log *slog.Logger, cfg Config) (*Relay, error) {
	cfg.defaults()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return &Relay{db: db, nc: nc, js: js, log: log, cfg: cfg}, nil
}

// Leader reports whether this relay holds the lease and is publishing.
func (r *Relay) Leader() bool { return r.leader.Load() }

// Run waits for the lease, publishes while it holds it, and waits again if it loses it,
// until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	for {
		lease, err := r.db.AcquireLease(ctx, leaseKey, r.cfg.Poll*10)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.log.Warn("relay lease", "error", err)
			if !sleep(ctx, r.cfg.MaxBackoff) {
				return nil
			}
			continue
		}
		r.log.Info("relay is active")
		r.leader.Store(true)
		activeCtx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-lease.Lost():
				r.log.Warn("relay lost its lease")
			case <-activeCtx.Done():
			}
			cancel()
		}()
		err = r.publishLoop(activeCtx)
		cancel()
		r.leader.Store(false)
		lease.Release()
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("relay stopped publishing; waiting for the lease again", "error", err)
	}
}

// publishLoop publishes batches in stream order and advances the cursor after each batch is
// acknowledged. A failed batch is published again from its start: JetStream drops the
// events it already has by their Nats-Msg-Id.
func (r *Relay) publishLoop(ctx context.Context) error {
	backoff := r.cfg.Poll
	streamReady := false
	lastPrune := time.Time{}
	cursor, err := r.db.RelayCursor(ctx, cursorName)
	if err != nil {
		return err
	}
	for ctx.Err() == nil {
		if !streamReady {
			if err := r.ensureStream(ctx); err != nil {
				r.log.Warn("create stream", "error", err)
				backoff = r.wait(ctx, backoff)
				continue
			}
			streamReady = true
		}
		events, err := r.db.Events(ctx, cursor, r.cfg.Batch)
		if err != nil {
			return err
		}
		if len(events) == 0 {
			if time.Since(lastPrune) > time.Minute {
				r.prune(ctx, cursor)
				lastPrune = time.Now()
			}
			sleep(ctx, r.cfg.Poll)
			continue
		}
		if err := r.publish(ctx, events); err != nil {
			r.log.Warn("publish to JetStream", "error", err, "events", len(events))
			backoff = r.wait(ctx, backoff)
			continue
		}
		backoff = r.cfg.Poll
		cursor = events[len(events)-1].Cursor
		if err := r.db.SaveRelayCursor(ctx, cursorName, cursor); err != nil {
			return err
		}
		r.Published.Add(int64(len(events)))
	}
	return ctx.Err()
}

func (r *Relay) wait(ctx context.Context, backoff time.Duration) time.Duration {
	sleep(ctx, backoff)
	return min(backoff*2, r.cfg.MaxBackoff)
}

// ensureStream creates the stream if it is missing. An existing stream keeps the limits and
// replicas its operators gave it; only a missing subject or a de-duplication window shorter
// than the relay needs is changed.
func (r *Relay) ensureStream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	subject := r.cfg.SubjectPrefix + ".>"
	stream, err := r.js.Stream(ctx, r.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = r.js.CreateStream(ctx, jetstream.StreamConfig{
			Name:       r.cfg.Stream,
			Subjects:   []string{subject},
			Storage:    jetstream.FileStorage,
			Duplicates: r.cfg.DuplicateWindow,
		})
		return err
	}
	if err != nil {
		return err
	}
	cfg := stream.CachedInfo().Config
	if slices.Contains(cfg.Subjects, subject) && cfg.Duplicates >= r.cfg.DuplicateWindow {
		return nil
	}
	if !slices.Contains(cfg.Subjects, subject) {
		cfg.Subjects = append(cfg.Subjects, subject)
	}
	cfg.Duplicates = max(cfg.Duplicates, r.cfg.DuplicateWindow)
	_, err = r.js.UpdateStream(ctx, cfg)
	return err
}

// publish sends a batch asynchronously, in order, and waits for every acknowledgement.
func (r *Relay) publish(ctx context.Context, events []ledger.StoredEvent) error {
	futures := make([]jetstream.PubAckFuture, 0, len(events))
	for _, e := range events {
		msg := nats.NewMsg(r.cfg.SubjectPrefix + "." + string(e.Type))
		msg.Data = e.Body
		msg.Header.Set("Content-Type", "application/cloudevents+json")
		f, err := r.js.PublishMsgAsync(msg, jetstream.WithMsgID(e.ID.String()))
		if err != nil {
			return err
		}
		futures = append(futures, f)
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-timeout.C:
			return errors.New("no acknowledgement from JetStream within 10s")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (r *Relay) prune(ctx context.Context, published ledger.EventCursor) {
	n, err := r.db.PruneEvents(ctx, time.Now().Add(-r.cfg.Retention), published)
	if err != nil {
		r.log.Warn("prune outbox", "error", err)
		return
	}
	if n > 0 {
		r.log.Info("pruned published events", "rows", n)
	}
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

// Connect dials NATS and keeps reconnecting forever: events wait in the outbox meanwhile.
func Connect(url string, log *slog.Logger) (*nats.Conn, error) {
	nc, err := nats.Connect(url,
		nats.Name("tally-relay"),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", "error", err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "url", nc.ConnectedUrl()) }),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	return nc, nil
}
