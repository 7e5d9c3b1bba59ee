// Package ledger is tally's domain: money, users, transactions and the rule that decides
// each transaction. It knows nothing of HTTP or SQL: the answer kept for a request's retries
// is a Reply, rendered by the API and carried here unread.
package ledger

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Type is the kind of a transaction.
type Type string

// The transaction types.
const (
	Deposit  Type = "DEPOSIT"
	Withdraw Type = "WITHDRAW"
)

// Status says whether a transaction moved money.
type Status string

// The transaction statuses.
const (
	Applied  Status = "APPLIED"
	Rejected Status = "REJECTED"
)

// MaxNameLength is the longest user name accepted, in characters.
const MaxNameLength = 200

// User is an account holder; Balance is the current balance.
type User struct {
	ID        int64
	Name      string
	Balance   Amount
	CreatedAt time.Time
}

// UserOutcome is the answer to a request to create a user under an idempotency key.
type UserOutcome struct {
	User     User // on a replay, only ID and Name are set
	Reply    Reply
	Replayed bool // the key was seen before: Reply is the first answer again
}

// Request is a transaction as a client sent it, validated.
type Request struct {
	UID    uuid.UUID
	UserID int64
	Type   Type
	Amount Amount
	// Timestamp is nil when the client omitted it; the transaction then happens "now".
	Timestamp *time.Time
}

// Transaction is a stored transaction, applied or refused.
type Transaction struct {
	UID            uuid.UUID
	UserID         int64
	Type           Type
	Amount         Amount
	Timestamp      time.Time
	TimestampGiven bool
	Status         Status
	Reason         Code    // why it was refused; empty when applied
	BalanceAfter   *Amount // the user's balance right after it in the timeline; nil when refused
	Seq            int64   // the user's acceptance counter: orders transactions with equal timestamps
	CreatedAt      time.Time
}

// UserState is what the write path reads, under the user's lock, to decide a request.
type UserState struct {
	Balance  Amount    // current balance
	LastSeq  int64     // the last acceptance counter used
	LastTime time.Time // timestamp of the latest applied transaction; zero when none
	Now      time.Time // the database clock, for requests without a timestamp

	// Only read for back-dated requests: the balance at the request's instant, and the
	// lowest and highest balance_after of the applied transactions after it.
	BalanceBefore      Amount
	HasAfter           bool
	MinAfter, MaxAfter Amount
}

// Decision is the outcome of a request against a user's state: the row to store, the new
// current balance, and how much every later transaction's balance_after moves.
type Decision struct {
	Tx         Transaction
	NewBalance Amount
	Shift      Amount // added to balance_after of every applied transaction after Tx
}

// EffectiveTime is the instant a request takes effect: its timestamp, or now.
func (r Request) EffectiveTime(now time.Time) time.Time {
	if r.Timestamp != nil {
		return *r.Timestamp
	}
	return now
}

// BackDated reports whether a transaction at instant t goes before the user's latest one.
// Equal timestamps apply in acceptance order, so t equal to the latest is an append.
func (s UserState) BackDated(t time.Time) bool {
	return t.Before(s.LastTime)
}

// Decide applies a request to a user's state. It is the whole business rule: a balance never
// goes below zero (nor above MaxBalance) at any instant of the user's timeline.
func Decide(req Request, s UserState) Decision {
	at := req.EffectiveTime(s.Now)
	tx := Transaction{
		UID:            req.UID,
		UserID:         req.UserID,
		Type:           req.Type,
		Amount:         req.Amount,
		Timestamp:      at,
		TimestampGiven: req.Timestamp != nil,
		Seq:            s.LastSeq + 1,
		CreatedAt:      s.Now,
	}
	before, hasAfter := s.Balance, false
	if s.BackDated(at) {
		before, hasAfter = s.BalanceBefore, s.HasAfter
	}
	delta := req.Amount
	if req.Type == Withdraw {
		delta = -delta
	}
	refuse := func(reason Code) Decision {
		tx.Status, tx.Reason = Rejected, reason
		return Decision{Tx: tx, NewBalance: s.Balance}
	}
	after := before + delta
	switch {
	case after < 0, hasAfter && s.MinAfter+delta < 0:
		return refuse(CodeInsufficientFunds)
	case after > MaxBalance, hasAfter && s.MaxAfter+delta > MaxBalance, s.Balance+delta > MaxBalance:
		return refuse(CodeBalanceLimit)
	}
	tx.Status, tx.BalanceAfter = Applied, &after
	d := Decision{Tx: tx, NewBalance: s.Balance + delta}
	if hasAfter {
		d.Shift = delta
	}
	return d
}

