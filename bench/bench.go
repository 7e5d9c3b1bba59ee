// Package bench is `tally bench`: a load generator for tally's HTTP API and an auditor of
// what the load left behind.
//
// The load phase sends a mix of deposits, withdrawals and balance reads, back to back from a
// number of workers (closed loop) or at a fixed rate (open loop, latency counted from each
// request's scheduled instant), round-robin across one or more base URLs. Every request goes
// through the Go client (package client), so bench retries as a careful client does: the uid
// is chosen before the first attempt and every retry after a network error, timeout or 5xx
// sends the same bytes, to the next base URL. Every answered write is remembered.
//
// --verify then audits: through the API, and by reading the users, transactions and outbox
// tables directly in one read-only, repeatable-read database transaction. It is an audit
// tool, so it reads tally's tables rather than going through the postgres package, and its
// scans are deliberate.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// config is what the flags say.
type config struct {
	urls          []string
	databaseURL   string
	users         int
	userIDs       []int64
	hotUsers      int
	hotShare      float64
	duration      time.Duration
	workers       int
	rate          float64
	mix           [numOps]float64 // weights of deposit, withdraw, balance, balance_at, healthz
	mixTotal      float64
	retryShare    float64
	backdateShare float64
	backdateMax   time.Duration
	initial       int64 // minor units deposited into every user before the load
	amountMax     int64 // minor units; writes carry 0.01 to this
	timeout       time.Duration
	maxAttempts   int
	retryDelay    time.Duration
	jsonFile      string
	writesFile    string
	loadWith      string
	verify        bool
	verifySample  int
	natsURL       string
	stream        string
	subjectPrefix string
	streamWait    time.Duration
}

// listFlag collects a repeatable, comma-separated flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}

// amountFlag is an amount in minor units, written "100.00".
type amountFlag struct{ cents *int64 }

func (a amountFlag) String() string {
	if a.cents == nil {
		return ""
	}
	return ledger.Amount(*a.cents).String()
}

func (a amountFlag) Set(s string) error {
	v, err := ledger.ParseAmount(s)
	if err != nil {
		return err
	}
	*a.cents = int64(v)
	return nil
}

