package httpapi

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/tally-ledger/tally/ledger"
)

// Store is what the API needs from the database.
type Store interface {
	CreateUser(ctx context.Context, name string) (ledger.User, error)
	CreateUserOnce(ctx context.Context, key, name string, render func(ledger.User) ledger.Reply) (ledger.UserOutcome, error)
	User(ctx context.Context, id int64) (ledger.User, error)
	UserAt(ctx context.Context, id int64, at time.Time) (ledger.User, error)
	Apply(ctx context.Context, req ledger.Request, render func(ledger.Transaction) ledger.Reply) (ledger.Outcome, error)
	Transaction(ctx context.Context, uid uuid.UUID) (ledger.Transaction, error)
	History(ctx context.Context, q ledger.HistoryQuery) ([]ledger.Transaction, *ledger.Cursor, error)
	Users(ctx context.Context, q ledger.UserQuery) ([]ledger.User, *ledger.UserCursor, error)
	SeriesStart(ctx context.Context, userID int64) (time.Time, error)
	BalanceSeries(ctx context.Context, userID int64, instants []time.Time) ([]ledger.SeriesPoint, error)
	Events(ctx context.Context, after ledger.EventCursor, limit int) ([]ledger.StoredEvent, error)
	CheckEventCursor(ctx context.Context, c ledger.EventCursor) error
	EventStart(ctx context.Context) (ledger.EventCursor, error)
	EventEnd(ctx context.Context) (ledger.EventCursor, error)
	// Distributed reports a Citus database, where the feed is per user (UserEvents).
	Distributed(ctx context.Context) (bool, error)
	UserEvents(ctx context.Context, userID, after int64, limit int) ([]ledger.StoredEvent, int64, error)
	Ready(ctx context.Context) error
}

func handleCreateUser(store Store, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fields, err := decodeFields(w, r, "name")
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		name, err := ledger.ParseName(fields["name"])
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		key, err := parseIdempotencyKey(r.Header)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		var out ledger.UserOutcome
		if key == "" {
			out.User, err = store.CreateUser(r.Context(), name)
			out.Reply = renderUser(out.User)
		} else {
			out, err = store.CreateUserOnce(r.Context(), key, name, renderUser)
		}
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		w.Header().Set("Location", fmt.Sprintf("/v1/user/%d", out.User.ID))
		if out.Replayed {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		writeReply(w, out.Reply)
	})
}

// maxIdempotencyKeyLength bounds an Idempotency-Key; keys are kept forever.
const maxIdempotencyKeyLength = 255

// parseIdempotencyKey reads the optional Idempotency-Key of a creation: one header of 1 to 255
// visible ASCII characters, compared exactly. "" means the header was not sent.
func parseIdempotencyKey(h http.Header) (string, error) {
	values, sent := h["Idempotency-Key"]
	if !sent {
		return "", nil
	}
	bad := func(detail string) (string, error) {
		return "", ledger.Invalid("Idempotency-Key", detail)
	}
	if len(values) > 1 {
		return bad("send one Idempotency-Key header, not several")
	}
	key := values[0]
	if key == "" || len(key) > maxIdempotencyKeyLength {
		return bad(fmt.Sprintf("Idempotency-Key must have 1 to %d characters; a UUID is a good choice", maxIdempotencyKeyLength))
	}
	for i := range len(key) {
		if key[i] < '!' || key[i] > '~' {
			return bad("Idempotency-Key must be visible ASCII characters only (no spaces); a UUID is a good choice")
		}
	}
	return key, nil
}

// userAt reads the path's user, with the balance at ?date= when it is given.
func userAt(store Store, r *http.Request) (ledger.User, string, error) {
	id, err := parseID("id", r.PathValue("id"))
	if err != nil {
		return ledger.User{}, "", err
	}
	if !r.URL.Query().Has("date") {
		u, err := store.User(r.Context(), id)
		return u, "", err
	}
	at, err := ledger.ParseTime("date", r.URL.Query().Get("date"))
	if err != nil {
		return ledger.User{}, "", err
	}
	u, err := store.UserAt(r.Context(), id, at)
	return u, ledger.FormatTime(at), err
}

func handleGetUser(store Store, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, asOf, err := userAt(store, r)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		body := newUserJSON(u)
		body.AsOf = asOf
		encode(w, http.StatusOK, body)
	})
}

func handleGetBalance(store Store, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, asOf, err := userAt(store, r)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		encode(w, http.StatusOK, balanceJSON{UserID: u.ID, Balance: u.Balance, AsOf: asOf})
	})
}

// transactionFields are the body fields of a transaction request; others are ignored.
var transactionFields = []string{"uid", "user_id", "type", "amount", "timestamp"}

