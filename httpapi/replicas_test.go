package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/postgres"
)

// replicas starts n API servers, each with its own connection pool, on one database.
func replicas(t *testing.T, n int) []string {
	t.Helper()
	url := pgtest.NewDatabase(t)
	var urls []string
	for range n {
		db, err := postgres.Open(context.Background(), url)
		require.NoError(t, err)
		srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
		t.Cleanup(func() { srv.Close(); db.Close() })
		urls = append(urls, srv.URL)
	}
	return urls
}

type reply struct {
	status   int
	body     string
	replayed bool
}

func post(t *testing.T, url, body string) reply {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return reply{resp.StatusCode, string(b), resp.Header.Get("Idempotent-Replayed") == "true"}
}

func balance(t *testing.T, base string, user int64) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("%s/v1/user/%d/balance", base, user))
	require.NoError(t, err)
	defer resp.Body.Close()
	var b struct{ Balance string }
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&b))
	return b.Balance
}

func createUser(t *testing.T, base string) int64 {
	t.Helper()
	r := post(t, base+"/v1/user", `{"name": "vasya"}`)
	require.Equal(t, http.StatusCreated, r.status, r.body)
	var u struct{ ID int64 }
	require.NoError(t, json.Unmarshal([]byte(r.body), &u))
	return u.ID
}

func transaction(uid string, user int64, typ, amount string) string {
	return fmt.Sprintf(`{"uid": %q, "user_id": %d, "type": %q, "amount": %s}`, uid, user, typ, amount)
}

// 200 withdrawals of 1.00 against 100.00, sent to two replicas at once: exactly 100 succeed.
func TestWithdrawalsRaceAcrossReplicas(t *testing.T) {
	t.Parallel()
	servers := replicas(t, 2)
	user := createUser(t, servers[0])
	require.Equal(t, 200, post(t, servers[1]+"/v1/transaction", transaction(uuid.NewString(), user, "DEPOSIT", `"100.00"`)).status)

	var wg sync.WaitGroup
	statuses := make([]int, 200)
	for i := range statuses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = post(t, servers[i%2]+"/v1/transaction", transaction(uuid.NewString(), user, "WITHDRAW", "1.00")).status
		}()
	}
	wg.Wait()
	counts := map[int]int{}
	for _, s := range statuses {
		counts[s]++
	}
	require.Equal(t, map[int]int{200: 100, 402: 100}, counts)
	require.Equal(t, "0.00", balance(t, servers[0], user))
	require.Equal(t, "0.00", balance(t, servers[1], user))
}

// 40 copies of one uid, sent to two replicas at once, apply once and all get the first answer.
func TestDuplicatesRaceAcrossReplicas(t *testing.T) {
	t.Parallel()
	servers := replicas(t, 2)
	user := createUser(t, servers[0])
	body := transaction(uuid.NewString(), user, "DEPOSIT", "25.5")

	var wg sync.WaitGroup
	replies := make([]reply, 40)
	for i := range replies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies[i] = post(t, servers[i%2]+"/v1/transaction", body)
		}()
	}
	wg.Wait()
	fresh := 0
	for _, r := range replies {
		require.Equal(t, http.StatusOK, r.status, r.body)
		require.Equal(t, replies[0].body, r.body, "every copy gets the first answer byte for byte")
		if !r.replayed {
			fresh++
		}
	}
	require.Equal(t, 1, fresh)
	require.Equal(t, "25.50", balance(t, servers[1], user))
}
