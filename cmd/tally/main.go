// Command tally is the ledger service: serve, migrate, dev and demo.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tally-ledger/tally/bench"
	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/postgres"
	"github.com/tally-ledger/tally/relay"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "tally:", err)
		os.Exit(1)
	}
}

const usage = `usage: tally <command>

commands:
  serve     run the HTTP API (DATABASE_URL, READ_DATABASE_URL, HOST, PORT); --relay also publishes events (NATS_URL)
  relay     publish the outbox to NATS JetStream (DATABASE_URL, NATS_URL, NATS_CREDS or NATS_USER and
            NATS_PASSWORD, NATS_STREAM, NATS_STREAM_REPLICAS, NATS_SUBJECT_PREFIX; see docs/operations.md)
  migrate   apply database migrations (DATABASE_URL)
  dev       run the API with a private PostgreSQL in .data/ and demo data; no setup needed;
            --citus: on a local Citus cluster (a coordinator and two workers) in .data/citus/
  demo      load the demo data (DATABASE_URL); --sql prints it as SQL instead (sql_data/demo.sql)
  bench     load the API and report latencies; --verify audits the result (tally bench -h)
`

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	log := httpapi.NewLogger(stdout, cfg.logLevel)
	if args[0] == "serve" || args[0] == "relay" {
		stopTracing, err := setupTracing(ctx, getenv, "tally-"+args[0])
		if err != nil {
			return fmt.Errorf("tracing: %w", err)
		}
		defer stopTracing(context.WithoutCancel(ctx)) //nolint:errcheck // best effort at exit
	}
	switch args[0] {
	case "serve":
		flags := flag.NewFlagSet("serve", flag.ContinueOnError)
		flags.SetOutput(stderr)
		flags.BoolVar(&cfg.relay, "relay", cfg.relay, "also run the outbox relay in this process (NATS_URL)")
		if err := flags.Parse(args[1:]); err != nil {
			return err
		}
		if cfg.databaseURL == "" {
			return errors.New("DATABASE_URL is not set")
		}
		return serve(ctx, cfg, log, nil)
	case "relay":
		if cfg.databaseURL == "" {
			return errors.New("DATABASE_URL is not set")
		}
		return runRelay(ctx, cfg, log)
	case "migrate":
		if cfg.databaseURL == "" {
			return errors.New("DATABASE_URL is not set")
		}
		applied, err := postgres.Migrate(ctx, cfg.databaseURL)
		if err != nil {
			return err
		}
		log.Info("migrations applied", "applied", applied, "schema_version", postgres.SchemaVersion())
		return nil
	case "dev":
		flags := flag.NewFlagSet("dev", flag.ContinueOnError)
		flags.SetOutput(stderr)
		citus := flags.Bool("citus", false, "start a local Citus cluster (a coordinator and two workers) instead of one PostgreSQL")
		if err := flags.Parse(args[1:]); err != nil {
			return err
		}
		if *citus {
			return devCitus(ctx, cfg, log, stderr)
		}
		return dev(ctx, cfg, log, stderr)
	case "demo":
		return runDemo(ctx, cfg, args[1:], log, stdout, stderr)
	case "bench":
		return bench.Run(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

type config struct {
	databaseURL     string
	readDatabaseURL string // optional replica for history, dated balances and the feed
	host            string // API listen address; empty: all interfaces
	port            string
	maxConnections  int // open connections the API serves at once
	writeBatchMax   int // most transaction requests recorded in one database transaction; 1: no batching
	writeWorkers    int // batches recorded at once
	migrateOnStart  bool
	shutdownDelay   time.Duration
	shutdownTimeout time.Duration
	logLevel        slog.Level
	devDataDir      string     // where dev keeps its private PostgreSQL
	nats            relay.NATS // NATS_URL (a comma-separated list), NATS_CREDS, NATS_USER, NATS_PASSWORD
	natsURLSet      bool       // NATS_URL was given; dev starts its own NATS otherwise
	eventSource     string     // empty: derived from the database (postgres.DatabaseEventSource)
	natsStream      string
	subjectPrefix   string
	relay           bool // run the relay inside serve
	relayRetention  time.Duration
	relayLeaseTTL   time.Duration
	relaySlices     int // RELAY_SLICES: on Citus, how many slices the relays divide
	streamReplicas  int
	streamMaxAge    time.Duration
	streamMaxBytes  int64
	adminPort       string
	tracing         bool // OTEL_EXPORTER_OTLP_ENDPOINT is set
	adminPortSet    bool // ADMIN_PORT was given; dev picks a free port otherwise
	tokens          []httpapi.Token
	gcPercent       int  // serve's GC percent; 0 leaves GOGC's setting
	memoryLimit     bool // lower serve's soft memory limit to its own (GOGC unset, GOMEMLIMIT not off)
}

// serveGCPercent is serve's garbage collection target when GOGC is not set: collect when the
// heap has grown to five times what the last collection kept, not twice. tally serve keeps
// little alive (a few MB) and allocates per request, so at Go's default of 100 the collector
// took a tenth of its processor time under load; at 400 writes/s rose about a tenth
// (docs/performance.md, "Garbage collection"). serveMemoryLimit keeps that from costing
// memory under a flood.
const serveGCPercent = 400

// serveMemoryLimit is serve's own soft memory limit (serveSoftLimit): twice what
// maxConnections clients can make it hold (a request line and headers, a body and the
// connection's buffers each, docs/operations.md), as Go's default GOGC=100 would allow, plus
// room for the rest of the process. Under normal load the heap stays far below it; under a
// flood of slow requests the collector works harder instead of the heap growing fivefold.
func serveMemoryLimit(maxConnections int) int64 {
	perConnection := int64(httpapi.MaxHeaderBytes + 4<<10 + httpapi.MaxBodyBytes + 8<<10)
	return 2*int64(maxConnections)*perConnection + 64<<20
}

// serveSoftLimit is the soft memory limit serve runs under, given the runtime's current one
// (GOMEMLIMIT, math.MaxInt64 when unset): the smaller of the two. In Kubernetes GOMEMLIMIT is
// the container's whole limit, which at GOGC 400 a flood of slow requests would fill; serve's
// own limit keeps the heap where GOGC=100 would, and a smaller GOMEMLIMIT still wins.
func serveSoftLimit(current int64, maxConnections int) int64 {
	return min(current, serveMemoryLimit(maxConnections))
}

func loadConfig(getenv func(string) string) (config, error) {
	cfg := config{
		databaseURL:     getenv("DATABASE_URL"),
		readDatabaseURL: getenv("READ_DATABASE_URL"),
		host:            getenv("HOST"),
		port:            "8000",
		maxConnections:  httpapi.DefaultMaxConnections,
		writeBatchMax:   postgres.DefaultWriteBatchMax,
		writeWorkers:    postgres.DefaultWriteWorkers,
		migrateOnStart:  true,
		shutdownTimeout: 20 * time.Second,
		devDataDir:      cmp.Or(getenv("DEV_DATA_DIR"), ".data"),
		nats: relay.NATS{URLs: cmp.Or(getenv("NATS_URL"), "nats://127.0.0.1:4222"),
			CredsFile: getenv("NATS_CREDS"), User: getenv("NATS_USER"), Password: getenv("NATS_PASSWORD")},
		natsURLSet:     getenv("NATS_URL") != "",
		tracing:        tracingOn(getenv),
		eventSource:    getenv("EVENT_SOURCE"),
		natsStream:     cmp.Or(getenv("NATS_STREAM"), relay.DefaultStream),
		subjectPrefix:  cmp.Or(getenv("NATS_SUBJECT_PREFIX"), relay.DefaultSubjectPrefix),
		relayRetention: 7 * 24 * time.Hour,
	}
	if getenv("GOGC") == "" {
		cfg.gcPercent = serveGCPercent
		cfg.memoryLimit = getenv("GOMEMLIMIT") != "off"
	}
	if p := getenv("PORT"); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
			return cfg, fmt.Errorf("PORT %q is not a port number", p)
		}
		cfg.port = p
	}
	for _, c := range []struct {
		name string
		dest *int
	}{{"MAX_CONNECTIONS", &cfg.maxConnections}, {"WRITE_BATCH_MAX", &cfg.writeBatchMax}, {"WRITE_WORKERS", &cfg.writeWorkers}} {
		if v := getenv(c.name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return cfg, fmt.Errorf("%s %q is not a positive integer", c.name, v)
			}
			*c.dest = n
		}
	}
	cfg.adminPort, cfg.adminPortSet = cmp.Or(getenv("ADMIN_PORT"), "9090"), getenv("ADMIN_PORT") != ""
	if n, err := strconv.Atoi(cfg.adminPort); err != nil || n < 0 || n > 65535 {
		return cfg, fmt.Errorf("ADMIN_PORT %q is not a port number", cfg.adminPort)
	}
	if v := getenv("TALLY_TOKENS"); v != "" {
		tokens, err := httpapi.ParseTokens(v)
		if err != nil {
			return cfg, fmt.Errorf("TALLY_TOKENS: %w", err)
		}
		cfg.tokens = tokens
	}
	// A Secret whose TALLY_TOKENS key holds an empty value would otherwise serve /v1 to
	// anyone; a deployment that means to require tokens says so.
	if v := getenv("TALLY_REQUIRE_TOKENS"); v != "" {
		required, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, fmt.Errorf("TALLY_REQUIRE_TOKENS %q is not true or false", v)
		}
		if required && len(cfg.tokens) == 0 {
			return cfg, errors.New("TALLY_REQUIRE_TOKENS is set and TALLY_TOKENS holds no token: refusing to serve /v1 without access control")
		}
	}
	if v := getenv("MIGRATE_ON_START"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, fmt.Errorf("MIGRATE_ON_START %q is not true or false", v)
		}
		cfg.migrateOnStart = b
	}
	for _, d := range []struct {
		name string
		dest *time.Duration
	}{{"SHUTDOWN_DELAY", &cfg.shutdownDelay}, {"SHUTDOWN_TIMEOUT", &cfg.shutdownTimeout}, {"RELAY_RETENTION", &cfg.relayRetention},
		{"RELAY_LEASE_TTL", &cfg.relayLeaseTTL}, {"NATS_STREAM_MAX_AGE", &cfg.streamMaxAge}} {
		if v := getenv(d.name); v != "" {
			parsed, err := time.ParseDuration(v)
			if err != nil || parsed < 0 {
				return cfg, fmt.Errorf("%s %q is not a duration such as 5s", d.name, v)
			}
			*d.dest = parsed
		}
	}
	if err := loadNATSConfig(&cfg, getenv); err != nil {
		return cfg, err
	}
	// NATS would refuse these only at the first publish, after the API is already up.
	if strings.ContainsAny(cfg.natsStream, " \t\r\n.*>/\\") {
		return cfg, fmt.Errorf("NATS_STREAM %q is not a stream name: no spaces, '.', '*', '>', '/' or '\\'", cfg.natsStream)
	}
	if strings.ContainsAny(cfg.subjectPrefix, " \t\r\n*>") || slices.Contains(strings.Split(cfg.subjectPrefix, "."), "") {
		return cfg, fmt.Errorf("NATS_SUBJECT_PREFIX %q is not a subject such as tally or acme.tally", cfg.subjectPrefix)
	}
	if v := getenv("LOG_LEVEL"); v != "" {
		if err := cfg.logLevel.UnmarshalText([]byte(v)); err != nil {
			return cfg, fmt.Errorf("LOG_LEVEL %q is not debug, info, warn or error", v)
		}
	}
	return cfg, nil
}

