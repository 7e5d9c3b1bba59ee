package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
)

// The whole path as separate processes: tally serve and tally relay on a fresh database, a
// NATS server of the test's own (embedded in the test), and adengine on a database of its own. While transactions
// go through the Go client, the relay and adengine are killed and restarted and NATS is down
// for five seconds; duplicates, and another deployment's events for users 1 to 5, are injected
// into the stream. Afterwards adengine must hold
// exactly the users with funds, and exactly one effect per applied transaction.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs tally, NATS and adengine")
	}
	t.Parallel()
	x := &e2e{t: t, ctx: t.Context(), bin: t.TempDir()}
	x.build() // unbounded but for the test's timeout: a cold build cache takes a while
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	x.ctx = ctx
	began := time.Now()

	tallyURL, engineURL := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	natsPort, err := devenv.FreePort(ctx)
	require.NoError(t, err)
	natsDir := t.TempDir()
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	// The same embedded server as tally dev's, on a port of its own so that it can be stopped
	// and started again at the same address.
	startNATS := func() *natsserver.Server {
		ns, err := devenv.StartNATS(natsPort, natsDir)
		require.NoError(t, err)
		t.Cleanup(ns.Shutdown)
		return ns
	}
	// The stream is shared with another deployment (injectForeign) whose users have the same
	// ids; the source tells the two apart.
	source := "tally/e2e/" + filepath.Base(t.TempDir())
	tallyEnv := []string{"DATABASE_URL=" + tallyURL, "NATS_URL=" + natsURL, "PORT=0", "ADMIN_PORT=0", "EVENT_SOURCE=" + source}
	startRelay := func() *proc { return x.start("relay", tallyEnv, filepath.Join(x.bin, "tally"), "relay") }
	engineEnv := []string{"ADENGINE_DATABASE_URL=" + engineURL, "NATS_URL=" + natsURL, "TALLY_EVENT_SOURCE=" + source,
		"ADENGINE_DURABLE=adengine-e2e", "ADENGINE_ACK_WAIT=3s"}
	startEngine := func() *proc { return x.start("adengine", engineEnv, filepath.Join(x.bin, "adengine")) }

	nats1 := startNATS()
	serve := x.start("serve", tallyEnv, filepath.Join(x.bin, "tally"), "serve")
	relay1 := startRelay()
	engine1 := startEngine()
	api := client.New("http://"+serve.listeningAddr(t),
		client.WithRetryPolicy(client.RetryPolicy{MaxAttempts: 10, BaseDelay: 50 * time.Millisecond, MaxDelay: time.Second}))

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	accounts := make([]*account, 30)
	for i := range accounts {
		u, err := api.CreateUser(ctx, fmt.Sprintf("user %d", i))
		require.NoError(t, err)
		// The first three only ever ask for more than they have.
		accounts[i] = &account{id: u.ID, refuseOnly: i < 3, endFunded: i%2 == 1, rnd: rand.New(rand.NewPCG(seed, uint64(i)))}
	}
	phase := func(steps int, pace time.Duration) error {
		var wg sync.WaitGroup
		errs := make(chan error, len(accounts))
		for _, a := range accounts {
			wg.Go(func() {
				for range steps {
					if err := a.step(ctx, api); err != nil {
						errs <- err
						return
					}
					time.Sleep(pace)
				}
			})
		}
		wg.Wait()
		close(errs)
		return <-errs
	}

	require.NoError(t, phase(4, 0))
	// The relay dies with a backlog: its successor publishes from the saved cursor, and the
	// stream drops what is published twice. adengine dies too and resumes from its durable
	// consumer.
	done := make(chan error, 1)
	go func() { done <- phase(4, 0) }()
	time.Sleep(100 * time.Millisecond)
	relay1.stop(syscall.SIGKILL)
	engine1.stop(syscall.SIGKILL)
	require.NoError(t, <-done)
	startRelay()
	startEngine()

	// NATS is down for five seconds while writes go on; they wait in the outbox.
	nats1.Shutdown()
	nats1.WaitForShutdown()
	require.NoError(t, phase(4, 1200*time.Millisecond))
	startNATS()
	var wg sync.WaitGroup
	for _, a := range accounts {
		wg.Go(func() { assert.NoError(t, a.finish(ctx, api)) })
	}
	wg.Wait()
	require.False(t, t.Failed())
	// Injected before the duplicates, so that once adengine has seen those it has seen these.
	x.injectForeign(natsURL, accounts[:5])
	injected := x.injectDuplicates(natsURL, source, 60)
	t.Logf("%d transactions written and %d duplicate messages injected in %s", countTx(accounts), injected, time.Since(began).Round(time.Millisecond))

	tallyDB, err := pgx.Connect(ctx, tallyURL)
	require.NoError(t, err)
	defer tallyDB.Close(context.Background())
	engineDB, err := pgx.Connect(ctx, engineURL)
	require.NoError(t, err)
	defer engineDB.Close(context.Background())
	const relevant = `type IN ('transaction.applied', 'balance.funded', 'balance.depleted')`
	waitStart := time.Now()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var events, inbox, deliveries int64
		require.NoError(c, tallyDB.QueryRow(ctx, "SELECT count(*) FROM outbox WHERE "+relevant).Scan(&events))
		require.NoError(c, engineDB.QueryRow(ctx, "SELECT (SELECT count(*) FROM inbox), (SELECT coalesce(sum(count), 0) FROM deliveries)").
			Scan(&inbox, &deliveries))
		assert.Equal(c, events, inbox, "events handled")
		assert.GreaterOrEqual(c, deliveries-inbox, int64(injected), "duplicate deliveries")
	}, 60*time.Second, 200*time.Millisecond, "adengine did not catch up")
	t.Logf("adengine caught up %s after the last write", time.Since(waitStart).Round(time.Millisecond))

	// Every relevant event, each once.
	eventIDs := queryStrings(t, tallyDB, "SELECT id::text FROM outbox WHERE "+relevant)
	require.ElementsMatch(t, eventIDs, queryStrings(t, engineDB, "SELECT event_id::text FROM inbox"))

	// The funded users are exactly those with a positive balance.
	var wantFunded []int64
	for _, a := range accounts {
		b, err := api.Balance(ctx, a.id)
		require.NoError(t, err)
		require.Equal(t, a.balance, b.Balance, "user %d", a.id)
		if b.Balance > 0 {
			wantFunded = append(wantFunded, a.id)
		}
	}
	rows, err := engineDB.Query(ctx, "SELECT user_id FROM funding WHERE funded")
	require.NoError(t, err)
	funded, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.ElementsMatch(t, wantFunded, funded)
	require.NotEmpty(t, wantFunded)
	require.Less(t, len(wantFunded), len(accounts))

	// One effect per applied transaction, none for a refused one.
	var applied, rejected []string
	for _, a := range accounts {
		var history []string
		for tx, err := range api.HistoryAll(ctx, a.id, client.HistoryQuery{Limit: 1000}) {
			require.NoError(t, err)
			history = append(history, tx.UID)
		}
		require.ElementsMatch(t, a.applied, history, "user %d", a.id)
		applied = append(applied, history...)
		rejected = append(rejected, a.rejected...)
	}
	require.NotEmpty(t, rejected)
	effects := map[string]int64{}
	rows, err = engineDB.Query(ctx, "SELECT uid::text, effects FROM applied_seen")
	require.NoError(t, err)
	var uid string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&uid, &n}, func() error { effects[uid] = n; return nil })
	require.NoError(t, err)
	require.Len(t, effects, len(applied))
	for _, uid := range applied {
		require.Equal(t, int64(1), effects[uid], "effects of applied transaction %s", uid)
	}
	for _, uid := range rejected {
		require.NotContains(t, effects, uid, "refused transaction %s", uid)
	}

	logs := x.output("adengine")
	require.Contains(t, logs, `"msg":"start campaigns for user `)
	require.Contains(t, logs, `"msg":"stop campaigns for user `)
	t.Logf("%d applied, %d refused, %d users funded; %s without the build", len(applied), len(rejected), len(funded),
		time.Since(began).Round(time.Millisecond))
}

