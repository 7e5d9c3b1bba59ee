package postgres

import (
	"sync"
	"time"
)

// A batch whose users this instance last wrote or read can be decided before anything is
// read: from the users' rows as this instance last committed or read them, and the
// database's clock as commits reported it. The batch is then written with its COMMIT in one
// round trip instead of two, and writeSQL checks the guess under the users' locks, which it
// takes: every user's row as the decision read it, every user's lock free or already held,
// the guessed time just behind the database's clock, and (by the primary key) no uid stored.
// If the check fails, as when another instance wrote a user or a client retried, the
// transaction is rolled back and the batch recorded again from the rows read under its
// locks. A miss costs the wasted round trip and statement, the ROLLBACK's round trip, and,
// since pgx forgets the prepared statements of a batch that failed, their preparing again on
// that connection's next use: about four round trips and a plan of writeSQL. The copy only
// chooses what to send; the database checks every guess.

// guessCache holds the users' rows as this instance last committed or read them, and the
// database's clock relative to this machine's.
type guessCache struct {
	mu    sync.Mutex
	users map[int64]rowState
	// offset is the database's clock minus this machine's, as commits bound it from below: the
	// database read its clock before the answer arrived, so a guessed time is never in the
	// database's future. It is the tightest bound of the current clock epoch, which is the
	// bound of the fastest round trip; a new epoch every clockEpoch follows a clock that
	// stepped.
	offset     time.Duration
	clockKnown bool
	epochStart time.Time

	// Guessing pauses while most guesses miss, as when instances write the same users in turn.
	window, missed, paused int
}

// Bounds of the guessing. guessUsers bounds the memory of the copy (a row is 48 bytes).
// A block of guessWindow guesses with more than guessMissLimit misses pauses guessing for
// guessPause batches: a miss costs about four round trips, a hit saves one.
const (
	guessUsers     = 1 << 16
	guessWindow    = 32
	guessMissLimit = 4
	guessPause     = 1024
)

func newGuessCache() *guessCache {
	return &guessCache{users: make(map[int64]rowState)}
}

// guess returns a copy of the state of every user of batch, with the database's clock
// estimated for requests without a timestamp, or nil if any user is not known or guessing
// is paused.
func (c *guessCache) guess(batch []*writeRequest) (map[int64]*userState, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.clockKnown {
		return nil, time.Time{}
	}
	if c.paused > 0 {
		c.paused--
		return nil, time.Time{}
	}
	now := time.Now().Add(c.offset).UTC().Truncate(time.Microsecond)
	users := make(map[int64]*userState, len(batch))
	for _, w := range batch {
		id := w.req.UserID
		if users[id] != nil {
			continue
		}
		row, ok := c.users[id]
		if !ok {
			return nil, time.Time{}
		}
		users[id] = row.state(now)
	}
	return users, now
}

// outcome counts a guess that committed (hit) or that the database refused.
func (c *guessCache) outcome(hit bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.window++
	if !hit {
		c.missed++
	}
	if c.window == guessWindow {
		if c.missed > guessMissLimit {
			c.paused = guessPause
		}
		c.window, c.missed = 0, 0
	}
}

// store keeps the users' states a committed batch leaves, and the clock its write read. A
// state older than the one kept (a lower last_seq, from a batch that committed
// earlier but reported later) is ignored.
func (c *guessCache) store(users map[int64]*userState, clock clockReading) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !clock.at.IsZero() {
		c.clock(clock)
	}
	for id, u := range users {
		if kept, ok := c.users[id]; ok && kept.lastSeq > u.LastSeq {
			continue
		}
		if len(c.users) >= guessUsers {
			if _, ok := c.users[id]; !ok {
				for other := range c.users {
					delete(c.users, other)
					break
				}
			}
		}
		c.users[id] = u.row()
	}
}

// forget drops the batch's users, whose rows are unknown after a failed attempt; all users
// when the database was lost, since it may come back without commits this instance saw (an
// asynchronous standby promoted, a backup restored).
func (c *guessCache) forget(batch []*writeRequest, databaseLost bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if databaseLost {
		clear(c.users)
		return
	}
	for _, w := range batch {
		delete(c.users, w.req.UserID)
	}
}

// clockEpoch is how long the tightest bound of the clock offset is kept.
const clockEpoch = time.Second

// clock takes a reading of the database's clock into the offset.
func (c *guessCache) clock(r clockReading) {
	offset := r.database.Sub(r.at)
	if !c.clockKnown || r.at.Sub(c.epochStart) > clockEpoch {
		c.offset, c.clockKnown, c.epochStart = offset, true, r.at
		return
	}
	c.offset = max(c.offset, offset)
}

// clockReading is the database's clock as a round trip read it, and when its answer arrived.
type clockReading struct {
	database, at time.Time
}
