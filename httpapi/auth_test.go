package httpapi_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
)

// do sends a request and returns its status and headers; the body is read and closed.
func do(t *testing.T, method, url, token, body string) (int, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body) //nolint:errcheck
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// newTokenServer serves the API with access control on: reader-0123456789abcdef may read,
// writer-0123456789abcdef may write.
func newTokenServer(t *testing.T) *httptest.Server {
	t.Helper()
	tokens, err := httpapi.ParseTokens("reader-0123456789abcdef:read, writer-0123456789abcdef:write")
	require.NoError(t, err)
	db, _ := pgtest.NewDB(t)
	srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}, httpapi.WithTokens(tokens)))
	t.Cleanup(srv.Close)
	return srv
}

func TestTokens(t *testing.T) {
	t.Parallel()
	srv := newTokenServer(t)

	status, header := do(t, "GET", srv.URL+"/v1/user/1", "", "")
	require.Equal(t, http.StatusUnauthorized, status)
	require.Equal(t, "application/problem+json", header.Get("Content-Type"))
	require.Contains(t, header.Get("WWW-Authenticate"), "Bearer")
	require.Equal(t, http.StatusUnauthorized, first(do(t, "GET", srv.URL+"/v1/user/1", "reader-0123456789abcdeX", "")))
	require.Equal(t, http.StatusNotFound, first(do(t, "GET", srv.URL+"/v1/user/1", "reader-0123456789abcdef", "")))
	require.Equal(t, http.StatusForbidden, first(do(t, "POST", srv.URL+"/v1/user", "reader-0123456789abcdef", `{"name":"a"}`)))
	require.Equal(t, http.StatusCreated, first(do(t, "POST", srv.URL+"/v1/user", "writer-0123456789abcdef", `{"name":"a"}`)))
	for _, open := range []string{"/healthz", "/readyz", "/api/openapi.json", "/api/docs"} {
		require.Equal(t, http.StatusOK, first(do(t, "GET", srv.URL+open, "", "")), open)
	}

	for _, bad := range []string{"short:read", "0123456789abcdefgh:admin", "0123456789abcdefgh"} {
		_, err := httpapi.ParseTokens(bad)
		require.Error(t, err, bad)
	}
}

func TestMetricsCountTransactions(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.NewDB(t)
	reg := prometheus.NewRegistry()
	m := httpapi.NewMetrics(reg)
	srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}, httpapi.WithMetrics(m)))
	defer srv.Close()
	user := createUser(t, srv.URL)
	tx := func(typ, amount, ts string) string {
		return `{"uid":"` + uuid.NewString() + `","user_id":` + strconv.FormatInt(user, 10) + `,"type":"` + typ + `","amount":"` + amount + `","timestamp":"` + ts + `"}`
	}
	deposit := tx("DEPOSIT", "10", "2023-01-02")
	require.Equal(t, 200, post(t, srv.URL+"/v1/transaction", deposit).status)
	require.Equal(t, 200, post(t, srv.URL+"/v1/transaction", deposit).status)
	require.Equal(t, 200, post(t, srv.URL+"/v1/transaction", tx("DEPOSIT", "5", "2023-01-01")).status)
	require.Equal(t, 402, post(t, srv.URL+"/v1/transaction", tx("WITHDRAW", "100", "2023-01-03")).status)

	require.InDelta(t, 2, counterValue(t, reg, "tally_transactions_total", map[string]string{"type": "DEPOSIT", "outcome": "applied"}), 0)
	require.InDelta(t, 1, counterValue(t, reg, "tally_transactions_total", map[string]string{"type": "WITHDRAW", "outcome": "rejected"}), 0)
	require.InDelta(t, 4, counterValue(t, reg, "http_requests_total", map[string]string{"route": "POST /v1/transaction", "method": "POST", "status": "200"})+
		counterValue(t, reg, "http_requests_total", map[string]string{"route": "POST /v1/transaction", "method": "POST", "status": "402"}), 0)
	count, err := testutil.GatherAndCount(reg, "http_requests_total")
	require.NoError(t, err)
	require.Positive(t, count)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP tally_idempotent_replays_total Transaction requests answered with the first answer of an earlier request with the same uid.
# TYPE tally_idempotent_replays_total counter
tally_idempotent_replays_total 1
# HELP tally_backdated_total Applied transactions inserted before a user's latest one.
# TYPE tally_backdated_total counter
tally_backdated_total 1
# HELP tally_backdated_rows_moved_total Later transactions whose balance_after a back-dated transaction moved.
# TYPE tally_backdated_rows_moved_total counter
tally_backdated_rows_moved_total 1
`), "tally_idempotent_replays_total", "tally_backdated_total", "tally_backdated_rows_moved_total"))
}

// counterValue reads one labelled series of a counter vector from the registry.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, metric := range f.GetMetric() {
			for _, l := range metric.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue series
				}
			}
			return metric.GetCounter().GetValue()
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

func first(status int, _ http.Header) int { return status }

// The authentication scheme is case-insensitive (RFC 9110 §11.1); the token is not.
func TestBearerSchemeInAnyCase(t *testing.T) {
	t.Parallel()
	const secret = "reader-0123456789abcdef"
	tokens, err := httpapi.ParseTokens(secret + ":read")
	require.NoError(t, err)
	db, _ := pgtest.NewDB(t)
	srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}, httpapi.WithTokens(tokens)))
	t.Cleanup(srv.Close)
	for _, c := range []struct {
		name, header string
		status       int
	}{
		{"Bearer", "Bearer " + secret, http.StatusNotFound},
		{"bearer", "bearer " + secret, http.StatusNotFound},
		{"BEARER", "BEARER " + secret, http.StatusNotFound},
		{"bEaReR", "bEaReR " + secret, http.StatusNotFound},
		{"two spaces", "Bearer  " + secret, http.StatusNotFound},
		{"token in another case", "Bearer " + strings.ToUpper(secret), http.StatusUnauthorized},
		{"another scheme", "Basic " + secret, http.StatusUnauthorized},
		{"scheme alone", "Bearer", http.StatusUnauthorized},
		{"scheme and space", "Bearer ", http.StatusUnauthorized},
		{"no space", "Bearer" + secret, http.StatusUnauthorized},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			req, err := http.NewRequest("GET", srv.URL+"/v1/user/1", nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", c.header)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, c.status, resp.StatusCode)
		})
	}
}
