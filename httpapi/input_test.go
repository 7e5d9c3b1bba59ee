package httpapi_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
)

// problemJSON is the part of a problem body these tests read.
type problemJSON struct {
	Type   string `json:"type"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Field  string `json:"field"`
}

// sent is one request of a table test and what the server must answer.
type sent struct {
	name        string
	method      string
	path        string
	contentType string // application/json when empty
	header      map[string]string
	body        string
	status      int
	field       string
	detail      string // a part of the detail
}

// send makes the request of c and returns the answer's status, headers and body.
func (c sent) send(t *testing.T, base string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(c.method, base+c.path, strings.NewReader(c.body))
	require.NoError(t, err)
	contentType := c.contentType
	if contentType == "" {
		contentType = "application/json"
	}
	req.Header.Set("Content-Type", contentType)
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, body
}

// check sends c and requires the problem it describes.
func (c sent) check(t *testing.T, base string) problemJSON {
	t.Helper()
	status, header, body := c.send(t, base)
	require.Equal(t, c.status, status, "%s", body)
	require.Equal(t, "application/problem+json", header.Get("Content-Type"))
	var p problemJSON
	require.NoError(t, json.Unmarshal(body, &p))
	require.Equal(t, c.field, p.Field, "%s", body)
	require.Contains(t, p.Detail, c.detail)
	return p
}

// newAPI serves the API on a fresh database and returns its URL and one existing user.
func newAPI(t *testing.T) (string, int64) {
	t.Helper()
	db, _ := pgtest.NewDB(t)
	srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
	t.Cleanup(srv.Close)
	return srv.URL, createUser(t, srv.URL)
}

// Bodies that are not a JSON object are explained in the API's words, never in Go's.
func TestDecodeErrorsSpeakTheAPIsWords(t *testing.T) {
	t.Parallel()
	base, _ := newAPI(t)
	for _, c := range []sent{
		{name: "array", body: `[]`, detail: "not an array"},
		{name: "string", body: `"x"`, detail: "not a string"},
		{name: "number", body: `5`, detail: "not a number"},
		{name: "true", body: `true`, detail: "not true or false"},
		{name: "null", body: `null`, detail: "not null"},
		{name: "cut short", body: `{"a":`, detail: "ends before"},
		{name: "broken", body: `{"a" 1}`, detail: "not valid JSON"},
		{name: "trailing data", body: `{} {}`, detail: "after the JSON object"},
		{name: "boolean amount", body: `{"amount": true}`, field: "amount", detail: "amount must be a string or a number"},
		{name: "object amount", body: `{"amount": {"value": 1}}`, field: "amount", detail: "amount must be a string or a number"},
		{name: "number as uid", body: `{"uid": 12345}`, field: "uid", detail: "uid must be a JSON string"},
		{name: "too deep", body: `{"a":` + strings.Repeat("[", 1000) + strings.Repeat("]", 1000) + `}`, detail: "nested"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.method, c.path, c.status = "POST", "/v1/transaction", http.StatusUnprocessableEntity
			p := c.check(t, base)
			for _, internal := range []string{"json:", "Go value", "map[", "RawMessage", "unmarshal"} {
				require.NotContains(t, p.Detail, internal)
			}
		})
	}
}

// Each of these was accepted once; each is now refused with 422 and its own detail.
func TestInputsThatAreRefused(t *testing.T) {
	t.Parallel()
	base, user := newAPI(t)
	tx := func(fields string) string {
		return fmt.Sprintf(`{"uid": %q, "user_id": %d, "type": "DEPOSIT", "amount": "1", %s}`, uuid.NewString(), user, fields)
	}
	txWithout := func(field, value string) string {
		m := map[string]string{
			"uid": fmt.Sprintf("%q", uuid.NewString()), "user_id": fmt.Sprint(user), "type": `"DEPOSIT"`, "amount": `"1"`,
		}
		m[field] = value
		return fmt.Sprintf(`{"uid": %s, "user_id": %s, "type": %s, "amount": %s}`, m["uid"], m["user_id"], m["type"], m["amount"])
	}
	const zero = "00000000-0000-0000-0000-000000000000"
	for _, c := range []sent{
		{name: "zero uid", path: "/v1/transaction", body: txWithout("uid", `"`+zero+`"`), field: "uid", detail: "all-zero"},
		{name: "zero uid in Idempotency-Key", path: "/v1/transaction", header: map[string]string{"Idempotency-Key": zero},
			body: fmt.Sprintf(`{"user_id": %d, "type": "DEPOSIT", "amount": "1"}`, user), field: "uid", detail: "all-zero"},
		{name: "long s folds to S", path: "/v1/transaction", body: txWithout("type", `"depoſit"`), field: "type", detail: "ASCII"},
		{name: "dotless i folds to I", path: "/v1/transaction", body: txWithout("type", `"DEPOSıT"`), field: "type", detail: "ASCII"},
		{name: "zero-width space name", path: "/v1/user", body: `{"name": "\u200b"}`, field: "name", detail: "U+200B"},
		{name: "byte order mark name", path: "/v1/user", body: `{"name": "\ufeff"}`, field: "name", detail: "U+FEFF"},
		{name: "bidi override name", path: "/v1/user", body: `{"name": "\u202e\u202d"}`, field: "name", detail: "U+202E"},
		{name: "control character name", path: "/v1/user", body: `{"name": "\u0007"}`, field: "name", detail: "U+0007"},
		{name: "number as name", path: "/v1/user", body: `{"name": 5}`, field: "name", detail: "name must be a JSON string"},
		{name: "duplicate amount", path: "/v1/transaction", body: tx(`"amount": "2"`), field: "amount", detail: `"amount" appears more than once`},
		{name: "duplicate unknown key", path: "/v1/transaction", body: tx(`"note": 1, "note": 2`), detail: `"note" appears more than once`},
		{name: "duplicate nested key", path: "/v1/transaction", body: tx(`"meta": [{"a": 1, "a": 2}]`), detail: `"a" appears more than once`},
		{name: "duplicate name", path: "/v1/user", body: `{"name": "a", "name": "b"}`, field: "name", detail: `"name" appears more than once`},
		{name: "duplicate form field", path: "/v1/transaction", contentType: "application/x-www-form-urlencoded",
			body: fmt.Sprintf("uid=%s&user_id=%d&type=DEPOSIT&amount=1&amount=2", uuid.NewString(), user), field: "amount", detail: `"amount" appears more than once`},
		{name: "plus sign user_id", path: "/v1/transaction", body: txWithout("user_id", `"+`+fmt.Sprint(user)+`"`), field: "user_id", detail: "plain digits"},
		{name: "leading zero user_id", path: "/v1/transaction", body: txWithout("user_id", `"0`+fmt.Sprint(user)+`"`), field: "user_id", detail: "plain digits"},
		{name: "fraction user_id", path: "/v1/transaction", body: txWithout("user_id", fmt.Sprint(user)+".0"), field: "user_id", detail: "plain digits"},
		{name: "exponent user_id", path: "/v1/transaction", body: txWithout("user_id", "1e1"), field: "user_id", detail: "plain digits"},
		{name: "user_id beyond int64", path: "/v1/transaction", body: txWithout("user_id", "9223372036854775808"), field: "user_id", detail: "larger than"},
		{name: "invalid UTF-8 name", path: "/v1/user", body: "{\"name\": \"Pe\xfftya\"}", detail: "not valid UTF-8"},
		{name: "invalid UTF-8 in an ignored field", path: "/v1/transaction", body: tx("\"note\": \"\xc3\""), detail: "not valid UTF-8"},
		{name: "amount over 64 characters", path: "/v1/transaction", body: txWithout("amount", `"`+strings.Repeat("1", 65)+`"`), field: "amount", detail: "too long"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.method, c.status = "POST", http.StatusUnprocessableEntity
			c.check(t, base)
		})
	}
	require.Equal(t, "0.00", balance(t, base, user), "nothing refused moved money")
}

// Ids in paths and queries have one spelling: decimal digits without sign or leading zero.
func TestNonCanonicalIntegersInPathsAndQueries(t *testing.T) {
	t.Parallel()
	base, user := newAPI(t)
	id := fmt.Sprint(user)
	for _, c := range []sent{
		{name: "plus sign", path: "/v1/user/+" + id, field: "id", detail: "plain digits"},
		{name: "leading zero", path: "/v1/user/0" + id, field: "id", detail: "plain digits"},
		{name: "plus sign balance", path: "/v1/user/%2B" + id + "/balance", field: "id", detail: "plain digits"},
		{name: "leading zero history", path: "/v1/user/0" + id + "/transactions", field: "id", detail: "plain digits"},
		{name: "plus sign limit", path: "/v1/user/" + id + "/transactions?limit=%2B10", field: "limit", detail: "limit must be an integer"},
		{name: "leading zero limit", path: "/v1/user/" + id + "/transactions?limit=010", field: "limit", detail: "limit must be an integer"},
		{name: "leading zero event limit", path: "/v1/events?limit=010", field: "limit", detail: "limit must be an integer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.method, c.status = "GET", http.StatusUnprocessableEntity
			c.check(t, base)
		})
	}
	for _, ok := range []string{"/v1/user/" + id, "/v1/user/" + id + "/transactions?limit=10", "/v1/events?limit=10"} {
		require.Equal(t, http.StatusOK, first(do(t, "GET", base+ok, "", "")), ok)
	}
}
