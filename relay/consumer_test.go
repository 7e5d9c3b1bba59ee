package relay_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/devenv"
)

// The consumer in docs/events.md works on the NATS these tests run against (2.9 on the CI
// machines) and on the current release embedded here: one filter, "<prefix>.balance.>",
// matches the subjects the relay publishes funded and depleted on. Several filter subjects
// need 2.10; an older server refuses them and leaves behind a consumer without a filter.
func TestDocumentedConsumer(t *testing.T) {
	t.Parallel()
	embedded, err := devenv.StartNATS(0, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(embedded.Shutdown)
	for _, tc := range []struct {
		name, url string
	}{
		{name: "the NATS at NATS_URL", url: natsURL()},
		{name: "embedded NATS, current release", url: embedded.ClientURL()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t, tc.url)
			f.write(t, 3, 2) // per user: created, applied, funded, applied
			f.start(t, f.nc)
			f.streamEvents(t, f.js, f.events)
			version := f.nc.ConnectedServerVersion()
			t.Logf("NATS %s", version)

			cons, err := f.js.CreateOrUpdateConsumer(f.ctx, f.cfg.Stream, jetstream.ConsumerConfig{
				Durable:       "adengine",
				AckPolicy:     jetstream.AckExplicitPolicy,
				FilterSubject: f.cfg.SubjectPrefix + ".balance.>",
			})
			require.NoError(t, err)
			batch, err := cons.Fetch(100, jetstream.FetchMaxWait(time.Second))
			require.NoError(t, err)
			var subjects []string
			for m := range batch.Messages() {
				subjects = append(subjects, m.Subject())
				require.NoError(t, m.Ack())
			}
			require.Equal(t, []string{f.cfg.SubjectPrefix + ".balance.funded", f.cfg.SubjectPrefix + ".balance.funded",
				f.cfg.SubjectPrefix + ".balance.funded"}, subjects)

			_, err = f.js.CreateOrUpdateConsumer(f.ctx, f.cfg.Stream, jetstream.ConsumerConfig{
				Durable:        "several-filters",
				AckPolicy:      jetstream.AckExplicitPolicy,
				FilterSubjects: []string{f.cfg.SubjectPrefix + ".balance.funded", f.cfg.SubjectPrefix + ".balance.depleted"},
			})
			if strings.HasPrefix(version, "2.9.") {
				require.ErrorIs(t, err, jetstream.ErrConsumerMultipleFilterSubjectsNotSupported)
				left, err := f.js.Consumer(f.ctx, f.cfg.Stream, "several-filters")
				require.NoError(t, err, "NATS 2.9 creates the consumer before the client sees it has no filter")
				require.Empty(t, left.CachedInfo().Config.FilterSubject)
				require.Empty(t, left.CachedInfo().Config.FilterSubjects)
			} else {
				require.NoError(t, err)
			}
		})
	}
}
