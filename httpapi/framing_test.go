package httpapi_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
)

// logFile holds a server's log; a file, unlike a buffer, can be read while requests write it.
type logFile string

func (f logFile) lines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(string(f))
	require.NoError(t, err)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// newFramedServer serves the API as cmd/tally does: behind httpapi.Listener, with
// httpapi.MaxHeaderBytes, metrics and a log the test can read.
func newFramedServer(t *testing.T, maxHeaderBytes int) (string, *prometheus.Registry, logFile) {
	t.Helper()
	db, _ := pgtest.NewDB(t)
	reg := prometheus.NewRegistry()
	logs, err := os.Create(filepath.Join(t.TempDir(), "log"))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, logs.Close()) })
	srv := httptest.NewUnstartedServer(httpapi.NewServer(db, httpapi.NewLogger(logs, 0), &httpapi.Health{},
		httpapi.WithMetrics(httpapi.NewMetrics(reg))))
	srv.Config.MaxHeaderBytes = maxHeaderBytes
	srv.Listener = httpapi.Listener(srv.Listener, httpapi.DefaultMaxConnections)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL, reg, logFile(logs.Name())
}

// raw writes request on a new connection and reads the first answer's status, headers and
// body.
func raw(t *testing.T, base, request string) (int, http.Header, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	require.NoError(t, err)
	defer conn.Close() //nolint:errcheck // the answer is read; nothing to do about a failed close
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	go conn.Write([]byte(request)) //nolint:errcheck // the server may answer and close before reading it all
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, body
}

// Every label of the request metrics comes from a closed set, whatever a client sends.
func TestMetricLabelsComeFromAClosedSet(t *testing.T) {
	t.Parallel()
	base, reg, _ := newFramedServer(t, 1<<20)
	for _, c := range []struct{ name, method, path string }{
		{"made-up methods", "X", "/v1/user/1"},
		{"made-up methods on unknown paths", "Y", "/nowhere/"},
		{"lower-case get", "get", "/healthz"},
		{"raw paths", "GET", "/v1/nowhere/"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for i := range 30 {
				method := c.method
				if len(method) == 1 {
					method = strings.Repeat(method, 10_000) + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh"[i])
				}
				path := c.path + strings.Repeat("p", i*100)
				req, err := http.NewRequest(method, base+path, nil)
				require.NoError(t, err)
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				resp.Body.Close()
			}
		})
	}
	families, err := reg.Gather()
	require.NoError(t, err)
	methods := []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "OTHER"}
	series := 0
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "http_request") {
			continue
		}
		for _, m := range f.GetMetric() {
			series++
			for _, l := range m.GetLabel() {
				require.LessOrEqual(t, len(l.GetValue()), 40, "label %s", l.GetName())
				require.NotContains(t, l.GetValue(), "XXXX")
				require.NotContains(t, l.GetValue(), "pppp")
				if l.GetName() == "method" {
					require.Contains(t, methods, l.GetValue())
				}
			}
		}
	}
	require.LessOrEqual(t, series, 10, "120 requests with 120 different methods and paths")
}

// A huge method or path is answered, and logged, in a few hundred bytes.
func TestEchoesAreBounded(t *testing.T) {
	t.Parallel()
	base, _, logs := newFramedServer(t, 1<<20)
	huge := strings.Repeat("M", 500_000)
	for _, c := range []struct {
		name, method, path string
		status             int
	}{
		{"huge method on a known path", huge, "/v1/user", http.StatusMethodNotAllowed},
		{"huge method on an unknown path", huge, "/nowhere", http.StatusNotFound},
		{"huge path", "GET", "/" + strings.Repeat("p", 500_000), http.StatusNotFound},
		{"huge path of control characters", "GET", "/" + strings.Repeat("%01", 100_000), http.StatusNotFound},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			req, err := http.NewRequest(c.method, base+c.path, nil)
			require.NoError(t, err)
			req.Header.Set("X-Request-ID", strings.ReplaceAll(c.name, " ", "-"))
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, c.status, resp.StatusCode)
			require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
			require.Less(t, len(body), 600, "%s", body)
			var p problemJSON
			require.NoError(t, json.Unmarshal(body, &p))
			require.Contains(t, p.Detail, "...")
			lines := logs.lines(t)
			i := slices.IndexFunc(lines, func(l string) bool {
				return strings.Contains(l, `"request_id":"`+strings.ReplaceAll(c.name, " ", "-")+`"`)
			})
			require.GreaterOrEqual(t, i, 0, "the request is logged")
			require.Less(t, len(lines[i]), 800, lines[i])
		})
	}
}

