package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// TestMain lets a test start this binary as tally itself (TALLY_TEST_MAIN=1), a process of
// its own that it can freeze with SIGSTOP.
func TestMain(m *testing.M) {
	if os.Getenv("TALLY_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The relay takes a list of NATS URLs and a user and password, never shows the password in
// a log line, creates the stream with the configured replicas and limits, and is ready only
// while NATS is connected.
func TestRelayCommand(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	port, err := devenv.FreePort(ctx)
	require.NoError(t, err)
	opts := &natsserver.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: t.TempDir(), NoSigs: true,
		Username: "relay", Password: "s3cret-pass"}
	startNATS := func() *natsserver.Server {
		ns, err := natsserver.NewServer(opts)
		require.NoError(t, err)
		ns.Start()
		require.True(t, ns.ReadyForConnections(10*time.Second))
		return ns
	}
	ns := startNATS()
	defer func() { ns.Shutdown() }()
	deadPort, err := devenv.FreePort(ctx)
	require.NoError(t, err)
	adminPort, err := devenv.FreePort(ctx)
	require.NoError(t, err)
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)

	var logs syncBuffer
	env := map[string]string{
		"DATABASE_URL": pgtest.NewDatabase(t), "ADMIN_PORT": strconv.Itoa(adminPort), "LOG_LEVEL": "debug",
		// A server that is down, then one with the credentials also in its URL.
		"NATS_URL":      fmt.Sprintf("nats://127.0.0.1:%d, nats://relay:s3cret-pass@127.0.0.1:%d", deadPort, port),
		"NATS_USER":     "relay",
		"NATS_PASSWORD": "s3cret-pass",
		"NATS_STREAM":   "R" + uuid.NewString()[:8], "NATS_STREAM_MAX_AGE": "48h", "NATS_STREAM_MAX_BYTES": "1000000",
	}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"relay"}, func(k string) string { return env[k] }, &logs, io.Discard)
	}()

	readyz := func() (int, string) {
		resp, err := http.Get(admin + "/readyz")
		if err != nil {
			return 0, ""
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(body))
	}
	require.Eventually(t, func() bool { code, _ := readyz(); return code == http.StatusOK }, 15*time.Second, 50*time.Millisecond)

	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("relay", "s3cret-pass"))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	var stream jetstream.Stream
	require.Eventually(t, func() bool { stream, err = js.Stream(ctx, env["NATS_STREAM"]); return err == nil }, 10*time.Second, 50*time.Millisecond)
	cfg := stream.CachedInfo().Config
	require.Equal(t, 1, cfg.Replicas)
	require.Equal(t, 48*time.Hour, cfg.MaxAge)
	require.Equal(t, int64(1000000), cfg.MaxBytes)
	require.Equal(t, jetstream.DiscardNew, cfg.Discard)
	require.Positive(t, cfg.MaxMsgSize)

	ns.Shutdown()
	ns.WaitForShutdown()
	require.Eventually(t, func() bool {
		code, body := readyz()
		return code == http.StatusServiceUnavailable && body == `{"status":"NATS not connected"}`
	}, 10*time.Second, 50*time.Millisecond, "not ready without NATS")
	ns = startNATS()
	require.Eventually(t, func() bool { code, _ := readyz(); return code == http.StatusOK }, 15*time.Second, 50*time.Millisecond,
		"ready again once NATS is back")
	cancel()
	require.NoError(t, <-done)

	require.Contains(t, logs.String(), "relay started")
	require.Contains(t, logs.String(), "NATS reconnected")
	require.Contains(t, logs.String(), "nats://redacted@127.0.0.1:")
	require.NotContains(t, logs.String(), "s3cret-pass")
}

// A NATS_URL that does not parse is reported without the credentials it carries.
func TestConfigRedactsNATSCredentials(t *testing.T) {
	t.Parallel()
	_, err := loadConfig(func(k string) string {
		return map[string]string{"NATS_URL": "nats://u:hunter2@a:4222"}[k]
	})
	require.NoError(t, err)
	_, err = loadConfig(func(k string) string {
		return map[string]string{"NATS_URL": "nats://u:hunter2@a:4222,"}[k]
	})
	require.ErrorContains(t, err, "nats://redacted@a:4222")
	require.NotContains(t, err.Error(), "hunter2")
}

// relayProcess is `tally relay` in a process of its own, this test binary run as tally.
type relayProcess struct {
	cmd   *exec.Cmd
	admin string
	logs  *syncBuffer
}

func startRelayProcess(t *testing.T, env map[string]string) *relayProcess {
	t.Helper()
	port, err := devenv.FreePort(context.Background())
	require.NoError(t, err)
	p := &relayProcess{cmd: exec.Command(os.Args[0], "relay"), admin: fmt.Sprintf("http://127.0.0.1:%d", port), logs: &syncBuffer{}}
	p.cmd.Env = append(os.Environ(), "TALLY_TEST_MAIN=1", "ADMIN_PORT="+strconv.Itoa(port))
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	require.NoError(t, p.cmd.Start())
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGCONT) //nolint:errcheck // it may be running or gone
		p.cmd.Process.Kill()                  //nolint:errcheck // it may be gone
		p.cmd.Wait()                          //nolint:errcheck // killed
	})
	return p
}

