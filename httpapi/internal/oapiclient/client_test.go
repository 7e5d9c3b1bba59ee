package oapiclient_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/httpapi/internal/oapiclient"
	"github.com/tally-ledger/tally/internal/pgtest"
)

// TestGeneratedClientIsCurrent regenerates the client as doc.go's go:generate line does (to
// stdout instead of the file) and requires the same bytes, so a change to openapi.json that
// breaks generation, or is not regenerated, fails here.
func TestGeneratedClientIsCurrent(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), "go", "tool", "oapi-codegen", "-config", "oapi-codegen.yaml", "../../openapi.json")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "%s", stderr.String())
	committed, err := os.ReadFile("client.gen.go")
	require.NoError(t, err)
	require.True(t, bytes.Equal(committed, stdout.Bytes()), "client.gen.go is stale: run go generate ./httpapi/internal/oapiclient/")
}

// TestGeneratedClientRoundTrip drives a real server on a real database with the generated
// client alone: create a user, deposit, read the transaction back, and retry the deposit,
// which the server answers with the first reply. Once with tokens off (the document's empty
// security requirement) and once with them on (its bearer scheme, sent by a request editor).
func TestGeneratedClientRoundTrip(t *testing.T) {
	t.Parallel()
	const secret = "writer-0123456789abcdef"
	tokens, err := httpapi.ParseTokens(secret + ":write")
	require.NoError(t, err)
	for _, tc := range []struct {
		name    string
		server  []httpapi.Option
		options []oapiclient.ClientOption
	}{
		{name: "tokens off"},
		{
			name:   "bearer token",
			server: []httpapi.Option{httpapi.WithTokens(tokens)},
			options: []oapiclient.ClientOption{oapiclient.WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
				req.Header.Set("Authorization", "Bearer "+secret)
				return nil
			})},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db, _ := pgtest.NewDB(t)
			srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}, tc.server...))
			t.Cleanup(srv.Close)
			c, err := oapiclient.NewClientWithResponses(srv.URL, tc.options...)
			require.NoError(t, err)
			ctx := t.Context()

			user, err := c.CreateUserWithResponse(ctx, &oapiclient.CreateUserParams{}, oapiclient.NewUser{Name: "Alice"})
			require.NoError(t, err)
			require.Equal(t, http.StatusCreated, user.StatusCode(), "%s", user.Body)
			require.Equal(t, "0.00", user.JSON201.Balance)

			uid := uuid.New()
			deposit := oapiclient.NewTransaction{Uid: &uid, Type: oapiclient.DEPOSIT}
			// A decimal string, as the document advises: the generated number form is a float32.
			require.NoError(t, deposit.Amount.FromAmountInput1("100.50"))
			require.NoError(t, deposit.UserId.FromUserID(user.JSON201.Id))
			first, err := c.CreateTransactionWithResponse(ctx, &oapiclient.CreateTransactionParams{}, deposit)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, first.StatusCode(), "%s", first.Body)
			require.Equal(t, oapiclient.TransactionStatusAPPLIED, first.JSON200.Status)
			require.Equal(t, "100.50", first.JSON200.Amount)
			require.Nil(t, first.Headers200.IdempotentReplayed, "a first answer is not a replay")

			read, err := c.GetTransactionWithResponse(ctx, uid, &oapiclient.GetTransactionParams{})
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, read.StatusCode(), "%s", read.Body)
			require.Equal(t, first.JSON200.Uid, read.JSON200.Uid)
			require.Equal(t, user.JSON201.Id, read.JSON200.UserId)
			require.Equal(t, "100.50", read.JSON200.Amount)
			require.WithinDuration(t, first.JSON200.Timestamp, read.JSON200.Timestamp, time.Duration(0))

			replay, err := c.CreateTransactionWithResponse(ctx, &oapiclient.CreateTransactionParams{}, deposit)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, replay.StatusCode(), "%s", replay.Body)
			require.NotNil(t, replay.Headers200.IdempotentReplayed)
			require.Equal(t, "true", *replay.Headers200.IdempotentReplayed)
			require.Equal(t, string(first.Body), string(replay.Body), "a replay is the first answer, byte for byte")
		})
	}
}
