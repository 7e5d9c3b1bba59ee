package ledger_test

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tally-ledger/tally/ledger"
)

// row is one applied transaction in the model timeline.
type row struct {
	at           time.Time
	seq          int64
	delta        ledger.Amount
	balanceAfter ledger.Amount // as the store keeps it, shifted by back-dated inserts
}

// timeline is an in-memory stand-in for one user's rows in the store.
type timeline struct {
	rows    []row // applied only, ordered by (at, seq)
	balance ledger.Amount
	lastSeq int64
}

func (tl *timeline) lastTime() time.Time {
	if len(tl.rows) == 0 {
		return time.Time{}
	}
	return tl.rows[len(tl.rows)-1].at
}

// state reads what the store reads under the user's lock: the back-dated fields only when
// the request goes before the latest transaction.
func (tl *timeline) state(req ledger.Request, now time.Time) ledger.UserState {
	s := ledger.UserState{Balance: tl.balance, LastSeq: tl.lastSeq, LastTime: tl.lastTime(), Now: now}
	at := req.EffectiveTime(now)
	if !s.BackDated(at) {
		return s
	}
	for _, r := range tl.rows {
		if !r.at.After(at) {
			s.BalanceBefore = r.balanceAfter
			continue
		}
		if !s.HasAfter {
			s.HasAfter, s.MinAfter, s.MaxAfter = true, r.balanceAfter, r.balanceAfter
		}
		s.MinAfter = min(s.MinAfter, r.balanceAfter)
		s.MaxAfter = max(s.MaxAfter, r.balanceAfter)
	}
	return s
}

// position is where a row at (at, seq) goes: after every row at or before at, since seq
// is always the largest yet.
func (tl *timeline) position(at time.Time) int {
	return sort.Search(len(tl.rows), func(i int) bool { return tl.rows[i].at.After(at) })
}

// apply stores a decision the way the store does: insert, shift the later rows, update the user.
func (tl *timeline) apply(d ledger.Decision) {
	tl.lastSeq = d.Tx.Seq
	tl.balance = d.NewBalance
	if d.Tx.Status != ledger.Applied {
		return
	}
	i := tl.position(d.Tx.Timestamp)
	for j := i; j < len(tl.rows); j++ {
		tl.rows[j].balanceAfter += d.Shift
	}
	delta := d.Tx.Amount
	if d.Tx.Type == ledger.Withdraw {
		delta = -delta
	}
	tl.rows = append(tl.rows, row{})
	copy(tl.rows[i+1:], tl.rows[i:])
	tl.rows[i] = row{at: d.Tx.Timestamp, seq: d.Tx.Seq, delta: delta, balanceAfter: *d.Tx.BalanceAfter}
}

// check verifies the stored balances against a recomputation from the deltas.
func (tl *timeline) check() error {
	var sum ledger.Amount
	for i, r := range tl.rows {
		if i > 0 {
			p := tl.rows[i-1]
			if r.at.Before(p.at) || (r.at.Equal(p.at) && r.seq <= p.seq) {
				return fmt.Errorf("row %d (%s, %d) is out of order after (%s, %d)", i, ledger.FormatTime(r.at), r.seq, ledger.FormatTime(p.at), p.seq)
			}
		}
		sum += r.delta
		if r.balanceAfter != sum {
			return fmt.Errorf("row %d stores balance_after %s, the running sum is %s", i, r.balanceAfter, sum)
		}
		if sum < 0 || sum > ledger.MaxBalance {
			return fmt.Errorf("row %d takes the balance to %s", i, sum)
		}
	}
	if tl.balance != sum {
		return fmt.Errorf("balance %s, the running sum is %s", tl.balance, sum)
	}
	return nil
}

