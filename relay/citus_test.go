package relay_test

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
	"github.com/tally-ledger/tally/relay"
)

// setupCitus is setup on a Citus database (the tests skip without a Citus cluster, and fail
// when one is required) and a private NATS server.
func setupCitus(t *testing.T) *fixture {
	t.Helper()
	pgtest.RequireCitus(t)
	ns, err := devenv.StartNATS(0, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(ns.Shutdown)
	f := setup(t, ns.ClientURL())
	distributed, err := f.db.Distributed(f.ctx)
	require.NoError(t, err)
	require.True(t, distributed, "the test database is distributed")
	return f
}

// writer writes to the fixture's database through a Store instance of its own: users, and
// deposits to random users of its own, until stop is closed. It counts the events it caused.
type writer struct {
	events atomic.Int64
	err    atomic.Value
}

func (f *fixture) startWriter(t *testing.T, stop <-chan struct{}, wg *sync.WaitGroup) *writer {
	t.Helper()
	db, err := postgres.Open(f.ctx, f.url)
	require.NoError(t, err)
	t.Cleanup(db.Close)
	w := &writer{}
	wg.Go(func() {
		var users []int64
		for {
			select {
			case <-stop:
				return
			default:
			}
			if len(users) < 5 || rand.IntN(8) == 0 {
				u, err := db.CreateUser(f.ctx, "u")
				if err != nil {
					w.err.Store(err)
					return
				}
				users = append(users, u.ID)
				w.events.Add(1)
				continue
			}
			user := users[rand.IntN(len(users))]
			before, err := db.User(f.ctx, user)
			if err == nil {
				_, err = db.Apply(f.ctx, ledger.Request{UID: uuid.New(), UserID: user, Type: ledger.Deposit, Amount: 100}, httpapi.RenderTransaction)
			}
			if err != nil {
				w.err.Store(err)
				return
			}
			w.events.Add(1)
			if before.Balance == 0 {
				w.events.Add(1) // balance.funded
			}
		}
	})
	return w
}

// load runs two writers, each with a Store instance of its own, while during runs, and adds
// their events to the fixture's count.
func (f *fixture) load(t *testing.T, during func()) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	writers := []*writer{f.startWriter(t, stop, &wg), f.startWriter(t, stop, &wg)}
	during()
	close(stop)
	wg.Wait()
	for _, w := range writers {
		if err := w.err.Load(); err != nil {
			t.Fatalf("write: %v", err)
		}
		f.events += int(w.events.Load())
	}
}

func pause(d time.Duration) func() { return func() { time.Sleep(d) } }

// backlog writes events straight into the outbox, perUser for each of users users from id
// 1e9 on (ids no writer reaches), as a backlog for the relay to work through.
func (f *fixture) backlog(t testing.TB, users, perUser int) {
	t.Helper()
	_, err := f.db.Pool().Exec(f.ctx, `INSERT INTO outbox (id, user_id, user_seq, type, event)
		SELECT id, u, s, 'transaction.applied',
			json_build_object('id', id, 'type', 'tally.transaction.applied', 'data', json_build_object('user_id', u, 'sequence', s))
		FROM (SELECT gen_random_uuid() AS id, u, s
			FROM generate_series(1000000000, 1000000000 + $1 - 1) AS u, generate_series(1, $2) AS s) e`, users, perUser)
	require.NoError(t, err)
	f.events += users * perUser
}

// checkDrained waits until no event waits unpublished; a slow machine takes its time. The
// stream is checked after it, so that a shortfall there is a loss, not a relay behind.
func (f *fixture) checkDrained(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool {
		n, _, err := f.db.Unpublished(f.ctx)
		return err == nil && n == 0
	}, 3*time.Minute, 20*time.Millisecond, "every event marked published")
	var total int
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT count(*) FROM outbox").Scan(&total))
	require.Equal(t, f.events, total, "the outbox holds the events the writers counted")
}

// Two Store instances write concurrently while a relay runs: every event reaches JetStream
// once, each user's in sequence order.
func TestCitusRelayPublishesEveryEventOnceInOrder(t *testing.T) {
	f := setupCitus(t)
	r, _ := f.start(t, f.nc)
	f.load(t, pause(2*time.Second))
	f.checkDrained(t)
	f.checkOnceInOrder(t, f.streamEvents(t, f.js, f.events))
	require.Equal(t, int64(f.events), r.Published.Load())
	require.Equal(t, relay.DefaultSlices, r.SlicesHeld(), "a relay alone holds every slice")
	t.Logf("%d events", f.events)
}

// A relay stopped mid-stream, again and again, and started again loses no event and
// duplicates none on the stream: what it published and had not marked goes out again, and
// the stream drops it by its Nats-Msg-Id.
func TestCitusRelayRestartsLoseAndDuplicateNothing(t *testing.T) {
	f := setupCitus(t)
	f.cfg.Batch = 64
	f.backlog(t, 300, 10)
	var relays []*relay.Relay
	f.load(t, func() {
		for range 6 {
			r, stop := f.start(t, f.nc)
			relays = append(relays, r)
			// Stopped while it publishes: between a batch's publish and its mark, often.
			require.Eventually(t, func() bool { return r.Published.Load() > 0 }, 30*time.Second, time.Millisecond)
			time.Sleep(time.Duration(rand.IntN(200)) * time.Millisecond)
			stop()
		}
	})
	last, _ := f.start(t, f.nc)
	relays = append(relays, last)
	f.checkDrained(t)
	f.checkOnceInOrder(t, f.streamEvents(t, f.js, f.events))
	var acked int64
	for _, r := range relays {
		acked += r.Published.Load()
	}
	require.GreaterOrEqual(t, acked, int64(f.events))
	runs := make([]int64, len(relays))
	for i, r := range relays {
		runs[i] = r.Published.Load()
	}
	t.Logf("%d events, %d acknowledgements over %d relay runs %v (the stream dropped %d repeats)",
		f.events, acked, len(relays), runs, acked-int64(f.events))
}