// metric reads one of the relay's metrics from its admin port, or -1.
func (p *relayProcess) metric(name string) float64 {
	client := http.Client{Timeout: time.Second}
	resp, err := client.Get(p.admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// A frozen leader (SIGSTOP: its kernel still acknowledges TCP, so only the lease's own
// deadline can end its session) loses the lease within RELAY_LEASE_TTL; the standby takes
// over and every event reaches the stream once, in each user's order. Woken again, the old
// leader finds its lease gone and publishes nothing more.
func TestFrozenRelayLeaderIsReplaced(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url := cmp.Or(os.Getenv("NATS_URL"), nats.DefaultURL)
	nc, err := nats.Connect(url)
	require.NoError(t, err, "NATS with JetStream must run at %s", url)
	t.Cleanup(nc.Close) // after the stream's deletion below: cleanups run last first
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream := "F" + uuid.NewString()[:8]
	t.Cleanup(func() { js.DeleteStream(context.Background(), stream) }) //nolint:errcheck // best effort
	dbURL := pgtest.NewDatabase(t)
	db, err := postgres.Open(ctx, dbURL)
	require.NoError(t, err)
	defer db.Close()
	const ttl = 2 * time.Second
	env := map[string]string{"DATABASE_URL": dbURL, "NATS_URL": url, "NATS_STREAM": stream,
		"NATS_SUBJECT_PREFIX": "f" + stream, "RELAY_LEASE_TTL": ttl.String(), "LOG_LEVEL": "info"}

	first := startRelayProcess(t, env)
	require.Eventually(t, func() bool { return first.metric("tally_relay_leader") == 1 }, 30*time.Second, 50*time.Millisecond)
	second := startRelayProcess(t, env)
	require.Eventually(t, func() bool { return second.metric("tally_relay_leader") == 0 }, 30*time.Second, 50*time.Millisecond)

	// Deposits at about 100 a second for the whole test, across 20 users.
	users := make([]int64, 20)
	for i := range users {
		u, err := db.CreateUser(ctx, "frozen")
		require.NoError(t, err)
		users[i] = u.ID
	}
	var sent, acknowledged int
	writing, stopWriting := context.WithCancel(ctx)
	written := make(chan struct{})
	go func() {
		defer close(written)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; writing.Err() == nil; i++ {
			<-tick.C
			sent++
			_, err := db.Apply(ctx, ledger.Request{UID: uuid.New(), UserID: users[i%len(users)], Type: ledger.Deposit, Amount: 100}, httpapi.RenderTransaction)
			if err == nil {
				acknowledged++
			}
		}
	}()
	time.Sleep(time.Second)

	require.NoError(t, first.cmd.Process.Signal(syscall.SIGSTOP))
	frozen := time.Now()
	publishedBefore := second.metric("tally_relay_published_total")
	require.Eventually(t, func() bool { return second.metric("tally_relay_published_total") > publishedBefore },
		4*ttl, 20*time.Millisecond, "the standby took over and published within twice the TTL")
	stall := time.Since(frozen)
	time.Sleep(time.Second)

	require.NoError(t, first.cmd.Process.Signal(syscall.SIGCONT))
	require.Eventually(t, func() bool { return first.metric("tally_relay_leader") == 0 }, 10*time.Second, 20*time.Millisecond,
		"the old leader noticed it lost the lease")
	published := first.metric("tally_relay_published_total")
	time.Sleep(time.Second)
	require.Equal(t, published, first.metric("tally_relay_published_total"), "the old leader publishes nothing more")
	require.Equal(t, float64(1), second.metric("tally_relay_leader"))
	stopWriting()
	<-written

	var outbox int
	require.NoError(t, db.Pool().QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&outbox))
	got := readStream(ctx, t, js, stream, outbox)
	var applied int
	require.NoError(t, db.Pool().QueryRow(ctx, "SELECT count(*) FROM transactions").Scan(&applied))
	t.Logf("frozen leader: %d writes sent, %d acknowledged, %d stored; %d events in the outbox, %d in the stream, %d duplicated, %d out of order; stall %.1f s (lease TTL %s)",
		sent, acknowledged, applied, outbox, got.events, got.duplicates, got.outOfOrder, stall.Seconds(), ttl)
	require.Equal(t, acknowledged, applied, "every acknowledged write stored once")
	require.Equal(t, outbox, got.events, "every event in the stream")
	require.Zero(t, got.duplicates)
	require.Zero(t, got.outOfOrder)
	require.Contains(t, first.logs.String(), "waiting for the lease again")
}

// streamCount is what readStream found on a stream: distinct events (by id), events seen
// again, and events that did not follow their user's previous one in sequence.
type streamCount struct{ events, duplicates, outOfOrder int }

// readStream waits until the stream holds at least want messages and reads them all; each
// must carry its event id as Nats-Msg-Id.
func readStream(ctx context.Context, t *testing.T, js jetstream.JetStream, stream string, want int) streamCount {
	t.Helper()
	var s jetstream.Stream
	var err error
	require.Eventually(t, func() bool {
		s, err = js.Stream(ctx, stream)
		return err == nil && s.CachedInfo().State.Msgs >= uint64(want)
	}, time.Minute, 50*time.Millisecond, "the stream holds %d events", want)
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	batch, err := cons.FetchNoWait(want + 100)
	require.NoError(t, err)
	var got streamCount
	seen, last := map[string]bool{}, map[int64]int64{}
	for m := range batch.Messages() {
		var ce struct {
			ID   string
			Data struct {
				UserID   int64 `json:"user_id"`
				Sequence int64
			}
		}
		require.NoError(t, json.Unmarshal(m.Data(), &ce))
		require.Equal(t, ce.ID, m.Headers().Get("Nats-Msg-Id"))
		if seen[ce.ID] {
			got.duplicates++
		}
		seen[ce.ID] = true
		if ce.Data.Sequence != last[ce.Data.UserID]+1 {
			got.outOfOrder++
		}
		last[ce.Data.UserID] = ce.Data.Sequence
	}
	require.NoError(t, batch.Error())
	got.events = len(seen)
	return got
}
