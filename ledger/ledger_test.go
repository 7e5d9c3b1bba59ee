package ledger_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tally-ledger/tally/ledger"
)

var (
	t0  = time.Date(2023, 1, 30, 10, 0, 0, 0, time.UTC)
	uid = uuid.MustParse("3f1c2a9e-8d4b-4f7a-9c1e-2b5d6e7f8a90")
)

func at(offset time.Duration) *time.Time {
	t := t0.Add(offset)
	return &t
}

// want is the expected outcome of one Decide call.
type want struct {
	status       ledger.Status
	reason       ledger.Code
	balanceAfter ledger.Amount // checked when applied
	newBalance   ledger.Amount
	shift        ledger.Amount
}

func checkDecision(t *testing.T, req ledger.Request, s ledger.UserState, d ledger.Decision, w want) {
	t.Helper()
	tx := d.Tx
	if tx.Status != w.status || tx.Reason != w.reason {
		t.Fatalf("status, reason = %s, %q; want %s, %q", tx.Status, tx.Reason, w.status, w.reason)
	}
	if w.status == ledger.Applied {
		if tx.BalanceAfter == nil || *tx.BalanceAfter != w.balanceAfter {
			t.Fatalf("BalanceAfter = %v, want %d", tx.BalanceAfter, w.balanceAfter)
		}
	} else if tx.BalanceAfter != nil {
		t.Fatalf("refused transaction has BalanceAfter %d", *tx.BalanceAfter)
	}
	if d.NewBalance != w.newBalance {
		t.Fatalf("NewBalance = %d, want %d", d.NewBalance, w.newBalance)
	}
	if d.Shift != w.shift {
		t.Fatalf("Shift = %d, want %d", d.Shift, w.shift)
	}
	// What every decision carries regardless of outcome.
	if tx.UID != req.UID || tx.UserID != req.UserID || tx.Type != req.Type || tx.Amount != req.Amount {
		t.Fatalf("Tx %+v does not carry the request %+v", tx, req)
	}
	if tx.Seq != s.LastSeq+1 {
		t.Fatalf("Seq = %d, want LastSeq+1 = %d", tx.Seq, s.LastSeq+1)
	}
	if !tx.CreatedAt.Equal(s.Now) {
		t.Fatalf("CreatedAt = %v, want Now %v", tx.CreatedAt, s.Now)
	}
	if req.Timestamp == nil {
		if tx.TimestampGiven || !tx.Timestamp.Equal(s.Now) {
			t.Fatalf("omitted timestamp: Timestamp %v given %v; want Now %v, not given", tx.Timestamp, tx.TimestampGiven, s.Now)
		}
	} else if !tx.TimestampGiven || !tx.Timestamp.Equal(*req.Timestamp) {
		t.Fatalf("Timestamp %v given %v; want %v, given", tx.Timestamp, tx.TimestampGiven, *req.Timestamp)
	}
}

func TestDecideAppend(t *testing.T) {
	t.Parallel()
	// Balance 100.00; the latest transaction is at t0; the clock reads t0+1h.
	state := ledger.UserState{Balance: 10000, LastSeq: 7, LastTime: t0, Now: t0.Add(time.Hour)}
	// Deliberately wrong back-dated fields: an append must not read them.
	poisoned := state
	poisoned.BalanceBefore, poisoned.HasAfter, poisoned.MinAfter, poisoned.MaxAfter = 0, true, 0, ledger.MaxBalance

	for _, tc := range []struct {
		name  string
		typ   ledger.Type
		cents ledger.Amount
		ts    *time.Time
		want  want
	}{
		{"deposit", ledger.Deposit, 5000, nil, want{ledger.Applied, "", 15000, 15000, 0}},
		{"withdraw", ledger.Withdraw, 3000, nil, want{ledger.Applied, "", 7000, 7000, 0}},
		{"withdraw to zero", ledger.Withdraw, 10000, nil, want{ledger.Applied, "", 0, 0, 0}},
		{"overdraft", ledger.Withdraw, 10001, nil, want{ledger.Rejected, ledger.CodeInsufficientFunds, 0, 10000, 0}},
		{"given timestamp after latest", ledger.Withdraw, 10000, at(time.Minute), want{ledger.Applied, "", 0, 0, 0}},
		{"given timestamp in the future", ledger.Deposit, 1, at(2 * time.Hour), want{ledger.Applied, "", 10001, 10001, 0}},
		// Equal timestamps apply in acceptance order, so this is an append.
		{"timestamp equal to latest", ledger.Withdraw, 6000, at(0), want{ledger.Applied, "", 4000, 4000, 0}},
		{"overdraft at latest", ledger.Withdraw, 10001, at(0), want{ledger.Rejected, ledger.CodeInsufficientFunds, 0, 10000, 0}},
		{"max amount overdraft", ledger.Withdraw, ledger.MaxAmount, nil, want{ledger.Rejected, ledger.CodeInsufficientFunds, 0, 10000, 0}},
	} {
		for name, s := range map[string]ledger.UserState{"": state, " (ignores back-dated fields)": poisoned} {
			t.Run(tc.name+name, func(t *testing.T) {
				t.Parallel()
				req := ledger.Request{UID: uid, UserID: 42, Type: tc.typ, Amount: tc.cents, Timestamp: tc.ts}
				checkDecision(t, req, s, ledger.Decide(req, s), tc.want)
			})
		}
	}
}

