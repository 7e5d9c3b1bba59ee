package client

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Amount is a sum of money in minor units (cents). It is never a float: tally keeps money as
// integer cents end to end, and so does this package.
type Amount int64

// ParseAmount reads a decimal such as "12.34", "12.3", "12" or "-0.50" exactly. It refuses
// more than two decimals rather than round them away.
func ParseAmount(s string) (Amount, error) {
	bad := func(why string) (Amount, error) {
		return 0, fmt.Errorf("amount %q %s", s, why)
	}
	text, negative := strings.CutPrefix(s, "-")
	whole, frac, hasPoint := strings.Cut(text, ".")
	if whole == "" || !allDigits(whole) || (hasPoint && (frac == "" || !allDigits(frac))) {
		return bad(`is not a decimal number such as "12.34"`)
	}
	if len(frac) > 2 {
		return bad("has more than two decimals")
	}
	units, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || units > math.MaxInt64/100 {
		return bad("is out of range")
	}
	frac += "00"[len(frac):]
	cents := units*100 + int64(frac[0]-'0')*10 + int64(frac[1]-'0')
	if cents < 0 {
		return bad("is out of range")
	}
	if negative {
		cents = -cents
	}
	return Amount(cents), nil
}

func allDigits(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// String formats the amount with exactly two decimals, e.g. "12.34", as tally does.
func (a Amount) String() string {
	v := uint64(a)
	sign := ""
	if a < 0 {
		sign, v = "-", -v // unsigned negation also holds for math.MinInt64
	}
	return fmt.Sprintf("%s%d.%02d", sign, v/100, v%100)
}

// MarshalJSON writes the amount as a JSON string with two decimals, which tally reads
// exactly; a JSON number could pass through a float in some other client on the way.
func (a Amount) MarshalJSON() ([]byte, error) {
	return []byte(strconv.Quote(a.String())), nil
}

// UnmarshalJSON reads an amount from a JSON string such as "12.34"; a bare JSON number is
// read from its text too, never through a float.
func (a *Amount) UnmarshalJSON(b []byte) error {
	text := string(b)
	if text == "null" {
		return nil // the encoding/json convention: null leaves the value as it is
	}
	if strings.HasPrefix(text, `"`) {
		var err error
		if text, err = strconv.Unquote(text); err != nil {
			return errors.New("amount is not a valid JSON string")
		}
	}
	v, err := ParseAmount(text)
	if err != nil {
		return err
	}
	*a = v
	return nil
}