// The answer to a body that is too large comes before the body: a client that asks with
// Expect: 100-continue never sends it.
func TestTooLargeIsAnsweredBeforeTheBody(t *testing.T) {
	t.Parallel()
	base, _, _ := newFramedServer(t, httpapi.MaxHeaderBytes)
	for _, c := range []struct{ name, method, path string }{
		{"create a transaction", "POST", "/v1/transaction"},
		{"put a transaction", "PUT", "/v1/transaction"},
		{"create a user", "POST", "/v1/user"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			status, header, body := raw(t, base, c.method+" "+c.path+" HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\n"+
				"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")
			require.Equal(t, http.StatusRequestEntityTooLarge, status, "no 100 Continue first: %s", body)
			require.Equal(t, "application/problem+json", header.Get("Content-Type"))
			require.Contains(t, string(body), "urn:tally:problem:body-too-large")
		})
	}
}

// What net/http answers on its own, before any handler, reaches clients as a 4xx problem.
func TestFramingErrorsAreProblems(t *testing.T) {
	t.Parallel()
	base, _, _ := newFramedServer(t, httpapi.MaxHeaderBytes)
	post := "POST /v1/transaction HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\n"
	for _, c := range []struct {
		name, request string
		status        int
		problem       string
		detail        string
	}{
		{"gzip then chunked", post + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, "malformed-request", "Transfer-Encoding"},
		{"gzip alone", post + "Transfer-Encoding: gzip\r\n\r\n", 400, "malformed-request", "Transfer-Encoding"},
		{"no Host", "GET /healthz HTTP/1.1\r\n\r\n", 400, "malformed-request", "missing required Host header"},
		{"bad header name", "GET /healthz HTTP/1.1\r\nHost: tally\r\nBad Name: x\r\n\r\n", 400, "malformed-request", "not valid HTTP/1.1"},
		{"garbage request line", "HELLO\r\n\r\n", 400, "malformed-request", "not valid HTTP/1.1"},
		{"HTTP/3.0", "GET /healthz HTTP/3.0\r\nHost: tally\r\n\r\n", 400, "malformed-request", "HTTP/1.1"},
		{"headers too large", "GET /healthz HTTP/1.1\r\nHost: tally\r\nX-Big: " + strings.Repeat("b", 2*httpapi.MaxHeaderBytes) + "\r\n\r\n",
			431, "headers-too-large", "bytes"},
		{"method too large", strings.Repeat("M", 500_000) + " / HTTP/1.1\r\nHost: tally\r\n\r\n", 431, "headers-too-large", "bytes"},
		{"GET *", "GET * HTTP/1.1\r\nHost: tally\r\n\r\n", 400, "malformed-request", "for OPTIONS only"},
		{"POST *", "POST * HTTP/1.1\r\nHost: tally\r\nContent-Length: 0\r\n\r\n", 400, "malformed-request", "for OPTIONS only"},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "malformed-request", "HTTP/1.1"},
		{"CONNECT", "CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n", 400, "malformed-request", "not a proxy"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			status, header, body := raw(t, base, c.request)
			require.Equal(t, c.status, status, "%s", body)
			require.Equal(t, "application/problem+json", header.Get("Content-Type"))
			var p problemJSON
			require.NoError(t, json.Unmarshal(body, &p), "%s", body)
			require.Equal(t, "urn:tally:problem:"+c.problem, p.Type)
			require.Equal(t, c.status, p.Status)
			require.Contains(t, p.Detail, c.detail)
		})
	}
	t.Run("ordinary requests pass unchanged", func(t *testing.T) {
		t.Parallel()
		status, _, body := raw(t, base, "GET /healthz HTTP/1.1\r\nHost: tally\r\n\r\n")
		require.Equal(t, http.StatusOK, status)
		require.JSONEq(t, `{"status":"ok"}`, string(body))
	})
}

// The few answers README lists as coming from Go's server itself, as it lists them.
func TestAnswersLeftToGo(t *testing.T) {
	t.Parallel()
	base, _, _ := newFramedServer(t, httpapi.MaxHeaderBytes)
	for _, c := range []struct {
		name, request string
		status        int
		location      string
	}{
		{"an expectation other than 100-continue", "GET /healthz HTTP/1.1\r\nHost: tally\r\nExpect: teapot\r\n\r\n", http.StatusExpectationFailed, ""},
		{"a path that is not clean", "GET //healthz HTTP/1.1\r\nHost: tally\r\n\r\n", http.StatusTemporaryRedirect, "/healthz"},
		{"a dot segment", "POST /v1/./user HTTP/1.1\r\nHost: tally\r\nContent-Length: 0\r\n\r\n", http.StatusTemporaryRedirect, "/v1/user"},
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: tally\r\n\r\n", http.StatusOK, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			status, header, _ := raw(t, base, c.request)
			require.Equal(t, c.status, status)
			require.Equal(t, c.location, header.Get("Location"))
		})
	}
}
