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
	c.store(map[int64]*userState{7: {UserState: ledger.UserState{Balance: 5, LastSeq: 3}, eventSeq: 4}}, clockReading{database: now, at: now})
	c.store(map[int64]*userState{7: {UserState: ledger.UserState{Balance: 9, LastSeq: 2}}}, clockReading{})
	users, _ := c.guess([]*writeRequest{{req: ledger.Request{UserID: 7}}})
	require.Equal(t, userState{UserState: ledger.UserState{Balance: 5, LastSeq: 3, Now: users[7].Now}, eventSeq: 4, readSeq: 3, readEventSeq: 4}, *users[7],
		"a state reported late does not replace a newer one")

	more := map[int64]*userState{}
	for id := range int64(guessUsers + 10) {
		more[id+100] = &userState{}
	}
	c.store(more, clockReading{})
	require.Len(t, c.users, guessUsers)
}
