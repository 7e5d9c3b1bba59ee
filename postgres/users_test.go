package postgres_test

import (
	"encoding/json"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// renderUser stores the created user's id and name, as the API's answer would.
func renderUser(u ledger.User) ledger.Reply {
	b, _ := json.Marshal(map[string]any{"id": u.ID, "name": u.Name, "created_at": u.CreatedAt})
	return ledger.Reply{Status: 201, Body: b}
}

// usersNamed counts the users with a name, and their user.created events.
func (f fixture) usersNamed(t *testing.T, name string) (users, events int) {
	t.Helper()
	require.NoError(t, f.db.Pool().QueryRow(f.ctx, `SELECT
		(SELECT count(*) FROM users WHERE name = $1),
		(SELECT count(*) FROM outbox o JOIN users u ON u.id = o.user_id WHERE u.name = $1 AND o.type = 'user.created')`,
		name).Scan(&users, &events))
	return users, events
}

func TestCreateUserOnce(t *testing.T) {
	f := setup(t)
	first, err := f.db.CreateUserOnce(f.ctx, "key-1", "vasya", renderUser)
	require.NoError(t, err)
	require.False(t, first.Replayed)
	require.Equal(t, 201, first.Reply.Status)
	require.Equal(t, "vasya", first.User.Name)

	for _, tc := range []struct {
		name, key, userName string
		wantConflict        bool
		wantReplay          bool
	}{
		{name: "same key and name replays the first answer", key: "key-1", userName: "vasya", wantReplay: true},
		{name: "same key with another name conflicts", key: "key-1", userName: "petya", wantConflict: true},
		{name: "keys are compared exactly", key: "KEY-1", userName: "vasya"},
		{name: "another key creates another user", key: "key-2", userName: "vasya"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := f.db.CreateUserOnce(f.ctx, tc.key, tc.userName, renderUser)
			if tc.wantConflict {
				require.Equal(t, ledger.CodeIdempotencyConflict, ledger.ErrorCode(err), "%v", err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantReplay, out.Replayed)
			if tc.wantReplay {
				require.Equal(t, first.Reply, out.Reply, "the stored first answer, byte for byte")
				require.Equal(t, first.User.ID, out.User.ID)
				return
			}
			require.NotEqual(t, first.User.ID, out.User.ID)
		})
	}
	users, events := f.usersNamed(t, "vasya")
	require.Equal(t, 3, users, "key-1, KEY-1 and key-2")
	require.Equal(t, 3, events)
	users, _ = f.usersNamed(t, "petya")
	require.Zero(t, users, "a conflict creates nothing")
}

// 40 requests with one key race on two pools, as two API instances would: one user is
// created, its event written once, and every request gets the same answer.
func TestCreateUserOnceRace(t *testing.T) {
	f := setup(t)
	other, err := postgres.Open(f.ctx, f.url)
	require.NoError(t, err)
	t.Cleanup(other.Close)
	dbs := []*postgres.DB{f.db, other}
	var wg sync.WaitGroup
	outs := make([]ledger.UserOutcome, 40)
	errs := make([]error, 40)
	for i := range outs {
		wg.Go(func() {
			outs[i], errs[i] = dbs[i%2].CreateUserOnce(f.ctx, "race-key", "masha", renderUser)
		})
	}
	wg.Wait()
	created := 0
	for i, out := range outs {
		require.NoError(t, errs[i])
		require.Equal(t, outs[0].Reply, out.Reply)
		require.Equal(t, outs[0].User.ID, out.User.ID)
		if !out.Replayed {
			created++
		}
	}
	require.Equal(t, 1, created, "one request created the user; the others replayed it")
	users, events := f.usersNamed(t, "masha")
	require.Equal(t, 1, users)
	require.Equal(t, 1, events)
}