func TestDecideFirstTransaction(t *testing.T) {
	t.Parallel()
	s := ledger.UserState{Now: t0}
	req := ledger.Request{UID: uid, UserID: 1, Type: ledger.Deposit, Amount: 1}
	checkDecision(t, req, s, ledger.Decide(req, s), want{ledger.Applied, "", 1, 1, 0})
	req.Type = ledger.Withdraw
	checkDecision(t, req, s, ledger.Decide(req, s), want{ledger.Rejected, ledger.CodeInsufficientFunds, 0, 0, 0})
	// Any instant, however early, is an append to an empty timeline.
	req.Type, req.Timestamp = ledger.Deposit, &time.Time{}
	checkDecision(t, req, s, ledger.Decide(req, s), want{ledger.Applied, "", 1, 1, 0})
}

func TestDecideBackDated(t *testing.T) {
	t.Parallel()
	// Timeline: +30.00 at t0-2h, +70.00 at t0-1h, -20.00 at t0. Current balance 80.00.
	// A request at t0-90m sees 30.00 before it and 100.00, 80.00 after it.
	state := ledger.UserState{
		Balance: 8000, LastSeq: 3, LastTime: t0, Now: t0.Add(time.Hour),
		BalanceBefore: 3000, HasAfter: true, MinAfter: 8000, MaxAfter: 10000,
	}
	back := at(-90 * time.Minute)
	for _, tc := range []struct {
		name  string
		typ   ledger.Type
		cents ledger.Amount
		want  want
	}{
		{"deposit", ledger.Deposit, 1000, want{ledger.Applied, "", 4000, 9000, 1000}},
		{"withdraw", ledger.Withdraw, 1000, want{ledger.Applied, "", 2000, 7000, -1000}},
		{"withdraw to zero at its instant", ledger.Withdraw, 3000, want{ledger.Applied, "", 0, 5000, -3000}},
		// The current balance (80.00) would cover it, the balance at its instant does not.
		{"overdraft at its instant", ledger.Withdraw, 3001, want{ledger.Rejected, ledger.CodeInsufficientFunds, 0, 8000, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := ledger.Request{UID: uid, UserID: 42, Type: tc.typ, Amount: tc.cents, Timestamp: back}
			checkDecision(t, req, state, ledger.Decide(req, state), tc.want)
		})
	}

	// Timeline: +100.00 at t0-2h, -80.00 at t0-1h, +60.00 at t0. Current balance 80.00.
	// A request at t0-90m sees 100.00 before it and 20.00, 80.00 after it.
	dip := ledger.UserState{
		Balance: 8000, LastSeq: 3, LastTime: t0, Now: t0.Add(time.Hour),
		BalanceBefore: 10000, HasAfter: true, MinAfter: 2000, MaxAfter: 8000,
	}
	for _, tc := range []struct {
		name  string
		cents ledger.Amount
		want  want
	}{
		{"later minimum goes to zero", 2000, want{ledger.Applied, "", 8000, 6000, -2000}},
		// 100.00 at its instant suffices, but the balance after t0-1h would be -10.00.
		{"later minimum below zero", 3000, want{ledger.Rejected, ledger.CodeInsufficientFunds, 0, 8000, 0}},
		{"both below zero", 10001, want{ledger.Rejected, ledger.CodeInsufficientFunds, 0, 8000, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := ledger.Request{UID: uid, UserID: 42, Type: ledger.Withdraw, Amount: tc.cents, Timestamp: back}
			checkDecision(t, req, dip, ledger.Decide(req, dip), tc.want)
		})
	}

	t.Run("omitted timestamp behind a future-dated transaction", func(t *testing.T) {
		t.Parallel()
		// The latest transaction was sent a few minutes ahead of the clock, so "now" is
		// before it and the request is back-dated although it carries no timestamp.
		s := dip
		s.Now = t0.Add(-time.Minute)
		req := ledger.Request{UID: uid, UserID: 42, Type: ledger.Withdraw, Amount: 3000}
		checkDecision(t, req, s, ledger.Decide(req, s), want{ledger.Rejected, ledger.CodeInsufficientFunds, 0, 8000, 0})
		req.Amount = 1500
		checkDecision(t, req, s, ledger.Decide(req, s), want{ledger.Applied, "", 8500, 6500, -1500})
	})

	t.Run("one microsecond before the latest", func(t *testing.T) {
		t.Parallel()
		req := ledger.Request{UID: uid, UserID: 42, Type: ledger.Withdraw, Amount: 2000, Timestamp: at(-time.Microsecond)}
		s := dip
		s.BalanceBefore, s.MinAfter, s.MaxAfter = 2000, 8000, 8000
		checkDecision(t, req, s, ledger.Decide(req, s), want{ledger.Applied, "", 0, 6000, -2000})
	})
}