// wouldBreak reports what inserting delta at instant at would break: the code of the first
// balance that leaves [0, MaxBalance], or "" when the timeline stays valid.
func (tl *timeline) wouldBreak(at time.Time, delta ledger.Amount) ledger.Code {
	var sum ledger.Amount
	i := tl.position(at)
	for j := 0; j <= len(tl.rows); j++ {
		if j == i {
			sum += delta
		} else {
			sum += tl.rows[j-boolInt(j > i)].delta
		}
		switch {
		case sum < 0:
			return ledger.CodeInsufficientFunds
		case sum > ledger.MaxBalance:
			return ledger.CodeBalanceLimit
		}
	}
	return ""
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// outcomes counts what the random runs exercised, so a change in the generator cannot
// quietly stop covering the interesting cases.
type outcomes struct {
	mu                                    sync.Mutex
	appended, backDated, shifted, refused int
	refusedLater, limit, equalTimes       int
}

func TestDecideRandomTimelines(t *testing.T) {
	t.Parallel()
	var seen outcomes
	t.Run("seeds", func(t *testing.T) {
		for seed := range uint64(40) {
			t.Run(fmt.Sprint(seed), func(t *testing.T) {
				t.Parallel()
				runTimeline(t, seed, &seen)
			})
		}
	})
	if t.Failed() {
		return
	}
	for name, n := range map[string]int{
		"appended": seen.appended, "back-dated applied": seen.backDated, "shifted": seen.shifted,
		"refused": seen.refused, "refused for a later balance": seen.refusedLater,
		"refused at the limit": seen.limit, "applied at an existing instant": seen.equalTimes,
	} {
		if n < 20 {
			t.Errorf("only %d cases of %s; the generator no longer covers it", n, name)
		}
	}
	t.Logf("appended %d, back-dated %d (shifted %d), refused %d (for a later balance %d, at the limit %d), at an existing instant %d",
		seen.appended, seen.backDated, seen.shifted, seen.refused, seen.refusedLater, seen.limit, seen.equalTimes)
}

func runTimeline(t *testing.T, seed uint64, seen *outcomes) {
	rng := rand.New(rand.NewPCG(seed, 0x7a11))
	base := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)
	now := base.Add(time.Hour)
	tl := &timeline{}
	// Odd seeds start near MaxBalance, where deposits hit the limit.
	nearLimit := seed%2 == 1
	if nearLimit {
		opening := ledger.MaxBalance - ledger.Amount(rng.Int64N(int64(3*ledger.MaxAmount)))
		tl.rows = []row{{at: base, seq: 1, delta: opening, balanceAfter: opening}}
		tl.balance, tl.lastSeq = opening, 1
	}
	var local outcomes
	for step := range 400 {
		now = now.Add(time.Duration(rng.IntN(20)) * time.Second)
		req := ledger.Request{UID: uuid.New(), UserID: 42, Type: ledger.Deposit}
		if rng.IntN(2) == 0 {
			req.Type = ledger.Withdraw
		}
		var ts time.Time
		switch k := rng.IntN(10); {
		case k < 3: // omitted: now
		case k < 5 && len(tl.rows) > 0: // exactly an existing instant
			ts = tl.rows[rng.IntN(len(tl.rows))].at
		case k < 6:
			ts = tl.lastTime()
		case k < 8: // anywhere from the start to a little ahead of the clock
			span := now.Add(ledger.MaxClockSkew).Sub(base)
			ts = base.Add(time.Duration(rng.Int64N(int64(span/time.Second))) * time.Second)
		default: // recent, to microsecond precision
			ts = now.Add(-time.Duration(rng.Int64N(int64(10*time.Minute/time.Microsecond))) * time.Microsecond)
		}
		if !ts.IsZero() {
			req.Timestamp = &ts
		}
		at := req.EffectiveTime(now)
		s := tl.state(req, now)

		switch k := rng.IntN(10); {
		case nearLimit && req.Type == ledger.Deposit:
			req.Amount = 1 + ledger.Amount(rng.Int64N(int64(ledger.MaxAmount)))
		case k == 0 && s.BackDated(at) && s.BalanceBefore > 0: // exactly what the instant holds
			req.Amount = min(s.BalanceBefore, ledger.MaxAmount)
		case k == 1 && s.HasAfter && s.MinAfter > 0: // exactly the later minimum
			req.Amount = min(s.MinAfter, ledger.MaxAmount)
		case k == 2 && s.Balance > 0:
			req.Amount = min(s.Balance, ledger.MaxAmount)
		default:
			req.Amount = 1 + ledger.Amount(rng.Int64N(20000))
		}
		delta := req.Amount
		if req.Type == ledger.Withdraw {
			delta = -delta
		}

		d := ledger.Decide(req, s)
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d step %d: %s %s at %s (back-dated %v) against %+v: %s",
				seed, step, req.Type, req.Amount, ledger.FormatTime(at), s.BackDated(at), s, fmt.Sprintf(format, args...))
		}
		if d.Tx.Seq != tl.lastSeq+1 || !d.Tx.Timestamp.Equal(at) || d.Tx.TimestampGiven != (req.Timestamp != nil) {
			fail("Tx has seq %d, timestamp %s, given %v", d.Tx.Seq, ledger.FormatTime(d.Tx.Timestamp), d.Tx.TimestampGiven)
		}
		broken := tl.wouldBreak(at, delta)
		hasLater := tl.position(at) < len(tl.rows)
		switch d.Tx.Status {
		case ledger.Applied:
			if broken != "" {
				fail("applied, but it breaks the timeline: %s", broken)
			}
			if d.NewBalance != tl.balance+delta {
				fail("NewBalance %s, want %s", d.NewBalance, tl.balance+delta)
			}
			if want := delta * ledger.Amount(boolInt(hasLater)); d.Shift != want {
				fail("Shift %s, want %s", d.Shift, want)
			}
			local.appended += 1 - boolInt(hasLater)
			local.backDated += boolInt(hasLater)
			local.shifted += boolInt(d.Shift != 0)
			if i := tl.position(at); i > 0 && tl.rows[i-1].at.Equal(at) {
				local.equalTimes++
			}
		case ledger.Rejected:
			if broken == "" || d.Tx.Reason != broken {
				fail("refused with %q, but inserting it would break: %q", d.Tx.Reason, broken)
			}
			if d.NewBalance != tl.balance || d.Shift != 0 || d.Tx.BalanceAfter != nil {
				fail("refusal moves money: NewBalance %s, Shift %s", d.NewBalance, d.Shift)
			}
			local.refused++
			if hasLater && s.BalanceBefore+delta >= 0 && broken == ledger.CodeInsufficientFunds {
				local.refusedLater++
			}
			if broken == ledger.CodeBalanceLimit {
				local.limit++
			}
		default:
			fail("status %q", d.Tx.Status)
		}
		tl.apply(d)
		if err := tl.check(); err != nil {
			fail("%v", err)
		}
	}
	seen.mu.Lock()
	defer seen.mu.Unlock()
	seen.appended += local.appended
	seen.backDated += local.backDated
	seen.shifted += local.shifted
	seen.refused += local.refused
	seen.refusedLater += local.refusedLater
	seen.limit += local.limit
	seen.equalTimes += local.equalTimes
}
