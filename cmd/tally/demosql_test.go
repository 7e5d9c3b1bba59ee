package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/bench"
	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
	"github.com/tally-ledger/tally/relay"
)

// demoSQLFile is the committed output of `tally demo --sql`, seen from this package.
var demoSQLFile = filepath.Join("..", "..", "sql_data", "demo.sql")

func TestDemoSQLFileIsCurrent(t *testing.T) {
	t.Parallel()
	generate := func() []byte {
		var stdout, stderr bytes.Buffer
		noEnv := func(string) string { return "" }
		require.NoError(t, run(context.Background(), []string{"demo", "--sql"}, noEnv, &stdout, &stderr), stderr.String())
		return stdout.Bytes()
	}
	generated := generate()
	require.Equal(t, generated, generate(), "two runs of tally demo --sql must print the same bytes")
	committed, err := os.ReadFile(demoSQLFile)
	require.NoError(t, err)
	require.True(t, bytes.Equal(generated, committed),
		"sql_data/demo.sql is stale: regenerate it with `go run ./cmd/tally demo --sql > sql_data/demo.sql`")
}

func TestDemoCommandArguments(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{name: "loading needs a database", args: []string{"demo"}, want: "DATABASE_URL is not set"},
		{name: "no stray arguments", args: []string{"demo", "--sql", "extra"}, want: `unexpected argument "extra"`},
		{name: "unknown flag", args: []string{"demo", "--csv"}, want: "flag provided but not defined: -csv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			noEnv := func(string) string { return "" }
			err := run(context.Background(), tc.args, noEnv, io.Discard, io.Discard)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// psqlLoad runs demo.sql through psql as the README says and returns what psql printed.
func psqlLoad(t *testing.T, databaseURL string) (string, error) {
	t.Helper()
	_, err := exec.LookPath("psql")
	require.NoError(t, err, "the demo.sql tests need psql (Debian: apt-get install postgresql-client)")
	out, err := exec.CommandContext(context.Background(), "psql", "-X", databaseURL,
		"-v", "ON_ERROR_STOP=1", "-f", demoSQLFile).CombinedOutput()
	return string(out), err
}

// storedTransaction is a transactions row, every column.
type storedTransaction struct {
	UID            uuid.UUID
	UserID         int64
	Seq            int64
	Type           string
	Amount         int64
	TS             time.Time
	TimestampGiven bool
	Status         string
	Reason         *string
	BalanceAfter   *int64
	ResponseStatus int
	ResponseBody   []byte
	CreatedAt      time.Time
}

// storedEvent is an outbox row, without its place in the stream.
type storedEvent struct {
	ID        uuid.UUID
	UserID    int64
	UserSeq   int64
	Type      string
	Event     string
	CreatedAt time.Time
}

// storedUser is a users row, every column.
type storedUser struct {
	ID        int64
	Name      string
	Balance   int64
	LastSeq   int64
	LastTS    *time.Time
	EventSeq  int64
	CreatedAt time.Time
}

func queryAll[T any](t *testing.T, db *postgres.DB, sql string) []T {
	t.Helper()
	rows, err := db.Pool().Query(context.Background(), sql)
	require.NoError(t, err)
	all, err := pgx.CollectRows(rows, pgx.RowToStructByPos[T])
	require.NoError(t, err)
	return all
}

func storedUsers(t *testing.T, db *postgres.DB) []storedUser {
	return queryAll[storedUser](t, db, "SELECT id, name, balance, last_seq, last_ts, event_seq, created_at FROM users ORDER BY id")
}

func storedTransactions(t *testing.T, db *postgres.DB) []storedTransaction {
	return queryAll[storedTransaction](t, db, `SELECT uid, user_id, seq, type, amount, ts, timestamp_given, status, reason,
		balance_after, response_status, response_body, created_at FROM transactions ORDER BY user_id, seq`)
}

func storedEvents(t *testing.T, db *postgres.DB) []storedEvent {
	return queryAll[storedEvent](t, db, "SELECT id, user_id, user_seq, type, event::text, created_at FROM outbox ORDER BY txid, position")
}

// jsonWithout decodes a JSON object and drops the named members: the clock values and ids
// that differ between a load through the API and demo.sql.
func jsonWithout(t *testing.T, body []byte, drop ...string) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(body, &m), "%s", body)
	for _, k := range drop {
		require.Contains(t, m, k)
		delete(m, k)
	}
	return m
}

