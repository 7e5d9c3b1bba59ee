package postgres_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// openInstance opens another batching instance on the fixture's database.
func (f fixture) openInstance(t *testing.T) *postgres.DB {
	t.Helper()
	db, err := postgres.Open(f.ctx, f.url, postgres.WithWriteBatching(64, 1))
	require.NoError(t, err)
	t.Cleanup(db.Close)
	return db
}

func applyOn(t *testing.T, f fixture, db *postgres.DB, req ledger.Request) ledger.Outcome {
	t.Helper()
	out, err := db.Apply(f.ctx, req, render)
	require.NoError(t, err)
	return out
}

// An instance's copy of a user is stale once another instance wrote the user: its guess is
// refused, and the write is decided again on the user's row as it is.
func TestGuessMissesAfterAnotherInstanceWrote(t *testing.T) {
	f := setup(t)
	a, b := f.openInstance(t), f.openInstance(t)
	u := f.user(t)
	applyOn(t, f, a, deposit(u, 100))
	applyOn(t, f, a, deposit(u, 1)) // a's copy of u is now its own commit
	committed, missed := a.GuessOutcomes()
	require.Equal(t, 1.0, committed+missed, "the second write was guessed")

	applyOn(t, f, b, withdraw(u, 30))
	out := applyOn(t, f, a, withdraw(u, 71))
	require.Equal(t, ledger.Applied, out.Tx.Status, "decided on 71, not on a's 101")
	require.EqualValues(t, 0, *out.Tx.BalanceAfter)
	require.EqualValues(t, 4, out.Tx.Seq)
	committedAfter, missedAfter := a.GuessOutcomes()
	require.Equal(t, []float64{committed, missed + 1}, []float64{committedAfter, missedAfter}, "a's guess was refused")

	// The next write is guessed again, from the row the miss read.
	out = applyOn(t, f, a, withdraw(u, 1))
	require.Equal(t, ledger.Rejected, out.Tx.Status)
	committed, missed = a.GuessOutcomes()
	require.Equal(t, committedAfter+missedAfter+1, committed+missed)
	require.EqualValues(t, 0, f.balance(t, u))
	f.checkTimeline(t, u)
}

// A retried uid is stored already: the guess, which would store it again, is refused, and the
// retry gets the first answer back, byte for byte.
func TestGuessMissesOnARetriedUID(t *testing.T) {
	f := setup(t)
	u := f.user(t)
	applyOn(t, f, f.db, deposit(u, 100))
	req := withdraw(u, 40)
	first := applyOn(t, f, f.db, req)
	require.False(t, first.Replayed)
	committedBefore, missedBefore := f.db.GuessOutcomes()

	again := applyOn(t, f, f.db, req)
	require.True(t, again.Replayed)
	require.Equal(t, first.Reply, again.Reply)
	committed, missed := f.db.GuessOutcomes()
	require.Equal(t, []float64{committedBefore, missedBefore + 1}, []float64{committed, missed})
	require.EqualValues(t, 60, f.balance(t, u))
}

// A guessed write takes "now" from its estimate of the database's clock, which the database
// checks: an estimate in the database's future, or more than a second in its past (this
// machine's clock stepped), is refused, and the write takes the database's clock instead.
func TestGuessedTimeIsTheDatabasesClock(t *testing.T) {
	for _, skew := range []time.Duration{0, time.Hour, -time.Hour} {
		t.Run(skew.String(), func(t *testing.T) {
			f := setup(t)
			u := f.user(t)
			// Dated two hours ago, so that a write an hour in the past is not back-dated.
			first := deposit(u, 100)
			dated := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Microsecond)
			first.Timestamp = &dated
			applyOn(t, f, f.db, first)
			f.db.SkewGuessClock(skew)
			_, missedBefore := f.db.GuessOutcomes()

			var before, after time.Time
			require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT clock_timestamp()").Scan(&before))
			out := applyOn(t, f, f.db, deposit(u, 1))
			require.NoError(t, f.db.Pool().QueryRow(f.ctx, "SELECT clock_timestamp()").Scan(&after))

			_, missed := f.db.GuessOutcomes()
			require.Equal(t, skew != 0, missed == missedBefore+1, "missed %v, before %v", missed, missedBefore)
			ts := out.Tx.Timestamp
			require.False(t, ts.Before(before.Add(-time.Second)) || ts.After(after), "%s not within [%s - 1s, %s]", ts, before, after)
		})
	}
}