func TestDecideBalanceLimit(t *testing.T) {
	t.Parallel()
	full := ledger.MaxBalance - 1000
	appending := ledger.UserState{Balance: full, LastSeq: 1, LastTime: t0, Now: t0.Add(time.Second)}
	back := ledger.UserState{
		Balance: full, LastSeq: 1, LastTime: t0, Now: t0.Add(time.Second),
		BalanceBefore: 0, HasAfter: true, MinAfter: full, MaxAfter: full,
	}
	// Only the balance at the request's own instant is near the limit.
	peakBefore := ledger.UserState{
		Balance: 0, LastSeq: 1, LastTime: t0, Now: t0.Add(time.Second),
		BalanceBefore: ledger.MaxBalance, HasAfter: true, MinAfter: 0, MaxAfter: 0,
	}
	// Only a balance in between is near the limit; the current one is low.
	peakBetween := ledger.UserState{
		Balance: 0, LastSeq: 1, LastTime: t0, Now: t0.Add(time.Second),
		BalanceBefore: 0, HasAfter: true, MinAfter: 0, MaxAfter: full,
	}
	earlier := at(-time.Hour)
	for _, tc := range []struct {
		name  string
		s     ledger.UserState
		typ   ledger.Type
		cents ledger.Amount
		ts    *time.Time
		want  want
	}{
		{"append up to the limit", appending, ledger.Deposit, 1000, nil, want{ledger.Applied, "", ledger.MaxBalance, ledger.MaxBalance, 0}},
		{"append over the limit", appending, ledger.Deposit, 1001, nil, want{ledger.Rejected, ledger.CodeBalanceLimit, 0, full, 0}},
		{"append max amount over the limit", appending, ledger.Deposit, ledger.MaxAmount, nil, want{ledger.Rejected, ledger.CodeBalanceLimit, 0, full, 0}},
		{"withdraw near the limit", appending, ledger.Withdraw, ledger.MaxAmount, nil, want{ledger.Applied, "", full - ledger.MaxAmount, full - ledger.MaxAmount, 0}},
		{"back-dated up to the limit", back, ledger.Deposit, 1000, earlier, want{ledger.Applied, "", 1000, ledger.MaxBalance, 1000}},
		{"back-dated over the limit later", back, ledger.Deposit, 1001, earlier, want{ledger.Rejected, ledger.CodeBalanceLimit, 0, full, 0}},
		{"back-dated over the limit at its instant", peakBefore, ledger.Deposit, 1, earlier, want{ledger.Rejected, ledger.CodeBalanceLimit, 0, 0, 0}},
		{"back-dated over the limit in between", peakBetween, ledger.Deposit, 1001, earlier, want{ledger.Rejected, ledger.CodeBalanceLimit, 0, 0, 0}},
		{"back-dated up to the limit in between", peakBetween, ledger.Deposit, 1000, earlier, want{ledger.Applied, "", 1000, 1000, 1000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := ledger.Request{UID: uid, UserID: 42, Type: tc.typ, Amount: tc.cents, Timestamp: tc.ts}
			checkDecision(t, req, tc.s, ledger.Decide(req, tc.s), tc.want)
		})
	}
}

