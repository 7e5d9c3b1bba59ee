package httpapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// A date alone as `to` covers that whole day; as `from` it starts at 00:00 of that day; an
// instant is an inclusive bound either way.
func TestHistoryDateBounds(t *testing.T) {
	t.Parallel()
	base := replicas(t, 1)[0]
	require.Equal(t, http.StatusCreated, post(t, base+"/v1/user", `{"name":"vasya"}`).status)
	for _, ts := range []string{"2023-12-30T23:59:59.999999Z", "2023-12-31T00:00:00Z", "2023-12-31T15:00:00Z", "2023-12-31T23:59:59.999999Z", "2024-01-01T00:00:00Z"} {
		r := post(t, base+"/v1/transaction", fmt.Sprintf(`{"uid":%q,"user_id":1,"type":"DEPOSIT","amount":"1","timestamp":%q}`, uuid.NewString(), ts))
		require.Equal(t, http.StatusOK, r.status, r.body)
	}
	for _, tc := range []struct {
		name  string
		query string
		want  []string
	}{
		{name: "to a date covers that whole day", query: "to=2023-12-31",
			want: []string{"2023-12-30T23:59:59.999999Z", "2023-12-31T00:00:00Z", "2023-12-31T15:00:00Z", "2023-12-31T23:59:59.999999Z"}},
		{name: "to a date, day first", query: "to=31.12.2023",
			want: []string{"2023-12-30T23:59:59.999999Z", "2023-12-31T00:00:00Z", "2023-12-31T15:00:00Z", "2023-12-31T23:59:59.999999Z"}},
		{name: "from a date starts at its midnight", query: "from=2023-12-31",
			want: []string{"2023-12-31T00:00:00Z", "2023-12-31T15:00:00Z", "2023-12-31T23:59:59.999999Z", "2024-01-01T00:00:00Z"}},
		{name: "from and to the same date is that day", query: "from=2023-12-31&to=2023-12-31",
			want: []string{"2023-12-31T00:00:00Z", "2023-12-31T15:00:00Z", "2023-12-31T23:59:59.999999Z"}},
		{name: "to an instant is inclusive", query: "to=" + url.QueryEscape("2023-12-31T15:00:00Z"),
			want: []string{"2023-12-30T23:59:59.999999Z", "2023-12-31T00:00:00Z", "2023-12-31T15:00:00Z"}},
		{name: "to midnight written out is that instant", query: "to=" + url.QueryEscape("2023-12-31T00:00:00Z"),
			want: []string{"2023-12-30T23:59:59.999999Z", "2023-12-31T00:00:00Z"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, err := http.Get(base + "/v1/user/1/transactions?" + tc.query)
			require.NoError(t, err)
			defer resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			var page struct{ Items []struct{ Timestamp string } }
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&page))
			got := make([]string, 0, len(page.Items))
			for _, item := range page.Items {
				got = append(got, item.Timestamp)
			}
			require.Equal(t, tc.want, got)
		})
	}
}
