// Package relay publishes the outbox to NATS JetStream: one active relay at a time, each
// event marked published only after JetStream acknowledged it.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
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
	// LeaseTTL bounds how long a relay that stopped answering (frozen, or its node gone)
	// keeps the lease before a standby takes over; default 5s.
	LeaseTTL time.Duration
	// PollOnly turns off the wake-up by LISTEN/NOTIFY, leaving the poll alone: the baseline
	// BenchmarkOutboxLag compares against.
	PollOnly bool
	// WakeupBelow is the event rate, per second, under which the active relay asks writers to
	// notify it when events commit; above twice that rate it stops asking and, finding the
	// outbox drained, looks again after BusyPoll instead of Poll. Default 250.
	WakeupBelow float64
	// BusyPoll is the wait when the outbox is drained while writers do not notify; default 2ms.
	BusyPoll time.Duration
	// The stream's replicas and limits when the relay creates it. Defaults: 1 replica, events
	// kept 7 days, no byte limit (JetStream reserves one up front, so it must fit the server's
	// storage); a full stream refuses new events, which wait in the outbox.
	Replicas int
	MaxAge   time.Duration
	MaxBytes int64
	// Slices is how many slices the users are cut into on Citus, one lease each, for relays to
	// divide; default DefaultSlices. Every relay of a deployment needs the same count.
	Slices int
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
	if c.WakeupBelow <= 0 {
		c.WakeupBelow = 250
	}
	if c.BusyPoll <= 0 {
		c.BusyPoll = 2 * time.Millisecond
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
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.MaxAge <= 0 {
		c.MaxAge = 7 * 24 * time.Hour
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = -1
	}
	if c.Slices <= 0 {
		c.Slices = DefaultSlices
	}
}

// notifyChannel is where the outbox's trigger (migration 0006) announces committed events.
const notifyChannel = "tally_outbox"

// errLeaseExpired stops a relay whose lease may already be someone else's.
var errLeaseExpired = errors.New("the lease went unconfirmed for half its TTL")

// Relay moves events from the outbox to JetStream.
type Relay struct {
	db     *postgres.DB
	nc     *nats.Conn
	js     jetstream.JetStream
	log    *slog.Logger
	cfg    Config
	leader atomic.Bool
	// slicesHeld counts the slices this relay publishes on Citus.
	slicesHeld atomic.Int32
	// Published counts events acknowledged by JetStream, for metrics and tests.
	Published atomic.Int64
}