func parseConfig(args []string, stderr io.Writer) (config, error) {
	cfg := config{initial: 10_000_00, amountMax: 100_00, retryDelay: 50 * time.Millisecond}
	flags := flag.NewFlagSet("bench", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {
		fmt.Fprint(stderr, "usage: tally bench [flags]\n\nLoad tally through its API, report latencies, and with --verify audit the result.\n\n")
		flags.PrintDefaults()
	}
	var urls, userIDs listFlag
	flags.Var(&urls, "url", "base URL (scheme://host:port) of a tally instance; repeat or comma-separate to round-robin across several (default http://127.0.0.1:8000)")
	flags.StringVar(&cfg.databaseURL, "database-url", "", "PostgreSQL URL that --verify reads tally's tables from (read-only)")
	flags.IntVar(&cfg.users, "users", 100, "users to create through the API before the load")
	flags.Var(&userIDs, "user-ids", "existing users to load instead of creating them: 1,2,10-20")
	flags.IntVar(&cfg.hotUsers, "hot-users", 0, "size of the hot set (the first users); 0 spreads the load evenly")
	flags.Float64Var(&cfg.hotShare, "hot-share", 0.9, "share of requests that go to the hot set")
	flags.DurationVar(&cfg.duration, "duration", 10*time.Second, "how long to send load")
	flags.IntVar(&cfg.workers, "workers", 16, "concurrent workers")
	flags.Float64Var(&cfg.rate, "rate", 0, "requests per second, open loop, spread over the workers; 0 sends back to back (closed loop)")
	flags.Float64Var(&cfg.mix[opDeposit], "deposit", 40, "weight of deposits in the mix")
	flags.Float64Var(&cfg.mix[opWithdraw], "withdraw", 40, "weight of withdrawals in the mix")
	flags.Float64Var(&cfg.mix[opBalance], "balance", 15, "weight of current-balance reads in the mix")
	flags.Float64Var(&cfg.mix[opBalanceAt], "balance-at", 5, "weight of balance-at-a-past-instant reads in the mix")
	flags.Float64Var(&cfg.mix[opHealthz], "healthz", 0, "weight of GET /healthz, which touches no database, in the mix: alone, it measures the HTTP layer's ceiling")
	flags.Float64Var(&cfg.retryShare, "retry-share", 0.05, "share of answered writes sent again with the same uid and body, as a duplicate retry (on top of --rate)")
	flags.Float64Var(&cfg.backdateShare, "backdate-share", 0.05, "share of writes with a timestamp in the past")
	flags.DurationVar(&cfg.backdateMax, "backdate-max", time.Minute, "how far back a back-dated write and a balance-at read may go")
	flags.Var(amountFlag{&cfg.initial}, "initial", "deposit made into every user before the load, dated before any back-dated write")
	flags.Var(amountFlag{&cfg.amountMax}, "amount-max", "largest amount of a write; amounts are uniform from 0.01")
	flags.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "timeout of one attempt")
	flags.IntVar(&cfg.maxAttempts, "attempts", 5, "attempts per request, the first included")
	flags.StringVar(&cfg.jsonFile, "json", "", "write the results, with a per-second time series, to this JSON file")
	flags.StringVar(&cfg.loadWith, "load-with", "", "a shell command that sends the load instead of bench's own workers, such as wrk with bench/wrk-writes.lua; it gets $TALLY_URL, $TALLY_USERS (a file of user ids) and $TALLY_WRITES (where to log its writes), and its writes are reported and audited")
	flags.StringVar(&cfg.writesFile, "writes", "", "write every write sent (uid, user, type, amount, timestamp, first answer) to this JSON-lines file")
	flags.BoolVar(&cfg.verify, "verify", false, "after the load, audit the API and the database (needs --database-url)")
	flags.StringVar(&cfg.natsURL, "nats-url", "", "with --verify: also check that every applied transaction reached this NATS server's stream exactly once")
	flags.StringVar(&cfg.stream, "stream", "TALLY", "the JetStream stream --nats-url reads")
	flags.StringVar(&cfg.subjectPrefix, "subject-prefix", "tally", "the stream's subject prefix")
	flags.DurationVar(&cfg.streamWait, "stream-wait", time.Minute, "how long --nats-url waits for the relay to deliver every applied transaction")
	flags.IntVar(&cfg.verifySample, "verify-sample", 100, "how many refused and applied uids --verify sends again, and users whose past balance it reads")
	if err := flags.Parse(args); err != nil {
		return cfg, err
	}
	if flags.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", flags.Arg(0))
	}
	cfg.urls = urls
	if len(cfg.urls) == 0 {
		cfg.urls = []string{"http://127.0.0.1:8000"}
	}
	for i, u := range cfg.urls {
		cfg.urls[i] = strings.TrimRight(u, "/")
		if parsed, err := url.Parse(cfg.urls[i]); err != nil || parsed.Scheme == "" || parsed.Host == "" || parsed.Path != "" {
			return cfg, fmt.Errorf("--url %q is not a base URL such as http://127.0.0.1:8000", u)
		}
	}
	ids, err := parseUserIDs(userIDs)
	if err != nil {
		return cfg, err
	}
	cfg.userIDs = ids
	for _, w := range cfg.mix {
		if w < 0 {
			return cfg, errors.New("mix weights must not be negative")
		}
		cfg.mixTotal += w
	}
	switch {
	case cfg.mixTotal <= 0:
		return cfg, errors.New("the mix is empty: give --deposit, --withdraw, --balance, --balance-at or --healthz a positive weight")
	case len(cfg.userIDs) == 0 && cfg.users < 1:
		return cfg, errors.New("--users must be at least 1")
	case cfg.workers < 1:
		return cfg, errors.New("--workers must be at least 1")
	case cfg.rate < 0:
		return cfg, errors.New("--rate must not be negative")
	case cfg.duration <= 0:
		return cfg, errors.New("--duration must be positive")
	case cfg.hotUsers < 0, cfg.hotShare < 0 || cfg.hotShare > 1:
		return cfg, errors.New("--hot-users must not be negative and --hot-share must lie in [0, 1]")
	case cfg.retryShare < 0 || cfg.retryShare > 1, cfg.backdateShare < 0 || cfg.backdateShare > 1:
		return cfg, errors.New("--retry-share and --backdate-share must lie in [0, 1]")
	case cfg.backdateMax <= 0:
		return cfg, errors.New("--backdate-max must be positive")
	case cfg.maxAttempts < 1:
		return cfg, errors.New("--attempts must be at least 1")
	case cfg.timeout <= 0:
		return cfg, errors.New("--timeout must be positive")
	case cfg.verify && cfg.databaseURL == "":
		return cfg, errors.New("--verify needs --database-url")
	}
	return cfg, nil
}

