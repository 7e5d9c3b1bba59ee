package ledger_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tally-ledger/tally/ledger"
)

// amountCases are the table for ParseAmount and the seed corpus of FuzzParseAmount.
// want 0 means the input must be rejected.
var amountCases = []struct {
	in   string
	want ledger.Amount
}{
	{"100", 10000},
	{"100.0", 10000},
	{"100.00", 10000},
	{"100.000", 10000}, // exactly representable, so accepted
	{"0.01", 1},
	{"0.1", 10},
	{"0.05", 5},
	{"1e2", 10000},
	{"1E2", 10000},
	{"1e+2", 10000},
	{"1.5e1", 1500},
	{"1e-2", 1},
	{"150e-2", 150},
	{"12345678.91", 1234567891},
	{"1000000000.00", ledger.MaxAmount},
	{"1000000000", ledger.MaxAmount},
	{"1e9", ledger.MaxAmount},
	{"999999999.99", ledger.MaxAmount - 1},
	{"007", 700},
	{strings.Repeat("0", 63) + "1", 100}, // 64 characters: the longest accepted
	{"0." + strings.Repeat("0", 55) + "1e57", 1000},
	// An exponent is judged by its value, not by how many digits spell it.
	{"1E+02", 10000},
	{"1e+002", 10000},
	{"1e0002", 10000},
	{"1e-0002", 1},
	{"1e" + strings.Repeat("0", 60) + "2", 10000},
	{"5e-" + strings.Repeat("0", 59) + "2", 5},

	{"1000000000.01", 0}, // one cent over MaxAmount
	{"1000000001", 0},
	{"1e10", 0},
	{"0", 0},
	{"0.00", 0},
	{"0e5", 0},
	{"-1", 0},
	{"-0.01", 0},
	{"+1", 0},
	{"1.001", 0},
	{"0.001", 0},
	{"1e-3", 0},
	{"1e-5", 0},
	{"abc", 0},
	{"", 0},
	{"1,5", 0},
	{"1,000", 0},
	{" 1", 0},
	{"1 ", 0},
	{"1\n", 0},
	{"1.", 0},
	{".5", 0},
	{"1e", 0},
	{"e2", 0},
	{"1e2.5", 0},
	{"1..0", 0},
	{"NaN", 0},
	{"nan", 0},
	{"Infinity", 0},
	{"Inf", 0},
	{"0x10", 0},
	{"0b1", 0},
	{"1_000", 0},
	{"1/3", 0},
	{"١٠٠", 0}, // Arabic-Indic digits
	{"１", 0},   // fullwidth digit
	{"100\x00", 0},
	{strings.Repeat("0", 64) + "1", 0}, // 65 characters
	{strings.Repeat("9", 64), 0},
	{strings.Repeat("1", 1000), 0},
	{strings.Repeat("1", 100000), 0},
	{"1e999999999", 0},
	{"1e-999999999", 0},
	{"1e99999999999999999999", 0},
	{"1e9223372036854775808", 0},
	{"1e-9223372036854775808", 0},
	{"1e1000000", 0},
	{"1e999999", 0},
	{"1e-999999", 0},
	{"0e999999999", 0},
	{"1e+0999999999", 0},
	{"1e-" + strings.Repeat("0", 50) + "3", 0},
	{"1e+101", 0},
	{"1e-101", 0},
}