// New returns a relay publishing through nc.
func New(db *postgres.DB, nc *nats.Conn, log *slog.Logger, cfg Config) (*Relay, error) {
	cfg.defaults()
	if cfg.Slices > MaxSlices {
		return nil, errTooManySlices
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return &Relay{db: db, nc: nc, js: js, log: log, cfg: cfg}, nil
}

// NATSConnected fails unless the relay's NATS connection is up.
func (r *Relay) NATSConnected() error {
	if status := r.nc.Status(); status != nats.CONNECTED {
		return fmt.Errorf("NATS connection is %s", status)
	}
	return nil
}

// Leader reports whether this relay holds the lease and is publishing.
func (r *Relay) Leader() bool { return r.leader.Load() }

// Run waits for the lease, publishes while it holds it, and waits again if it loses it,
// until ctx ends. On Citus it holds a share of the slices instead (slices.go).
func (r *Relay) Run(ctx context.Context) error {
	for {
		distributed, err := r.db.Distributed(ctx)
		if err == nil && distributed {
			return r.runDistributed(ctx)
		}
		if err == nil {
			break
		}
		if !r.retryLater(ctx, "relay: ask the database for Citus", err) {
			return nil
		}
	}
	for {
		leaseCfg := postgres.LeaseConfig{TTL: r.cfg.LeaseTTL, Poll: r.cfg.Poll * 10}
		if !r.cfg.PollOnly {
			leaseCfg.Listen = notifyChannel
		}
		lease, err := r.db.AcquireLease(ctx, leaseKey, leaseCfg)
		if err != nil {
			if !r.retryLater(ctx, "relay lease", err) {
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
		err = r.publishLoop(activeCtx, lease)
		cancel()
		r.leader.Store(false)
		lease.Release()
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("relay stopped publishing; waiting for the lease again", "error", err)
	}
}

// publishLoop publishes batches in stream order and advances the cursor over the events
// acknowledged. After a failure it publishes again from the first event not acknowledged:
// JetStream drops the events it already has by their Nats-Msg-Id. It waits for the next
// events on the outbox's notifications, or a poll interval at most.
func (r *Relay) publishLoop(ctx context.Context, lease *postgres.Lease) error {
	backoff := r.cfg.Poll
	streamReady := false
	lastPrune := time.Time{}
	var recheck time.Duration // after a notification that found nothing visible
	cursor, err := r.db.RelayCursor(ctx, cursorName)
	if err != nil {
		return err
	}
	wake := wakeup{relay: r}
	defer wake.stop()
	for ctx.Err() == nil {
		if err := wake.adjust(ctx); err != nil {
			return err
		}
		if !r.streamReady(ctx, &streamReady, &backoff) {
			continue
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
			// Events that were announced but are not visible yet wait for an older write
			// transaction to end, which may announce nothing: look again soon, not a poll later.
			wait := r.cfg.Poll
			if !wake.wanted && !r.cfg.PollOnly {
				wait = r.cfg.BusyPoll
			}
			if recheck > 0 {
				wait, recheck = recheck, min(recheck*2, r.cfg.Poll)
			}
			select {
			case <-ctx.Done():
			case <-lease.Notifications():
				recheck = time.Millisecond
			case <-time.After(wait):
			}
			continue
		}
		recheck = 0
		if !lease.Held() {
			return errLeaseExpired
		}
		published, err := r.publishAndRecord(ctx, events, func(acked []ledger.StoredEvent) error {
			cursor = acked[len(acked)-1].Cursor
			wake.events += len(acked)
			return r.db.SaveRelayCursor(ctx, cursorName, cursor)
		})
		if err != nil {
			return err
		}
		backoff = r.nextBackoff(ctx, published, backoff)
	}
	return ctx.Err()
}

// wakeup decides, from the event rate the active relay publishes, whether writers notify it
// when events commit (postgres.DB.SetOutboxWakeup). At low rates the relay waits between
// events and the notification spares it up to a poll interval of lag; at high rates it reads
// one batch after another and a drained outbox is soon refilled, so a short poll does as well
// and the writers' commits stay free of the notification's cost.
type wakeup struct {
	relay  *Relay
	wanted bool      // what the flag was last set to
	since  time.Time // start of the current measurement window; zero before the first
	events int       // events published in the window
}

// wakeupWindow is how often the rate is measured and the flag written again; rewriting it
// each window puts back a value a stale leader may have overwritten.
const wakeupWindow = time.Second

func (w *wakeup) adjust(ctx context.Context) error {
	now := time.Now()
	if !w.since.IsZero() && now.Sub(w.since) < wakeupWindow {
		return nil
	}
	wanted := true // a relay that just took over assumes a quiet outbox
	if !w.since.IsZero() {
		rate := float64(w.events) / now.Sub(w.since).Seconds()
		switch {
		case rate < w.relay.cfg.WakeupBelow:
			wanted = true
		case rate > 2*w.relay.cfg.WakeupBelow:
			wanted = false
		default:
			wanted = w.wanted
		}
	}
	if w.relay.cfg.PollOnly {
		wanted = false
	}
	if err := w.relay.db.SetOutboxWakeup(ctx, wanted); err != nil {
		return err
	}
	if wanted != w.wanted || w.since.IsZero() {
		w.relay.log.Debug("outbox wake-up", "wanted", wanted, "events", w.events)
	}
	w.wanted, w.since, w.events = wanted, now, 0
	return nil
}

// stop turns the notifications off when the relay stops publishing, so writers do not pay
// for them while no relay listens. The next active relay turns them on again.
func (w *wakeup) stop() {
	if !w.wanted {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := w.relay.db.SetOutboxWakeup(ctx, false); err != nil {
		w.relay.log.Warn("turn the outbox wake-up off", "error", err)
	}
}

// streamReady makes sure the stream exists, once per publishing session (ready). After a
// failure it logs and waits, longer each time in a row, and answers false.
func (r *Relay) streamReady(ctx context.Context, ready *bool, backoff *time.Duration) bool {
	if *ready {
		return true
	}
	if err := r.ensureStream(ctx); err != nil {
		r.log.Warn("create stream", "error", err)
		*backoff = r.wait(ctx, *backoff)
		return false
	}
	*ready = true
	return true
}

// retryLater logs a failure and waits MaxBackoff; false when ctx ended meanwhile.
func (r *Relay) retryLater(ctx context.Context, msg string, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	r.log.Warn(msg, "error", err)
	return sleep(ctx, r.cfg.MaxBackoff)
}

// publishAndRecord publishes events and hands those JetStream acknowledged, the first ones, to
// record. It reports whether all were acknowledged; an error is record's.
func (r *Relay) publishAndRecord(ctx context.Context, events []ledger.StoredEvent, record func(acked []ledger.StoredEvent) error) (bool, error) {
	acked, err := r.publish(ctx, events)
	if acked > 0 {
		if err := record(events[:acked]); err != nil {
			return false, err
		}
		r.Published.Add(int64(acked))
	}
	if err != nil {
		r.log.Warn("publish to JetStream", "error", err, "events", len(events), "acknowledged", acked)
	}
	return err == nil, nil
}

// nextBackoff waits after a failed round, longer each time in a row, and resets after a good one.
func (r *Relay) nextBackoff(ctx context.Context, ok bool, backoff time.Duration) time.Duration {
	if ok {
		return r.cfg.Poll
	}
	return r.wait(ctx, backoff)
}

func (r *Relay) wait(ctx context.Context, backoff time.Duration) time.Duration {
	sleep(ctx, backoff)
	return min(backoff*2, r.cfg.MaxBackoff)
}

// maxMsgSize is the largest event the stream created by the relay accepts; tally's events
// are well under a kilobyte.
const maxMsgSize = 1 << 20

// ensureStream creates the stream if it is missing, with the configured replicas and explicit
// limits. An existing stream keeps the limits and replicas its operators gave it: only a
// missing subject or a de-duplication window shorter than the relay needs is changed, and a
// replica count other than the configured one is reported.
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
			Replicas:   r.cfg.Replicas,
			MaxAge:     r.cfg.MaxAge,
			MaxBytes:   r.cfg.MaxBytes,
			MaxMsgSize: maxMsgSize,
			Discard:    jetstream.DiscardNew,
			Duplicates: r.cfg.DuplicateWindow,
		})
		if err == nil {
			r.log.Info("created stream", "stream", r.cfg.Stream, "replicas", r.cfg.Replicas,
				"max_age", r.cfg.MaxAge.String(), "max_bytes", r.cfg.MaxBytes)
		}
		return err
	}
	if err != nil {
		return err
	}
	cfg := stream.CachedInfo().Config
	if cfg.Replicas != r.cfg.Replicas {
		r.log.Warn("the stream's replica count differs from NATS_STREAM_REPLICAS; the relay leaves it as it is",
			"stream", r.cfg.Stream, "replicas", cfg.Replicas, "configured", r.cfg.Replicas)
	}
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

// publish sends events asynchronously in stream order, except that a user's event waits for
// the acknowledgement of that user's previous one: when one fails, the user's later events
// have not been sent, so none can land in the stream before it. It stops sending at the first
// failure it sees and returns how many events from the start JetStream acknowledged.
func (r *Relay) publish(ctx context.Context, events []ledger.StoredEvent) (int, error) {
	futures := make([]jetstream.PubAckFuture, 0, len(events))
	results := make([]error, len(events))
	waited := make([]bool, len(events))
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	await := func(i int) error {
		if !waited[i] {
			waited[i] = true
			select {
			case <-futures[i].Ok():
			case err := <-futures[i].Err():
				results[i] = err
			case <-timeout.C:
				results[i] = errors.New("no acknowledgement from JetStream within 10s")
				timeout.Reset(0) // the remaining ones time out at once
			case <-ctx.Done():
				results[i] = ctx.Err()
			}
		}
		return results[i]
	}
	last := map[int64]int{} // user → index of the user's latest event sent
	var sendErr error
	for i, e := range events {
		if j, ok := last[e.UserID]; ok {
			if sendErr = await(j); sendErr != nil {
				break
			}
		}
		msg := nats.NewMsg(r.cfg.SubjectPrefix + "." + string(e.Type))
		msg.Data = e.Body
		msg.Header.Set("Content-Type", "application/cloudevents+json")
		f, err := r.js.PublishMsgAsync(msg, jetstream.WithMsgID(e.ID.String()))
		if err != nil {
			sendErr = err
			break
		}
		futures = append(futures, f)
		last[e.UserID] = i
	}
	for i := range futures {
		if err := await(i); err != nil {
			return i, err
		}
	}
	return len(futures), sendErr
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

// NATS is how the relay reaches NATS: one server or several, and the credentials.
type NATS struct {
	URLs      string // comma-separated, as NATS_URL; the client fails over between them
	CredsFile string // a .creds file (JWT and NKey seed), as NATS_CREDS
	User      string // with Password, as NATS_USER and NATS_PASSWORD
	Password  string
}

// Connect dials NATS and keeps reconnecting forever: events wait in the outbox meanwhile.
// Credentials in the URLs work, but no log line shows them.
func Connect(cfg NATS, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("tally-relay"),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", "error", err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "url", RedactURLs(nc.ConnectedUrl())) }),
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	nc, err := nats.Connect(cfg.URLs, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", RedactURLs(cfg.URLs), errors.New(RedactURLs(err.Error())))
	}
	return nc, nil
}

// RedactURLs replaces the user information of every URL in a comma-separated list (or in a
// message that quotes one) with "redacted", for logs and errors.
func RedactURLs(s string) string {
	return userinfo.ReplaceAllString(s, "${1}redacted@")
}

// userinfo matches the "user:password@" after a URL's scheme.
var userinfo = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s,]*@`)
