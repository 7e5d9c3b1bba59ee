// Command failover is the PostgreSQL failover fault run of `make chaos`: a private primary and
// a streaming standby (synchronous unless -async), two `tally serve` processes and a relay on
// a multi-host DATABASE_URL, load from `tally bench` with its audit, and, part way through,
// SIGKILL of the primary and promotion of the standby as a failover manager does it. It
// prints one line of results. With synchronous replication it exits 1 when the audit or the
// load found a violation; with -async, losses are what the run measures, not a failure.
//
//	go run ./bench/failover -tally bin/tally -out bin/chaos/failover-sync
//	go run ./bench/failover -tally bin/tally -out bin/chaos/failover-async -async
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tally-ledger/tally/bench"
	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/postgres"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

type options struct {
	tally     string
	out       string
	async     bool
	duration  time.Duration
	killAfter time.Duration
	workers   int
}

func run(ctx context.Context, args []string) error {
	var o options
	flags := flag.NewFlagSet("failover", flag.ContinueOnError)
	flags.StringVar(&o.tally, "tally", "bin/tally", "the tally binary")
	flags.StringVar(&o.out, "out", "bin/chaos/failover", "directory for the servers, their logs and the results (emptied first)")
	flags.BoolVar(&o.async, "async", false, "asynchronous replication instead of synchronous")
	flags.DurationVar(&o.duration, "duration", 40*time.Second, "how long the load runs")
	flags.DurationVar(&o.killAfter, "kill-after", 15*time.Second, "when, after the load starts, the primary is SIGKILLed")
	flags.IntVar(&o.workers, "workers", 16, "concurrent workers of the load")
	if err := flags.Parse(args); err != nil {
		return err
	}
	tally, err := filepath.Abs(o.tally)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(o.out); err != nil {
		return err
	}
	// PostgreSQL runs as user postgres when this runs as root: every directory on the way
	// must be open to it.
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(o.out, "failover.log"))
	if err != nil {
		return err
	}
	defer logFile.Close() //nolint:errcheck // the log is a convenience
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logFile, os.Stderr), nil))

	primary, err := devenv.StartPostgres(ctx, filepath.Join(o.out, "primary"), log)
	if err != nil {
		return err
	}
	defer primary.Kill() //nolint:errcheck // it is usually dead already
	standby, err := devenv.StartStandby(ctx, primary, filepath.Join(o.out, "standby"), log)
	if err != nil {
		return err
	}
	defer standby.Kill() //nolint:errcheck // nothing of it is kept
	replication := "synchronous"
	if o.async {
		replication = "asynchronous"
	} else if err := primary.SetSynchronousStandbys(ctx, "*"); err != nil {
		return err
	}
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/tally?sslmode=disable&target_session_attrs=read-write&connect_timeout=2",
		primary.Port, standby.Port)
	if _, err := postgres.Migrate(ctx, url); err != nil {
		return err
	}
	ns, err := devenv.StartNATS(0, filepath.Join(o.out, "nats"))
	if err != nil {
		return err
	}
	defer ns.Shutdown()
	natsURL := ns.ClientURL()

	env := []string{"DATABASE_URL=" + url, "NATS_URL=" + natsURL, "MIGRATE_ON_START=false", "LOG_LEVEL=info", "ADMIN_PORT=0"}
	var apis []string
	for i := range 2 {
		port, err := devenv.FreePort(ctx)
		if err != nil {
			return err
		}
		stopServe, err := devenv.StartTally(ctx, tally, filepath.Join(o.out, fmt.Sprintf("serve-%d.log", i)),
			append(env, "PORT="+strconv.Itoa(port)), "serve")
		if err != nil {
			return err
		}
		defer stopServe()
		apis = append(apis, "http://127.0.0.1:"+strconv.Itoa(port))
	}
	stopRelay, err := devenv.StartTally(ctx, tally, filepath.Join(o.out, "relay.log"), env, "relay")
	if err != nil {
		return err
	}
	defer stopRelay()
	for _, api := range apis {
		if err := devenv.WaitReady(ctx, api); err != nil {
			return err
		}
	}
	log.Info("ready", "replication", replication, "primary_port", primary.Port, "standby_port", standby.Port, "apis", apis)

	results := filepath.Join(o.out, "bench.json")
	benchLog, err := os.Create(filepath.Join(o.out, "bench.log"))
	if err != nil {
		return err
	}
	defer benchLog.Close() //nolint:errcheck // read back below
	progressPath := filepath.Join(o.out, "bench.progress")
	progress, err := os.Create(progressPath)
	if err != nil {
		return err
	}
	defer progress.Close() //nolint:errcheck // a convenience
	benchDone := make(chan error, 1)
	go func() {
		benchDone <- bench.Run(ctx, []string{
			"--url", strings.Join(apis, ","), "--database-url", url, "--nats-url", natsURL,
			"--workers", strconv.Itoa(o.workers), "--duration", o.duration.String(),
			"--users", "100", "--initial", "50.00", "--amount-max", "20.00", "--retry-share", "0.1", "--backdate-share", "0.05",
			"--attempts", "20", "--timeout", "5s", "--verify", "--json", results,
		}, benchLog, progress)
	}()
	// The users are created first; the kill must fall in the load.
	if err := waitNonEmpty(ctx, progressPath, benchDone); err != nil {
		return err
	}
	loadStart := time.Now()
	select {
	case <-time.After(o.killAfter):
	case err := <-benchDone:
		return fmt.Errorf("the load ended before the kill: %w", err)
	}
	killed := time.Now()
	if err := primary.Kill(); err != nil {
		return err
	}
	log.Info("primary SIGKILLed", "after", killed.Sub(loadStart).Round(time.Millisecond))
	if err := standby.Promote(ctx); err != nil {
		return err
	}
	log.Info("standby promoted", "took", time.Since(killed).Round(time.Millisecond))
	benchErr := <-benchDone

	raw, err := os.ReadFile(results)
	if err != nil {
		return errors.Join(benchErr, err)
	}
	var res bench.Results
	if err := json.Unmarshal(raw, &res); err != nil {
		return err
	}
	summary := summarize(&res, replication)
	fmt.Println(summary)
	if err := os.WriteFile(filepath.Join(o.out, "summary.txt"), []byte(summary+"\n"), 0o644); err != nil {
		return err
	}
	if benchErr != nil && !o.async {
		return fmt.Errorf("%w (details in %s)", benchErr, filepath.Join(o.out, "bench.log"))
	}
	return nil
}

