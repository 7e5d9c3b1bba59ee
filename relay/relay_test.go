package relay_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
	"github.com/tally-ledger/tally/relay"
)

func natsURL() string {
	if u := os.Getenv("NATS_URL"); u != "" {
		return u
	}
	return nats.DefaultURL
}

type fixture struct {
	db     *postgres.DB
	url    string
	nc     *nats.Conn
	js     jetstream.JetStream
	cfg    relay.Config
	ctx    context.Context
	events int // events written so far
}

// setup gives a test its own database and its own stream on the shared NATS server.
func setup(t *testing.T, url string) *fixture {
	t.Helper()
	t.Parallel()
	db, dbURL := pgtest.NewDB(t)
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	require.NoError(t, err, "NATS with JetStream must run at %s", url)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	name := "T" + uuid.NewString()[:8]
	t.Cleanup(func() { js.DeleteStream(context.Background(), name) }) //nolint:errcheck // may be gone with its server
	return &fixture{db: db, url: dbURL, nc: nc, js: js, ctx: context.Background(),
		cfg: relay.Config{Stream: name, SubjectPrefix: "t" + name, Poll: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
			MaxBytes: 64 << 20}} // a shared server reserves every stream's limit
}

func (f *fixture) start(t *testing.T, nc *nats.Conn) (*relay.Relay, context.CancelFunc) {
	t.Helper()
	r, err := relay.New(f.db, nc, httpapi.NewLogger(io.Discard, 0), f.cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }() //nolint:errcheck // Run returns nil on cancel
	t.Cleanup(func() { cancel(); <-done })
	return r, func() { cancel(); <-done }
}

// write makes users and transactions: each user 1 + 2 events, each deposit 1 event.
func (f *fixture) write(t *testing.T, users, deposits int) {
	t.Helper()
	for range users {
		u, err := f.db.CreateUser(f.ctx, "u")
		require.NoError(t, err)
		f.events += 3
		for i := range deposits {
			_, err := f.db.Apply(f.ctx, ledger.Request{UID: uuid.New(), UserID: u.ID, Type: ledger.Deposit, Amount: 100}, httpapi.RenderTransaction)
			require.NoError(t, err)
			if i > 0 {
				f.events++
			}
		}
	}
}

// streamEvents reads the whole stream, waiting until it holds want messages.
func (f *fixture) streamEvents(t *testing.T, js jetstream.JetStream, want int) []jetstream.Msg {
	t.Helper()
	require.Eventually(t, func() bool {
		s, err := js.Stream(f.ctx, f.cfg.Stream)
		if err != nil {
			return false
		}
		info, err := s.Info(f.ctx)
		return err == nil && info.State.Msgs >= uint64(want)
	}, 30*time.Second, 20*time.Millisecond, "stream never reached %d messages", want)
	// A cluster that just regained its quorum may refuse a consumer, or its fetch, for a
	// moment, or answer a fetch with only part of the stream: the whole read is tried again
	// until it returns at least what the stream holds (more is checkOnceInOrder's to find).
	var msgs []jetstream.Msg
	require.EventuallyWithT(t, func(t *assert.CollectT) {
		msgs = nil
		c, err := js.OrderedConsumer(f.ctx, f.cfg.Stream, jetstream.OrderedConsumerConfig{})
		require.NoError(t, err)
		batch, err := c.FetchNoWait(want + 100)
		require.NoError(t, err)
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		require.NoError(t, batch.Error())
		require.GreaterOrEqual(t, len(msgs), want, "a fetch that stopped short")
	}, 30*time.Second, 100*time.Millisecond)
	return msgs
}

// checkOnceInOrder asserts the stream holds every outbox event exactly once, with its id as
// Nats-Msg-Id, and each user's events in sequence order.
func (f *fixture) checkOnceInOrder(t *testing.T, msgs []jetstream.Msg) {
	t.Helper()
	require.Len(t, msgs, f.events)
	ids := map[string]bool{}
	lastSeq := map[int64]int64{}
	for _, m := range msgs {
		var ce struct {
			ID   string
			Type string
			Data struct {
				UserID   int64 `json:"user_id"`
				Sequence int64
			}
		}
		require.NoError(t, json.Unmarshal(m.Data(), &ce))
		require.Equal(t, ce.ID, m.Headers().Get("Nats-Msg-Id"))
		require.Equal(t, f.cfg.SubjectPrefix+ce.Type[len("tally"):], m.Subject())
		require.False(t, ids[ce.ID], "event %s published twice", ce.ID)
		ids[ce.ID] = true
		require.Equal(t, lastSeq[ce.Data.UserID]+1, ce.Data.Sequence, "user %d out of order", ce.Data.UserID)
		lastSeq[ce.Data.UserID] = ce.Data.Sequence
	}
}

