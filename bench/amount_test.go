package bench

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

// The balances bench reads for its audit are parsed exactly, signs included.
func TestBalanceReadsAmountsExactly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		balance string
		want    int64
	}{
		{"0.00", 0},
		{"1.50", 150},
		{"-1.50", -150},
		{"-0.05", -5},
		{"2904.13", 290413},
	} {
		t.Run(tc.balance, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"user_id":1,"balance":"`+tc.balance+`"}`) //nolint:errcheck // test server
			}))
			t.Cleanup(srv.Close)
			cfg, err := parseConfig([]string{"--url", srv.URL}, io.Discard)
			require.NoError(t, err)
			b := newBench(cfg, io.Discard, io.Discard)
			defer b.close()
			got, err := b.balance(context.Background(), 1, nil)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}
