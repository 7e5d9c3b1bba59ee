package ledger

import (
	"fmt"
	"math/big"
	"regexp"
	"strconv"
	"strings"
)

// Amount is a sum of money in minor units (cents). It is never a float.
type Amount int64

// MaxAmount is the largest amount one transaction may carry: 1,000,000,000.00.
const MaxAmount Amount = 100_000_000_000

// MaxBalance is the largest balance a user may hold at any instant: 10^15.00.
// It keeps every sum far from int64 overflow.
const MaxBalance Amount = 100_000_000_000_000_000

// decimalPattern accepts what JSON can carry as a number or a plain decimal string:
// digits, an optional fraction and an optional exponent, never a sign.
var decimalPattern = regexp.MustCompile(`^([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?)([0-9]+))?$`)

// maxAmountText is the longest amount accepted, in characters.
const maxAmountText = 64

// maxExponent bounds an amount's exponent: beyond it a mantissa of at most maxAmountText
// digits is either far above MaxAmount or has far more than two decimals, so the answer is
// known without building the number.
const maxExponent = 100

// ParseAmount parses a positive decimal with at most two significant decimals
// ("100", "100.0", "0.01", "1e2") exactly, without passing through float64.
func ParseAmount(s string) (Amount, error) {
	if s == "" {
		return 0, Invalid("amount", "amount is required")
	}
	if len(s) > maxAmountText {
		return 0, Invalid("amount", fmt.Sprintf("amount %q is too long: at most %d characters", Clip(s), maxAmountText))
	}
	m := decimalPattern.FindStringSubmatch(s)
	if m == nil {
		return 0, Invalid("amount", fmt.Sprintf("amount %q is not a positive decimal number such as \"100.00\"", Clip(s)))
	}
	if strings.Trim(m[1]+m[2], "0") == "" {
		return 0, Invalid("amount", "amount must be greater than zero")
	}
	// The exponent's value, not its spelling, decides: leading zeros are allowed.
	if digits := strings.TrimLeft(m[4], "0"); len(digits) > 3 || (digits != "" && atoi(digits) > maxExponent) {
		if m[3] == "-" {
			return 0, Invalid("amount", fmt.Sprintf("amount %q has more than two decimals", Clip(s)))
		}
		return 0, Invalid("amount", fmt.Sprintf("amount %q is out of range", Clip(s)))
	}
	if cents, ok := plainCents(m[1], m[2], m[4]); ok {
		if cents > MaxAmount {
			return 0, Invalid("amount", fmt.Sprintf("amount must not exceed %s", MaxAmount))
		}
		return cents, nil
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return 0, Invalid("amount", fmt.Sprintf("amount %q is not a decimal number", Clip(s)))
	}
	cents := new(big.Rat).Mul(r, big.NewRat(100, 1))
	if !cents.IsInt() {
		return 0, Invalid("amount", fmt.Sprintf("amount %q has more than two decimals", Clip(s)))
	}
	if cents.Num().Cmp(big.NewInt(int64(MaxAmount))) > 0 {
		return 0, Invalid("amount", fmt.Sprintf("amount must not exceed %s", MaxAmount))
	}
	return Amount(cents.Num().Int64()), nil
}

// plainCents reads the common amount, digits with at most two significant decimals and no
// exponent, without big.Rat, whose exact arithmetic is most of a write's parsing time. ok is
// false for anything else, which ParseAmount's exact path reads.
func plainCents(units, fraction, exponent string) (Amount, bool) {
	fraction = strings.TrimRight(fraction, "0")
	if exponent != "" || len(units) > 12 || len(fraction) > 2 {
		return 0, false
	}
	whole, err := strconv.ParseInt(units, 10, 64)
	if err != nil {
		return 0, false
	}
	cents, _ := strconv.ParseInt((fraction + "00")[:2], 10, 64)
	return Amount(whole*100 + cents), true
}

// String formats the amount with exactly two decimals, e.g. "100.00".
func (a Amount) String() string {
	sign := ""
	v := int64(a)
	if v < 0 {
		sign = "-"
		v = -v
	}
	return fmt.Sprintf("%s%d.%02d", sign, v/100, v%100)
}

// MarshalJSON writes the amount as a JSON string with two decimals.
func (a Amount) MarshalJSON() ([]byte, error) {
	return []byte(strconv.Quote(a.String())), nil
}

// UnmarshalJSON reads the form MarshalJSON writes: a string with two decimals, e.g. "-1.50".
func (a *Amount) UnmarshalJSON(b []byte) error {
	s, err := strconv.Unquote(string(b))
	if err != nil {
		return fmt.Errorf("amount %s is not a JSON string", b)
	}
	digits, negative := strings.CutPrefix(s, "-")
	whole, frac, ok := strings.Cut(digits, ".")
	if !ok || len(frac) != 2 || whole == "" || strings.HasPrefix(whole, "+") || strings.HasPrefix(frac, "+") {
		return fmt.Errorf("amount %q is not a decimal with two places", s)
	}
	v, err := strconv.ParseInt(whole+frac, 10, 64)
	if err != nil {
		return fmt.Errorf("amount %q: %w", s, err)
	}
	if negative {
		v = -v
	}
	*a = Amount(v)
	return nil
}