// demoFixture is the demo twice: loaded through the write path by `tally demo`, and by psql
// from sql_data/demo.sql, each into a fresh database; api serves the SQL-loaded one.
type demoFixture struct {
	viaAPI, viaSQL *postgres.DB
	sqlURL         string
	api            string
}

func setupDemoFixture(t *testing.T) demoFixture {
	t.Helper()
	ctx := context.Background()
	var f demoFixture
	apiURL := pgtest.NewDatabase(t)
	require.NoError(t, loadDemo(ctx, config{databaseURL: apiURL}, httpapi.NewLogger(io.Discard, 0)))
	f.viaAPI, f.sqlURL = openTestDB(t, apiURL), pgtest.NewDatabase(t)
	out, err := psqlLoad(t, f.sqlURL)
	require.NoError(t, err, out)
	f.viaSQL = openTestDB(t, f.sqlURL)
	srv := httptest.NewServer(httpapi.NewServer(f.viaSQL, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
	t.Cleanup(srv.Close)
	f.api = srv.URL
	return f
}

func openTestDB(t *testing.T, databaseURL string) *postgres.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), databaseURL)
	require.NoError(t, err)
	t.Cleanup(db.Close)
	return db
}

// apiReply is an answer of the API, read in full.
type apiReply struct {
	status int
	header http.Header
	body   []byte
}

func (f demoFixture) call(t *testing.T, method, path string, body []byte) apiReply {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, f.api+path, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return apiReply{status: resp.StatusCode, header: resp.Header, body: got}
}

