package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tally-ledger/tally/ledger"
)

// MaxBodyBytes caps every request body. A user or a transaction needs well under 1 KiB; the
// cap bounds what a connection can make the server hold (see DefaultMaxConnections).
const MaxBodyBytes = 64 << 10

type userJSON struct {
	ID        int64         `json:"id"`
	Name      string        `json:"name"`
	Balance   ledger.Amount `json:"balance"`
	AsOf      string        `json:"as_of,omitempty"`
	CreatedAt string        `json:"created_at"`
}

func newUserJSON(u ledger.User) userJSON {
	return userJSON{ID: u.ID, Name: u.Name, Balance: u.Balance, CreatedAt: ledger.FormatTime(u.CreatedAt)}
}

type balanceJSON struct {
	UserID  int64         `json:"user_id"`
	Balance ledger.Amount `json:"balance"`
	AsOf    string        `json:"as_of,omitempty"`
}

type transactionJSON struct {
	UID          string         `json:"uid"`
	UserID       int64          `json:"user_id"`
	Type         ledger.Type    `json:"type"`
	Amount       ledger.Amount  `json:"amount"`
	Timestamp    string         `json:"timestamp"`
	Status       ledger.Status  `json:"status"`
	Reason       string         `json:"reason,omitempty"`
	BalanceAfter *ledger.Amount `json:"balance_after"`
	CreatedAt    string         `json:"created_at"`
}

func newTransactionJSON(t ledger.Transaction) transactionJSON {
	return transactionJSON{
		UID: t.UID.String(), UserID: t.UserID, Type: t.Type, Amount: t.Amount,
		Timestamp: ledger.FormatTime(t.Timestamp), Status: t.Status, Reason: string(t.Reason),
		BalanceAfter: t.BalanceAfter, CreatedAt: ledger.FormatTime(t.CreatedAt),
	}
}

type usersJSON struct {
	Items      []userJSON `json:"items"`
	NextCursor *string    `json:"next_cursor"`
}

type seriesJSON struct {
	UserID int64             `json:"user_id"`
	From   string            `json:"from"`
	To     string            `json:"to"`
	Points []seriesPointJSON `json:"points"`
}

type seriesPointJSON struct {
	At          string           `json:"at"`
	Balance     ledger.Amount    `json:"balance"`
	Transaction *transactionJSON `json:"transaction"`
}

type historyJSON struct {
	Items      []transactionJSON `json:"items"`
	NextCursor *string           `json:"next_cursor"`
}

// renderTransaction is the answer stored with a transaction and replayed to every retry:
// 200 with the transaction when applied, the refusal's problem when refused.
func renderTransaction(t ledger.Transaction) ledger.Reply {
	tj := newTransactionJSON(t)
	if t.Status == ledger.Applied {
		return ledger.Reply{Status: http.StatusOK, Body: mustJSON(tj)}
	}
	status, p := newProblem(t.Reason, ledger.RefusalDetail(t), "")
	p.Transaction = &tj
	return ledger.Reply{Status: status, Body: mustJSON(p)}
}

// renderUser is the answer stored with a user created under an idempotency key and replayed
// to every retry of the key.
func renderUser(u ledger.User) ledger.Reply {
	return ledger.Reply{Status: http.StatusCreated, Body: mustJSON(newUserJSON(u))}
}

// writeReply sends a rendered answer; an error status carries a problem.
func writeReply(w http.ResponseWriter, reply ledger.Reply) {
	contentType := "application/json"
	if reply.Status >= 400 {
		contentType = "application/problem+json"
	}
	writeBody(w, reply.Status, contentType, reply.Body)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err)) // only our own types are encoded
	}
	return append(b, '\n')
}

func writeBody(w http.ResponseWriter, status int, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client may be gone; nothing to do about it
}

func encode(w http.ResponseWriter, status int, v any) {
	writeBody(w, status, "application/json", mustJSON(v))
}

