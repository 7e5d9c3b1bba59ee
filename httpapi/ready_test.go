package httpapi_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
)

func TestReadyHandler(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		shuttingDown bool
		check        error
		wantStatus   int
		wantBody     string
	}{
		{name: "ready", wantStatus: http.StatusOK, wantBody: `{"status":"ready"}`},
		{name: "the check fails", check: errors.New("schema too old"), wantStatus: http.StatusServiceUnavailable, wantBody: `{"status":"database not ready"}`},
		{name: "a named check fails", check: &httpapi.NotReady{Status: "NATS not connected", Err: errors.New("RECONNECTING")}, wantStatus: http.StatusServiceUnavailable, wantBody: `{"status":"NATS not connected"}`},
		{name: "shutting down", shuttingDown: true, wantStatus: http.StatusServiceUnavailable, wantBody: `{"status":"shutting down"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			health := &httpapi.Health{}
			if tc.shuttingDown {
				health.ShutDown()
			}
			h := httpapi.ReadyHandler(health, httpapi.NewLogger(io.Discard, 0), func(context.Context) error { return tc.check })
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			require.Equal(t, tc.wantStatus, rec.Code)
			require.JSONEq(t, tc.wantBody, rec.Body.String())
		})
	}
}