func TestRelayPublishesEveryEventOnceInOrder(t *testing.T) {
	f := setup(t, natsURL())
	f.write(t, 3, 4)
	r, _ := f.start(t, f.nc)
	f.write(t, 2, 3) // while it runs
	f.checkOnceInOrder(t, f.streamEvents(t, f.js, f.events))
	require.Eventually(t, func() bool { return r.Published.Load() == int64(f.events) }, 10*time.Second, 10*time.Millisecond)
	cursor, err := f.db.RelayCursor(f.ctx, "jetstream")
	require.NoError(t, err)
	backlog, _, err := f.db.Backlog(f.ctx, cursor)
	require.NoError(t, err)
	require.Zero(t, backlog)
}

// Two relays: one publishes, the other stands by and takes over when the first loses its
// database session or stops; the broker drops what the new leader publishes again.
func TestStandbyTakesOver(t *testing.T) {
	f := setup(t, natsURL())
	first, stopFirst := f.start(t, f.nc)
	require.Eventually(t, first.Leader, 5*time.Second, 10*time.Millisecond)
	second, stopSecond := f.start(t, f.nc)
	f.write(t, 2, 3)
	f.streamEvents(t, f.js, f.events)
	require.False(t, second.Leader())

	// The leader's database session dies; whoever takes the lease next publishes on.
	_, err := f.db.Pool().Exec(f.ctx, `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND objid = 7242002 AND granted
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	require.NoError(t, err)
	f.write(t, 1, 3)
	f.streamEvents(t, f.js, f.events)
	require.Eventually(t, func() bool { return first.Leader() != second.Leader() }, 10*time.Second, 10*time.Millisecond, "exactly one leader")

	// The leader stops; the standby takes over.
	leader, standby, stopLeader := first, second, stopFirst
	if second.Leader() {
		leader, standby, stopLeader = second, first, stopSecond
	}
	stopLeader()
	require.False(t, leader.Leader())
	require.Eventually(t, standby.Leader, 10*time.Second, 10*time.Millisecond, "the standby took over")
	f.write(t, 2, 3)
	f.checkOnceInOrder(t, f.streamEvents(t, f.js, f.events))
}

// With NATS down the API keeps working and events wait in the outbox; they drain, once each,
// when NATS returns.
func TestEventsWaitForNATS(t *testing.T) {
	opts := &natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true}
	srv, err := natsserver.NewServer(opts)
	require.NoError(t, err)
	srv.Start()
	require.True(t, srv.ReadyForConnections(10*time.Second))
	url := srv.ClientURL()
	opts.Port = srv.Addr().(*net.TCPAddr).Port
	f := setup(t, url)
	r, _ := f.start(t, f.nc)
	f.write(t, 1, 2)
	require.Eventually(t, func() bool { return r.Published.Load() == int64(f.events) }, 10*time.Second, 10*time.Millisecond)

	srv.Shutdown()
	srv.WaitForShutdown()
	f.write(t, 3, 3) // the API does not need NATS
	cursor, err := f.db.RelayCursor(f.ctx, "jetstream")
	require.NoError(t, err)
	backlog, _, err := f.db.Backlog(f.ctx, cursor)
	require.NoError(t, err)
	require.Positive(t, backlog)
	time.Sleep(300 * time.Millisecond)

	srv, err = natsserver.NewServer(opts)
	require.NoError(t, err)
	srv.Start()
	defer srv.Shutdown()
	require.True(t, srv.ReadyForConnections(10*time.Second))
	f.checkOnceInOrder(t, f.streamEvents(t, f.js, f.events))
}

func TestRelayStopsWithItsContext(t *testing.T) {
	f := setup(t, natsURL())
	r, stop := f.start(t, f.nc)
	require.Eventually(t, r.Leader, 5*time.Second, 10*time.Millisecond)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); stop() }()
	wg.Wait()
	require.False(t, r.Leader())
	// The lease is free again.
	lease, err := f.db.AcquireLease(f.ctx, 7242002, postgres.LeaseConfig{Poll: 10 * time.Millisecond})
	require.NoError(t, err)
	lease.Release()
}

// A stream that exists keeps what its operators configured; the relay only adds its subject.
func TestRelayKeepsStreamLimits(t *testing.T) {
	f := setup(t, natsURL())
	_, err := f.js.CreateStream(f.ctx, jetstream.StreamConfig{Name: f.cfg.Stream, Subjects: []string{"other.>"},
		MaxAge: time.Hour, MaxBytes: 1 << 30, Duplicates: time.Hour})
	require.NoError(t, err)
	f.write(t, 1, 1)
	f.start(t, f.nc)
	f.streamEvents(t, f.js, f.events)
	s, err := f.js.Stream(f.ctx, f.cfg.Stream)
	require.NoError(t, err)
	info, err := s.Info(f.ctx)
	require.NoError(t, err)
	require.Equal(t, time.Hour, info.Config.MaxAge)
	require.Equal(t, int64(1<<30), info.Config.MaxBytes)
	require.Equal(t, time.Hour, info.Config.Duplicates)
	require.ElementsMatch(t, []string{"other.>", f.cfg.SubjectPrefix + ".>"}, info.Config.Subjects)
}

// A publish that fails mid-batch stops the batch: the failing user's later events are not
// sent, so the stream still holds each user's events in sequence order once the failure
// clears. Here the stream refuses one user's large first event until its limit is raised,
// while the events after it, that user's and another's, are small.
func TestFailedPublishKeepsEachUsersOrder(t *testing.T) {
	f := setup(t, natsURL())
	small, err := f.db.CreateUser(f.ctx, "small")
	require.NoError(t, err)
	large, err := f.db.CreateUser(f.ctx, strings.Repeat("😀", 200))
	require.NoError(t, err)
	f.events += 2
	for range 3 {
		for _, u := range []int64{large.ID, small.ID} {
			_, err := f.db.Apply(f.ctx, ledger.Request{UID: uuid.New(), UserID: u, Type: ledger.Deposit, Amount: 100}, httpapi.RenderTransaction)
			require.NoError(t, err)
		}
	}
	f.events += 2 * 4 // per user: the first deposit applied and funded, two more applied
	var events []ledger.StoredEvent
	require.Eventually(t, func() bool { // visible once older transactions on the server end
		events, err = f.db.Events(f.ctx, ledger.EventCursor{}, 100)
		return err == nil && len(events) == f.events
	}, 10*time.Second, 10*time.Millisecond)
	limit := len(events[1].Body) // the large user's user.created; headers take it over
	for i, e := range events {
		if i != 1 {
			require.Less(t, len(e.Body)+200, limit, "event %d must fit", i)
		}
	}
	_, err = f.js.CreateStream(f.ctx, jetstream.StreamConfig{Name: f.cfg.Stream, Subjects: []string{f.cfg.SubjectPrefix + ".>"},
		MaxMsgSize: int32(limit), Duplicates: time.Hour})
	require.NoError(t, err)
	r, _ := f.start(t, f.nc)

	// The relay retries the refused event; nothing of the large user's gets past it.
	require.Eventually(t, func() bool { return r.Published.Load() >= 1 }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	for _, m := range f.streamEvents(t, f.js, 1) {
		var ce struct {
			Data struct {
				UserID int64 `json:"user_id"`
			}
		}
		require.NoError(t, json.Unmarshal(m.Data(), &ce))
		require.NotEqual(t, large.ID, ce.Data.UserID, "an event of the large user passed its refused first event")
	}
	cursor, err := f.db.RelayCursor(f.ctx, "jetstream")
	require.NoError(t, err)
	backlog, _, err := f.db.Backlog(f.ctx, cursor)
	require.NoError(t, err)
	require.Equal(t, int64(f.events-1), backlog, "the cursor stops before the refused event")

	s, err := f.js.Stream(f.ctx, f.cfg.Stream)
	require.NoError(t, err)
	cfg := s.CachedInfo().Config
	cfg.MaxMsgSize = -1
	_, err = f.js.UpdateStream(f.ctx, cfg)
	require.NoError(t, err)
	f.checkOnceInOrder(t, f.streamEvents(t, f.js, f.events))
}

// The active relay asks writers for the wake-up while events are sparse, stops asking while
// they arrive faster than it needs one, asks again when they thin out, and turns it off when
// it stops; every event is published once in order throughout.
func TestRelayAsksForTheWakeUpOnlyWhileEventsAreSparse(t *testing.T) {
	f := setup(t, natsURL())
	f.cfg.WakeupBelow = 20 // off above 40 events per second
	wanted := func() bool {
		var w bool
		require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT wanted FROM outbox_wakeup").Scan(&w))
		return w
	}
	require.False(t, wanted(), "off until a relay asks")
	_, stop := f.start(t, f.nc)
	require.Eventually(t, wanted, 5*time.Second, 10*time.Millisecond, "a quiet relay asks for the wake-up")

	// Far more than 40 events per second for a few seconds, from several writers.
	busy, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				u, err := f.db.CreateUser(f.ctx, "busy")
				if !assert.NoError(t, err) {
					return
				}
				for {
					select {
					case <-busy:
						return
					default:
					}
					_, err := f.db.Apply(f.ctx, ledger.Request{UID: uuid.New(), UserID: u.ID, Type: ledger.Deposit, Amount: 100}, httpapi.RenderTransaction)
					if !assert.NoError(t, err) {
						return
					}
				}
			})
		}
		wg.Wait()
	}()
	require.Eventually(t, func() bool { return !wanted() }, 15*time.Second, 20*time.Millisecond, "a busy relay stops asking")
	close(busy)
	<-done
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT count(*) FROM outbox").Scan(&f.events))
	require.Eventually(t, wanted, 10*time.Second, 20*time.Millisecond, "asks again once events thin out")
	f.checkOnceInOrder(t, f.streamEvents(t, f.js, f.events))
	stop()
	require.False(t, wanted(), "a stopped relay turns the wake-up off")
}