// account is one user and what the test expects of it.
type account struct {
	id         int64
	refuseOnly bool // only withdrawals larger than the balance
	endFunded  bool // ends with a positive balance, or else at zero
	rnd        *rand.Rand
	balance    client.Amount
	last       *client.TransactionRequest
	lastStatus client.Status
	applied    []string // uids
	rejected   []string
}

// step sends one random request: a deposit, a withdrawal that may be refused, a withdrawal
// of the whole balance, or the previous request again with its uid.
func (a *account) step(ctx context.Context, api *client.Client) error {
	req := client.TransactionRequest{UID: client.NewUID(), UserID: a.id, Type: client.Withdraw}
	switch r := a.rnd.IntN(10); {
	case a.refuseOnly:
		req.Amount = a.balance + 1 + client.Amount(a.rnd.IntN(1000))
	case r < 2 && a.last != nil:
		return a.send(ctx, api, *a.last, true)
	case r < 6:
		req.Type, req.Amount = client.Deposit, 1+client.Amount(a.rnd.IntN(5000))
	case r < 7 && a.balance > 0:
		req.Amount = a.balance
	default: // a third of these overdraw
		req.Amount = 1 + client.Amount(a.rnd.Int64N(int64(a.balance)*3/2+100))
	}
	return a.send(ctx, api, req, false)
}