// Two relays divide the slices and both publish; when one stops, the other takes its slices
// over and publishes everything.
func TestCitusRelaysShareSlicesAndTakeOver(t *testing.T) {
	f := setupCitus(t)
	f.cfg.Slices = 4
	first, stopFirst := f.start(t, f.nc)
	require.Eventually(t, func() bool { return first.SlicesHeld() == 4 }, 10*time.Second, 10*time.Millisecond)
	second, _ := f.start(t, f.nc)
	require.Eventually(t, func() bool { return first.SlicesHeld() == 2 && second.SlicesHeld() == 2 },
		10*time.Second, 10*time.Millisecond, "the relays share the slices")
	for _, r := range []*relay.Relay{first, second} {
		require.Eventually(t, func() bool { return slicesHeld(r, 2) }, 10*time.Second, 100*time.Millisecond,
			"tally_relay_slices_held says 2 on each relay")
	}
	f.load(t, pause(2*time.Second))
	f.checkDrained(t)
	f.checkOnceInOrder(t, f.streamEvents(t, f.js, f.events))
	require.Positive(t, first.Published.Load())
	require.Positive(t, second.Published.Load())
	require.Equal(t, int64(f.events), first.Published.Load()+second.Published.Load())

	stopFirst()
	before, shared := second.Published.Load(), f.events
	require.Eventually(t, func() bool { return second.SlicesHeld() == 4 }, 10*time.Second, 10*time.Millisecond,
		"the survivor takes the stopped relay's slices")
	require.Eventually(t, func() bool { return slicesHeld(second, 4) }, 10*time.Second, 100*time.Millisecond,
		"tally_relay_slices_held says 4 on the survivor")
	f.load(t, pause(time.Second))
	f.checkDrained(t)
	f.checkOnceInOrder(t, f.streamEvents(t, f.js, f.events))
	require.Equal(t, int64(f.events-shared), second.Published.Load()-before)
	t.Logf("shared: %d and %d events; after the first stopped the second published %d",
		first.Published.Load(), before, second.Published.Load()-before)
}

// Shards move between workers while events are written and published: each user's events
// still reach the stream once and in sequence order.
func TestCitusRelayAcrossShardMoves(t *testing.T) {
	f := setupCitus(t)
	f.start(t, f.nc)
	type placement struct {
		shard int64
		host  string
		port  int
	}
	rows, err := f.db.Pool().Query(f.ctx, `SELECT shardid, nodename, nodeport FROM citus_shards
		WHERE table_name = 'outbox'::regclass ORDER BY shardid`)
	require.NoError(t, err)
	var placements []placement
	for rows.Next() {
		var p placement
		require.NoError(t, rows.Scan(&p.shard, &p.host, &p.port))
		placements = append(placements, p)
	}
	require.NoError(t, rows.Err())
	from := placements[0]
	var to placement
	for _, p := range placements {
		if p.port != from.port {
			to = p
		}
	}
	require.NotZero(t, to.port, "the shards lie on two workers")
	var moved []int64
	f.load(t, func() {
		time.Sleep(300 * time.Millisecond)
		for _, p := range placements {
			if p.port != from.port || len(moved) == 3 {
				continue
			}
			// Logical replication: writes go on during the copy, and stop only for the switch.
			_, err := f.db.Pool().Exec(f.ctx, `SELECT citus_move_shard_placement($1, $2, $3, $4, $5, shard_transfer_mode => 'force_logical')`,
				p.shard, p.host, p.port, to.host, to.port)
			require.NoError(t, err)
			moved = append(moved, p.shard)
		}
		time.Sleep(300 * time.Millisecond)
	})
	var onTarget int
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, `SELECT count(*) FROM citus_shards
		WHERE table_name = 'outbox'::regclass AND shardid = ANY($1) AND nodeport = $2`, moved, to.port).Scan(&onTarget))
	require.Equal(t, len(moved), onTarget, "the shards moved")
	f.checkDrained(t)
	f.checkOnceInOrder(t, f.streamEvents(t, f.js, f.events))
	t.Logf("%d events; moved shards %v", f.events, moved)
}

// slicesHeld reports whether the relay's tally_relay_slices_held, as Prometheus scrapes it,
// is want. The gauge is the count taken at the start of the relay's last publishing round,
// so callers wait for the value.
func slicesHeld(r *relay.Relay, want float64) bool {
	reg := prometheus.NewPedanticRegistry()
	if reg.Register(r.Collector()) != nil {
		return false
	}
	families, err := reg.Gather()
	if err != nil {
		return false
	}
	for _, f := range families {
		if f.GetName() == "tally_relay_slices_held" {
			return len(f.GetMetric()) == 1 && f.GetMetric()[0].GetGauge().GetValue() == want
		}
	}
	return false
}