// Matches reports whether a request carries the same body as the stored transaction with its
// uid: same user, type, amount and timestamp as sent (an omitted timestamp stays omitted).
func (r Request) Matches(t Transaction) bool {
	if r.UserID != t.UserID || r.Type != t.Type || r.Amount != t.Amount {
		return false
	}
	if r.Timestamp == nil {
		return !t.TimestampGiven
	}
	return t.TimestampGiven && r.Timestamp.Equal(t.Timestamp)
}

// RefusalDetail explains a refusal to a person.
func RefusalDetail(t Transaction) string {
	switch t.Reason {
	case CodeInsufficientFunds:
		return fmt.Sprintf("withdrawing %s at %s would take the balance of user %d below zero", t.Amount, FormatTime(t.Timestamp), t.UserID)
	case CodeBalanceLimit:
		return fmt.Sprintf("depositing %s at %s would take the balance of user %d above %s", t.Amount, FormatTime(t.Timestamp), t.UserID, MaxBalance)
	}
	return string(t.Reason)
}

// ParseType reads a transaction type in any ASCII letter case. Unicode case mapping is not
// applied: it would read "depoſit" and "DEPOSıT" as DEPOSIT. Surrounding whitespace is
// refused, as it is in ids and uids, so each type has one spelling up to case.
func ParseType(s string) (Type, error) {
	text := strings.TrimSpace(s)
	if text == "" {
		return "", Invalid("type", "type is required: DEPOSIT or WITHDRAW")
	}
	if text != s {
		return "", Invalid("type", fmt.Sprintf("type %q has spaces around it; send DEPOSIT or WITHDRAW alone", Clip(s)))
	}
	for i := 0; i < len(text); i++ {
		if text[i] >= utf8.RuneSelf {
			return "", Invalid("type", fmt.Sprintf("type %q is not DEPOSIT or WITHDRAW: only ASCII letters are accepted", Clip(s)))
		}
	}
	switch t := Type(strings.ToUpper(text)); t {
	case Deposit, Withdraw:
		return t, nil
	}
	return "", Invalid("type", fmt.Sprintf("type %q is not DEPOSIT or WITHDRAW", Clip(s)))
}

// ParseUID reads a client-chosen transaction id, which must be a UUID.
func ParseUID(s string) (uuid.UUID, error) {
	if s == "" {
		return uuid.Nil, Invalid("uid", "uid is required: a UUID chosen by the client before the first attempt")
	}
	id, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return uuid.Nil, Invalid("uid", fmt.Sprintf("uid %q is not a UUID such as \"3f1c2a9e-8d4b-4f7a-9c1e-2b5d6e7f8a90\"", Clip(s)))
	}
	if id == uuid.Nil {
		// A client that never filled its uid in would have every later request replayed.
		return uuid.Nil, Invalid("uid", "uid must not be the all-zero UUID; choose a random one (version 4) before the first attempt")
	}
	return id, nil
}

// ParseName validates a user name: at most MaxNameLength characters, with at least one
// visible character and no control, format, default-ignorable, separator, private-use or
// noncharacter code points, which would let two names that look alike differ or a name show
// nothing at all.
func ParseName(s string) (string, error) {
	if !utf8.ValidString(s) {
		return "", Invalid("name", "name is not valid UTF-8 text")
	}
	name := strings.TrimSpace(s)
	if name == "" {
		return "", Invalid("name", "name is required and must not be blank")
	}
	if n := len([]rune(name)); n > MaxNameLength {
		return "", Invalid("name", fmt.Sprintf("name has %d characters; at most %d are allowed", n, MaxNameLength))
	}
	visible := false
	for _, r := range name {
		switch {
		case unicode.Is(unicode.Cc, r):
			return "", Invalid("name", fmt.Sprintf("name must not contain the control character %U", r))
		case unicode.Is(unicode.Cf, r):
			return "", Invalid("name", fmt.Sprintf("name must not contain the invisible format character %U (zero-width, byte order mark or bidirectional control)", r))
		case unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r):
			// Hangul fillers and the like: letters by category that no font draws.
			return "", Invalid("name", fmt.Sprintf("name must not contain the invisible character %U", r))
		case unicode.In(r, unicode.Zl, unicode.Zp):
			return "", Invalid("name", fmt.Sprintf("name must not contain the line or paragraph separator %U", r))
		case unicode.Is(unicode.Noncharacter_Code_Point, r):
			return "", Invalid("name", fmt.Sprintf("name must not contain the noncharacter %U", r))
		case unicode.In(r, unicode.Co, unicode.Cs):
			return "", Invalid("name", fmt.Sprintf("name must not contain the private-use character %U", r))
		case r == blankBraille || r == objectReplacement:
			// Symbols by category that show as blank space or a placeholder box.
		case unicode.In(r, unicode.L, unicode.N, unicode.P, unicode.S):
			visible = true
		}
	}
	if !visible {
		return "", Invalid("name", "name has no visible character")
	}
	return name, nil
}