// summarize is one line for the fault table: requests, acknowledged writes, what the audit
// found, the requests that failed for good, and the stall: the longest write, which is a
// write sent as the primary died, retried by the client until the standby took over.
func summarize(res *bench.Results, replication string) string {
	var stall float64
	var retried int64
	for _, op := range res.Ops {
		if op.Name == "deposit" || op.Name == "withdraw" {
			stall = max(stall, op.MaxMs/1000)
		}
		if op.Name != "all" {
			retried += op.Retries
		}
	}
	violations := map[string]int{}
	for _, v := range res.Violations {
		violations[v.Check]++
	}
	if res.Audit != nil {
		for _, v := range res.Audit.Violations {
			violations[v.Check]++
		}
	}
	var found []string
	for check, n := range violations {
		found = append(found, fmt.Sprintf("%d × %s", n, check))
	}
	if len(found) == 0 {
		found = []string{"none"}
	}
	return fmt.Sprintf("replication=%s requests=%d acknowledged_writes=%d without_answer=%d failed=%d retried_attempts=%d stall_s=%.1f violations: %s",
		replication, res.Requests, res.Writes.Applied+res.Writes.Refused, res.Writes.Unknown, res.Errors, retried, stall,
		strings.Join(found, "; "))
}

// waitNonEmpty waits until the bench reports its first second of progress, which it does once
// its users exist and the load runs.
func waitNonEmpty(ctx context.Context, path string, benchDone <-chan error) error {
	for {
		if info, err := os.Stat(path); err == nil && info.Size() > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-benchDone:
			return fmt.Errorf("the bench ended before its load: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
