// Command adengine is an example consumer of tally's events: it starts an advertiser's
// campaigns when the user's balance becomes positive and stops them when it reaches zero.
//
// It reads from JetStream with a durable pull consumer, so it resumes where it stopped. Each
// message is handled in one PostgreSQL transaction that stores the effect together with the
// event id, and acked only after that commit: JetStream delivers at least once, the inbox
// of event ids makes a repeat harmless, so every event takes effect exactly once.
//
// A stream may be shared with other tally deployments whose users have the same ids, so the
// engine acts only on events whose CloudEvents source is its tally's (TALLY_EVENT_SOURCE) and
// acks the others without effect.
//
// Environment:
//
//	ADENGINE_DATABASE_URL    the engine's own PostgreSQL database (required)
//	TALLY_EVENT_SOURCE       the source of the tally whose events to act on: that tally's
//	                         EVENT_SOURCE, or the source its events carry (required)
//	NATS_URL                 default nats://127.0.0.1:4222
//	ADENGINE_STREAM          the stream tally's relay publishes to; default TALLY
//	ADENGINE_SUBJECT_PREFIX  the relay's subject prefix; default tally
//	ADENGINE_DURABLE         the durable consumer's name; default adengine
//	ADENGINE_ACK_WAIT        how long a delivered, unacked message waits before it is
//	                         delivered again; default 30s
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "adengine:", err)
		os.Exit(1)
	}
}

type config struct {
	databaseURL   string
	eventSource   string
	natsURL       string
	stream        string
	subjectPrefix string
	durable       string
	ackWait       time.Duration
}

func loadConfig(getenv func(string) string) (config, error) {
	cfg := config{
		databaseURL:   getenv("ADENGINE_DATABASE_URL"),
		eventSource:   getenv("TALLY_EVENT_SOURCE"),
		natsURL:       cmp.Or(getenv("NATS_URL"), nats.DefaultURL),
		stream:        cmp.Or(getenv("ADENGINE_STREAM"), "TALLY"),
		subjectPrefix: cmp.Or(getenv("ADENGINE_SUBJECT_PREFIX"), "tally"),
		durable:       cmp.Or(getenv("ADENGINE_DURABLE"), "adengine"),
		ackWait:       30 * time.Second,
	}
	if cfg.databaseURL == "" {
		return cfg, errors.New("ADENGINE_DATABASE_URL is not set")
	}
	if cfg.eventSource == "" {
		return cfg, errors.New("TALLY_EVENT_SOURCE is not set: give the source of your tally's events, so that another deployment's events on the same stream are ignored")
	}
	if v := getenv("ADENGINE_ACK_WAIT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			return cfg, fmt.Errorf("ADENGINE_ACK_WAIT %q is not a duration of at least 1s", v)
		}
		cfg.ackWait = d
	}
	return cfg, nil
}

func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stdout, nil))
	pool, err := pgxpool.New(ctx, cfg.databaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	e := &engine{pool: pool, log: log, source: cfg.eventSource}
	if err := e.createSchema(ctx); err != nil {
		return fmt.Errorf("create tables: %w", err)
	}
	nc, err := nats.Connect(cfg.natsURL,
		nats.Name("adengine"),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(500*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", "error", err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "url", nc.ConnectedUrl()) }),
	)
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", cfg.natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	log.Info("adengine started", "stream", cfg.stream, "durable", cfg.durable, "source", cfg.eventSource)
	consume(ctx, e, nc, js, cfg, log)
	log.Info("adengine stopped")
	return nil
}

// consume fetches batches from the durable consumer and handles them one message at a time,
// in stream order, until ctx ends. Any failure is retried after a pause: the consumer's
// position lives in JetStream, so nothing is lost meanwhile.
func consume(ctx context.Context, e *engine, nc *nats.Conn, js jetstream.JetStream, cfg config, log *slog.Logger) {
	var cons jetstream.Consumer
	pause := func() { sleep(ctx, time.Second) }
	for ctx.Err() == nil {
		if cons == nil {
			var err error
			if cons, err = durableConsumer(ctx, nc, js, cfg); err != nil {
				// The stream appears when the relay first runs.
				log.Warn("create the durable consumer", "error", err)
				pause()
				continue
			}
		}
		batch, err := cons.Fetch(100, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			log.Warn("fetch", "error", err)
			if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
				cons = nil
			}
			pause()
			continue
		}
		failed := false
		for msg := range batch.Messages() {
			if failed || ctx.Err() != nil {
				// Handled in order next time rather than after a timeout.
				msg.Nak() //nolint:errcheck // without it the message returns after AckWait
				continue
			}
			if err := handleMessage(ctx, e, msg, log); err != nil {
				log.Warn("handle event", "error", err, "subject", msg.Subject())
				failed = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			log.Warn("fetch", "error", err)
			failed = true
		}
		if failed {
			pause()
		}
	}
}

// handleMessage commits the message's effect, then acks it. An ack that is lost (the
// connection drops) only means the message comes again, and the inbox absorbs it.
func handleMessage(ctx context.Context, e *engine, msg jetstream.Msg, log *slog.Logger) error {
	_, err := e.handle(ctx, msg.Data())
	switch {
	case errors.Is(err, errPoison):
		log.Error("dropping a message that is not a tally event", "error", err, "subject", msg.Subject())
		return msg.Term()
	case err != nil:
		msg.Nak() //nolint:errcheck // if lost, the message returns after AckWait
		return err
	}
	if err := msg.Ack(); err != nil {
		log.Warn("ack", "error", err)
	}
	return nil
}

// durableConsumer creates the durable consumer, or updates it to this configuration. It
// starts at the beginning of the stream the first time and at its acked position after.
func durableConsumer(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg config) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cc := jetstream.ConsumerConfig{
		Durable:       cfg.durable,
		Description:   "adengine: users with funds",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.ackWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: 1000,
	}
	if !nc.IsConnected() {
		return nil, errors.New("not connected to NATS")
	}
	if serverAtLeast(nc.ConnectedServerVersion(), 2, 10) {
		cc.FilterSubjects = []string{
			cfg.subjectPrefix + ".balance.funded",
			cfg.subjectPrefix + ".balance.depleted",
			cfg.subjectPrefix + ".transaction.applied",
		}
	} else {
		// Before 2.10 a consumer has one filter at most and silently ignores a list; the
		// engine skips the other event types itself.
		cc.FilterSubject = cfg.subjectPrefix + ".>"
	}
	return js.CreateOrUpdateConsumer(ctx, cfg.stream, cc)
}

// serverAtLeast reports whether a NATS server version such as "2.9.10" is major.minor or
// newer.
func serverAtLeast(version string, major, minor int) bool {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return false
	}
	maj, err1 := strconv.Atoi(parts[0])
	mnr, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return false
	}
	return maj > major || maj == major && mnr >= minor
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
