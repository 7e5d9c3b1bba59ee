package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/postgres"
)

// With READ_DATABASE_URL set, history, dated balances and the event feed come from a real
// streaming standby, and show its lag, while writes and current balances come from the
// primary; the lag is exported; and while the standby is gone those reads fall back to the
// primary.
func TestReadDatabaseURLReadsFromTheReplica(t *testing.T) {
	t.Parallel()
	pair := startReplicatedPair(t, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := postgres.Migrate(ctx, pair.primary.URL)
	require.NoError(t, err)
	s := startServe(ctx, t, map[string]string{
		"DATABASE_URL": pair.primary.URL, "READ_DATABASE_URL": pair.standby.URL + "&connect_timeout=2", "MIGRATE_ON_START": "false",
	}, false)

	call := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, s.base+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var out map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		return resp.StatusCode, out
	}
	deposit := func(amount string) {
		t.Helper()
		status, out := call(http.MethodPost, "/v1/transaction",
			fmt.Sprintf(`{"uid":%q,"user_id":1,"type":"DEPOSIT","amount":%q}`, uuid.NewString(), amount))
		require.Equal(t, http.StatusOK, status, "%v", out)
	}
	historyLen := func() int {
		t.Helper()
		status, out := call(http.MethodGet, "/v1/user/1/transactions", "")
		require.Equal(t, http.StatusOK, status, "%v", out)
		return len(out["items"].([]any))
	}
	// replayed reports whether the standby's history of user 1 holds n rows. Until the standby
	// has replayed the user's creation it answers 404, which is a "not yet", not a failure.
	replayed := func(n int) func() bool {
		return func() bool {
			status, out := call(http.MethodGet, "/v1/user/1/transactions", "")
			items, ok := out["items"].([]any)
			return status == http.StatusOK && ok && len(items) == n
		}
	}
	balance := func(query string) string {
		t.Helper()
		status, out := call(http.MethodGet, "/v1/user/1"+query, "")
		require.Equal(t, http.StatusOK, status, "%v", out)
		return out["balance"].(string)
	}
	feedLen := func() int {
		t.Helper()
		status, out := call(http.MethodGet, "/v1/events?limit=100", "")
		require.Equal(t, http.StatusOK, status, "%v", out)
		return len(out["events"].([]any))
	}

	status, out := call(http.MethodPost, "/v1/user", `{"name":"vasya"}`)
	require.Equal(t, http.StatusCreated, status, "%v", out)
	deposit("10.00")
	require.Eventually(t, replayed(1), 10*time.Second, 20*time.Millisecond, "the standby replays the deposit")

	// With replay paused the standby stays behind: what it serves is stale, what the primary
	// serves is not.
	standby, err := pgx.Connect(ctx, pair.standby.URL)
	require.NoError(t, err)
	defer standby.Close(context.Background())
	_, err = standby.Exec(ctx, "SELECT pg_wal_replay_pause()")
	require.NoError(t, err)
	events := feedLen()
	time.Sleep(50 * time.Millisecond)
	deposit("5.00")
	at := dateQuery(time.Now().Add(time.Second))
	require.Equal(t, "15.00", balance(""), "the current balance comes from the primary")
	require.Equal(t, 1, historyLen(), "history comes from the standby, which has not replayed the deposit")
	require.Equal(t, "10.00", balance(at), "a dated balance comes from the standby too")
	require.Equal(t, events, feedLen(), "the feed's events come from the standby")
	require.Eventually(t, func() bool { return metric(t, s.admin, "tally_read_database_lag_seconds") > 0.2 },
		10*time.Second, 50*time.Millisecond, "the lag is exported while the standby is behind")
	require.Equal(t, 1.0, metric(t, s.admin, "tally_read_database_up"))

	_, err = standby.Exec(ctx, "SELECT pg_wal_replay_resume()")
	require.NoError(t, err)
	require.Eventually(t, replayed(2), 10*time.Second, 20*time.Millisecond, "the standby replays the second deposit")
	require.Equal(t, "15.00", balance(at))
	require.Equal(t, events+1, feedLen())
	require.Eventually(t, func() bool { return metric(t, s.admin, "tally_read_database_lag_seconds") == 0 },
		10*time.Second, 50*time.Millisecond, "no lag once the standby has replayed everything")

	// Without the standby, its reads go to the primary.
	require.NoError(t, pair.standby.Kill())
	deposit("1.00")
	require.Equal(t, 3, historyLen())
	require.Equal(t, "16.00", balance(dateQuery(time.Now().Add(time.Second))))
	require.Equal(t, events+2, feedLen())
	require.Equal(t, 0.0, metric(t, s.admin, "tally_read_database_up"))
}

func dateQuery(at time.Time) string {
	return "?date=" + url.QueryEscape(at.UTC().Format(time.RFC3339Nano))
}

// metric reads one unlabelled gauge from the admin port's /metrics; -1 when it is absent.
func metric(t *testing.T, admin, name string) float64 {
	t.Helper()
	resp, err := http.Get(admin + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return v
}