// decodeFields reads the known fields of a request body into field name → text; other
// fields are ignored. JSON objects and application/x-www-form-urlencoded bodies give the same
// result; JSON numbers keep their exact text, so amounts never pass through float64. A body
// that starts with '{' is read as JSON whatever its Content-Type says, since `curl -d`
// labels JSON as a form. Every handler that reads a body reads it here.
func decodeFields(w http.ResponseWriter, r *http.Request, known ...string) (map[string]string, error) {
	tooLarge := &ledger.Error{Code: codeBodyTooLarge, Detail: fmt.Sprintf("request body is larger than %d bytes", MaxBodyBytes)}
	// Refusing on the declared length, before the first read, answers a client that sent
	// Expect: 100-continue without asking it for the body.
	if r.ContentLength > MaxBodyBytes {
		return nil, tooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var maxBytes *http.MaxBytesError
		if errors.As(err, &maxBytes) {
			return nil, tooLarge
		}
		return nil, ledger.Invalid("", "could not read the request body")
	}
	if bytes.HasPrefix(body, []byte(byteOrderMark)) {
		return nil, ledger.Invalid("", "the body starts with a byte order mark; send UTF-8 without one")
	}
	trimmed := bytes.TrimSpace(body)
	var mediaType string
	if contentType := r.Header.Get("Content-Type"); contentType != "" {
		if mediaType, _, err = mime.ParseMediaType(contentType); err != nil {
			return nil, &ledger.Error{Code: codeUnsupportedMedia, Detail: "the Content-Type " + strconv.Quote(ledger.Clip(contentType)) + " is not one media type; send application/json"}
		}
	}
	switch {
	case len(trimmed) > 0 && trimmed[0] == '{', mediaType == "application/json", strings.HasSuffix(mediaType, "+json"):
		return decodeJSONFields(trimmed, known)
	case mediaType == "application/x-www-form-urlencoded", mediaType == "" && len(trimmed) > 0:
		return decodeFormFields(trimmed, known)
	case len(trimmed) == 0:
		return nil, ledger.Invalid("", "the request body is empty; send a JSON object")
	}
	return nil, &ledger.Error{Code: codeUnsupportedMedia, Detail: "send application/json or application/x-www-form-urlencoded, not " + ledger.Clip(mediaType)}
}

func decodeFormFields(body []byte, known []string) (map[string]string, error) {
	values, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, ledger.Invalid("", "the form body is malformed; escape each key and value (no bare ';' or '%')")
	}
	for _, k := range slices.Sorted(maps.Keys(values)) {
		if len(values[k]) > 1 {
			return nil, duplicateKey(k, known)
		}
	}
	fields := map[string]string{}
	for _, k := range known {
		if v, ok := values[k]; ok {
			fields[k] = v[0]
		}
	}
	return fields, nil
}

// numericFields may be sent as JSON numbers; every other field is a JSON string.
var numericFields = []string{"user_id", "amount"}

// maxJSONDepth bounds how deeply a body may nest; the API's objects are flat.
const maxJSONDepth = 32

// decodeJSONFields walks the body's tokens rather than decoding it into a map, which would
// keep the last of two equal keys, hide the type of a value behind a Go type name in its
// errors and turn invalid UTF-8 into U+FFFD.
func decodeJSONFields(body []byte, known []string) (map[string]string, error) {
	if !utf8.Valid(body) {
		return nil, ledger.Invalid("", "the body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, jsonSyntaxError(err)
	}
	if tok != json.Delim('{') {
		return nil, ledger.Invalid("", `the body must be a JSON object such as {"name": "petya"}, not `+jsonKind(tok))
	}
	fields := map[string]string{}
	// One set of keys per open object; a nil set stands for an array.
	open := []map[string]bool{{}}
	for len(open) > 0 {
		keys := open[len(open)-1]
		if !dec.More() {
			if _, err := dec.Token(); err != nil {
				return nil, jsonSyntaxError(err)
			}
			open = open[:len(open)-1]
			continue
		}
		var key string
		if keys != nil {
			start := dec.InputOffset()
			tok, err := dec.Token()
			if err != nil {
				return nil, jsonSyntaxError(err)
			}
			if hasLoneSurrogate(body[start:dec.InputOffset()]) {
				return nil, loneSurrogate("")
			}
			key, _ = tok.(string) // the decoder only returns strings as object keys
			if keys[key] {
				return nil, duplicateKey(key, known)
			}
			keys[key] = true
		}
		start := dec.InputOffset()
		value, err := dec.Token()
		if err != nil {
			return nil, jsonSyntaxError(err)
		}
		topLevel := len(open) == 1 && slices.Contains(known, key)
		if _, ok := value.(string); ok && hasLoneSurrogate(body[start:dec.InputOffset()]) {
			if topLevel {
				return nil, loneSurrogate(key)
			}
			return nil, loneSurrogate("")
		}
		switch v := value.(type) {
		case json.Delim:
			if len(open) == maxJSONDepth {
				return nil, ledger.Invalid("", fmt.Sprintf("the body is nested more than %d levels deep", maxJSONDepth))
			}
			if v == '{' {
				open = append(open, map[string]bool{})
			} else {
				open = append(open, nil)
			}
		case string:
			if topLevel {
				fields[key] = v
			}
			continue
		case json.Number:
			if topLevel && slices.Contains(numericFields, key) {
				fields[key] = v.String()
				continue
			}
		case nil:
			continue // null is the same as leaving the field out
		}
		if topLevel {
			if slices.Contains(numericFields, key) {
				return nil, ledger.Invalid(key, key+" must be a string or a number")
			}
			return nil, ledger.Invalid(key, key+" must be a JSON string")
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, ledger.Invalid("", "the body has data after the JSON object")
	}
	return fields, nil
}

func loneSurrogate(field string) error {
	return ledger.Invalid(field, `the body has a \u escape of half a surrogate pair, which is no character; send the whole pair or the character itself`)
}

// hasLoneSurrogate reports whether raw, the bytes of JSON text the decoder has read for one
// string token (with any separators before it), escapes half of a UTF-16 surrogate pair. The
// decoder turns such an escape into U+FFFD without a word, so a name sent as "\ud800" would
// be stored as a character the client never sent.
func hasLoneSurrogate(raw []byte) bool {
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		r, ok := unicodeEscape(raw[i:])
		if !ok {
			i++ // a one-character escape such as \\ or \"
			continue
		}
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return true
		case r >= 0xD800 && r <= 0xDBFF:
			low, ok := unicodeEscape(raw[i+6:])
			if !ok || low < 0xDC00 || low > 0xDFFF {
				return true
			}
			i += 6
		}
		i += 5
	}
	return false
}

