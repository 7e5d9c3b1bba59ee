package postgres_test

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// explain returns the executed plan of sql with args.
func (f fixture) explain(t *testing.T, sql string, args ...any) string {
	t.Helper()
	rows, err := f.db.Pool().Query(f.ctx, "EXPLAIN (ANALYZE, FORMAT TEXT) "+sql, args...)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return strings.Join(lines, "\n")
}

// longHistory gives user u n deposits of 0.01, one a minute from 2020-01-01 00:01.
func (f fixture) longHistory(t *testing.T, u int64, n int) {
	t.Helper()
	_, err := f.db.Pool().Exec(f.ctx, `INSERT INTO transactions (uid, user_id, seq, type, amount, ts,
		timestamp_given, status, balance_after, response_status, response_body)
		SELECT gen_random_uuid(), $1, g, 'DEPOSIT', 1, '2020-01-01'::timestamptz + g * interval '1 minute',
		       true, 'APPLIED', g, 200, '\x'
		FROM generate_series(1, $2::int) g`, u, n)
	require.NoError(t, err)
	_, err = f.db.Pool().Exec(f.ctx, "ANALYZE transactions")
	require.NoError(t, err)
}

func TestUsersByNamePrefix(t *testing.T) {
	f := setup(t)
	ids := map[string]int64{}
	for _, name := range []string{"vasya", "Vasya", "vasilisa", "vas%", "vas_x", "petya", "vasya"} {
		u, err := f.db.CreateUser(f.ctx, name)
		require.NoError(t, err)
		ids[name] = u.ID
	}
	names := func(q ledger.UserQuery) (got []string, next *ledger.UserCursor) {
		page, next, err := f.db.Users(f.ctx, q)
		require.NoError(t, err)
		for _, u := range page {
			got = append(got, u.Name)
		}
		return got, next
	}
	for _, tc := range []struct {
		name, prefix string
		want         []string
	}{
		{name: "a prefix, in byte order, case-sensitive", prefix: "vas", want: []string{"vas%", "vas_x", "vasilisa", "vasya", "vasya"}},
		{name: "LIKE metacharacters are plain characters", prefix: "vas%", want: []string{"vas%"}},
		{name: "underscore too", prefix: "vas_", want: []string{"vas_x"}},
		{name: "upper case", prefix: "V", want: []string{"Vasya"}},
		{name: "a whole name", prefix: "vasya", want: []string{"vasya", "vasya"}},
		{name: "no match", prefix: "x", want: nil},
		{name: "no prefix lists everyone", prefix: "", want: []string{"Vasya", "petya", "vas%", "vas_x", "vasilisa", "vasya", "vasya"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, next := names(ledger.UserQuery{NamePrefix: tc.prefix, Limit: 10})
			require.Equal(t, tc.want, got)
			require.Nil(t, next)
		})
	}

	t.Run("pages resume after the cursor, equal names by id", func(t *testing.T) {
		var all []string
		q := ledger.UserQuery{NamePrefix: "vas", Limit: 2}
		for range 5 {
			got, next := names(q)
			all = append(all, got...)
			if next == nil {
				break
			}
			q.After = next
		}
		require.Equal(t, []string{"vas%", "vas_x", "vasilisa", "vasya", "vasya"}, all)
	})
}

// A name search reads one range of the users_name index, not the table.
func TestUsersIsAnIndexRange(t *testing.T) {
	f := setup(t)
	_, err := f.db.Pool().Exec(f.ctx, `INSERT INTO users (name) SELECT 'user' || g FROM generate_series(1, 20000) g`)
	require.NoError(t, err)
	_, err = f.db.Pool().Exec(f.ctx, "ANALYZE users")
	require.NoError(t, err)
	plan := f.explain(t, postgres.UsersSQL, "user1234", "user1234\U0010FFFF", "", 0, 21)
	require.Contains(t, plan, "Index Scan using users_name", plan)
	require.NotContains(t, plan, "Seq Scan", plan)
	require.NotContains(t, plan, "Sort", plan)
	require.Contains(t, plan, "rows=11 loops=1", plan) // user1234 and user12340..user12349
}

