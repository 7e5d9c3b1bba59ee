package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// checkStream is check 6, with --nats-url: every applied transaction of the run's users was
// delivered to the JetStream stream exactly once as transaction.applied. The relay may still
// be draining the outbox, so it reads until every applied uid has arrived or --stream-wait
// passes.
func (a *auditor) checkStream(ctx context.Context, _ []writeRecord) error {
	if a.b.cfg.natsURL == "" {
		return nil
	}
	c := a.check("one transaction.applied message per applied transaction in the NATS stream")
	applied := map[string]int64{}
	for uid, s := range a.rows {
		if s.status == "APPLIED" {
			applied[uid] = s.userID
		}
	}
	ours := map[int64]bool{}
	for _, u := range a.users {
		ours[u] = true
	}
	nc, err := nats.Connect(a.b.cfg.natsURL)
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	consumer, err := js.OrderedConsumer(ctx, a.b.cfg.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{a.b.cfg.subjectPrefix + ".transaction.applied"},
	})
	if err != nil {
		return fmt.Errorf("read stream %s: %w", a.b.cfg.stream, err)
	}
	seen := map[string]int{}
	deadline := time.Now().Add(a.b.cfg.streamWait)
	for missing := len(applied); missing > 0 && time.Now().Before(deadline); {
		batch, err := consumer.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return err
		}
		for msg := range batch.Messages() {
			var event struct {
				Data struct {
					UserID int64  `json:"user_id"`
					UID    string `json:"uid"`
				} `json:"data"`
			}
			if err := json.Unmarshal(msg.Data(), &event); err != nil || !ours[event.Data.UserID] {
				continue
			}
			seen[event.Data.UID]++
			if _, ok := applied[event.Data.UID]; ok && seen[event.Data.UID] == 1 {
				missing--
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
	}
	for uid, user := range applied {
		c.Checked++
		if seen[uid] != 1 {
			a.violate(c, uid, user, "delivered %d times to the stream", seen[uid])
		}
	}
	for uid, n := range seen {
		if _, ok := applied[uid]; !ok {
			a.violate(c, uid, 0, "delivered %d times, but no applied transaction has this uid", n)
		}
	}
	return nil
}
