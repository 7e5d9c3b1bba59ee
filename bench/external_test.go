package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// runWrk runs bench with wrk and bench/wrk-writes.lua as its load (wrkArgs: wrk's options,
// then "$TALLY_URL" and the script's arguments), over users with initial funds each, audited.
// It returns the clean results and bench's stderr, where wrk reports.
func runWrk(t *testing.T, users, initial, wrkArgs string) (Results, string) {
	t.Helper()
	_, err := exec.LookPath("wrk")
	require.NoError(t, err, "this test needs wrk (Debian: apt-get install wrk)")
	script, err := filepath.Abs("wrk-writes.lua")
	require.NoError(t, err)
	f := setup(t)
	jsonFile := filepath.Join(t.TempDir(), "results.json")
	var stdout, stderr bytes.Buffer
	err = Run(context.Background(), []string{"--url", f.urls, "--database-url", f.databaseURL, "--users", users,
		"--workers", "4", "--initial", initial, "--verify", "--verify-sample", "20", "--json", jsonFile,
		"--load-with", strings.Replace(wrkArgs, `"$TALLY_URL"`, `-s `+script+` "$TALLY_URL"`, 1)}, &stdout, &stderr)
	require.NoError(t, err, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	return readCleanResults(t, jsonFile), stderr.String()
}

// wrk, with bench/wrk-writes.lua, sends the load; bench reports the writes it logged and
// audits them with its own.
func TestLoadWithWrkIsAudited(t *testing.T) {
	t.Parallel()
	res, stderr := runWrk(t, "5", "3.00", `wrk -t2 -c4 -d1s "$TALLY_URL"`)
	require.Contains(t, stderr, "Requests/sec", "wrk's own report")
	require.Greater(t, res.Writes.Sent, 100, "wrk's writes on top of the 5 initial deposits")
	require.Positive(t, res.Writes.Applied)
	require.Positive(t, res.Writes.Refused, "withdrawals of 1.00 from users with little left")
	require.Positive(t, res.Throughput)
}

// A write the command logged as answered 200 that tally never stored is a violation, and so is
// a row of the run's users that no one sent.
func TestLoadWithFindsWhatItsLogDoesNotMatch(t *testing.T) {
	t.Parallel()
	f := setup(t)
	bodyFile := filepath.Join(t.TempDir(), "body")
	body := `{"uid":"7d2f1c4e-0000-4000-8000-000000000001","user_id":1,"type":"DEPOSIT","amount":"1.00","status":"APPLIED"}`
	require.NoError(t, os.WriteFile(bodyFile, []byte(body), 0o644))
	command := `{ printf 'sent 7d2f1c4e-0000-4000-8000-000000000001 1 DEPOSIT 1.00\nanswer 200 %d\n' $(wc -c < ` + bodyFile +
		`); cat ` + bodyFile + `; echo; } > "$TALLY_WRITES.1"`
	var stdout, stderr bytes.Buffer
	err := Run(context.Background(), []string{"--url", f.urls, "--database-url", f.databaseURL, "--users", "2",
		"--workers", "2", "--verify", "--load-with", command}, &stdout, &stderr)
	require.Error(t, err, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	require.Contains(t, stdout.String(), "FAIL acknowledged writes stored once")
	require.Contains(t, stdout.String(), "7d2f1c4e-0000-4000-8000-000000000001")
}

// Writes the command logged without an answer are sent again before the audit: one whose
// answer was lost after it took effect gets that answer back and takes effect once, and one
// that never reached tally takes effect now. Either way the audit holds it to an answer, and
// a write that commits after the command ended cannot race the audit.
func TestLoadWithSettlesWritesWithoutAnswer(t *testing.T) {
	t.Parallel()
	_, err := exec.LookPath("curl")
	require.NoError(t, err, "this test needs curl")
	f := setup(t)
	const lost, unsent = "7d2f1c4e-0000-4000-8000-000000000002", "7d2f1c4e-0000-4000-8000-000000000003"
	command := `curl -sf -o /dev/null -H 'Content-Type: application/json' ` +
		`-d '{"uid":"` + lost + `","user_id":1,"type":"DEPOSIT","amount":"1.00"}' "$TALLY_URL/v1/transaction" && ` +
		`printf 'sent ` + lost + ` 1 DEPOSIT 1.00\nsent ` + unsent + ` 1 DEPOSIT 2.00\n' > "$TALLY_WRITES.1"`
	var stdout, stderr bytes.Buffer
	err = Run(context.Background(), []string{"--url", f.urls, "--database-url", f.databaseURL, "--users", "2",
		"--workers", "2", "--verify", "--load-with", command}, &stdout, &stderr)
	require.NoError(t, err, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	require.Contains(t, stdout.String(), "2 without a final answer", "what the command itself got")
	require.Contains(t, stdout.String(), "of 0 writes without a final answer", "what the audit holds them to")

	conn, err := pgx.Connect(context.Background(), f.databaseURL)
	require.NoError(t, err)
	defer conn.Close(context.Background()) //nolint:errcheck // read only
	var rows int
	require.NoError(t, conn.QueryRow(context.Background(),
		`SELECT count(*) FROM transactions WHERE uid IN ($1, $2) AND status = 'APPLIED'`, lost, unsent).Scan(&rows))
	require.Equal(t, 2, rows, "both writes took effect, and the audit found every balance equal to its rows")
}

func TestReadExternalLogRefusesCutLines(t *testing.T) {
	t.Parallel()
	for name, log := range map[string]string{
		"body cut short":   "sent a 1 DEPOSIT 1.00\nanswer 200 50\n{}\n",
		"answer unsent":    "answer 200 13\n{\"uid\":\"zz\"}\n",
		"unknown line":     "hello\n",
		"amount malformed": "sent a 1 DEPOSIT 1.0x\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "log")
			require.NoError(t, os.WriteFile(path, []byte(log), 0o644))
			_, err := readExternalLog(path)
			require.Error(t, err)
		})
	}
}

// A 402 is a final answer, a 503 leaves the write unknown, and a 422 for a write bench built
// itself is a violation.
func TestReadExternalLogSortsAnswers(t *testing.T) {
	t.Parallel()
	refused := `{"type":"urn:tally:problem:insufficient-funds","transaction":{"uid":"b"}}`
	invalid := `{"type":"urn:tally:problem:invalid-request"}`
	log := "sent a 1 DEPOSIT 1.00\nsent b 1 WITHDRAW 1.00\nsent c 1 DEPOSIT 1.00\n" +
		fmt.Sprintf("answer 503 2\n{}\nanswer 402 %d\n%s\nanswer 422 %d\n%s\n", len(refused), refused, len(invalid), invalid)
	path := filepath.Join(t.TempDir(), "log")
	require.NoError(t, os.WriteFile(path, []byte(log), 0o644))
	l, err := readExternalLog(path)
	require.NoError(t, err)
	require.Equal(t, []int{0, 402, 0}, []int{l.writes[0].Status, l.writes[1].Status, l.writes[2].Status})
	require.Equal(t, refused, string(l.writes[1].Body))
	require.Equal(t, []int64{1, 2}, []int64{l.answered, l.failed})
	require.Len(t, l.violations, 1)
	require.Contains(t, l.violations[0].Detail, "unexpected 422")
}

// With a rate, bench/wrk-writes.lua sends on a schedule, not as fast as answers allow, and
// prints the percentiles of the times it measured from each request's scheduled start.
func TestLoadWithWrkInAnOpenLoop(t *testing.T) {
	t.Parallel()
	res, stderr := runWrk(t, "5", "1000.00", `wrk -t1 -c8 -d2s "$TALLY_URL" -- 100`)
	// 5 initial deposits, wrk's unsent check of the script, and one write due every 10 ms of
	// the 2 s, which wrk stretches by up to a tenth of a second; a closed loop on 8
	// connections would send many times that.
	require.LessOrEqual(t, res.Writes.Sent, 5+1+230)
	require.Greater(t, res.Writes.Sent, 5+100, "the schedule kept, at least half of it")
	timed, p50, p99 := openLoopLine(t, stderr)
	require.Equal(t, res.Writes.Applied+res.Writes.Refused-5, timed, "every answered write timed once")
	require.Positive(t, p50)
	require.GreaterOrEqual(t, p99, p50)
}

// A schedule that one connection cannot keep falls behind, and the times count the delay from
// each request's due instant, not from its send.
func TestLoadWithWrkTimesFromTheSchedule(t *testing.T) {
	t.Parallel()
	_, stderr := runWrk(t, "5", "1000.00", `wrk -t1 -c1 -d1s "$TALLY_URL" -- 5000`)
	_, p50, _ := openLoopLine(t, stderr)
	// 5,000 due in the second, one at a time over one connection: by the middle of the run
	// the requests sent are a quarter of a second or more behind their instants.
	require.Greater(t, p50, 100.0, "p50 in ms, from the scheduled start")
}

// openLoopLine reads wrk-writes.lua's open-loop report: answers timed, p50 and p99 in ms.
func openLoopLine(t *testing.T, stderr string) (int, float64, float64) {
	t.Helper()
	m := regexp.MustCompile(`open loop: (\d+) answers timed, p50 ([0-9.]+) ms, p99 ([0-9.]+) ms`).FindStringSubmatch(stderr)
	require.NotNil(t, m, "the open loop's percentiles:\n%s", stderr)
	timed, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	p50, err := strconv.ParseFloat(m[2], 64)
	require.NoError(t, err)
	p99, err := strconv.ParseFloat(m[3], 64)
	require.NoError(t, err)
	return timed, p50, p99
}