// TestDemoSQLEqualsTheWritePath holds demo.sql to what `tally demo` stores through the write
// path, and to the service's invariants. The subtests share one pair of databases and run in
// order: the auditor, last, writes.
func TestDemoSQLEqualsTheWritePath(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := setupDemoFixture(t)

	t.Run("the same users, ids and counters", func(t *testing.T) {
		viaAPI, viaSQL := storedUsers(t, f.viaAPI), storedUsers(t, f.viaSQL)
		require.Len(t, viaSQL, len(demoUsers))
		for i := range viaSQL {
			require.Equal(t, int64(i+1), viaSQL[i].ID)
			require.Equal(t, demoUsers[i], viaSQL[i].Name)
			require.Equal(t, demoStart, viaSQL[i].CreatedAt.UTC(), "demo users exist from the start of the demo year")
			viaAPI[i].CreatedAt, viaSQL[i].CreatedAt = time.Time{}, time.Time{}
		}
		require.Equal(t, viaAPI, viaSQL)
	})

	t.Run("the same balances now and at past instants", func(t *testing.T) {
		instants := []time.Time{demoStart, time.Date(2021, 12, 31, 23, 59, 59, 0, time.UTC), demoInstant,
			time.Date(2022, 8, 15, 12, 0, 0, 0, time.UTC), demoEnd}
		for id := int64(1); id <= int64(len(demoUsers)); id++ {
			for _, at := range instants {
				want, err := f.viaAPI.UserAt(ctx, id, at)
				require.NoError(t, err)
				got, err := f.viaSQL.UserAt(ctx, id, at)
				require.NoError(t, err)
				require.Equal(t, want.Balance, got.Balance, "user %d at %s", id, ledger.FormatTime(at))
			}
		}
		then := f.call(t, http.MethodGet, "/v1/user/1/balance?date="+url.QueryEscape("5.05.2022 00:00"), nil)
		require.Equal(t, http.StatusOK, then.status, "%s", then.body)
		require.JSONEq(t, `{"user_id":1,"balance":"2904.13","as_of":"2022-05-05T00:00:00Z"}`, string(then.body))
		now := f.call(t, http.MethodGet, "/v1/user/1/balance", nil)
		require.Equal(t, http.StatusOK, now.status, "%s", now.body)
		require.JSONEq(t, fmt.Sprintf(`{"user_id":1,"balance":"%s"}`, vasyaBalanceNow), string(now.body))
	})

	t.Run("every transaction row equal apart from created_at", func(t *testing.T) {
		viaAPI, viaSQL := storedTransactions(t, f.viaAPI), storedTransactions(t, f.viaSQL)
		require.Len(t, viaSQL, len(viaAPI))
		for i := range viaSQL {
			s, a := viaSQL[i], viaAPI[i]
			require.Equal(t, s.TS, s.CreatedAt, "demo.sql records each transaction at its own timestamp")
			// The stored answer is what the API's renderer makes of the row.
			tx, err := f.viaSQL.Transaction(ctx, s.UID)
			require.NoError(t, err)
			reply := httpapi.RenderTransaction(tx)
			require.Equal(t, reply.Status, s.ResponseStatus)
			require.Equal(t, string(reply.Body), string(s.ResponseBody))
			require.Equal(t, jsonWithout(t, a.ResponseBody, "created_at"), jsonWithout(t, s.ResponseBody, "created_at"))
			s.CreatedAt, a.CreatedAt, s.ResponseBody, a.ResponseBody = time.Time{}, time.Time{}, nil, nil
			require.Equal(t, a, s)
		}
	})

	t.Run("the same events, with ids and times derived from the data", func(t *testing.T) {
		viaAPI, viaSQL := storedEvents(t, f.viaAPI), storedEvents(t, f.viaSQL)
		require.Len(t, viaSQL, len(viaAPI))
		// Each database names itself: the source tally serve would give its events by default.
		apiSource, err := f.viaAPI.DatabaseEventSource(context.Background())
		require.NoError(t, err)
		sqlSource, err := f.viaSQL.DatabaseEventSource(context.Background())
		require.NoError(t, err)
		require.NotEqual(t, apiSource, sqlSource)
		ids := map[uuid.UUID]bool{}
		for i := range viaSQL {
			s, a := viaSQL[i], viaAPI[i]
			require.Equal(t, uuid.Version(7), s.ID.Version(), "event ids are UUIDv7 like the service's")
			require.False(t, ids[s.ID], "event id %s twice", s.ID)
			ids[s.ID] = true
			envelope := jsonWithout(t, []byte(s.Event))
			require.Equal(t, s.ID.String(), envelope["id"])
			// An event happens when its user was created or its transaction was recorded.
			wantTime := ledger.FormatTime(demoStart)
			if data := envelope["data"].(map[string]any); data["timestamp"] != nil {
				wantTime = data["timestamp"].(string)
			}
			require.Equal(t, wantTime, envelope["time"])
			require.Equal(t, sqlSource, envelope["source"])
			require.WithinDuration(t, time.Now(), s.CreatedAt, time.Hour, "an outbox row is dated when it was written")
			require.Equal(t, []any{a.UserID, a.UserSeq, a.Type}, []any{s.UserID, s.UserSeq, s.Type})
			require.Equal(t, apiSource, jsonWithout(t, []byte(a.Event))["source"])
			require.Equal(t, jsonWithout(t, []byte(a.Event), "id", "time", "source"), jsonWithout(t, []byte(s.Event), "id", "time", "source"))
		}
	})

	t.Run("replays through the API return the stored answer byte for byte", func(t *testing.T) {
		rows := storedTransactions(t, f.viaSQL)
		var lastBeforeMay5 storedTransaction
		for _, r := range rows {
			if r.UserID == 1 && !r.TS.After(demoInstant) {
				lastBeforeMay5 = r
			}
		}
		for _, r := range []storedTransaction{rows[0], lastBeforeMay5, rows[len(rows)/2], rows[len(rows)-1]} {
			t.Run(r.UID.String(), func(t *testing.T) {
				body := fmt.Appendf(nil, `{"uid":%q,"user_id":%d,"type":%q,"amount":%q,"timestamp":%q}`,
					r.UID, r.UserID, r.Type, ledger.Amount(r.Amount), ledger.FormatTime(r.TS))
				replay := f.call(t, http.MethodPost, "/v1/transaction", body)
				require.Equal(t, r.ResponseStatus, replay.status)
				require.Equal(t, "true", replay.header.Get("Idempotent-Replayed"))
				require.Equal(t, string(r.ResponseBody), string(replay.body))
			})
		}
	})

	t.Run("GET /v1/events serves every loaded event in order", func(t *testing.T) {
		stored := storedEvents(t, f.viaSQL)
		var served []json.RawMessage
		after := ""
		read := func(wait int) int {
			reply := f.call(t, http.MethodGet, fmt.Sprintf("/v1/events?limit=100&wait=%d&after=%s", wait, after), nil)
			require.Equal(t, http.StatusOK, reply.status, "%s", reply.body)
			var page struct {
				Events []json.RawMessage `json:"events"`
				Next   string            `json:"next"`
			}
			require.NoError(t, json.Unmarshal(reply.body, &page))
			served, after = append(served, page.Events...), page.Next
			return len(page.Events)
		}
		// The feed shows a transaction's events once every older transaction on the server has
		// ended, and other tests run beside this one: wait for them.
		for len(served) < len(stored) {
			require.Positive(t, read(10), "only %d of %d events served", len(served), len(stored))
		}
		require.Zero(t, read(0), "no events beyond the loaded ones")
		require.Len(t, served, len(stored))
		next := map[int64]int64{}
		for i, e := range stored {
			require.Equal(t, e.Event, string(served[i]))
			next[e.UserID]++
			require.Equal(t, next[e.UserID], e.UserSeq, "user %d's events are numbered 1, 2, ... in stream order", e.UserID)
		}
	})

	t.Run("the relay publishes every loaded event once, by its id", func(t *testing.T) {
		stored := storedEvents(t, f.viaSQL)
		natsURL := cmp.Or(os.Getenv("NATS_URL"), nats.DefaultURL)
		nc, err := nats.Connect(natsURL)
		require.NoError(t, err, "NATS with JetStream must run at %s", natsURL)
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		stream := "DEMOSQL" + uuid.NewString()[:8]
		t.Cleanup(func() { js.DeleteStream(context.Background(), stream) }) //nolint:errcheck // best effort
		r, err := relay.New(f.viaSQL, nc, httpapi.NewLogger(io.Discard, 0),
			relay.Config{Stream: stream, SubjectPrefix: strings.ToLower(stream), Poll: 20 * time.Millisecond})
		require.NoError(t, err)
		relayCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); r.Run(relayCtx) }() //nolint:errcheck // Run returns nil when stopped
		defer func() { stop(); <-done }()

		require.Eventually(t, func() bool {
			s, err := js.Stream(ctx, stream)
			if err != nil {
				return false
			}
			info, err := s.Info(ctx)
			return err == nil && info.State.Msgs >= uint64(len(stored))
		}, 30*time.Second, 50*time.Millisecond, "the stream never held all %d events", len(stored))
		consumer, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
		require.NoError(t, err)
		batch, err := consumer.FetchNoWait(len(stored) + 1)
		require.NoError(t, err)
		var published []jetstream.Msg
		for m := range batch.Messages() {
			published = append(published, m)
		}
		require.NoError(t, batch.Error())
		require.Len(t, published, len(stored))
		for i, m := range published {
			require.Equal(t, stored[i].ID.String(), m.Headers().Get("Nats-Msg-Id"))
			require.Equal(t, stored[i].Event, string(m.Data()))
		}
	})

	t.Run("the auditor finds nothing", func(t *testing.T) {
		// tally bench --verify over the demo users: a short read-only load, then every check of
		// the audit (the stored rows, balances now and then, the balance_after chain, one event
		// per transaction and event_seq events per user). Its setup adds one deposit per user.
		results := filepath.Join(t.TempDir(), "bench.json")
		var stdout, stderr bytes.Buffer
		err := bench.Run(ctx, []string{"--url", f.api, "--database-url", f.sqlURL, "--user-ids", "1-4",
			"--initial", "0.01", "--deposit", "0", "--withdraw", "0", "--balance", "1", "--balance-at", "1",
			"--duration", "200ms", "--workers", "2", "--verify", "--verify-sample", "4", "--json", results}, &stdout, &stderr)
		require.NoError(t, err, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		raw, err := os.ReadFile(results)
		require.NoError(t, err)
		var res bench.Results
		require.NoError(t, json.Unmarshal(raw, &res))
		require.NotNil(t, res.Audit)
		require.NotEmpty(t, res.Audit.Checks)
		for _, c := range res.Audit.Checks {
			require.Positive(t, c.Checked, c.Name)
			require.Zero(t, c.Violations, c.Name)
		}
	})
}

