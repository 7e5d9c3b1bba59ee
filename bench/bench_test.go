package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
)

// fixture is two API instances on one fresh database, as two replicas.
type fixture struct {
	urls        string
	databaseURL string
}

func setup(t *testing.T) fixture {
	t.Helper()
	db, databaseURL := pgtest.NewDB(t)
	var urls []string
	for range 2 {
		srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	return fixture{urls: strings.Join(urls, ","), databaseURL: databaseURL}
}

// shortRun are the flags of a small, short run with many refusals, replays and back-dated
// writes, so that every path of the audit has something to check.
func (f fixture) shortRun(duration string, extra ...string) []string {
	return append([]string{
		"--url", f.urls, "--database-url", f.databaseURL, "--users", "6", "--hot-users", "2", "--hot-share", "0.5",
		"--workers", "4", "--duration", duration, "--initial", "1.00", "--amount-max", "3.00",
		"--retry-share", "0.2", "--backdate-share", "0.2", "--verify-sample", "20",
	}, extra...)
}

func TestRunVerifiesAShortRun(t *testing.T) {
	t.Parallel()
	f := setup(t)
	jsonFile := filepath.Join(t.TempDir(), "results.json")
	writesFile := filepath.Join(t.TempDir(), "writes.jsonl")
	var stdout, stderr bytes.Buffer
	err := Run(context.Background(), f.shortRun("2s", "--verify", "--json", jsonFile, "--writes", writesFile), &stdout, &stderr)
	require.NoError(t, err, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	require.Contains(t, stderr.String(), "req/s", "a progress line every second")
	require.Contains(t, stdout.String(), "verify:")
	require.NotContains(t, stdout.String(), "FAIL")

	res := readCleanResults(t, jsonFile)
	require.Positive(t, res.Requests)
	require.Zero(t, res.Errors)
	require.GreaterOrEqual(t, len(res.Series), 2)
	require.Positive(t, res.Writes.Applied)
	require.Positive(t, res.Writes.Refused, "withdrawals of up to 3.00 from 1.00 get refused")
	ops := map[string]OpResult{}
	for _, o := range res.Ops {
		ops[o.Name] = o
	}
	require.Positive(t, ops["replay"].Count)
	require.Positive(t, ops["deposit"].Statuses["200"])
	require.LessOrEqual(t, ops["all"].P50Ms, ops["all"].P99Ms)

	lines, err := os.ReadFile(writesFile)
	require.NoError(t, err)
	require.Equal(t, res.Writes.Sent, bytes.Count(lines, []byte("\n")))
}

// readCleanResults reads the results a --json file holds, whose audit must have run every
// check on something and found nothing.
func readCleanResults(t *testing.T, jsonFile string) Results {
	t.Helper()
	var res Results
	raw, err := os.ReadFile(jsonFile)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &res))
	require.NotNil(t, res.Audit)
	require.Len(t, res.Audit.Checks, 6)
	for _, c := range res.Audit.Checks {
		require.Positive(t, c.Checked, c.Name)
		require.Zero(t, c.Violations, c.Name)
	}
	return res
}

func TestOpenLoopKeepsItsRate(t *testing.T) {
	t.Parallel()
	f := setup(t)
	jsonFile := filepath.Join(t.TempDir(), "results.json")
	var stdout bytes.Buffer
	err := Run(context.Background(), []string{"--url", f.urls, "--users", "3", "--workers", "4",
		"--rate", "100", "--duration", "1s", "--json", jsonFile}, &stdout, io.Discard)
	require.NoError(t, err, stdout.String())
	var res Results
	raw, err := os.ReadFile(jsonFile)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &res))
	scheduled := int64(0)
	for _, o := range res.Ops {
		if o.Name != "all" && o.Name != "replay" {
			scheduled += o.Count
		}
	}
	require.Equal(t, int64(100), scheduled, "one second at 100 req/s; replays come on top")
}

func TestAuditFindsPlantedViolations(t *testing.T) {
	t.Parallel()
	f := setup(t)
	cfg, err := parseConfig(f.shortRun("1s"), io.Discard)
	require.NoError(t, err)
	b := newBench(cfg, io.Discard, io.Discard)
	defer b.close()
	_, writes, err := b.load(context.Background())
	require.NoError(t, err)
	audit, err := b.audit(context.Background(), writes)
	require.NoError(t, err)
	require.Empty(t, audit.Violations, "the run itself is sound")

	// Plant two faults on two users: one applied row's balance_after off by a cent, and an
	// acknowledged row gone.
	var shifted, deleted writeRecord
	for _, w := range writes {
		switch {
		case w.Status != http.StatusOK:
		case shifted.UID == "":
			shifted = w
		case w.UserID != shifted.UserID:
			deleted = w
		}
	}
	require.NotEmpty(t, deleted.UID, "applied writes of two users")
	conn, err := pgx.Connect(context.Background(), f.databaseURL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), "UPDATE transactions SET balance_after = balance_after + 1 WHERE uid = $1", shifted.UID)
	require.NoError(t, err)
	_, err = conn.Exec(context.Background(), "DELETE FROM transactions WHERE uid = $1", deleted.UID)
	require.NoError(t, err)

	var out bytes.Buffer
	b.stdout = &out
	res := &Results{}
	res.Audit, err = b.audit(context.Background(), writes)
	require.NoError(t, err)
	res.Audit.print(&out)
	failed := map[string][]string{}
	for _, v := range res.Audit.Violations {
		failed[v.Check] = append(failed[v.Check], v.UID)
	}
	require.Contains(t, failed["acknowledged writes stored once, as sent, with the first answer"], deleted.UID)
	require.Contains(t, failed["balance_after along each timeline equals the running sum, never below zero"], shifted.UID)
	require.Contains(t, failed["one transaction.applied (or .rejected) event per transaction in the outbox"], deleted.UID)
	require.NotEmpty(t, failed["users.balance and GET balance equal the sum of APPLIED transactions"])
	require.ErrorContains(t, res.err(), deleted.UID)
	require.Contains(t, out.String(), "FAIL")
	require.Contains(t, out.String(), shifted.UID)
}

func TestParseConfig(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig([]string{"--url", "http://a:1/,http://b:2", "--url", "http://c:3", "--user-ids", "3,1-2,2",
		"--initial", "5", "--balance", "0"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, []string{"http://a:1", "http://b:2", "http://c:3"}, cfg.urls)
	require.Equal(t, []int64{1, 2, 3}, cfg.userIDs)
	require.Equal(t, int64(500), cfg.initial)
	require.InDelta(t, 85.0, cfg.mixTotal, 1e-9)

	for _, args := range [][]string{
		{"--verify"},
		{"--user-ids", "5-2"},
		{"--workers", "0"},
		{"--deposit", "0", "--withdraw", "0", "--balance", "0", "--balance-at", "0"},
		{"--hot-share", "2"},
		{"--amount-max", "0.001"},
		{"stray"},
		{"--url", "localhost:8000"},
		{"--url", "http://a:1/prefix"},
	} {
		_, err := parseConfig(args, io.Discard)
		require.Error(t, err, args)
	}
}