func TestBalanceSeries(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	first := f.apply(t, u, ledger.Deposit, 1000, at("2023-01-02"))
	second := f.apply(t, u, ledger.Withdraw, 300, at("2023-01-04"))
	f.apply(t, u, ledger.Withdraw, 5000, at("2023-01-05")) // refused: not on the timeline

	instants := ledger.SeriesInstants(*at("2023-01-01"), *at("2023-01-05"), 5)
	points, err := f.db.BalanceSeries(f.ctx, u, instants)
	require.NoError(t, err)
	require.Len(t, points, 5)
	for i, want := range []struct {
		balance ledger.Amount
		tx      *ledger.Outcome
	}{{balance: 0}, {balance: 1000, tx: &first}, {balance: 1000, tx: &first}, {balance: 700, tx: &second}, {balance: 700, tx: &second}} {
		require.Equal(t, instants[i], points[i].At)
		require.Equal(t, want.balance, points[i].Balance, "point %d", i)
		if want.tx == nil {
			require.Nil(t, points[i].Tx)
			continue
		}
		require.Equal(t, want.tx.Tx.UID, points[i].Tx.UID, "point %d", i)
		require.Equal(t, want.balance, *points[i].Tx.BalanceAfter)
		require.Equal(t, want.balance, f.balanceAt(t, u, instants[i].Format(time.RFC3339Nano)), "the series agrees with UserAt")
	}

	_, err = f.db.BalanceSeries(f.ctx, u+1000, instants)
	require.Equal(t, ledger.CodeNotFound, ledger.ErrorCode(err))

	start, err := f.db.SeriesStart(f.ctx, u)
	require.NoError(t, err)
	require.Equal(t, *at("2023-01-02"), start, "the first transaction, back-dated before the user's creation")
	_, err = f.db.SeriesStart(f.ctx, u+1000)
	require.Equal(t, ledger.CodeNotFound, ledger.ErrorCode(err))
}

// Every point of a series is one probe of the timeline index: for 1,000 points over a user
// with 20,000 transactions, each loop of the probe reads one index row and nothing scans.
func TestBalanceSeriesIsOneProbePerPoint(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	f.longHistory(t, u, 20000)
	instants := ledger.SeriesInstants(*at("2019-12-31"), *at("2020-01-20"), 1000)
	plan := f.explain(t, postgres.SeriesSQL, u, instants)
	require.Contains(t, plan, "Index Scan Backward using transactions_timeline", plan)
	require.Contains(t, plan, "rows=1 loops=1000", plan)
	require.NotContains(t, plan, "Seq Scan", plan)
	require.NotContains(t, plan, "Bitmap", plan)
	points, err := f.db.BalanceSeries(f.ctx, u, instants)
	require.NoError(t, err)
	require.Equal(t, ledger.Amount(0), points[0].Balance)
	require.Equal(t, ledger.Amount(20000), points[999].Balance)
}

func TestHistoryStatuses(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	f.apply(t, u, ledger.Deposit, 1000, at("2023-01-01"))
	refused := f.apply(t, u, ledger.Withdraw, 5000, at("2023-01-02"))
	f.apply(t, u, ledger.Withdraw, 100, at("2023-01-03"))
	f.apply(t, u, ledger.Withdraw, 9000, at("2023-01-04"))
	statuses := func(s ledger.HistoryStatus, limit int) (got []string) {
		q := ledger.HistoryQuery{UserID: u, Limit: limit, Status: s}
		for {
			page, next, err := f.db.History(f.ctx, q)
			require.NoError(t, err)
			for _, tx := range page {
				got = append(got, tx.Timestamp.Format("01-02")+" "+string(tx.Status))
			}
			if next == nil {
				return got
			}
			q.After = next
		}
	}
	for _, tc := range []struct {
		status ledger.HistoryStatus
		want   []string
	}{
		{status: ledger.HistoryApplied, want: []string{"01-01 APPLIED", "01-03 APPLIED"}},
		{status: ledger.HistoryRejected, want: []string{"01-02 REJECTED", "01-04 REJECTED"}},
		{status: ledger.HistoryAll, want: []string{"01-01 APPLIED", "01-02 REJECTED", "01-03 APPLIED", "01-04 REJECTED"}},
	} {
		t.Run(string(tc.status), func(t *testing.T) {
			require.Equal(t, tc.want, statuses(tc.status, 1), "pages of one")
			require.Equal(t, tc.want, statuses(tc.status, 10), "one page")
		})
	}
	page, _, err := f.db.History(f.ctx, ledger.HistoryQuery{UserID: u, Limit: 10, Status: ledger.HistoryRejected})
	require.NoError(t, err)
	require.Equal(t, refused.Tx.UID, page[0].UID)
	require.Equal(t, ledger.CodeInsufficientFunds, page[0].Reason)
}