// tableDigest fingerprints every row of tally's tables and the users id sequence.
func tableDigest(t *testing.T, db *postgres.DB) string {
	t.Helper()
	var digest string
	err := db.Pool().QueryRow(context.Background(), `SELECT concat_ws(' ',
		(SELECT md5(coalesce(string_agg(u::text, '|' ORDER BY id), '')) FROM users u),
		(SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY uid), '')) FROM transactions t),
		(SELECT md5(coalesce(string_agg(o::text, '|' ORDER BY txid, position), '')) FROM outbox o),
		(SELECT last_value FROM pg_sequences WHERE sequencename = 'users_id_seq'))`).Scan(&digest)
	require.NoError(t, err)
	return digest
}

func TestDemoSQLRefusesToLoadWhereItDoesNotFit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, db *postgres.DB)
		want    string
	}{
		{
			name: "loaded twice",
			prepare: func(t *testing.T, db *postgres.DB) {
				out, err := psqlLoad(t, db.Pool().Config().ConnString())
				require.NoError(t, err, out)
			},
			want: "the database already has users",
		},
		{
			name: "a user created through the API",
			prepare: func(t *testing.T, db *postgres.DB) {
				_, err := db.CreateUser(ctx, "Ivan")
				require.NoError(t, err)
			},
			want: "the database already has users",
		},
		{
			name: "not migrated",
			prepare: func(t *testing.T, db *postgres.DB) {
				_, err := db.Pool().Exec(ctx, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
				require.NoError(t, err)
			},
			want: "tally's tables are missing: run tally migrate first",
		},
		{
			name: "another schema version",
			prepare: func(t *testing.T, db *postgres.DB) {
				_, err := db.Pool().Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES (99, '0099_future.sql')")
				require.NoError(t, err)
			},
			want: fmt.Sprintf("the database is at schema version 99, demo.sql is for version %d", postgres.SchemaVersion()),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db, databaseURL := pgtest.NewDB(t)
			tc.prepare(t, db)
			migrated := tc.name != "not migrated"
			var before string
			if migrated {
				before = tableDigest(t, db)
			}
			out, err := psqlLoad(t, databaseURL)
			require.Error(t, err, out)
			var exit *exec.ExitError
			require.ErrorAs(t, err, &exit)
			require.Equal(t, 3, exit.ExitCode(), "psql's exit code for an error in a script with ON_ERROR_STOP")
			require.Contains(t, out, tc.want)
			require.NotContains(t, out, "INSERT", "nothing may be written before the checks pass")
			if !migrated {
				var tables int
				require.NoError(t, db.Pool().QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables))
				require.Zero(t, tables, "a refused load creates nothing")
				return
			}
			require.Equal(t, before, tableDigest(t, db), "a refused load changes nothing")
		})
	}
}

