package relay_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/postgres"
)

// apiReplicas starts n API servers on the fixture's database, each with its own pool, so that
// writes to one user race across processes as they do behind a load balancer.
func (f *fixture) apiReplicas(t *testing.T, n int) []string {
	t.Helper()
	var urls []string
	for range n {
		db, err := postgres.Open(f.ctx, f.url)
		require.NoError(t, err)
		srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
		t.Cleanup(func() { srv.Close(); db.Close() })
		urls = append(urls, srv.URL)
	}
	return urls
}

// postJSON returns the status and body, or a status of 0 and the error as body: it runs on
// goroutines that must not stop the test.
func postJSON(url, body string) (int, string) {
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, string(b)
}

type feedEvent struct {
	ID   string
	Data struct {
		UserID   int64 `json:"user_id"`
		Sequence int64
	}
}

// readFeed reads GET /v1/events from the start until it has want events.
func readFeed(t *testing.T, base string, want int) []feedEvent {
	t.Helper()
	var all []feedEvent
	after := ""
	deadline := time.Now().Add(30 * time.Second)
	for len(all) < want {
		require.True(t, time.Now().Before(deadline), "only %d of %d events on the feed", len(all), want)
		resp, err := http.Get(base + "/v1/events?limit=7&wait=1&after=" + url.QueryEscape(after))
		require.NoError(t, err)
		var page struct {
			Events []feedEvent
			Next   string
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		require.NoError(t, err)
		all = append(all, page.Events...)
		after = page.Next
	}
	require.Len(t, all, want)
	return all
}

// A user's events leave in sequence order under concurrent writes to that user: deposit 30,
// then 60 withdrawals of 1 sent 8 at a time to three API replicas, with the relay running.
// Per user, both the feed and the stream must hold sequence 1, 2, 3, ... in arrival order.
func TestConcurrentWritesToOneUserLeaveInSequenceOrder(t *testing.T) {
	f := setup(t, natsURL())
	f.start(t, f.nc)
	servers := f.apiReplicas(t, 3)
	const users, withdrawals, inFlight = 3, 60, 8

	var wg sync.WaitGroup
	for u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, body := postJSON(servers[u%3]+"/v1/user", `{"name": "vasya"}`)
			var user struct{ ID int64 }
			if !assert.Equal(t, http.StatusCreated, status, body) || !assert.NoError(t, json.Unmarshal([]byte(body), &user)) {
				return
			}
			status, body = postJSON(servers[u%3]+"/v1/transaction",
				fmt.Sprintf(`{"uid": %q, "user_id": %d, "type": "DEPOSIT", "amount": "30"}`, uuid.NewString(), user.ID))
			assert.Equal(t, http.StatusOK, status, body)

			slots := make(chan struct{}, inFlight)
			var sent sync.WaitGroup
			for i := range withdrawals {
				slots <- struct{}{}
				sent.Add(1)
				go func() {
					defer func() { <-slots; sent.Done() }()
					status, body := postJSON(servers[i%3]+"/v1/transaction",
						fmt.Sprintf(`{"uid": %q, "user_id": %d, "type": "WITHDRAW", "amount": "1"}`, uuid.NewString(), user.ID))
					assert.Contains(t, []int{http.StatusOK, http.StatusPaymentRequired}, status, body)
				}()
			}
			sent.Wait()
		}()
	}
	wg.Wait()
	require.False(t, t.Failed(), "every write answered")
	// Per user: created, the deposit and funded, 30 withdrawals applied and depleted, 30 refused.
	f.events = users * (1 + 2 + 30 + 1 + 30)

	t.Run("feed", func(t *testing.T) {
		last := map[int64]int64{}
		for _, e := range readFeed(t, servers[0], f.events) {
			require.Equal(t, last[e.Data.UserID]+1, e.Data.Sequence,
				"user %d: sequence %d arrived after %d", e.Data.UserID, e.Data.Sequence, last[e.Data.UserID])
			last[e.Data.UserID] = e.Data.Sequence
		}
		require.Len(t, last, users)
	})
	t.Run("JetStream", func(t *testing.T) {
		f.checkOnceInOrder(t, f.streamEvents(t, f.js, f.events))
	})
}
