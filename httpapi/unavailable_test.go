package httpapi_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/postgres"
)

// A database that cannot be reached is a 503 with Retry-After, not an internal error.
func TestUnreachableDatabaseIs503(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there now
	db, err := postgres.Open(context.Background(), "postgres://postgres@"+addr+"/tally?connect_timeout=2")
	require.NoError(t, err)
	defer db.Close()
	srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/v1/user/1/balance")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, string(body))
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	require.Contains(t, string(body), "urn:tally:problem:unavailable")
	require.NotContains(t, string(body), addr, "no connection details reach the client")
}