func TestDemoSQLMovesTheUserIDsPastTheDemo(t *testing.T) {
	t.Parallel()
	db, databaseURL := pgtest.NewDB(t)
	out, err := psqlLoad(t, databaseURL)
	require.NoError(t, err, out)
	u, err := db.CreateUser(context.Background(), "Ivan")
	require.NoError(t, err)
	require.Equal(t, int64(len(demoUsers)+1), u.ID)
}

func TestSQLTextKeepsEveryByte(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.NewDB(t)
	for _, tc := range []struct{ name, text string }{
		{name: "plain", text: "Vasya"},
		{name: "quote", text: "O'Brien"},
		{name: "backslash", text: `C:\tally\u003c`},
		{name: "newline", text: "{\"a\":1}\n"},
		{name: "quote, backslash and control characters", text: "it's\t\\n\r\x01"},
		{name: "non-ASCII", text: "Вася ☃"},
		{name: "empty", text: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			literal := sqlText(tc.text)
			require.NotContains(t, literal, "\n", "one row stays on one line")
			var got string
			require.NoError(t, db.Pool().QueryRow(context.Background(), "SELECT "+literal).Scan(&got))
			require.Equal(t, tc.text, got)
		})
	}
}

func TestDemoEventIDIsAVersion7UUIDOfTheEventTime(t *testing.T) {
	t.Parallel()
	e := ledger.Event{Seq: 3, Time: time.Date(2022, 5, 4, 10, 30, 0, 123_000_000, time.UTC)}
	id := demoEventID("Vasya", e)
	require.Equal(t, uuid.Version(7), id.Version())
	require.Equal(t, uuid.RFC4122, id.Variant())
	sec, nsec := id.Time().UnixTime()
	require.Equal(t, e.Time, time.Unix(sec, nsec).UTC())
	require.Equal(t, id, demoEventID("Vasya", e), "the same event gets the same id")
	e.Seq = 4
	require.NotEqual(t, id, demoEventID("Vasya", e))
	require.NotEqual(t, id, demoEventID("Petya", ledger.Event{Seq: 3, Time: e.Time}))
}