// parseTransactionRequest validates a transaction body; now bounds how far ahead its
// timestamp may lie.
func parseTransactionRequest(fields map[string]string, idempotencyKey string, now time.Time) (ledger.Request, error) {
	var req ledger.Request
	uidText := fields["uid"]
	if idempotencyKey != "" {
		if uidText != "" && !strings.EqualFold(uidText, idempotencyKey) {
			return req, ledger.Invalid("uid", "the Idempotency-Key header and the uid field differ; send one, or the same value in both")
		}
		uidText = idempotencyKey
	}
	var err error
	if req.UID, err = ledger.ParseUID(uidText); err != nil {
		return req, err
	}
	if req.UserID, err = parseID("user_id", fields["user_id"]); err != nil {
		return req, err
	}
	if req.Type, err = ledger.ParseType(fields["type"]); err != nil {
		return req, err
	}
	if req.Amount, err = ledger.ParseAmount(fields["amount"]); err != nil {
		return req, err
	}
	if text, ok := fields["timestamp"]; ok {
		at, err := ledger.ParseTime("timestamp", text)
		if err != nil {
			return req, err
		}
		if at.After(now.Add(ledger.MaxClockSkew)) {
			return req, ledger.Invalid("timestamp", fmt.Sprintf("timestamp %s is more than %s in the future", ledger.FormatTime(at), ledger.MaxClockSkew))
		}
		req.Timestamp = &at
	}
	return req, nil
}

func handleCreateTransaction(store Store, log *slog.Logger, m *Metrics) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fields, err := decodeFields(w, r, transactionFields...)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		key, err := parseIdempotencyKey(r.Header)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		req, err := parseTransactionRequest(fields, key, time.Now())
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		out, err := store.Apply(r.Context(), req, renderTransaction)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		m.transaction(out)
		if out.Replayed {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		writeReply(w, out.Reply)
	})
}

func handleGetTransaction(store Store, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uid, err := ledger.ParseUID(r.PathValue("uid"))
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		t, err := store.Transaction(r.Context(), uid)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		encode(w, http.StatusOK, newTransactionJSON(t))
	})
}

// Page sizes of the history listing.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func handleListTransactions(store Store, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, err := parseHistoryQuery(r)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		page, next, err := store.History(r.Context(), q)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		body := historyJSON{Items: make([]transactionJSON, 0, len(page))}
		for _, t := range page {
			body.Items = append(body.Items, newTransactionJSON(t))
		}
		if next != nil {
			c := encodeCursor(*next)
			body.NextCursor = &c
		}
		encode(w, http.StatusOK, body)
	})
}

func parseHistoryQuery(r *http.Request) (ledger.HistoryQuery, error) {
	q := ledger.HistoryQuery{Limit: defaultPageSize}
	var err error
	if q.UserID, err = parseID("id", r.PathValue("id")); err != nil {
		return q, err
	}
	query := r.URL.Query()
	for _, bound := range []struct {
		name  string
		dest  **time.Time
		parse func(field, s string) (time.Time, error)
	}{{"from", &q.From, ledger.ParseTime}, {"to", &q.To, ledger.ParseRangeEnd}} {
		if !query.Has(bound.name) {
			continue
		}
		at, err := bound.parse(bound.name, query.Get(bound.name))
		if err != nil {
			return q, err
		}
		*bound.dest = &at
	}
	if query.Has("limit") {
		if q.Limit, err = parseLimit(query.Get("limit"), maxPageSize); err != nil {
			return q, err
		}
	}
	q.Status = ledger.HistoryApplied
	if query.Has("status") {
		switch s := ledger.HistoryStatus(query.Get("status")); s {
		case ledger.HistoryApplied, ledger.HistoryRejected, ledger.HistoryAll:
			q.Status = s
		default:
			return q, ledger.Invalid("status", "status must be APPLIED, REJECTED or ALL")
		}
	}
	if c := query.Get("cursor"); c != "" {
		cursor, err := decodeCursor(c)
		if err != nil {
			return q, err
		}
		q.After = &cursor
	}
	return q, nil
}

// Cursors are opaque to clients: base64url of two integers, "<a>.<b>".
func encodePair(a, b int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("%d.%d", a, b)))
}

func decodePair(s string) (a, b int64, ok bool) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return 0, 0, false
	}
	first, second, found := strings.Cut(string(raw), ".")
	a, err1 := strconv.ParseInt(first, 10, 64)
	b, err2 := strconv.ParseInt(second, 10, 64)
	return a, b, found && err1 == nil && err2 == nil
}

// A history cursor is "<unix microseconds>.<seq>".
func encodeCursor(c ledger.Cursor) string { return encodePair(c.Time.UnixMicro(), c.Seq) }

func decodeCursor(s string) (ledger.Cursor, error) {
	micros, seq, ok := decodePair(s)
	c := ledger.Cursor{Time: time.UnixMicro(micros).UTC(), Seq: seq}
	if y := c.Time.Year(); !ok || y < 1 || y > 9999 {
		return ledger.Cursor{}, ledger.Invalid("cursor", "cursor is not one this service returned; pass next_cursor from the previous page")
	}
	return c, nil
}

// Page sizes of the user search.
const (
	defaultUserPageSize = 20
	maxUserPageSize     = 100
)

