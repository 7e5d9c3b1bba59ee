package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tally-ledger/tally/ledger"
)

// MaxBodyBytes caps every request body.
const MaxBodyBytes = 1 << 20

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
// fields are ignored. JSON objects and
// application/x-www-form-urlencoded bodies give the same result; JSON numbers keep their exact
// text, so amounts never pass through float64. A body that starts with '{' is read as JSON
// whatever its Content-Type says, since `curl -d` labels JSON as a form.
func decodeFields(w http.ResponseWriter, r *http.Request, known ...string) (map[string]string, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, &ledger.Error{Code: codeBodyTooLarge, Detail: fmt.Sprintf("request body is larger than %d bytes", MaxBodyBytes)}
		}
		return nil, ledger.Invalid("", "could not read the request body")
	}
	trimmed := bytes.TrimSpace(body)
	mediaType, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case len(trimmed) > 0 && trimmed[0] == '{', mediaType == "application/json", strings.HasSuffix(mediaType, "+json"):
		return decodeJSONFields(trimmed, known)
	case mediaType == "application/x-www-form-urlencoded", mediaType == "" && len(trimmed) > 0:
		values, err := url.ParseQuery(string(trimmed))
		if err != nil {
			return nil, ledger.Invalid("", "the form body is malformed: "+err.Error())
		}
		fields := map[string]string{}
		for _, k := range known {
			if v, ok := values[k]; ok {
				fields[k] = v[0]
			}
		}
		return fields, nil
	case len(trimmed) == 0:
		return nil, ledger.Invalid("", "the request body is empty; send a JSON object")
	}
	return nil, &ledger.Error{Code: codeUnsupportedMedia, Detail: "send application/json or application/x-www-form-urlencoded, not " + mediaType}
}

func decodeJSONFields(body []byte, known []string) (map[string]string, error) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raw); err != nil {
		return nil, ledger.Invalid("", "the body is not a JSON object: "+err.Error())
	}
	if dec.More() {
		return nil, ledger.Invalid("", "the body has data after the JSON object")
	}
	fields := map[string]string{}
	for _, k := range known {
		v, ok := raw[k]
		if !ok {
			continue
		}
		switch {
		case bytes.Equal(v, []byte("null")):
			continue
		case v[0] == '"':
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return nil, ledger.Invalid(k, k+" is not a valid JSON string")
			}
			fields[k] = s
		case v[0] == '-' || (v[0] >= '0' && v[0] <= '9'):
			fields[k] = string(v)
		default:
			return nil, ledger.Invalid(k, k+" must be a string or a number")
		}
	}
	return fields, nil
}

// parseID reads a positive integer id from a path or body value.
func parseID(field, s string) (int64, error) {
	if s == "" {
		return 0, ledger.Invalid(field, field+" is required")
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, ledger.Invalid(field, fmt.Sprintf("%s %q is not a positive integer", field, s))
	}
	return id, nil
}

// RenderTransaction is the answer stored with each transaction, for writers outside the HTTP
// API (the demo loader) whose uids clients may later replay.
func RenderTransaction(t ledger.Transaction) ledger.Reply { return renderTransaction(t) }
