package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// TransactionType is DEPOSIT or WITHDRAW.
type TransactionType string

// The transaction types.
const (
	Deposit  TransactionType = "DEPOSIT"
	Withdraw TransactionType = "WITHDRAW"
)

// Status says whether a transaction moved money.
type Status string

// The transaction statuses.
const (
	Applied  Status = "APPLIED"  // moved money
	Rejected Status = "REJECTED" // refused, recorded, moved nothing
)

// User is an account holder with a balance: the current one, or the one at AsOf.
type User struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	Balance   Amount    `json:"balance"`
	AsOf      time.Time `json:"as_of,omitzero"` // zero unless read with UserAt
	CreatedAt time.Time `json:"created_at"`
}

// UserBalance is a user's balance: the current one, or the one at AsOf.
type UserBalance struct {
	UserID  int64     `json:"user_id"`
	Balance Amount    `json:"balance"`
	AsOf    time.Time `json:"as_of,omitzero"` // zero unless read with BalanceAt
}

// Transaction is a stored transaction, applied or refused.
type Transaction struct {
	UID       string          `json:"uid"`
	UserID    int64           `json:"user_id"`
	Type      TransactionType `json:"type"`
	Amount    Amount          `json:"amount"`
	Timestamp time.Time       `json:"timestamp"` // when it takes effect in the user's timeline
	Status    Status          `json:"status"`
	Reason    string          `json:"reason,omitempty"` // why it was refused, such as "insufficient_funds"
	// BalanceAfter is the balance right after this transaction in the user's timeline; nil
	// when refused. A later back-dated transaction moves it, except in a replayed answer,
	// which is the first answer unchanged.
	BalanceAfter *Amount   `json:"balance_after"`
	CreatedAt    time.Time `json:"created_at"`
}

// TransactionRequest is a deposit or withdrawal to send.
type TransactionRequest struct {
	// UID identifies the transaction: every send of one UID takes effect at most once. Empty:
	// Transact chooses one before the first attempt and returns it.
	UID    string
	UserID int64
	Type   TransactionType
	Amount Amount
	// Timestamp back-dates the transaction; nil means now, by the server's clock. It may lie
	// at most 5 minutes ahead.
	Timestamp *time.Time
}

// TransactionResult is what Transact learned, returned with its error too.
type TransactionResult struct {
	// UID is the uid sent, chosen by Transact when the request had none. It is set even when
	// the error leaves the outcome unknown: sending the same request with it again is safe.
	UID string
	// Transaction is the stored transaction: applied, or the refusal for a 402 (or a 422
	// balance-limit refusal). Zero when no such answer arrived.
	Transaction Transaction
	// Replayed says tally had already recorded this uid, by an earlier attempt whose answer
	// was lost or by an earlier call, and answered with the recorded outcome. The money moved
	// once either way.
	Replayed bool
	// Status and Body are tally's last answer as it arrived, byte for byte (0 and nil when
	// none came). A replay carries the first answer's bytes, so they can be compared.
	Status int
	Body   []byte
}

// Transact sends a deposit or withdrawal and retries it with the same uid until tally
// answers. A refusal is an *Error (IsInsufficientFunds) with the refused transaction in the
// result; it is recorded, so it is never retried and repeats for every later send of the uid.
func (c *Client) Transact(ctx context.Context, req TransactionRequest) (TransactionResult, error) {
	if req.UID == "" {
		req.UID = NewUID()
	}
	res := TransactionResult{UID: req.UID}
	body := struct {
		UID       string          `json:"uid"`
		UserID    int64           `json:"user_id"`
		Type      TransactionType `json:"type"`
		Amount    Amount          `json:"amount"`
		Timestamp string          `json:"timestamp,omitempty"`
	}{UID: req.UID, UserID: req.UserID, Type: req.Type, Amount: req.Amount}
	if req.Timestamp != nil {
		body.Timestamp = formatTime(*req.Timestamp)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return res, err
	}
	ans, err := c.do(ctx, call{method: http.MethodPost, path: "/v1/transaction", body: b,
		idempotencyKey: req.UID})
	res.Replayed = ans.header.Get("Idempotent-Replayed") == "true"
	res.Status, res.Body = ans.status, ans.body
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Transaction != nil {
			res.Transaction = *e.Transaction
		}
		return res, err
	}
	return res, decodeAnswer(ans, &res.Transaction)
}