// Characters that Unicode calls symbols but that show nothing a reader could tell apart.
const (
	blankBraille      = '\u2800'
	objectReplacement = '\ufffc'
)

// maxEcho is how many bytes of a client's input an answer or a log line repeats.
const maxEcho = 100

// Clip makes client input safe to repeat in an answer or a log line: at most maxEcho bytes,
// cut at a character boundary and marked "...", with invalid UTF-8 and invisible characters
// shown as U+FFFD. Without it a 500 KB path would come back as a 500 KB answer.
func Clip(s string) string {
	var b strings.Builder
	for _, r := range s {
		if !unicode.IsGraphic(r) {
			r = utf8.RuneError
		}
		if b.Len()+utf8.RuneLen(r) > maxEcho {
			return b.String() + "..."
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Reply is an answer as the API rendered it. It is stored with the request it answers and
// repeated, byte for byte, to every retry; the domain and the store keep it without reading it.
type Reply struct {
	Status int
	Body   []byte
}

// Outcome is the answer to a transaction request.
type Outcome struct {
	Tx       Transaction
	Reply    Reply
	Replayed bool // the uid was seen before: Reply is the first answer again
	// RowsMoved counts the later transactions whose balance_after a back-dated transaction
	// moved; zero for appends.
	RowsMoved int64
	BackDated bool // the transaction went before the user's latest one
}

// Cursor marks a position in a user's timeline: after (Time, Seq).
type Cursor struct {
	Time time.Time
	Seq  int64
}

// HistoryQuery selects a page of a user's transactions in timeline order: the applied ones
// unless Status says otherwise.
type HistoryQuery struct {
	UserID   int64
	From, To *time.Time // inclusive bounds; nil means open
	After    *Cursor
	Limit    int
	Status   HistoryStatus
}

// HistoryStatus selects which transactions a history lists.
type HistoryStatus string

// The history selections: applied (the timeline, the default), refused, or both interleaved.
const (
	HistoryApplied  HistoryStatus = "APPLIED"
	HistoryRejected HistoryStatus = "REJECTED"
	HistoryAll      HistoryStatus = "ALL"
)

// UserQuery selects a page of users whose name starts with a prefix, in name order.
type UserQuery struct {
	NamePrefix string
	After      *UserCursor
	Limit      int
}

// UserCursor marks a position in the name order: after (Name, ID).
type UserCursor struct {
	Name string
	ID   int64
}

// MaxSeriesPoints bounds a balance series: each point is one index probe.
const MaxSeriesPoints = 1000

// SeriesQuery asks for a user's balance at Points evenly spaced instants from From to To,
// both included. A nil From starts at the user's first transaction or creation, whichever is
// earlier.
type SeriesQuery struct {
	UserID int64
	From   *time.Time
	To     time.Time
	Points int
}

// SeriesPoint is the balance at an instant and the applied transaction that set it; Tx is nil
// before the first one (the balance is then zero).
type SeriesPoint struct {
	At      time.Time
	Balance Amount
	Tx      *Transaction
}

// SeriesInstants spreads n instants evenly from from to to, both included, at microsecond
// precision (the database's); n is at least 2 and from is before to. The arithmetic is in whole
// microseconds, exact over any span of years 1 to 9999.
func SeriesInstants(from, to time.Time, n int) []time.Time {
	start := from.UnixMicro()
	span, steps := to.UnixMicro()-start, int64(n-1)
	step, rest := span/steps, span%steps
	instants := make([]time.Time, n)
	for i := range int64(n) {
		instants[i] = time.UnixMicro(start + step*i + rest*i/steps).UTC()
	}
	return instants
}