func handleListUsers(store Store, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, err := parseUserQuery(r)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		page, next, err := store.Users(r.Context(), q)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		body := usersJSON{Items: make([]userJSON, 0, len(page))}
		for _, u := range page {
			body.Items = append(body.Items, newUserJSON(u))
		}
		if next != nil {
			c := encodeUserCursor(*next)
			body.NextCursor = &c
		}
		encode(w, http.StatusOK, body)
	})
}

func parseUserQuery(r *http.Request) (ledger.UserQuery, error) {
	q := ledger.UserQuery{Limit: defaultUserPageSize}
	query := r.URL.Query()
	q.NamePrefix = query.Get("name")
	if !utf8.ValidString(q.NamePrefix) || strings.ContainsRune(q.NamePrefix, 0) {
		return q, ledger.Invalid("name", "name must be UTF-8 text without NUL characters")
	}
	if utf8.RuneCountInString(q.NamePrefix) > ledger.MaxNameLength {
		return q, ledger.Invalid("name", fmt.Sprintf("name is a prefix of a name: at most %d characters", ledger.MaxNameLength))
	}
	var err error
	if query.Has("limit") {
		if q.Limit, err = parseLimit(query.Get("limit"), maxUserPageSize); err != nil {
			return q, err
		}
	}
	if c := query.Get("cursor"); c != "" {
		cursor, err := decodeUserCursor(c)
		if err != nil {
			return q, err
		}
		q.After = &cursor
	}
	return q, nil
}

// A user cursor is base64url of "<id>.<name>": the last user of the page, in name order.
func encodeUserCursor(c ledger.UserCursor) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.ID, 10) + "." + c.Name))
}

func decodeUserCursor(s string) (ledger.UserCursor, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	id, name, found := strings.Cut(string(raw), ".")
	if err != nil || !found || !plainDigits(id) || !utf8.ValidString(name) || strings.ContainsRune(name, 0) {
		return ledger.UserCursor{}, ledger.Invalid("cursor", "cursor is not one this service returned; pass next_cursor from the previous page")
	}
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return ledger.UserCursor{}, ledger.Invalid("cursor", "cursor is not one this service returned; pass next_cursor from the previous page")
	}
	return ledger.UserCursor{Name: name, ID: n}, nil
}

// defaultSeriesPoints is the size of a balance series when points is not given.
const defaultSeriesPoints = 200

// defaultSeriesSpan is the span of a series without from whose user starts at or after to.
const defaultSeriesSpan = time.Hour

func handleBalanceSeries(store Store, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, err := parseSeriesQuery(r, time.Now())
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		var from time.Time
		if q.From != nil {
			from = *q.From
		} else if from, err = store.SeriesStart(r.Context(), q.UserID); err != nil {
			writeError(w, r, log, err)
			return
		} else if !from.Before(q.To) {
			from = q.To.Add(-defaultSeriesSpan)
		}
		points, err := store.BalanceSeries(r.Context(), q.UserID, ledger.SeriesInstants(from, q.To, q.Points))
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		body := seriesJSON{UserID: q.UserID, From: ledger.FormatTime(from), To: ledger.FormatTime(q.To),
			Points: make([]seriesPointJSON, 0, len(points))}
		for _, p := range points {
			point := seriesPointJSON{At: ledger.FormatTime(p.At), Balance: p.Balance}
			if p.Tx != nil {
				tj := newTransactionJSON(*p.Tx)
				point.Transaction = &tj
			}
			body.Points = append(body.Points, point)
		}
		encode(w, http.StatusOK, body)
	})
}

// parseSeriesQuery reads ?from=&to=&points=; to defaults to now, from to the user's start
// (left nil here).
func parseSeriesQuery(r *http.Request, now time.Time) (ledger.SeriesQuery, error) {
	q := ledger.SeriesQuery{To: now.UTC().Truncate(time.Microsecond), Points: defaultSeriesPoints}
	var err error
	if q.UserID, err = parseID("id", r.PathValue("id")); err != nil {
		return q, err
	}
	query := r.URL.Query()
	if query.Has("from") {
		from, err := ledger.ParseTime("from", query.Get("from"))
		if err != nil {
			return q, err
		}
		q.From = &from
	}
	if query.Has("to") {
		if q.To, err = ledger.ParseTime("to", query.Get("to")); err != nil {
			return q, err
		}
	}
	if q.From != nil && !q.From.Before(q.To) {
		return q, ledger.Invalid("from", fmt.Sprintf("from (%s) must be before to (%s)", ledger.FormatTime(*q.From), ledger.FormatTime(q.To)))
	}
	if query.Has("points") {
		n, err := strconv.Atoi(query.Get("points"))
		if !plainDigits(query.Get("points")) || err != nil || n < 2 || n > ledger.MaxSeriesPoints {
			return q, ledger.Invalid("points", fmt.Sprintf("points must be an integer from 2 to %d", ledger.MaxSeriesPoints))
		}
		q.Points = n
	}
	return q, nil
}
