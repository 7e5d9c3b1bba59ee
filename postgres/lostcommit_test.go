package postgres_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// commitCutter is a TCP proxy to PostgreSQL that, once armed, lets a chosen COMMIT happen and
// cuts the connection before its reply reaches the client: the client cannot tell whether
// the transaction committed.
type commitCutter struct {
	listener net.Listener
	upstream string
	commits  atomic.Int64 // COMMIT replies still to let through once armed; -1: disarmed
	cut      atomic.Int64 // connections cut
	wg       sync.WaitGroup
}

func newCommitCutter(t *testing.T, upstream string) *commitCutter {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	c := &commitCutter{listener: l, upstream: upstream}
	c.commits.Store(-1)
	c.wg.Go(c.accept)
	t.Cleanup(func() { _ = l.Close(); c.wg.Wait() })
	return c
}

// arm cuts the connection that carries the reply to the (pass+1)-th COMMIT from now.
func (c *commitCutter) arm(pass int64) { c.commits.Store(pass) }

func (c *commitCutter) accept() {
	for {
		client, err := c.listener.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", c.upstream)
		if err != nil {
			_ = client.Close()
			continue
		}
		c.wg.Go(func() {
			io.Copy(server, client) //nolint:errcheck // ends when either side closes
			_ = server.Close()
		})
		c.wg.Go(func() {
			c.relay(client, server)
			_ = client.Close()
			_ = server.Close()
		})
	}
}

// relay copies the server's messages to the client one whole message at a time, and stops
// without passing it on at the COMMIT reply the proxy is armed for.
func (c *commitCutter) relay(client, server net.Conn) {
	var pending []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		if err != nil {
			return
		}
		pending = append(pending, buf[:n]...)
		var out []byte
		for len(pending) >= 5 {
			size := 1 + int(binary.BigEndian.Uint32(pending[1:5]))
			if len(pending) < size {
				break
			}
			msg := pending[:size]
			// CommandComplete 'C' with the tag COMMIT: the transaction is durable by now.
			if msg[0] == 'C' && bytes.HasPrefix(msg[5:], []byte("COMMIT\x00")) {
				if c.commits.CompareAndSwap(0, -1) {
					c.cut.Add(1)
					client.Write(out) //nolint:errcheck
					return
				}
				if left := c.commits.Load(); left > 0 {
					c.commits.CompareAndSwap(left, left-1)
				}
			}
			out = append(out, msg...)
			pending = pending[size:]
		}
		if _, err := client.Write(out); err != nil {
			return
		}
	}
}

// A batch whose COMMIT succeeds but whose reply is lost with the connection is tried again,
// finds its rows stored, and answers every member as a first answer, not as a replay: the
// client never saw the first one.
func TestBatchWhoseCommitReplyIsLostAnswersFirstAnswers(t *testing.T) {
	f := setup(t)
	u, err := url.Parse(f.url)
	require.NoError(t, err)
	cutter := newCommitCutter(t, u.Host)
	u.Host = cutter.listener.Addr().String()
	// The proxy reads whole protocol messages: no TLS negotiation, whose answer is one byte.
	q := u.Query()
	q.Set("sslmode", "disable")
	u.RawQuery = q.Encode()
	db, err := postgres.Open(f.ctx, u.String(), postgres.WithWriteBatching(64, 1))
	require.NoError(t, err)
	t.Cleanup(db.Close)
	reg := prometheus.NewRegistry()
	reg.MustRegister(db.WriteCollector())
	bf := batchFixture{fixture: fixture{db: db, url: f.url, ctx: f.ctx}, reg: reg}

	user := bf.user(t)
	release, blocked := bf.stall(t)
	reqs := []ledger.Request{deposit(user, 100), deposit(user, 200), withdraw(user, 50)}
	pending := make([]<-chan result, len(reqs))
	for i, req := range reqs {
		pending[i] = bf.submit(t, f.ctx, req, i+1)
	}
	// The blocker's batch commits and is answered; the three members' COMMIT is cut.
	cutter.arm(1)
	release()
	first := <-blocked
	require.NoError(t, first.err)
	require.False(t, first.out.Replayed, "the batch before the cut one committed and was answered")
	for i, p := range pending {
		r := <-p
		require.NoError(t, r.err, "member %d", i)
		require.False(t, r.out.Replayed, "member %d: its first answer, though found stored", i)
		stored, err := db.Transaction(f.ctx, reqs[i].UID)
		require.NoError(t, err)
		require.Equal(t, stored.BalanceAfter, r.out.Tx.BalanceAfter, "member %d", i)
	}
	require.Equal(t, int64(1), cutter.cut.Load(), "one COMMIT reply was cut")
	require.Equal(t, ledger.Amount(100+200-50), bf.balance(t, user), "applied once")
	var rows int
	require.NoError(t, db.Pool().QueryRow(f.ctx, "SELECT count(*) FROM transactions WHERE user_id = $1", user).Scan(&rows))
	require.Equal(t, 3, rows)

	// The same uids sent again are replays.
	for i, req := range reqs {
		out, err := db.Apply(f.ctx, req, render)
		require.NoError(t, err)
		require.True(t, out.Replayed, "member %d", i)
	}
}