// finish leaves the balance positive or at zero, as the account should end.
func (a *account) finish(ctx context.Context, api *client.Client) error {
	switch {
	case a.endFunded && a.balance == 0:
		return a.send(ctx, api, client.TransactionRequest{UID: client.NewUID(), UserID: a.id, Type: client.Deposit, Amount: 777}, false)
	case !a.endFunded && a.balance > 0:
		return a.send(ctx, api, client.TransactionRequest{UID: client.NewUID(), UserID: a.id, Type: client.Withdraw, Amount: a.balance}, false)
	}
	return nil
}

func (a *account) send(ctx context.Context, api *client.Client, req client.TransactionRequest, again bool) error {
	res, err := api.Transact(ctx, req)
	status := client.Applied
	switch {
	case client.IsInsufficientFunds(err):
		status = client.Rejected
	case err != nil:
		return fmt.Errorf("user %d: %s %s %s: %w", a.id, req.Type, req.Amount, req.UID, err)
	}
	if again {
		if !res.Replayed || status != a.lastStatus {
			return fmt.Errorf("user %d: resending %s gave %s (replayed %t), first %s", a.id, req.UID, status, res.Replayed, a.lastStatus)
		}
		return nil
	}
	a.last, a.lastStatus = &req, status
	if status == client.Rejected {
		a.rejected = append(a.rejected, req.UID)
		return nil
	}
	a.applied = append(a.applied, req.UID)
	if req.Type == client.Deposit {
		a.balance += req.Amount
	} else {
		a.balance -= req.Amount
	}
	return nil
}

func countTx(accounts []*account) int {
	n := 0
	for _, a := range accounts {
		n += len(a.applied) + len(a.rejected)
	}
	return n
}

// e2e runs the processes of one end-to-end test.
type e2e struct {
	t     *testing.T
	ctx   context.Context
	bin   string
	mu    sync.Mutex
	procs []*proc
}

// build compiles tally and adengine into x.bin.
func (x *e2e) build() {
	began := time.Now()
	cmd := exec.CommandContext(x.ctx, "go", "build", "-o", x.bin+string(filepath.Separator), "./cmd/tally", "./examples/adengine")
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.CombinedOutput()
	require.NoError(x.t, err, "go build: %s", out)
	x.t.Logf("built tally and adengine in %s", time.Since(began).Round(time.Millisecond))
}

