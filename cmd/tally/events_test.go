package main

import (
	"cmp"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/pgtest"
)

// Two deployments relaying to one NATS, each with its own stream and subject prefix, never
// see each other's events, and each names itself in the source of its events.
func TestDeploymentsShareNATSWithoutMixing(t *testing.T) {
	t.Parallel()
	natsURL := cmp.Or(os.Getenv("NATS_URL"), nats.DefaultURL)
	nc, err := nats.Connect(natsURL)
	require.NoError(t, err, "NATS with JetStream must run at %s", natsURL)
	t.Cleanup(nc.Close) // after the streams' deletion below: cleanups run last first
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	type deployment struct {
		name, stream, prefix, eventSource string
		url                               string
		users                             int
	}
	deployments := []*deployment{
		{name: "default source", users: 2},
		{name: "default source, another database", users: 3},
		{name: "EVENT_SOURCE overrides", eventSource: "ads-team/tally", users: 1},
	}
	for _, d := range deployments {
		id := uuid.NewString()[:8]
		d.stream, d.prefix, d.url = "S"+id, "p"+id, pgtest.NewDatabase(t)
		t.Cleanup(func() { js.DeleteStream(context.Background(), d.stream) }) //nolint:errcheck // best effort
		s := startServe(ctx, t, map[string]string{"DATABASE_URL": d.url, "NATS_URL": natsURL,
			"NATS_STREAM": d.stream, "NATS_SUBJECT_PREFIX": d.prefix, "EVENT_SOURCE": d.eventSource}, true)
		for range d.users {
			resp, err := http.Post(s.base+"/v1/user", "application/json", strings.NewReader(`{"name":"vasya"}`))
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusCreated, resp.StatusCode)
		}
	}

	sources := map[string]string{}
	for _, d := range deployments {
		t.Run(d.name, func(t *testing.T) {
			var stream jetstream.Stream
			require.Eventually(t, func() bool {
				stream, err = js.Stream(ctx, d.stream)
				return err == nil && stream.CachedInfo().State.Msgs == uint64(d.users)
			}, 10*time.Second, 50*time.Millisecond, "the stream %s holds this deployment's %d events", d.stream, d.users)
			cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
			require.NoError(t, err)
			batch, err := cons.FetchNoWait(100)
			require.NoError(t, err)
			var source string
			for m := range batch.Messages() {
				require.Equal(t, d.prefix+".user.created", m.Subject())
				var ce struct{ Source string }
				require.NoError(t, json.Unmarshal(m.Data(), &ce))
				source = ce.Source
			}
			require.NotEmpty(t, source)
			if d.eventSource != "" {
				require.Equal(t, d.eventSource, source)
			} else {
				require.Regexp(t, `^tally/[0-9]+/`+regexp.QuoteMeta(dbName(t, d.url))+`$`, source)
			}
			for other, s := range sources {
				require.NotEqual(t, s, source, "the source is %s's too", other)
			}
			sources[d.name] = source
		})
	}
}

func dbName(t *testing.T, url string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	return cfg.Database
}