// loadNATSConfig checks the NATS URLs and credentials and reads the stream's settings.
func loadNATSConfig(cfg *config, getenv func(string) string) error {
	for u := range strings.SplitSeq(cfg.nats.URLs, ",") {
		parsed, err := url.Parse(strings.TrimSpace(u))
		if err != nil || parsed.Host == "" {
			return fmt.Errorf("NATS_URL %q is not a list of URLs such as nats://nats-0:4222,nats://nats-1:4222", relay.RedactURLs(cfg.nats.URLs))
		}
	}
	if cfg.nats.CredsFile != "" && cfg.nats.User != "" {
		return errors.New("NATS_CREDS and NATS_USER are both set: give one kind of NATS credentials")
	}
	if (cfg.nats.User == "") != (cfg.nats.Password == "") {
		return errors.New("NATS_USER and NATS_PASSWORD go together")
	}
	if v := getenv("NATS_STREAM_REPLICAS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 5 {
			return fmt.Errorf("NATS_STREAM_REPLICAS %q is not a replica count from 1 to 5", v)
		}
		cfg.streamReplicas = n
	}
	if v := getenv("RELAY_SLICES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > relay.MaxSlices {
			return fmt.Errorf("RELAY_SLICES %q is not a number of slices from 1 to %d", v, relay.MaxSlices)
		}
		cfg.relaySlices = n
	}
	if v := getenv("NATS_STREAM_MAX_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return fmt.Errorf("NATS_STREAM_MAX_BYTES %q is not a positive number of bytes", v)
		}
		cfg.streamMaxBytes = n
	}
	return nil
}