// parseUserIDs reads "1,2,10-20".
func parseUserIDs(parts []string) ([]int64, error) {
	var ids []int64
	for _, p := range parts {
		first, last, isRange := strings.Cut(p, "-")
		lo, err1 := strconv.ParseInt(first, 10, 64)
		hi, err2 := lo, error(nil)
		if isRange {
			hi, err2 = strconv.ParseInt(last, 10, 64)
		}
		if err1 != nil || err2 != nil || lo < 1 || hi < lo || hi-lo > 10_000_000 {
			return nil, fmt.Errorf("--user-ids: %q is not a user id or a range such as 10-20", p)
		}
		for id := lo; id <= hi; id++ {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// bench is one run.
type bench struct {
	cfg          config
	api          *client.Client
	transport    *http.Transport
	http         *http.Client // the API's transport, for requests the client package does not make
	stdout       io.Writer
	stderr       io.Writer
	users        []int64
	usersCreated bool // the users are this run's own, so every row of theirs came from it
	rec          recorder
}

// Run is `tally bench`: it loads the service, prints the results, and with --verify audits
// them. It returns an error when the audit, or a replayed answer during the load, finds a
// violation of tally's guarantees.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	b := newBench(cfg, stdout, stderr)
	defer b.close()
	res, err := b.run(ctx)
	if err != nil {
		return err
	}
	return res.err()
}

func newBench(cfg config, stdout, stderr io.Writer) *bench {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = cfg.workers * len(cfg.urls)
	transport.MaxIdleConnsPerHost = cfg.workers
	transport.DisableCompression = true
	rr := &roundRobin{base: transport}
	for _, u := range cfg.urls {
		host, _ := url.Parse(u) // parseConfig checked it
		rr.hosts = append(rr.hosts, host)
	}
	httpClient := &http.Client{Transport: rr, Timeout: cfg.timeout}
	api := client.New(cfg.urls[0], client.WithHTTPClient(httpClient),
		client.WithRetryPolicy(client.RetryPolicy{MaxAttempts: cfg.maxAttempts, BaseDelay: cfg.retryDelay, MaxDelay: time.Second}),
		client.WithAttemptTimeout(cfg.timeout))
	return &bench{cfg: cfg, api: api, transport: transport, http: httpClient, stdout: stdout, stderr: stderr}
}

func (b *bench) close() { b.transport.CloseIdleConnections() }

// run is one bench: setup, load, report, audit. The error is for a run that could not be
// made; violations are in the results.
func (b *bench) run(ctx context.Context) (*Results, error) {
	res, writes, err := b.load(ctx)
	if err != nil {
		return nil, err
	}
	if b.cfg.verify {
		audit, err := b.audit(ctx, writes)
		if err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		res.Audit = audit
		audit.print(b.stdout)
	}
	if b.cfg.jsonFile != "" {
		out, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(b.cfg.jsonFile, append(out, '\n'), 0o644); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// load creates the users, sends the load, and prints what it measured.
func (b *bench) load(ctx context.Context) (*Results, []writeRecord, error) {
	setupWrites, err := b.setup(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("setup: %w", err)
	}
	var (
		elapsed    time.Duration
		writes     []writeRecord
		violations []Violation
		external   *externalLog
	)
	if b.cfg.loadWith != "" {
		fmt.Fprintf(b.stderr, "loading %d users with: %s\n", len(b.users), b.cfg.loadWith)
		if elapsed, external, err = b.runExternal(ctx); err != nil {
			return nil, nil, err
		}
		writes, violations = external.writes, external.violations
	} else {
		fmt.Fprintf(b.stderr, "loading %d users through %d URL(s) for %s with %s\n", len(b.users), len(b.cfg.urls), b.cfg.duration, b.shape())
		elapsed, writes, violations = b.runWorkers(ctx)
	}
	writes = append(setupWrites, writes...)
	res := b.results(elapsed, writes, violations)
	if external != nil {
		// The command reports its own latencies; its rate is the final answers it logged.
		res.Requests, res.Errors = external.answered+external.failed, external.failed
		res.Throughput = float64(external.answered) / elapsed.Seconds()
	}
	res.print(b.stdout)
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("interrupted: %w", err)
	}
	if external != nil {
		if err := b.settle(ctx, writes); err != nil {
			return nil, nil, fmt.Errorf("settle: %w", err)
		}
	}
	if b.cfg.writesFile != "" {
		if err := writeLines(b.cfg.writesFile, writes); err != nil {
			return nil, nil, err
		}
	}
	return res, writes, nil
}

// settle sends every write without a final answer again, with its uid, as a client that
// retries would, and records the answer. A --load-with command stops with writes in flight,
// and tally finishes a batch it started whatever its client does: such a write may commit
// after the command ended, while the audit compares its snapshot with the API. Sent again, a
// write that took effect gets its first answer back, and one that did not takes effect now or
// is refused; either way the audit then holds it to that answer.
func (b *bench) settle(ctx context.Context, writes []writeRecord) error {
	var open []int
	for i, w := range writes {
		if !w.acknowledged() {
			open = append(open, i)
		}
	}
	return b.parallel(ctx, len(open), func(i int) error {
		w := &writes[open[i]]
		// Without a final answer this time either, the write stays unknown, as before.
		res, _, _ := b.transact(ctx, *w)
		if res.Status == http.StatusOK || res.Status == http.StatusPaymentRequired {
			w.Status, w.Body = res.Status, res.Body
		}
		return nil
	})
}

func (b *bench) shape() string {
	s := fmt.Sprintf("%d workers, closed loop", b.cfg.workers)
	if b.cfg.rate > 0 {
		s = fmt.Sprintf("%d workers, open loop at %.0f req/s", b.cfg.workers, b.cfg.rate)
	}
	if b.cfg.hotUsers > 0 {
		s += fmt.Sprintf(", %.0f%% of requests to %d hot users", b.cfg.hotShare*100, min(b.cfg.hotUsers, len(b.users)))
	}
	return s
}

// setup creates the users (or takes the given ones) and gives each the initial deposit, dated
// before any back-dated write so that withdrawals mostly succeed whenever they are dated.
func (b *bench) setup(ctx context.Context) ([]writeRecord, error) {
	started := time.Now()
	if len(b.cfg.userIDs) > 0 {
		b.users = b.cfg.userIDs
	} else {
		b.users = make([]int64, b.cfg.users)
		b.usersCreated = true
		prefix := "bench-" + strconv.FormatInt(started.Unix(), 36)
		err := b.parallel(ctx, len(b.users), func(i int) error {
			u, err := b.api.CreateUser(ctx, fmt.Sprintf("%s-%d", prefix, i))
			id := u.ID
			b.users[i] = id
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	if b.cfg.initial == 0 {
		return nil, nil
	}
	at := started.Add(-b.cfg.backdateMax - time.Second).UTC().Truncate(time.Microsecond)
	writes := make([]writeRecord, len(b.users))
	err := b.parallel(ctx, len(b.users), func(i int) error {
		w := writeRecord{UID: client.NewUID(), UserID: b.users[i], Type: string(client.Deposit), Amount: b.cfg.initial, Timestamp: &at}
		res, _, err := b.transact(ctx, w)
		w.Status, w.Body = res.Status, res.Body
		writes[i] = w
		if w.Status != http.StatusOK {
			return fmt.Errorf("initial deposit for user %d: %d %s: %w", w.UserID, w.Status, strings.TrimSpace(string(w.Body)), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(b.stderr, "setup: %d users ready in %s\n", len(b.users), time.Since(started).Round(time.Millisecond))
	return writes, nil
}

// parallel runs f(0..n-1) on the configured number of workers and returns the first error.
func (b *bench) parallel(ctx context.Context, n int, f func(i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(b.cfg.workers, n) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				if err := f(i); err != nil {
					cancel(err)
				}
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// Results is everything a run measured, as written by --json.
type Results struct {
	Started    time.Time     `json:"started"`
	URLs       []string      `json:"urls"`
	Users      int           `json:"users"`
	Workers    int           `json:"workers"`
	Rate       float64       `json:"rate,omitempty"` // requests per second asked for; 0: closed loop
	ElapsedS   float64       `json:"elapsed_s"`
	Requests   int64         `json:"requests"`
	Errors     int64         `json:"errors"`
	Throughput float64       `json:"throughput"` // requests per second
	Ops        []OpResult    `json:"ops"`
	Writes     WriteCounts   `json:"writes"`
	Series     []secondPoint `json:"series"`
	Violations []Violation   `json:"violations"` // found during the load: replays that differ
	Audit      *AuditResult  `json:"audit,omitempty"`
}

// OpResult is one kind of request's counts and latencies.
type OpResult struct {
	Name       string           `json:"name"`
	Count      int64            `json:"count"`
	Throughput float64          `json:"throughput"`
	Errors     int64            `json:"errors"`
	Retries    int64            `json:"retries"` // attempts beyond the first
	Statuses   map[string]int64 `json:"statuses"`
	P50Ms      float64          `json:"p50_ms"`
	P90Ms      float64          `json:"p90_ms"`
	P99Ms      float64          `json:"p99_ms"`
	P999Ms     float64          `json:"p999_ms"`
	MaxMs      float64          `json:"max_ms"`
	MeanMs     float64          `json:"mean_ms"`
}

// WriteCounts sums up the writes, the setup's initial deposits included.
type WriteCounts struct {
	Sent    int `json:"sent"`
	Applied int `json:"applied"` // answered 200
	Refused int `json:"refused"` // answered 402
	Unknown int `json:"unknown"` // no final answer: the outcome is unknown
}

func (b *bench) results(elapsed time.Duration, writes []writeRecord, violations []Violation) *Results {
	res := &Results{
		Started: time.Now().Add(-elapsed), URLs: b.cfg.urls, Users: len(b.users), Workers: b.cfg.workers,
		Rate: b.cfg.rate, ElapsedS: elapsed.Seconds(), Series: b.rec.series, Violations: violations,
	}
	var all Histogram
	for i := range numOps {
		t := &b.rec.ops[i]
		if t.latency.Count() == 0 {
			continue
		}
		all.Merge(&t.latency)
		o := OpResult{
			Name: opNames[i], Count: int64(t.latency.Count()), Errors: t.errors, Retries: t.retries,
			Throughput: float64(t.latency.Count()) / elapsed.Seconds(), Statuses: map[string]int64{},
			P50Ms: ms(t.latency.Percentile(50)), P90Ms: ms(t.latency.Percentile(90)),
			P99Ms: ms(t.latency.Percentile(99)), P999Ms: ms(t.latency.Percentile(99.9)),
			MaxMs: ms(t.latency.Max()), MeanMs: ms(t.latency.Mean()),
		}
		for status, n := range t.statuses {
			name := strconv.Itoa(status)
			if status == 0 {
				name = "no_answer"
			}
			o.Statuses[name] = n
		}
		res.Ops = append(res.Ops, o)
		res.Requests += o.Count
		res.Errors += o.Errors
	}
	if all.Count() > 0 {
		res.Ops = append(res.Ops, OpResult{
			Name: "all", Count: res.Requests, Errors: res.Errors, Throughput: float64(res.Requests) / elapsed.Seconds(),
			P50Ms: ms(all.Percentile(50)), P90Ms: ms(all.Percentile(90)), P99Ms: ms(all.Percentile(99)),
			P999Ms: ms(all.Percentile(99.9)), MaxMs: ms(all.Max()), MeanMs: ms(all.Mean()),
		})
	}
	res.Throughput = float64(res.Requests) / elapsed.Seconds()
	for _, w := range writes {
		res.Writes.Sent++
		switch w.Status {
		case http.StatusOK:
			res.Writes.Applied++
		case http.StatusPaymentRequired:
			res.Writes.Refused++
		default:
			res.Writes.Unknown++
		}
	}
	return res
}

func (r *Results) print(w io.Writer) {
	fmt.Fprintf(w, "\n%d requests in %.1fs: %.1f req/s, %d errors\n", r.Requests, r.ElapsedS, r.Throughput, r.Errors)
	fmt.Fprintf(w, "writes: %d sent, %d applied, %d refused (402), %d without a final answer\n\n",
		r.Writes.Sent, r.Writes.Applied, r.Writes.Refused, r.Writes.Unknown)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "op\tcount\treq/s\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tmax ms\tretries\t")
	for _, o := range r.Ops {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t\n",
			o.Name, o.Count, o.Throughput, o.P50Ms, o.P90Ms, o.P99Ms, o.P999Ms, o.MaxMs, o.Retries)
	}
	tw.Flush() //nolint:errcheck // terminal output
	fmt.Fprintln(w, "\nstatuses:")
	for _, o := range r.Ops {
		if o.Name == "all" {
			continue
		}
		keys := make([]string, 0, len(o.Statuses))
		for k := range o.Statuses {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s=%d", k, o.Statuses[k])
		}
		fmt.Fprintf(w, "  %-10s %s\n", o.Name, strings.Join(parts, " "))
	}
	for _, v := range r.Violations {
		fmt.Fprintln(w, "VIOLATION", v)
	}
}

// err is the run's verdict: the violations found during the load and by the audit.
func (r *Results) err() error {
	all := slices.Clone(r.Violations)
	if r.Audit != nil {
		all = append(all, r.Audit.Violations...)
	}
	if len(all) == 0 {
		return nil
	}
	return fmt.Errorf("%d violation(s), the first: %s", len(all), all[0])
}

// Violation is a broken guarantee, named by the uid (or user) it was found on.
type Violation struct {
	Check  string `json:"check"`
	UID    string `json:"uid,omitempty"`
	UserID int64  `json:"user_id,omitempty"`
	Detail string `json:"detail"`
}

func (v Violation) String() string {
	s := v.Check + ":"
	if v.UID != "" {
		s += " uid " + v.UID
	}
	if v.UserID != 0 {
		s += fmt.Sprintf(" (user %d)", v.UserID)
	}
	return s + ": " + v.Detail
}

func writeLines(path string, writes []writeRecord) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if closeErr := f.Close(); err == nil {
			err = closeErr
		}
	}()
	buf := bufio.NewWriter(f)
	enc := json.NewEncoder(buf)
	for _, w := range writes {
		if err := enc.Encode(w); err != nil {
			return err
		}
	}
	return buf.Flush()
}
