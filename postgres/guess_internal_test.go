package postgres

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
)

func TestGuessingPausesWhileMostGuessesMiss(t *testing.T) {
	c := newGuessCache()
	batch := []*writeRequest{{req: ledger.Request{UserID: 1}}}
	users, _ := c.guess(batch)
	require.Nil(t, users, "no clock reading yet")
	now := time.Now()
	c.store(map[int64]*userState{1: {}}, clockReading{database: now, at: now})

	for range 2 * guessWindow {
		users, _ = c.guess(batch)
		require.NotNil(t, users)
		c.outcome(true) // hits keep guessing on
	}
	for range guessMissLimit + 1 {
		c.outcome(false)
	}
	for range guessWindow - guessMissLimit - 1 {
		c.outcome(true)
	}
	for range guessPause {
		users, _ = c.guess(batch)
		require.Nil(t, users, "paused")
	}
	users, _ = c.guess(batch)
	require.NotNil(t, users, "guessing again after the pause")
}

func TestGuessCacheKeepsTheNewestStateWithinItsBound(t *testing.T) {
	c := newGuessCache()
	now := time.Now()
	at := now.UTC().Truncate(time.Microsecond)
	c.store(map[int64]*userState{7: {UserState: ledger.UserState{Balance: 5, LastSeq: 3, LastTime: at}, eventSeq: 4}}, clockReading{database: now, at: now})
	c.store(map[int64]*userState{7: {UserState: ledger.UserState{Balance: 9, LastSeq: 2}}}, clockReading{})
	users, _ := c.guess([]*writeRequest{{req: ledger.Request{UserID: 7}}})
	require.Equal(t, userState{UserState: ledger.UserState{Balance: 5, LastSeq: 3, LastTime: at, Now: users[7].Now}, eventSeq: 4,
		read: rowState{balance: 5, lastSeq: 3, lastTime: at, eventSeq: 4}}, *users[7],
		"a state reported late does not replace a newer one; the guess starts from the row as stored")

	more := map[int64]*userState{}
	for id := range int64(guessUsers + 10) {
		more[id+100] = &userState{}
	}
	c.store(more, clockReading{})
	require.Len(t, c.users, guessUsers)

	c.forget([]*writeRequest{{req: ledger.Request{UserID: 100}}}, false)
	require.Len(t, c.users, guessUsers-1)
	c.forget(nil, true)
	require.Empty(t, c.users, "a lost database may come back without commits this instance saw")
}

// The clock offset is the tightest lower bound of the current epoch, and a new epoch follows
// a clock that stepped.
func TestGuessClockKeepsTheTightestBoundOfItsEpoch(t *testing.T) {
	c := newGuessCache()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	read := func(at time.Duration, lag time.Duration) clockReading {
		return clockReading{database: start.Add(at - lag), at: start.Add(at)}
	}
	c.clock(read(0, 300*time.Millisecond))
	require.Equal(t, -300*time.Millisecond, c.offset)
	c.clock(read(100*time.Millisecond, time.Millisecond))
	require.Equal(t, -time.Millisecond, c.offset, "a faster round trip bounds it closer")
	c.clock(read(200*time.Millisecond, 50*time.Millisecond))
	require.Equal(t, -time.Millisecond, c.offset, "a slower one does not loosen it")
	// This machine's clock steps an hour ahead: the next reading starts a new epoch.
	c.clock(clockReading{database: start.Add(1500 * time.Millisecond), at: start.Add(time.Hour)})
	require.Equal(t, start.Add(1500*time.Millisecond).Sub(start.Add(time.Hour)), c.offset)
}