// Deposit adds amount to the user's balance; uid may be empty, see TransactionRequest.
func (c *Client) Deposit(ctx context.Context, uid string, userID int64, amount Amount) (TransactionResult, error) {
	return c.Transact(ctx, TransactionRequest{UID: uid, UserID: userID, Type: Deposit, Amount: amount})
}

// Withdraw takes amount from the user's balance, or is refused (IsInsufficientFunds) if the
// balance cannot cover it; uid may be empty, see TransactionRequest.
func (c *Client) Withdraw(ctx context.Context, uid string, userID int64, amount Amount) (TransactionResult, error) {
	return c.Transact(ctx, TransactionRequest{UID: uid, UserID: userID, Type: Withdraw, Amount: amount})
}

// Transaction reads a transaction, applied or refused, by its uid.
func (c *Client) Transaction(ctx context.Context, uid string) (Transaction, error) {
	var t Transaction
	return t, c.get(ctx, "/v1/transaction/"+url.PathEscape(uid), nil, &t)
}

// CreateUser creates a user with a zero balance, and retries it like a transaction.
//
// Each call chooses a fresh Idempotency-Key before the first attempt and sends it on every
// retry, so a retry after a lost answer gets the user the first attempt created instead of
// creating a second one. Two calls create two users.
func (c *Client) CreateUser(ctx context.Context, name string) (User, error) {
	b, err := json.Marshal(map[string]string{"name": name})
	if err != nil {
		return User{}, err
	}
	ans, err := c.do(ctx, call{method: http.MethodPost, path: "/v1/user", body: b,
		idempotencyKey: NewUID()})
	if err != nil {
		return User{}, err
	}
	var u User
	return u, decodeAnswer(ans, &u)
}

// User reads a user with the current balance.
func (c *Client) User(ctx context.Context, id int64) (User, error) {
	var u User
	return u, c.get(ctx, userPath(id, ""), nil, &u)
}

// UserAt reads a user with the balance at the instant at.
func (c *Client) UserAt(ctx context.Context, id int64, at time.Time) (User, error) {
	var u User
	return u, c.get(ctx, userPath(id, ""), url.Values{"date": {formatTime(at)}}, &u)
}

// Balance reads a user's current balance.
func (c *Client) Balance(ctx context.Context, id int64) (UserBalance, error) {
	var b UserBalance
	return b, c.get(ctx, userPath(id, "/balance"), nil, &b)
}

// BalanceAt reads a user's balance at the instant at.
func (c *Client) BalanceAt(ctx context.Context, id int64, at time.Time) (UserBalance, error) {
	var b UserBalance
	return b, c.get(ctx, userPath(id, "/balance"), url.Values{"date": {formatTime(at)}}, &b)
}

// HistoryQuery selects a page of a user's applied transactions.
type HistoryQuery struct {
	From, To time.Time // inclusive bounds; zero means unbounded
	Limit    int       // page size from 1 to 1000; 0 means the server's default, 100
	Cursor   string    // NextCursor of the previous page; "" for the first page
}

// HistoryPage is one page of a user's applied transactions in timeline order.
type HistoryPage struct {
	Items      []Transaction `json:"items"`
	NextCursor string        `json:"next_cursor"` // "" on the last page
}