func TestBackDated(t *testing.T) {
	t.Parallel()
	s := ledger.UserState{LastTime: t0}
	if !s.BackDated(t0.Add(-time.Microsecond)) {
		t.Error("an instant before the latest is not back-dated")
	}
	if s.BackDated(t0) {
		t.Error("an instant equal to the latest is back-dated")
	}
	if s.BackDated(t0.In(time.FixedZone("", 3*3600))) {
		t.Error("the same instant in another zone is back-dated")
	}
	if s.BackDated(t0.Add(time.Microsecond)) {
		t.Error("an instant after the latest is back-dated")
	}
	if (ledger.UserState{}).BackDated(time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Error("nothing is back-dated in an empty timeline")
	}
}

func TestEffectiveTime(t *testing.T) {
	t.Parallel()
	now := t0.Add(time.Hour)
	if got := (ledger.Request{}).EffectiveTime(now); !got.Equal(now) {
		t.Errorf("omitted timestamp: EffectiveTime = %v, want now %v", got, now)
	}
	if got := (ledger.Request{Timestamp: at(0)}).EffectiveTime(now); !got.Equal(t0) {
		t.Errorf("given timestamp: EffectiveTime = %v, want %v", got, t0)
	}
}

func TestRequestMatches(t *testing.T) {
	t.Parallel()
	given := ledger.Request{UID: uid, UserID: 42, Type: ledger.Deposit, Amount: 10000, Timestamp: at(0)}
	omitted := given
	omitted.Timestamp = nil
	now := ledger.UserState{Now: t0, LastTime: t0.Add(-time.Hour)}
	storedGiven := ledger.Decide(given, now).Tx
	storedOmitted := ledger.Decide(omitted, now).Tx // happened at t0 too, but without a timestamp

	refused := ledger.Decide(ledger.Request{UID: uid, UserID: 42, Type: ledger.Withdraw, Amount: 10000}, now).Tx
	if refused.Status != ledger.Rejected {
		t.Fatalf("setup: withdrawal from an empty account was %s", refused.Status)
	}

	with := func(change func(*ledger.Request)) ledger.Request {
		r := given
		change(&r)
		return r
	}
	for _, tc := range []struct {
		name   string
		req    ledger.Request
		stored ledger.Transaction
		want   bool
	}{
		{"same body", given, storedGiven, true},
		{"same body, another uid", with(func(r *ledger.Request) { r.UID = uuid.New() }), storedGiven, true},
		{"same instant in another zone", with(func(r *ledger.Request) { z := t0.In(time.FixedZone("", -5*3600)); r.Timestamp = &z }), storedGiven, true},
		{"different amount", with(func(r *ledger.Request) { r.Amount = 10001 }), storedGiven, false},
		{"different type", with(func(r *ledger.Request) { r.Type = ledger.Withdraw }), storedGiven, false},
		{"different user", with(func(r *ledger.Request) { r.UserID = 43 }), storedGiven, false},
		{"different timestamp", with(func(r *ledger.Request) { r.Timestamp = at(time.Microsecond) }), storedGiven, false},
		{"omitted vs given", omitted, storedGiven, false},
		{"given vs omitted at the same instant", given, storedOmitted, false},
		{"omitted vs omitted", omitted, storedOmitted, true},
		// A retry of an omitted-timestamp request comes later, when "now" has moved on.
		{"omitted vs omitted, clock moved", omitted, ledger.Decide(omitted, ledger.UserState{Now: t0.Add(time.Hour)}).Tx, true},
		{"refused transaction, same body", ledger.Request{UID: uid, UserID: 42, Type: ledger.Withdraw, Amount: 10000}, refused, true},
		{"refused transaction, other amount", ledger.Request{UID: uid, UserID: 42, Type: ledger.Withdraw, Amount: 1}, refused, false},
	} {
		if got := tc.req.Matches(tc.stored); got != tc.want {
			t.Errorf("%s: Matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRefusalDetail(t *testing.T) {
	t.Parallel()
	poor := ledger.UserState{Now: t0}
	tx := ledger.Decide(ledger.Request{UID: uid, UserID: 42, Type: ledger.Withdraw, Amount: 150}, poor).Tx
	got := ledger.RefusalDetail(tx)
	for _, part := range []string{"1.50", "2023-01-30T10:00:00Z", "user 42", "below zero"} {
		if !strings.Contains(got, part) {
			t.Errorf("insufficient funds detail %q lacks %q", got, part)
		}
	}
	rich := ledger.UserState{Now: t0, Balance: ledger.MaxBalance}
	tx = ledger.Decide(ledger.Request{UID: uid, UserID: 7, Type: ledger.Deposit, Amount: 1}, rich).Tx
	got = ledger.RefusalDetail(tx)
	for _, part := range []string{"0.01", "user 7", "above", ledger.MaxBalance.String()} {
		if !strings.Contains(got, part) {
			t.Errorf("balance limit detail %q lacks %q", got, part)
		}
	}
}

func TestParseType(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want ledger.Type
	}{
		{"DEPOSIT", ledger.Deposit},
		{"deposit", ledger.Deposit},
		{"Deposit", ledger.Deposit},
		{"dEpOsIt", ledger.Deposit},
		{"WITHDRAW", ledger.Withdraw},
		{"withdraw", ledger.Withdraw},
		{" withdraw\t", ""},
		{" deposit\n", ""},
		{"DEPOSIT ", ""},
		{"", ""},
		{"   ", ""},
		{"DEPOSITS", ""},
		{"WITHDRAWAL", ""},
		{"transfer", ""},
		{"DEP OSIT", ""},
		{"\"DEPOSIT\"", ""},
		{"DEPOSIT\x00", ""},
		{strings.Repeat("DEPOSIT", 100), ""},
		// Only ASCII letters fold: Unicode case mapping turns these into DEPOSIT.
		{"depoſit", ""},
		{"DEPOSıT", ""},
		{"ＤＥＰＯＳＩＴ", ""},
		{"\u00a0DEPOSIT", ""},
	} {
		t.Run(truncateName(fmt.Sprintf("%q", tc.in)), func(t *testing.T) {
			t.Parallel()
			got, err := ledger.ParseType(tc.in)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("ParseType(%q) = %q, want an error", tc.in, got)
				}
				requireInvalid(t, err, "type")
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseType(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestParseUID(t *testing.T) {
	t.Parallel()
	const canonical = "3f1c2a9e-8d4b-4f7a-9c1e-2b5d6e7f8a90"
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{canonical, true},
		{strings.ToUpper(canonical), true},
		{"3F1C2A9E-8d4b-4F7A-9c1e-2B5D6E7F8A90", true},
		{"00000000-0000-0000-0000-000000000000", false}, // a uid never filled in
		{uuid.NewString(), true},
		{"", false},
		{"not-a-uuid", false},
		{strings.ReplaceAll(canonical, "-", ""), false}, // 32 hex digits without dashes
		{"{" + canonical + "}", false},
		{"urn:uuid:" + canonical, false},
		{canonical[:35], false},
		{canonical + "0", false},
		{" " + canonical, false},
		{canonical + " ", false},
		{"3f1c2a9e-8d4b-4f7a-9c1e-2b5d6e7f8a9g", false},
		{"3f1c2a9e8-d4b-4f7a-9c1e-2b5d6e7f8a90", false},
		{"3f1c2a9e_8d4b_4f7a_9c1e_2b5d6e7f8a90", false},
		{"12345", false},
	} {
		t.Run(fmt.Sprintf("%q", tc.in), func(t *testing.T) {
			t.Parallel()
			got, err := ledger.ParseUID(tc.in)
			if !tc.ok {
				if err == nil {
					t.Fatalf("ParseUID(%q) = %v, want an error", tc.in, got)
				}
				requireInvalid(t, err, "uid")
				if got != uuid.Nil {
					t.Fatalf("ParseUID(%q) returned %v with its error", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseUID(%q): %v", tc.in, err)
			}
			if want := uuid.MustParse(tc.in); got != want || got.String() != strings.ToLower(tc.in) {
				t.Fatalf("ParseUID(%q) = %v, want %v", tc.in, got, want)
			}
		})
	}
}

func TestParseName(t *testing.T) {
	t.Parallel()
	ya := strings.Repeat("я", 200) // 400 bytes, 200 characters
	for _, tc := range []struct {
		name, in, want string
		ok             bool
	}{
		{"plain", "Petya", "Petya", true},
		{"trimmed", "  Petya Ivanov \t\n", "Petya Ivanov", true},
		{"inner spaces kept", "Anna  Maria", "Anna  Maria", true},
		{"one character", "x", "x", true},
		{"200 two-byte characters", ya, ya, true},
		{"200 four-byte characters", strings.Repeat("😀", 200), strings.Repeat("😀", 200), true},
		{"200 characters with padding", "   " + ya + "   ", ya, true},
		{"201 two-byte characters", ya + "я", "", false},
		{"201 four-byte characters", strings.Repeat("😀", 201), "", false},
		{"201 ASCII characters", strings.Repeat("a", 201), "", false},
		{"empty", "", "", false},
		{"blank", "   ", "", false},
		{"whitespace", "\t\n\r ", "", false},
		{"unicode spaces", "\u00a0\u2003\u3000", "", false},
		{"NUL", "Pe\x00tya", "", false},
		{"tab inside", "Pe\ttya", "", false},
		{"bell", "\a", "", false},
		{"zero-width space", "\u200b", "", false},
		{"zero-width space inside", "Pe\u200btya", "", false},
		{"byte order mark", "\ufeff", "", false},
		{"bidi override", "\u202eavyteP", "", false},
		{"bidi isolates only", "\u2066\u2069", "", false},
		{"combining mark only", "\u0301", "", false},
		{"hangul filler", "\u3164", "", false},
		{"halfwidth hangul filler", "\uffa0", "", false},
		{"hangul choseong filler", "\u115f", "", false},
		{"hangul jungseong filler", "\u1160", "", false},
		{"three choseong fillers", "\u115f\u115f\u115f", "", false},
		{"braille blank", "\u2800", "", false},
		{"two braille blanks", "\u2800\u2800", "", false},
		{"object replacement character", "\ufffc", "", false},
		{"line separator inside", "a\u2028b", "", false},
		{"paragraph separator inside", "a\u2029b", "", false},
		{"noncharacter", "a\ufffe", "", false},
		{"private use", "a\ue000", "", false},
		{"braille pattern with dots", "\u2801", "\u2801", true},
		{"combining mark kept", "Zoe\u0301", "Zoe\u0301", true},
		{"apostrophe", "O'Brien", "O'Brien", true},
		{"han", "李小龙", "李小龙", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ledger.ParseName(tc.in)
			if !tc.ok {
				if err == nil {
					t.Fatalf("ParseName(%q) = %q, want an error", truncateName(tc.in), got)
				}
				requireInvalid(t, err, "name")
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseName(%q) = %q, %v; want %q", truncateName(tc.in), got, err, tc.want)
			}
		})
	}
	_, err := ledger.ParseName(ya + "я")
	if err == nil || !strings.Contains(err.Error(), "201") || !strings.Contains(err.Error(), "200") {
		t.Errorf("detail %v should count characters, not bytes", err)
	}
}

func TestParseNameDetails(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, in, detail string }{
		{"control", "Pe\x07tya", "control character U+0007"},
		{"format", "Pe\u200btya", "invisible format character U+200B"},
		{"nothing visible", "\u0301\u0301", "no visible character"},
		{"default-ignorable", "a\u3164", "invisible character U+3164"},
		{"line separator", "a\u2028b", "line or paragraph separator U+2028"},
		{"noncharacter", "a\ufffe", "noncharacter U+FFFE"},
		{"private use", "a\ue000", "private-use character U+E000"},
		{"braille blank", "\u2800", "no visible character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ledger.ParseName(tc.in)
			requireInvalid(t, err, "name")
			if !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("ParseName(%q) error %q does not contain %q", tc.in, err, tc.detail)
			}
		})
	}
}

func TestParseUIDRefusesTheZeroUID(t *testing.T) {
	t.Parallel()
	_, err := ledger.ParseUID("00000000-0000-0000-0000-000000000000")
	requireInvalid(t, err, "uid")
	if !strings.Contains(err.Error(), "all-zero") {
		t.Fatalf("detail %q does not say why", err)
	}
}

func TestClip(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 500_000)
	for _, tc := range []struct{ name, in, want string }{
		{"short", "GET", "GET"},
		{"exactly the limit", strings.Repeat("x", 100), strings.Repeat("x", 100)},
		{"long", long, strings.Repeat("x", 100) + "..."},
		{"cut at a character boundary", "a" + strings.Repeat("я", 60), "a" + strings.Repeat("я", 49) + "..."},
		{"invalid UTF-8", "a\xffb", "a\ufffdb"},
		{"control characters", "a\x00b\nc", "a\ufffdb\ufffdc"},
		{"format characters", "a\u202eb", "a\ufffdb"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := ledger.Clip(tc.in); got != tc.want {
				t.Fatalf("Clip(%q) = %q, want %q", truncateName(tc.in), got, tc.want)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	invalid := ledger.Invalid("amount", "amount is required")
	if got := invalid.Error(); got != "invalid: amount is required" {
		t.Errorf("Error() = %q", got)
	}
	if invalid.Field != "amount" || invalid.Code != ledger.CodeInvalid {
		t.Errorf("Invalid = %+v", invalid)
	}
	notFound := ledger.NotFound("user %d not found", 42)
	if notFound.Code != ledger.CodeNotFound || notFound.Detail != "user 42 not found" || notFound.Field != "" {
		t.Errorf("NotFound = %+v", notFound)
	}
	for _, tc := range []struct {
		err  error
		want ledger.Code
	}{
		{invalid, ledger.CodeInvalid},
		{notFound, ledger.CodeNotFound},
		{fmt.Errorf("apply: %w", &ledger.Error{Code: ledger.CodeIdempotencyConflict}), ledger.CodeIdempotencyConflict},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", ledger.Invalid("x", "y"))), ledger.CodeInvalid},
		{errors.Join(errors.New("other"), ledger.NotFound("gone")), ledger.CodeNotFound},
		{errors.New("connection refused"), ""},
		{nil, ""},
	} {
		if got := ledger.ErrorCode(tc.err); got != tc.want {
			t.Errorf("ErrorCode(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestParseNameRejectsInvalidUTF8: a form body ("name=%FF") reaches ParseName without the
// U+FFFD replacement that JSON decoding does, and PostgreSQL refuses invalid UTF-8 in a text
// column, so a name that is not UTF-8 must be refused here as invalid, not fail in the store.
func TestParseNameRejectsInvalidUTF8(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"\xff", "Pe\xfftya", "Petya\xc3", "\xed\xa0\x80"} {
		got, err := ledger.ParseName(in)
		if err == nil {
			t.Errorf("ParseName(%q) = %q, want an error", in, got)
			continue
		}
		requireInvalid(t, err, "name")
	}
}

func TestSeriesInstants(t *testing.T) {
	t.Parallel()
	day := func(s string) time.Time {
		at, err := time.Parse(time.DateOnly, s)
		if err != nil {
			t.Fatal(err)
		}
		return at
	}
	for _, tc := range []struct {
		name     string
		from, to time.Time
		n        int
		want     []string
	}{
		{name: "whole days", from: day("2023-01-01"), to: day("2023-01-05"), n: 5,
			want: []string{"2023-01-01T00:00:00Z", "2023-01-02T00:00:00Z", "2023-01-03T00:00:00Z", "2023-01-04T00:00:00Z", "2023-01-05T00:00:00Z"}},
		{name: "two points are the ends", from: day("2023-01-01"), to: day("2023-01-02"), n: 2,
			want: []string{"2023-01-01T00:00:00Z", "2023-01-02T00:00:00Z"}},
		{name: "a span that does not divide: whole microseconds, ends exact", from: day("2023-01-01"), to: day("2023-01-01").Add(10 * time.Microsecond), n: 4,
			want: []string{"2023-01-01T00:00:00Z", "2023-01-01T00:00:00.000003Z", "2023-01-01T00:00:00.000006Z", "2023-01-01T00:00:00.00001Z"}},
		{name: "years 1 to 9999 do not overflow", from: day("0001-01-01"), to: day("9999-12-31"), n: 3,
			want: []string{"0001-01-01T00:00:00Z", "5000-07-02T00:00:00Z", "9999-12-31T00:00:00Z"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, at := range ledger.SeriesInstants(tc.from, tc.to, tc.n) {
				got = append(got, at.Format(time.RFC3339Nano))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	instants := ledger.SeriesInstants(day("2020-01-01"), day("2020-01-01").Add(999*time.Hour+7), ledger.MaxSeriesPoints)
	if len(instants) != ledger.MaxSeriesPoints {
		t.Fatalf("%d instants", len(instants))
	}
	for i := 1; i < len(instants); i++ {
		if !instants[i].After(instants[i-1]) {
			t.Fatalf("instant %d (%v) is not after %v", i, instants[i], instants[i-1])
		}
	}
}
