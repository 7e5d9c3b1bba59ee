package httpapi_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
)

// A query string is read whole or refused, on every route: nothing in it is silently dropped.
func TestQueryStringsAreCheckedOnEveryRoute(t *testing.T) {
	t.Parallel()
	base, user := newAPI(t)
	id := fmt.Sprint(user)
	const malformed = "the query string is malformed"
	for _, c := range []sent{
		{name: "date with a trailing semicolon", path: "/v1/user/" + id + "/balance?date=2023-01-01;", detail: malformed},
		{name: "date with a bad escape", path: "/v1/user/" + id + "/balance?date=2023-01-01%zz", detail: malformed},
		{name: "date that is only a bad escape", path: "/v1/user/" + id + "?date=%zz", detail: malformed},
		{name: "date split by a semicolon", path: "/v1/user/" + id + "/balance?date=2023;01", detail: malformed},
		{name: "from with a trailing semicolon", path: "/v1/user/" + id + "/transactions?from=2100-01-01;", detail: malformed},
		{name: "limit that is a bad escape", path: "/v1/user/" + id + "/transactions?limit=%zz", detail: malformed},
		{name: "cursor that is a bad escape", path: "/v1/user/" + id + "/transactions?cursor=%zz", detail: malformed},
		{name: "events limit that is a bad escape", path: "/v1/events?limit=%zz", detail: malformed},
		{name: "health check with a bad escape", path: "/healthz?x=%zz", detail: malformed},
		{name: "date twice", path: "/v1/user/" + id + "/balance?date=2023-01-01&date=2024-01-01", field: "date", detail: `"date" appears more than once`},
		{name: "limit twice", path: "/v1/user/" + id + "/transactions?limit=5&limit=99999", field: "limit", detail: `"limit" appears more than once`},
		{name: "unknown key twice", path: "/v1/user/" + id + "?x=1&x=1", field: "x", detail: `"x" appears more than once`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.method, c.status = "GET", http.StatusUnprocessableEntity
			c.check(t, base)
		})
	}
	for _, ok := range []string{"/v1/user/" + id + "/balance?date=2023-01-01", "/v1/user/" + id + "/transactions?limit=5&from=2020-01-01", "/healthz?"} {
		require.Equal(t, http.StatusOK, first(do(t, "GET", base+ok, "", "")), ok)
	}
}

// Bodies and headers that were read leniently, or in Go's words, are refused in the API's.
func TestBodiesAndHeadersAreReadStrictly(t *testing.T) {
	t.Parallel()
	base, user := newAPI(t)
	tx := fmt.Sprintf(`{"uid": %q, "user_id": %d, "type": "DEPOSIT", "amount": "1"}`, uuid.NewString(), user)
	for _, c := range []sent{
		{name: "body over the limit", path: "/v1/user", body: `{"name": "` + strings.Repeat("x", 65<<10) + `"}`,
			status: http.StatusRequestEntityTooLarge, detail: "larger than 65536 bytes"},
		{name: "lone high surrogate", path: "/v1/user", body: `{"name": "\ud800"}`, status: 422, field: "name", detail: "surrogate"},
		{name: "lone low surrogate inside", path: "/v1/user", body: `{"name": "x\udc00y"}`, status: 422, field: "name", detail: "surrogate"},
		{name: "surrogates in the wrong order", path: "/v1/user", body: `{"name": "\udc00\ud800"}`, status: 422, field: "name", detail: "surrogate"},
		{name: "lone surrogate in a key", path: "/v1/user", body: `{"\ud800": 1, "name": "a"}`, status: 422, detail: "surrogate"},
		{name: "form sent as JSON", path: "/v1/user", body: "name=ct", status: 422, detail: "the body is not valid JSON at byte 2"},
		{name: "byte order mark", path: "/v1/user", body: "\ufeff{\"name\": \"a\"}", status: 422, detail: "byte order mark"},
		{name: "form with a semicolon", path: "/v1/user", contentType: "application/x-www-form-urlencoded", body: "name=a;x=b",
			status: 422, detail: "the form body is malformed"},
		{name: "type with surrounding whitespace", path: "/v1/transaction",
			body:   fmt.Sprintf(`{"uid": %q, "user_id": %d, "type": " deposit\n", "amount": "1"}`, uuid.NewString(), user),
			status: 422, field: "type", detail: "spaces"},
		{name: "brotli-labelled body", path: "/v1/user", header: map[string]string{"Content-Encoding": "br"}, body: `{"name": "a"}`,
			status: http.StatusUnsupportedMediaType, detail: "Content-Encoding"},
		{name: "gzip-labelled body", path: "/v1/transaction", header: map[string]string{"Content-Encoding": "gzip"}, body: tx,
			status: http.StatusUnsupportedMediaType, detail: "Content-Encoding"},
		{name: "list of media types", path: "/v1/user", contentType: "application/json, text/plain", body: `{"name": "a"}`,
			status: http.StatusUnsupportedMediaType, detail: "Content-Type"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.method = "POST"
			p := c.check(t, base)
			for _, goWords := range []string{"invalid character", "invalid semicolon", "literal", "ï"} {
				require.NotContains(t, p.Detail, goWords)
			}
		})
	}
	t.Run("surrogate pairs and escaped backslashes pass", func(t *testing.T) {
		t.Parallel()
		status, _, body := sent{method: "POST", path: "/v1/user", body: `{"name": "\ud83d\ude00 \\ud800"}`}.send(t, base)
		require.Equal(t, http.StatusCreated, status, "%s", body)
		require.Contains(t, string(body), `"😀 \\ud800"`)
	})
	t.Run("identity encoding passes", func(t *testing.T) {
		t.Parallel()
		status, _, body := sent{method: "POST", path: "/v1/user", header: map[string]string{"Content-Encoding": "identity"}, body: `{"name": "a"}`}.send(t, base)
		require.Equal(t, http.StatusCreated, status, "%s", body)
	})
	require.Equal(t, "0.00", balance(t, base, user), "nothing refused moved money")
}