func TestParseAmount(t *testing.T) {
	t.Parallel()
	for _, tc := range amountCases {
		t.Run(truncateName(tc.in), func(t *testing.T) {
			t.Parallel()
			got, err := ledger.ParseAmount(tc.in)
			if tc.want == 0 {
				if err == nil {
					t.Fatalf("ParseAmount(%q) = %d, want an error", tc.in, got)
				}
				requireInvalid(t, err, "amount")
				if got != 0 {
					t.Fatalf("ParseAmount(%q) returned %d with its error, want 0", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAmount(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Fatalf("ParseAmount(%q) = %d, want %d", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseAmountErrorDetails(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, detail string }{
		{"", "required"},
		{"0", "greater than zero"},
		{"1.001", "more than two decimals"},
		{"1000000000.01", "1000000000.00"},
		{"abc", `"abc"`},
		// A long input is quoted shortened, so an error never echoes a whole payload.
		{strings.Repeat("7", 1000), strings.Repeat("7", 100) + `..."`},
		{strings.Repeat("7", 65), "too long"},
		{strings.Repeat("1", 100000), "at most 64 characters"},
		{"1e999999999", "out of range"},
		{"1e+0000000000011", "must not exceed 1000000000.00"},
		{"1e+0000000000101", "out of range"},
		{"1e-999999999", "more than two decimals"},
		{"0e999999999", "greater than zero"},
	} {
		t.Run(truncateName(tc.in), func(t *testing.T) {
			t.Parallel()
			_, err := ledger.ParseAmount(tc.in)
			requireInvalid(t, err, "amount")
			if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("ParseAmount(%q) error %q does not contain %q", truncateName(tc.in), err, tc.detail)
			}
			if len(err.Error()) > 200 {
				t.Errorf("ParseAmount(%q) error is %d bytes long", truncateName(tc.in), len(err.Error()))
			}
		})
	}
}

// TestParseAmountHugeExponentIsCheap guards against a request body of a few bytes costing
// megabytes and milliseconds: big.Rat expands exponents up to 10^6 digits before any range
// check. It does not run in parallel so the process-wide allocation counter is its own.
func TestParseAmountHugeExponentIsCheap(t *testing.T) {
	const budget = 64 << 10 // bytes allocated per call
	for _, in := range []string{
		"1e999999999", "1e-999999999", "1e99999999999999999999",
		"1e1000000", "1e999999", "1e-999999", "1e100000", "9e99999", "1.5e-999998",
		"99999999999999999999999999999999999999999999999999999e-999999",
		"1e+" + strings.Repeat("0", 50) + "99999999",
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		_, err := ledger.ParseAmount(in)
		elapsed := time.Since(start)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Errorf("ParseAmount(%q) accepted", in)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > budget {
			t.Errorf("ParseAmount(%q) allocated %d bytes in %v to reject a %d-byte input; want at most %d bytes", truncateName(in), n, elapsed, len(in), budget)
		}
	}
}

func TestAmountString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   ledger.Amount
		want string
	}{
		{10000, "100.00"},
		{5, "0.05"},
		{50, "0.50"},
		{0, "0.00"},
		{1, "0.01"},
		{1234567891, "12345678.91"},
		{-150, "-1.50"},
		{-5, "-0.05"},
		{ledger.MaxAmount, "1000000000.00"},
		{ledger.MaxBalance, "1000000000000000.00"},
		{-ledger.MaxBalance, "-1000000000000000.00"},
	} {
		if got := tc.in.String(); got != tc.want {
			t.Errorf("Amount(%d).String() = %q, want %q", int64(tc.in), got, tc.want)
		}
		b, err := json.Marshal(tc.in)
		if err != nil {
			t.Fatalf("json.Marshal(Amount(%d)): %v", int64(tc.in), err)
		}
		if want := `"` + tc.want + `"`; string(b) != want {
			t.Errorf("json.Marshal(Amount(%d)) = %s, want %s", int64(tc.in), b, want)
		}
	}
}

func TestAmountMarshalJSONInStruct(t *testing.T) {
	t.Parallel()
	balance := ledger.Amount(-150)
	b, err := json.Marshal(struct {
		Amount       ledger.Amount  `json:"amount"`
		BalanceAfter *ledger.Amount `json:"balance_after"`
		Missing      *ledger.Amount `json:"missing"`
	}{Amount: 10000, BalanceAfter: &balance})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"amount":"100.00","balance_after":"-1.50","missing":null}`; string(b) != want {
		t.Fatalf("got %s, want %s", b, want)
	}
}

func FuzzParseAmount(f *testing.F) {
	for _, tc := range amountCases {
		f.Add(tc.in)
	}
	for _, s := range []string{"1e-0", "1e+0", "00.10", "0.10e1", "10e-1", "99999999999e-2", "1.23456789e8"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ledger.ParseAmount(s)
		if err != nil {
			var e *ledger.Error
			if !errors.As(err, &e) || e.Code != ledger.CodeInvalid || e.Field != "amount" {
				t.Fatalf("ParseAmount(%q) error %#v is not an invalid-amount *ledger.Error", s, err)
			}
			if a != 0 {
				t.Fatalf("ParseAmount(%q) = %d with an error", s, a)
			}
			return
		}
		if a <= 0 || a > ledger.MaxAmount {
			t.Fatalf("ParseAmount(%q) = %d, outside (0, MaxAmount]", s, a)
		}
		// Exact arithmetic agrees, whichever path ParseAmount took.
		if r, ok := new(big.Rat).SetString(s); !ok || r.Mul(r, big.NewRat(100, 1)).Cmp(big.NewRat(int64(a), 1)) != 0 {
			t.Fatalf("ParseAmount(%q) = %d cents, but its exact value is %v", s, a, r)
		}
		text := a.String()
		again, err := ledger.ParseAmount(text)
		if err != nil {
			t.Fatalf("ParseAmount(%q) = %d, but its String %q does not parse: %v", s, a, text, err)
		}
		if again != a {
			t.Fatalf("ParseAmount(%q) = %d; ParseAmount(%q) = %d", s, a, text, again)
		}
		if b, err := json.Marshal(a); err != nil || string(b) != `"`+text+`"` {
			t.Fatalf("json.Marshal(%d) = %s, %v; want %q", a, b, err, text)
		}
	})
}

// truncateName keeps subtest names readable for very long inputs.
func truncateName(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%s...(%d bytes)", s[:20], len(s))
	}
	return s
}