// unicodeEscape reads the \uXXXX escape that b starts with.
func unicodeEscape(b []byte) (rune, bool) {
	if len(b) < 6 || b[0] != '\\' || b[1] != 'u' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[2:6]), 16, 16)
	return rune(n), err == nil
}

// byteOrderMark is U+FEFF in UTF-8; RFC 8259 forbids it before a JSON text.
const byteOrderMark = "\ufeff"

func duplicateKey(key string, known []string) error {
	field := ""
	if slices.Contains(known, key) {
		field = key
	}
	return ledger.Invalid(field, fmt.Sprintf("the key %q appears more than once; send each field once", ledger.Clip(key)))
}

// jsonSyntaxError says where a body stops being JSON, without the decoder's Go wording.
func jsonSyntaxError(err error) error {
	var syntax *json.SyntaxError
	if errors.As(err, &syntax) {
		return ledger.Invalid("", fmt.Sprintf("the body is not valid JSON at byte %d", syntax.Offset))
	}
	return ledger.Invalid("", "the body ends before its JSON object does")
}

// jsonKind names the JSON value a token starts.
func jsonKind(tok json.Token) string {
	switch tok.(type) {
	case json.Delim:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "true or false"
	}
	return "null"
}

// parseID reads a positive integer id from a path or body value. Only plain decimal digits
// are an id, so each id has one spelling: "+10" and "010" are not user 10.
func parseID(field, s string) (int64, error) {
	if s == "" {
		return 0, ledger.Invalid(field, field+" is required")
	}
	if !plainDigits(s) {
		return 0, ledger.Invalid(field, fmt.Sprintf("%s %q is not a positive integer in plain digits (no sign, leading zero, fraction or exponent)", field, ledger.Clip(s)))
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, ledger.Invalid(field, fmt.Sprintf("%s %q is larger than %d", field, ledger.Clip(s), int64(math.MaxInt64)))
	}
	return id, nil
}

// parseLimit reads a page size from 1 to most, in plain digits like an id.
func parseLimit(s string, most int) (int, error) {
	n, err := strconv.Atoi(s)
	if !plainDigits(s) || err != nil || n > most {
		return 0, ledger.Invalid("limit", fmt.Sprintf("limit must be an integer from 1 to %d", most))
	}
	return n, nil
}

// plainDigits reports whether s is a positive integer written the one canonical way.
func plainDigits(s string) bool {
	if s == "" || s[0] == '0' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// RenderTransaction is the answer stored with each transaction, for writers outside the HTTP
// API (the demo loader) whose uids clients may later replay.
func RenderTransaction(t ledger.Transaction) ledger.Reply { return renderTransaction(t) }
