package client_test

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
)

func TestParseAmount(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want client.Amount
		text string
	}{
		{"12.34", 1234, "12.34"},
		{"12.3", 1230, "12.30"},
		{"12", 1200, "12.00"},
		{"0.01", 1, "0.01"},
		{"0", 0, "0.00"},
		{"-0.50", -50, "-0.50"},
		{"-1.50", -150, "-1.50"}, // the whole part keeps the sign too
		{"007.5", 750, "7.50"},
		{"92233720368547758.07", math.MaxInt64, "92233720368547758.07"},
		{"-92233720368547758.07", -math.MaxInt64, "-92233720368547758.07"},
	} {
		got, err := client.ParseAmount(tc.in)
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
		require.Equal(t, tc.text, got.String(), tc.in)
	}
	for _, bad := range []string{"", "-", ".5", "5.", "1.234", "1e2", "+1", "1,00", " 1", "1.2.3", "--1", "92233720368547758.08", "99999999999999999999"} {
		_, err := client.ParseAmount(bad)
		require.Error(t, err, "%q", bad)
	}
	require.Equal(t, "-92233720368547758.08", client.Amount(math.MinInt64).String())
}

func TestAmountJSON(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(struct{ A client.Amount }{1234})
	require.NoError(t, err)
	require.JSONEq(t, `{"A": "12.34"}`, string(b))

	var v struct {
		A, B, C client.Amount
		P       *client.Amount
	}
	require.NoError(t, json.Unmarshal([]byte(`{"A": "12.34", "B": 0.1, "C": null, "P": null}`), &v))
	require.Equal(t, client.Amount(1234), v.A)
	require.Equal(t, client.Amount(10), v.B)
	require.Zero(t, v.C)
	require.Nil(t, v.P)
	require.Error(t, json.Unmarshal([]byte(`{"A": "12.345"}`), &v))
	require.Error(t, json.Unmarshal([]byte(`{"A": true}`), &v))
}

func FuzzParseAmount(f *testing.F) {
	for _, s := range []string{"12.34", "0", "-1.5", "92233720368547758.07", "1.234", "abc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := client.ParseAmount(s)
		if err != nil {
			return
		}
		again, err := client.ParseAmount(a.String())
		if err != nil || again != a {
			t.Fatalf("%q parsed to %d, whose text %q parses to %d, %v", s, a, a.String(), again, err)
		}
	})
}