// A header the API reads once is refused when it is sent twice, rather than reading the first.
func TestRepeatedHeadersAreRefused(t *testing.T) {
	t.Parallel()
	srv := newTokenServer(t)
	const reader, writer = "Bearer reader-0123456789abcdef", "Bearer writer-0123456789abcdef"
	for _, c := range []struct {
		name, path, body string
		headers          [][2]string
		status           int
		field            string
	}{
		{"read token then write token", "/v1/user", `{"name": "a"}`, [][2]string{{"Authorization", reader}, {"Authorization", writer}}, 401, ""},
		{"write token then read token", "/v1/user", `{"name": "a"}`, [][2]string{{"Authorization", writer}, {"Authorization", reader}}, 401, ""},
		{"two idempotency keys on a transaction", "/v1/transaction", `{"user_id": 1, "type": "DEPOSIT", "amount": "1"}`,
			[][2]string{{"Authorization", writer}, {"Idempotency-Key", uuid.NewString()}, {"Idempotency-Key", uuid.NewString()}}, 422, "Idempotency-Key"},
		{"two idempotency keys on a user", "/v1/user", `{"name": "a"}`,
			[][2]string{{"Authorization", writer}, {"Idempotency-Key", "a"}, {"Idempotency-Key", "b"}}, 422, "Idempotency-Key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			req, err := http.NewRequest("POST", srv.URL+c.path, strings.NewReader(c.body))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/json")
			for _, h := range c.headers {
				req.Header.Add(h[0], h[1])
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, c.status, resp.StatusCode, "%s", body)
			var p problemJSON
			require.NoError(t, json.Unmarshal(body, &p))
			require.Equal(t, c.field, p.Field)
		})
	}
}

// A request framed with Transfer-Encoding closes its connection after the answer, so bytes a
// proxy that trusted Content-Length took for the body are never read as a second request.
func TestTransferEncodingClosesTheConnection(t *testing.T) {
	t.Parallel()
	base, _, _ := newFramedServer(t, httpapi.MaxHeaderBytes)
	second := "GET /healthz HTTP/1.1\r\nHost: tally\r\n\r\n"
	for _, c := range []struct{ name, request string }{
		{"chunked with Content-Length", "POST /v1/user HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\n" +
			"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0c\r\n{\"name\":\"a\"}\r\n0\r\n\r\n"},
		{"chunked alone", "POST /v1/user HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\n" +
			"Transfer-Encoding: chunked\r\n\r\n0c\r\n{\"name\":\"a\"}\r\n0\r\n\r\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
			require.NoError(t, err)
			defer conn.Close() //nolint:errcheck // the answers are read; nothing to do about a failed close
			require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
			_, err = conn.Write([]byte(c.request + second))
			require.NoError(t, err)
			r := bufio.NewReader(conn)
			resp, err := http.ReadResponse(r, nil)
			require.NoError(t, err)
			_, err = io.Copy(io.Discard, resp.Body)
			require.NoError(t, err)
			require.NoError(t, resp.Body.Close())
			require.Equal(t, http.StatusCreated, resp.StatusCode)
			require.True(t, resp.Close, "the answer says Connection: close")
			rest, err := io.ReadAll(r)
			require.NoError(t, err, "the server closes the connection")
			require.Empty(t, rest, "the pipelined request is not answered")
		})
	}
	t.Run("Content-Length alone keeps the connection", func(t *testing.T) {
		t.Parallel()
		conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		require.NoError(t, err)
		defer conn.Close() //nolint:errcheck // the answers are read; nothing to do about a failed close
		require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
		_, err = conn.Write([]byte(second + second))
		require.NoError(t, err)
		r := bufio.NewReader(conn)
		for range 2 {
			resp, err := http.ReadResponse(r, nil)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			_, err = io.Copy(io.Discard, resp.Body)
			require.NoError(t, err)
			require.NoError(t, resp.Body.Close())
		}
	})
}

// A missing documentation file is echoed clipped, like every other piece of a request.
func TestDocsEchoIsBounded(t *testing.T) {
	t.Parallel()
	base, _ := newAPI(t)
	for _, c := range []struct{ name, path string }{
		{"long file name", "/api/docs/" + strings.Repeat("f", 30_000)},
		{"NUL", "/api/docs/%00"},
		{"control characters", "/api/docs/a%01%1b"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			status, _, body := sent{method: "GET", path: c.path}.send(t, base)
			require.Equal(t, http.StatusNotFound, status)
			require.Less(t, len(body), 600)
			var p problemJSON
			require.NoError(t, json.Unmarshal(body, &p))
			require.NotContains(t, p.Detail, "\x00")
			require.NotContains(t, p.Detail, "\x01")
			require.NotContains(t, p.Detail, "\x1b")
		})
	}
}
