package relay_test

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/relay"
)

// natsCluster is three NATS servers clustered with JetStream, on fixed ports so that a node
// stopped can come back as itself, with its store.
type natsCluster struct {
	opts    []*natsserver.Options
	servers []*natsserver.Server
}

func startNATSCluster(t *testing.T) *natsCluster {
	t.Helper()
	ctx := context.Background()
	c := &natsCluster{}
	var routes []string
	clientPorts, routePorts := make([]int, 3), make([]int, 3)
	for i := range 3 {
		var err error
		clientPorts[i], err = devenv.FreePort(ctx)
		require.NoError(t, err)
		routePorts[i], err = devenv.FreePort(ctx)
		require.NoError(t, err)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", routePorts[i]))
	}
	dir := t.TempDir()
	for i := range 3 {
		c.opts = append(c.opts, &natsserver.Options{
			ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: clientPorts[i], NoSigs: true,
			JetStream: true, StoreDir: filepath.Join(dir, fmt.Sprintf("n%d", i)),
			Cluster: natsserver.ClusterOpts{Name: "tally", Host: "127.0.0.1", Port: routePorts[i]},
			Routes:  natsserver.RoutesFromStr(fmt.Sprintf("%s,%s,%s", routes[0], routes[1], routes[2])),
		})
	}
	c.servers = make([]*natsserver.Server, 3)
	for i := range 3 {
		c.start(t, i)
	}
	t.Cleanup(func() {
		for _, s := range c.servers {
			if s != nil {
				s.Shutdown()
			}
		}
	})
	require.Eventually(t, func() bool {
		for _, s := range c.servers {
			if !s.JetStreamIsCurrent() {
				return false
			}
		}
		return c.metaLeader() != ""
	}, 30*time.Second, 50*time.Millisecond, "the JetStream cluster elected a leader")
	return c
}

func (c *natsCluster) start(t *testing.T, i int) {
	t.Helper()
	s, err := natsserver.NewServer(c.opts[i])
	require.NoError(t, err)
	s.Start()
	require.True(t, s.ReadyForConnections(10*time.Second))
	c.servers[i] = s
}

func (c *natsCluster) stop(i int) {
	c.servers[i].Shutdown()
	c.servers[i].WaitForShutdown()
	c.servers[i] = nil
}

func (c *natsCluster) metaLeader() string {
	for _, s := range c.servers {
		if s != nil && s.JetStreamIsLeader() {
			return s.Name()
		}
	}
	return ""
}

func (c *natsCluster) urls() string {
	var urls string
	for i, o := range c.opts {
		if i > 0 {
			urls += ","
		}
		urls += fmt.Sprintf("nats://127.0.0.1:%d", o.Port)
	}
	return urls
}

// The fault run for NATS: a stream with three replicas on three clustered nodes, deposits
// arriving all along. One node down: the relay publishes on. Two down: the stream has no
// quorum, publishing stops and the outbox's backlog and age grow. Both back: every event
// arrives, once, in each user's order.
func TestRelayThroughNATSNodeFailures(t *testing.T) {
	cluster := startNATSCluster(t)
	f := setup(t, cluster.urls())
	f.cfg.Replicas = 3
	nc, err := relay.Connect(relay.NATS{URLs: cluster.urls()}, httpapi.NewLogger(io.Discard, 0))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	r, _ := f.start(t, nc)
	require.Eventually(t, func() bool {
		s, err := f.js.Stream(f.ctx, f.cfg.Stream)
		return err == nil && s.CachedInfo().Config.Replicas == 3
	}, 30*time.Second, 50*time.Millisecond, "the relay created the stream with three replicas")

	users := make([]int64, 10)
	for i := range users {
		u, err := f.db.CreateUser(f.ctx, "cluster")
		require.NoError(t, err)
		users[i] = u.ID
	}
	var sent, acknowledged atomic.Int64
	writing, stopWriting := context.WithCancel(f.ctx)
	written := make(chan struct{})
	go func() {
		defer close(written)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; writing.Err() == nil; i++ {
			<-tick.C
			sent.Add(1)
			_, err := f.db.Apply(f.ctx, ledger.Request{UID: uuid.New(), UserID: users[i%len(users)], Type: ledger.Deposit, Amount: 100}, httpapi.RenderTransaction)
			if err == nil {
				acknowledged.Add(1)
			}
		}
	}()
	published := func() int64 { return r.Published.Load() }
	backlog := func() (int64, time.Duration) {
		cursor, err := f.db.RelayCursor(f.ctx, "jetstream")
		require.NoError(t, err)
		n, age, err := f.db.Backlog(f.ctx, cursor)
		require.NoError(t, err)
		return n, age
	}
	require.Eventually(t, func() bool { return published() > 50 }, 20*time.Second, 20*time.Millisecond)

	// The stream's leader goes down: the relay publishes on once another node leads.
	s, err := f.js.Stream(f.ctx, f.cfg.Stream)
	require.NoError(t, err)
	info, err := s.Info(f.ctx)
	require.NoError(t, err)
	var leader, other int
	_, err = fmt.Sscanf(info.Cluster.Leader, "n%d", &leader)
	require.NoError(t, err, "stream leader %q", info.Cluster.Leader)
	other = (leader + 1) % 3
	cluster.stop(leader)
	// The longest time without an acknowledgement while the next 100 events go out.
	before, last, longest := published(), published(), time.Duration(0)
	changed, deadline := time.Now(), time.Now().Add(30*time.Second)
	for published() < before+100 {
		require.True(t, time.Now().Before(deadline), "publishing goes on with the stream leader down")
		if p := published(); p != last {
			last, longest, changed = p, max(longest, time.Since(changed)), time.Now()
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("stream leader down: the longest pause in publishing %.2f s (deposits arrive every 20 ms)", longest.Seconds())

	// Two down: no quorum, nothing is acknowledged, the backlog ages.
	cluster.stop(other)
	time.Sleep(2 * time.Second) // batches in flight fail
	stalled := published()
	time.Sleep(5 * time.Second)
	require.Equal(t, stalled, published(), "nothing acknowledged with two nodes of three down")
	n, age := backlog()
	require.Positive(t, n)
	require.Greater(t, age, 4*time.Second, "the oldest unpublished event ages")
	t.Logf("two nodes down: backlog %d events, oldest %.1f s", n, age.Seconds())

	// Both back: the backlog drains.
	cluster.start(t, leader)
	cluster.start(t, other)
	back := time.Now()
	require.Eventually(t, func() bool { return published() > stalled }, 60*time.Second, 50*time.Millisecond,
		"publishing resumes once the nodes are back")
	t.Logf("publishing resumed %.1f s after the nodes returned", time.Since(back).Seconds())
	stopWriting()
	<-written

	var outbox int
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT count(*) FROM outbox").Scan(&outbox))
	var applied int
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT count(*) FROM transactions").Scan(&applied))
	require.Equal(t, int(acknowledged.Load()), applied, "every acknowledged write stored once")
	f.events = outbox
	f.checkOnceInOrder(t, f.streamEvents(t, f.js, outbox))
	t.Logf("NATS nodes down: %d writes sent, %d acknowledged, %d stored; %d events, each once and in order",
		sent.Load(), acknowledged.Load(), applied, outbox)
}