// serve runs the API until ctx ends, then drains: readiness fails first, in-flight requests
// finish, the pool closes last. If listening is not nil it receives the bound address.
func serve(ctx context.Context, cfg config, log *slog.Logger, listening chan<- string) error {
	if cfg.gcPercent != 0 {
		debug.SetGCPercent(cfg.gcPercent)
	}
	if cfg.memoryLimit {
		limit := serveSoftLimit(debug.SetMemoryLimit(-1), cfg.maxConnections)
		debug.SetMemoryLimit(limit)
		log.Info("garbage collection", "gogc", cfg.gcPercent, "memory_limit_bytes", limit)
	}
	if cfg.migrateOnStart {
		applied, err := postgres.Migrate(ctx, cfg.databaseURL)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if len(applied) > 0 {
			log.Info("migrations applied", "applied", applied)
		}
	}
	db, err := openDB(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	if distributed, err := db.Distributed(ctx); err == nil && distributed {
		log.Info("the database is distributed by Citus: write batching is off, each request is recorded alone")
	}
	reg := newRegistry()
	reg.MustRegister(db.PoolCollector(), db.WriteCollector())
	var store httpapi.Store = db
	if cfg.readDatabaseURL != "" {
		replica, err := openReplica(ctx, cfg, db.EventSource())
		if err != nil {
			return err
		}
		defer replica.Close()
		reg.MustRegister(replica.ReplicaCollector())
		store = replicaReads{DB: db, replica: replica}
	}
	if cfg.relay {
		r, nc, err := newRelay(cfg, db, log)
		if err != nil {
			return err
		}
		defer nc.Close()
		reg.MustRegister(r.Collector())
		relayCtx, stopRelay := context.WithCancel(context.WithoutCancel(ctx))
		relayDone := make(chan struct{})
		go func() {
			defer close(relayDone)
			if err := r.Run(relayCtx); err != nil {
				log.Error("relay stopped", "error", err)
			}
		}()
		// The relay stops after the server has drained, before the pool closes.
		defer func() { stopRelay(); <-relayDone }()
	}

	health := &httpapi.Health{}
	opts := []httpapi.Option{httpapi.WithMetrics(httpapi.NewMetrics(reg))}
	if len(cfg.tokens) > 0 {
		opts = append(opts, httpapi.WithTokens(cfg.tokens))
	}
	_, stopAdmin, err := startAdmin(ctx, cfg.adminPort, log, reg, httpapi.ReadyHandler(health, log, db.Ready))
	if err != nil {
		return err
	}
	defer stopAdmin()
	srv := &http.Server{
		Handler:           traced(cfg.tracing, httpapi.NewServer(store, log, health, opts...)),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    httpapi.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", net.JoinHostPort(cfg.host, cfg.port))
	if err != nil {
		return err
	}
	log.Info("listening", "addr", ln.Addr().String(), "docs", "/api/docs")
	if listening != nil {
		listening <- ln.Addr().String()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(httpapi.Listener(ln, cfg.maxConnections)) }()

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	health.ShutDown()
	time.Sleep(cfg.shutdownDelay)
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

func openDB(ctx context.Context, cfg config) (*postgres.DB, error) {
	opts := []postgres.Option{postgres.WithWriteBatching(cfg.writeBatchMax, cfg.writeWorkers)}
	if cfg.tracing {
		opts = append(opts, postgres.WithTracing())
	}
	db, err := postgres.Open(ctx, cfg.databaseURL, opts...)
	if err != nil {
		return nil, err
	}
	source := cfg.eventSource
	if source == "" {
		if source, err = db.DatabaseEventSource(ctx); err != nil {
			db.Close()
			return nil, err
		}
	}
	db.SetEventSource(source)
	return db, nil
}

// openReplica opens READ_DATABASE_URL's pool. It only reads, so it takes the primary's event
// source rather than asking the replica, which may be unreachable at start: the API starts
// anyway and reads from the primary until it answers.
func openReplica(ctx context.Context, cfg config, source string) (*postgres.DB, error) {
	opts := []postgres.Option{postgres.WithWriteBatching(1, 0)} // it only reads
	if cfg.tracing {
		opts = append(opts, postgres.WithTracing())
	}
	replica, err := postgres.Open(ctx, cfg.readDatabaseURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("READ_DATABASE_URL: %w", err)
	}
	replica.SetEventSource(source)
	return replica, nil
}

// runRelay is the relay command: it publishes the outbox until ctx ends. Several may run;
// one is active and the others stand by.
func runRelay(ctx context.Context, cfg config, log *slog.Logger) error {
	db, err := openDB(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	r, nc, err := newRelay(cfg, db, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	reg := newRegistry()
	reg.MustRegister(db.PoolCollector(), r.Collector())
	// The relay serves no API, so it is ready while it reaches the database and NATS.
	_, stopAdmin, err := startAdmin(ctx, cfg.adminPort, log, reg, httpapi.ReadyHandler(&httpapi.Health{}, log, func(ctx context.Context) error {
		if err := db.Pool().Ping(ctx); err != nil {
			return err
		}
		if err := r.NATSConnected(); err != nil {
			return &httpapi.NotReady{Status: "NATS not connected", Err: err}
		}
		return nil
	}))
	if err != nil {
		return err
	}
	defer stopAdmin()
	return r.Run(ctx)
}

func newRelay(cfg config, db *postgres.DB, log *slog.Logger) (*relay.Relay, *nats.Conn, error) {
	log = log.With("component", "relay")
	nc, err := relay.Connect(cfg.nats, log)
	if err != nil {
		return nil, nil, err
	}
	r, err := relay.New(db, nc, log, relay.Config{Retention: cfg.relayRetention, Stream: cfg.natsStream, SubjectPrefix: cfg.subjectPrefix,
		LeaseTTL: cfg.relayLeaseTTL, Slices: cfg.relaySlices, Replicas: cfg.streamReplicas, MaxAge: cfg.streamMaxAge, MaxBytes: cfg.streamMaxBytes})
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	log.Info("relay started", "nats", relay.RedactURLs(cfg.nats.URLs), "stream", cfg.natsStream, "subjects", cfg.subjectPrefix+".>")
	return r, nc, nil
}