// History reads one page of a user's applied transactions (refused ones are read by uid).
func (c *Client) History(ctx context.Context, userID int64, q HistoryQuery) (HistoryPage, error) {
	query := url.Values{}
	if !q.From.IsZero() {
		query.Set("from", formatTime(q.From))
	}
	if !q.To.IsZero() {
		query.Set("to", formatTime(q.To))
	}
	if q.Limit != 0 {
		query.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Cursor != "" {
		query.Set("cursor", q.Cursor)
	}
	var p struct {
		Items      []Transaction `json:"items"`
		NextCursor *string       `json:"next_cursor"`
	}
	if err := c.get(ctx, userPath(userID, "/transactions"), query, &p); err != nil {
		return HistoryPage{}, err
	}
	page := HistoryPage{Items: p.Items}
	if p.NextCursor != nil {
		page.NextCursor = *p.NextCursor
	}
	return page, nil
}

// HistoryAll iterates over a user's applied transactions from q.Cursor on, reading a page of
// q.Limit at a time. It stops after yielding the first error.
func (c *Client) HistoryAll(ctx context.Context, userID int64, q HistoryQuery) iter.Seq2[Transaction, error] {
	return func(yield func(Transaction, error) bool) {
		for {
			page, err := c.History(ctx, userID, q)
			if err != nil {
				yield(Transaction{}, err)
				return
			}
			for _, t := range page.Items {
				if !yield(t, nil) {
					return
				}
			}
			if page.NextCursor == "" {
				return
			}
			q.Cursor = page.NextCursor
		}
	}
}

// Events reads up to limit events after the cursor after ("" for the start of the stream;
// limit 0 for the server's default of 100, at most 1000). With wait > 0 (at most 30 seconds,
// sent in seconds) the server holds the request until an event arrives or wait passes: a
// long poll. The attempt timeout is extended by wait.
//
// Each event is a CloudEvents 1.0 JSON envelope, returned as is (DecodeEvent reads one). next
// is the cursor to pass as after on the following call, also when no event came. Events may be
// delivered more than once (a retried read, a consumer restarting from an older cursor), so
// de-duplicate by the event's id and store the cursor together with the effect of the events.
// Follow reads the feed for good, with typed events.
func (c *Client) Events(ctx context.Context, after string, limit int, wait time.Duration) (events []json.RawMessage, next string, err error) {
	return c.events(ctx, call{}, after, limit, wait)
}

// events reads one page of the feed; base carries the retry mode.
func (c *Client) events(ctx context.Context, base call, after string, limit int, wait time.Duration) ([]json.RawMessage, string, error) {
	query := url.Values{}
	if after != "" {
		// "after" stays accepted for this major version, also where the feed names its
		// cursor "cursor" as history does.
		query.Set("after", after)
	}
	if limit != 0 {
		query.Set("limit", strconv.Itoa(limit))
	}
	if wait > 0 {
		query.Set("wait", strconv.FormatFloat(wait.Seconds(), 'f', -1, 64))
	}
	var body struct {
		Events     []json.RawMessage `json:"events"`
		NextCursor string            `json:"next_cursor"`
		Next       string            `json:"next"`
	}
	base.method, base.path, base.query, base.longPoll = http.MethodGet, "/v1/events", query, wait
	ans, err := c.do(ctx, base)
	if err != nil {
		return nil, after, err
	}
	if err := decodeAnswer(ans, &body); err != nil {
		return nil, after, err
	}
	next := cmp.Or(body.NextCursor, body.Next, after)
	return body.Events, next, nil
}

// get reads a resource, retrying on the same conditions as a transaction: a read changes
// nothing, so repeating it is always safe.
func (c *Client) get(ctx context.Context, path string, query url.Values, out any) error {
	ans, err := c.do(ctx, call{method: http.MethodGet, path: path, query: query})
	if err != nil {
		return err
	}
	return decodeAnswer(ans, out)
}

func decodeAnswer(ans answer, out any) error {
	if err := json.Unmarshal(ans.body, out); err != nil {
		return fmt.Errorf("tally: decode the %d answer: %w", ans.status, err)
	}
	return nil
}

func userPath(id int64, suffix string) string {
	return "/v1/user/" + strconv.FormatInt(id, 10) + suffix
}

// formatTime writes an instant as RFC 3339 in UTC, with every fraction digit it has (tally
// keeps microseconds).
func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
