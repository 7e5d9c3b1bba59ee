package ledger

import (
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// TimeFormat is how every instant leaves the service: RFC 3339 in UTC, microseconds when present.
const TimeFormat = "2006-01-02T15:04:05.999999Z07:00"

// MaxClockSkew is how far in the future a transaction's timestamp may lie.
const MaxClockSkew = 5 * time.Minute

var (
	// ISO 8601 / RFC 3339: date, optional time with 'T' or a space, optional fraction up to
	// 9 digits, optional zone. A zone written " 03:00" is "+03:00" whose '+' a query string
	// turned into a space.
	isoPattern = regexp.MustCompile(`^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|z|[+\- ]\d{2}(?::?\d{2})?)?)?$`)
	// Day-first, as in "5.05.2022 00:00".
	dayFirstPattern = regexp.MustCompile(`^(\d{1,2})\.(\d{1,2})\.(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?$`)
)

// ParseTime reads an instant in any of the accepted forms: RFC 3339 with an offset, ISO 8601
// without one (UTC), a date alone (00:00 UTC), or day-first "5.05.2022 00:00". The result is
// in UTC and truncated to the microsecond, the precision the database keeps.
func ParseTime(field, s string) (time.Time, error) {
	t, _, err := parseInstant(field, s)
	return t, err
}

// parseInstant is ParseTime that also says whether s was a date alone, without a time.
func parseInstant(field, s string) (_ time.Time, dateOnly bool, _ error) {
	bad := func(why string) (time.Time, bool, error) {
		return time.Time{}, false, Invalid(field, fmt.Sprintf("%s %q %s; use RFC 3339 such as \"2023-01-30T00:00:00Z\", a date such as \"2023-01-30\", or \"5.05.2022 00:00\"", field, Clip(s), why))
	}
	var year, month, day, hour, minute, second, nanos, offset int
	if m := isoPattern.FindStringSubmatch(s); m != nil {
		year, month, day = atoi(m[1]), atoi(m[2]), atoi(m[3])
		hour, minute, second = atoi(m[4]), atoi(m[5]), atoi(m[6])
		nanos, dateOnly = fraction(m[7]), m[4] == ""
		if zone := m[8]; zone != "" && zone != "Z" && zone != "z" {
			sign := 1
			if zone[0] == '-' {
				sign = -1
			}
			digits := zone[1:]
			if len(digits) > 2 && digits[2] == ':' {
				digits = digits[:2] + digits[3:]
			}
			oh, om := atoi(digits[:2]), 0
			if len(digits) == 4 {
				om = atoi(digits[2:])
			}
			if oh > 23 || om > 59 {
				return bad("has an impossible zone offset")
			}
			offset = sign * (oh*3600 + om*60)
		}
	} else if m := dayFirstPattern.FindStringSubmatch(s); m != nil {
		day, month, year = atoi(m[1]), atoi(m[2]), atoi(m[3])
		hour, minute, second = atoi(m[4]), atoi(m[5]), atoi(m[6])
		nanos, dateOnly = fraction(m[7]), m[4] == ""
	} else if s == "" {
		return time.Time{}, false, Invalid(field, field+" is empty")
	} else {
		return bad("is not a timestamp")
	}
	if year < 1 || month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 59 {
		return bad("is out of range")
	}
	t := time.Date(year, time.Month(month), day, hour, minute, second, nanos, time.FixedZone("", offset))
	if t.Day() != day {
		return bad("is not a calendar date")
	}
	t = t.UTC().Truncate(time.Microsecond)
	if t.Year() < 1 || t.Year() > 9999 {
		return bad("is outside the years 1 to 9999 in UTC")
	}
	return t, dateOnly, nil
}

// ParseRangeEnd reads the end of a time range, which is inclusive: an instant in any form
// ParseTime accepts, or a date alone, which covers that whole day (up to the next midnight
// UTC, exclusive). "to=2023-12-31" must not leave out all of 31 December but its first instant.
func ParseRangeEnd(field, s string) (time.Time, error) {
	t, dateOnly, err := parseInstant(field, s)
	if err != nil || !dateOnly {
		return t, err
	}
	// Instants are kept to the microsecond, so the last one of the day is the inclusive end.
	return t.AddDate(0, 0, 1).Add(-time.Microsecond), nil
}

// FormatTime writes an instant the way the API returns it.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeFormat) }

func atoi(s string) int {
	if s == "" {
		return 0
	}
	n, _ := strconv.Atoi(s) // the patterns admit digits only
	return n
}

func fraction(s string) int {
	if s == "" {
		return 0
	}
	for len(s) < 9 {
		s += "0"
	}
	return atoi(s)
}