// start runs a process that is killed when the test ends; its output is logged if the test
// fails. env nil means the test's environment.
func (x *e2e) start(name string, env []string, path string, args ...string) *proc {
	x.t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = env
	p := &proc{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	require.NoError(x.t, cmd.Start(), "start %s", name)
	go func() { defer close(p.done); cmd.Wait() }() //nolint:errcheck // killed processes exit non-zero
	x.mu.Lock()
	x.procs = append(x.procs, p)
	n := len(x.procs)
	x.mu.Unlock()
	x.t.Cleanup(func() {
		p.stop(syscall.SIGKILL)
		if x.t.Failed() {
			x.t.Logf("--- %s #%d output, last 3000 bytes:\n%s", name, n, tail(p.out.String(), 3000))
		}
	})
	return p
}

// output is everything the processes of that name wrote.
func (x *e2e) output(name string) string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var b strings.Builder
	for _, p := range x.procs {
		if p.name == name {
			b.WriteString(p.out.String())
		}
	}
	return b.String()
}

// jetStream connects to NATS for the rest of the test.
func (x *e2e) jetStream(natsURL string) jetstream.JetStream {
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1))
	require.NoError(x.t, err)
	x.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(x.t, err)
	return js
}

// injectDuplicates publishes again, without a de-duplication id, up to max of the messages
// of the tally with that source that adengine acts on: what a relay that republished after the duplicate window would do. It
// returns how many it published.
func (x *e2e) injectDuplicates(natsURL, source string, max int) int {
	t := x.t
	js := x.jetStream(natsURL)
	var err error
	var stream jetstream.Stream
	require.Eventually(t, func() bool {
		stream, err = js.Stream(x.ctx, "TALLY")
		if err != nil {
			return false
		}
		info, err := stream.Info(x.ctx)
		return err == nil && info.State.Msgs >= uint64(max)
	}, 30*time.Second, 100*time.Millisecond, "the stream did not fill")
	var n int
	for seq := uint64(1); n < max; seq++ {
		// The relay may still be publishing its backlog.
		var m *jetstream.RawStreamMsg
		require.Eventually(t, func() bool {
			m, err = stream.GetMsg(x.ctx, seq)
			return err == nil
		}, 30*time.Second, 50*time.Millisecond, "stream message %d", seq)
		if e, err := client.DecodeEvent(m.Data); err != nil || e.Source != source {
			continue // another deployment's: adengine ignores those, duplicated or not
		}
		switch m.Subject {
		case "tally.transaction.applied", "tally.balance.funded", "tally.balance.depleted":
			_, err := js.Publish(x.ctx, m.Subject, m.Data)
			require.NoError(t, err)
			n++
		}
	}
	return n
}

// injectForeign publishes what another deployment, with its own users of the same ids and
// the default source of old, writes to a shared stream: for each account, an applied
// transaction and the balance crossing opposite to the account's end, with sequences above
// any the test reaches, so that a consumer that took them for its own would flip the flags.
func (x *e2e) injectForeign(natsURL string, accounts []*account) {
	t := x.t
	js := x.jetStream(natsURL)
	for _, a := range accounts {
		crossing := ledger.EventBalanceFunded
		if a.endFunded {
			crossing = ledger.EventBalanceDepleted
		}
		for i, typ := range []ledger.EventType{ledger.EventTransactionApplied, crossing} {
			body := sourcedEvent("tally", typ, a.id, 1_000_000+int64(i), uuid.New())
			_, err := js.Publish(x.ctx, "tally."+string(typ), body)
			require.NoError(t, err)
		}
	}
}

// proc is a running child process.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// stop signals the process and waits for it to exit, killing it after 10 seconds.
func (p *proc) stop(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(sig) //nolint:errcheck // it may have exited meanwhile
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill() //nolint:errcheck // as above
		<-p.done
	}
}

// listeningAddr waits for tally's "listening" log line and returns 127.0.0.1 with its port.
func (p *proc) listeningAddr(t *testing.T) string {
	t.Helper()
	var addr string
	require.Eventually(t, func() bool {
		sc := bufio.NewScanner(strings.NewReader(p.out.String()))
		for sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
				_, port, err := net.SplitHostPort(line.Addr)
				if err == nil {
					addr = net.JoinHostPort("127.0.0.1", port)
					return true
				}
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "%s never logged its address", p.name)
	return addr
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

func queryStrings(t *testing.T, conn *pgx.Conn, sql string) []string {
	t.Helper()
	rows, err := conn.Query(t.Context(), sql)
	require.NoError(t, err)
	s, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return s
}
