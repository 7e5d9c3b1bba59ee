package httpapi_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// userReply is an answer to POST /v1/user.
type userReply struct {
	reply
	location string
	field    string // the problem's field, for a 422
}

// postUser creates a user, with the Idempotency-Key headers given (none, one or several).
func postUser(t *testing.T, base, body string, keys ...string) userReply {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/v1/user", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	for _, k := range keys {
		req.Header.Add("Idempotency-Key", k)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	r := userReply{reply: reply{resp.StatusCode, string(b), resp.Header.Get("Idempotent-Replayed") == "true"},
		location: resp.Header.Get("Location")}
	if resp.StatusCode >= 400 {
		var p struct{ Field string }
		require.NoError(t, json.Unmarshal(b, &p))
		r.field = p.Field
	}
	return r
}

func TestCreateUserIdempotencyKey(t *testing.T) {
	t.Parallel()
	servers := replicas(t, 2)
	first := postUser(t, servers[0], `{"name": "vasya"}`, "create-vasya-1")
	require.Equal(t, http.StatusCreated, first.status, first.body)
	require.False(t, first.replayed)

	for _, tc := range []struct {
		name       string
		server     int
		body       string
		keys       []string
		wantStatus int
		wantReplay bool
		wantField  string
	}{
		{name: "a retry gets the first answer back", server: 0, body: `{"name": "vasya"}`, keys: []string{"create-vasya-1"},
			wantStatus: http.StatusCreated, wantReplay: true},
		{name: "a retry on another instance too", server: 1, body: `{"name":"vasya"}`, keys: []string{"create-vasya-1"},
			wantStatus: http.StatusCreated, wantReplay: true},
		{name: "the key with another name is a conflict", server: 1, body: `{"name": "petya"}`, keys: []string{"create-vasya-1"},
			wantStatus: http.StatusUnprocessableEntity, wantField: "Idempotency-Key"},
		{name: "an empty key is refused", body: `{"name": "vasya"}`, keys: []string{""},
			wantStatus: http.StatusUnprocessableEntity, wantField: "Idempotency-Key"},
		{name: "a key of 256 characters is refused", body: `{"name": "vasya"}`, keys: []string{strings.Repeat("k", 256)},
			wantStatus: http.StatusUnprocessableEntity, wantField: "Idempotency-Key"},
		{name: "a key with a space is refused", body: `{"name": "vasya"}`, keys: []string{"two words"},
			wantStatus: http.StatusUnprocessableEntity, wantField: "Idempotency-Key"},
		{name: "a key with non-ASCII is refused", body: `{"name": "vasya"}`, keys: []string{"ключ"},
			wantStatus: http.StatusUnprocessableEntity, wantField: "Idempotency-Key"},
		{name: "two keys are refused", body: `{"name": "vasya"}`, keys: []string{"a", "b"},
			wantStatus: http.StatusUnprocessableEntity, wantField: "Idempotency-Key"},
		{name: "every visible ASCII character is accepted", body: `{"name": "vasya"}`, keys: []string{visibleASCII()},
			wantStatus: http.StatusCreated},
		{name: "a key of 255 characters is accepted", body: `{"name": "vasya"}`, keys: []string{strings.Repeat("k", 255)},
			wantStatus: http.StatusCreated},
		{name: "without a key every request creates a user", body: `{"name": "vasya"}`,
			wantStatus: http.StatusCreated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := postUser(t, servers[tc.server], tc.body, tc.keys...)
			require.Equal(t, tc.wantStatus, r.status, r.body)
			require.Equal(t, tc.wantReplay, r.replayed)
			require.Equal(t, tc.wantField, r.field, r.body)
			switch {
			case tc.wantReplay:
				require.Equal(t, first.body, r.body, "the first answer byte for byte")
				require.Equal(t, first.location, r.location)
			case r.status == http.StatusCreated:
				require.NotEqual(t, first.location, r.location, "another user")
			}
		})
	}
}

// visibleASCII is "!" to "~", every character a key may hold.
func visibleASCII() string {
	var b strings.Builder
	for c := byte('!'); c <= '~'; c++ {
		b.WriteByte(c)
	}
	return b.String()
}

// 40 requests with one Idempotency-Key, sent to two instances at once, create one user and
// all get its first answer.
func TestCreateUserRaceAcrossReplicas(t *testing.T) {
	t.Parallel()
	servers := replicas(t, 2)
	replies := make([]userReply, 40)
	var wg sync.WaitGroup
	for i := range replies {
		wg.Go(func() { replies[i] = postUser(t, servers[i%2], `{"name": "olga"}`, "olga-once") })
	}
	wg.Wait()
	fresh := 0
	for _, r := range replies {
		require.Equal(t, http.StatusCreated, r.status, r.body)
		require.Equal(t, replies[0].body, r.body, "every copy gets the first answer byte for byte")
		require.Equal(t, replies[0].location, r.location)
		if !r.replayed {
			fresh++
		}
	}
	require.Equal(t, 1, fresh)
	next := createUser(t, servers[0])
	var created struct{ ID int64 }
	require.NoError(t, json.Unmarshal([]byte(replies[0].body), &created))
	// Losers' rolled-back inserts may skip ids; none of them may hold a user.
	for id := created.ID + 1; id < next; id++ {
		resp, err := http.Get(fmt.Sprintf("%s/v1/user/%d", servers[0], id))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusNotFound, resp.StatusCode, "user %d was created too", id)
	}
}
