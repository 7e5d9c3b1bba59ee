// Command citus measures tally's writes on one PostgreSQL and on Citus clusters side by side,
// for docs/scaling.md: writes/s of `tally bench` (writes only, audited) against one `tally
// serve` on a private PostgreSQL (group commit on and off) and on a private Citus cluster with
// one and with two workers; then, on two workers, what a two-phase commit costs: deposits whose
// uid row lives on the user's worker (one worker, one-phase commit) against deposits whose uid
// row lives on the other worker (two workers, two-phase commit).
//
//	go run ./bench/citus -tally bin/tally -out bin/bench/citus -rounds 2 -duration 10s -clients 16,64
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-ledger/tally/bench"
	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/postgres"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "citus:", err)
		os.Exit(1)
	}
}

type options struct {
	tally    string
	out      string
	rounds   int
	duration time.Duration
	clients  []int
	pool     int
}

// system is one database setup under test.
type system struct {
	name    string
	workers int // 0: one PostgreSQL
	batch   string
}

var systems = []system{
	{name: "PostgreSQL, group commit", batch: "64"},
	{name: "PostgreSQL, one transaction per write", batch: "1"},
	{name: "Citus, 1 worker", workers: 1},
	{name: "Citus, 2 workers", workers: 2},
}

func run(ctx context.Context, args []string) (err error) {
	o := options{}
	var clients string
	flags := flag.NewFlagSet("citus", flag.ContinueOnError)
	flags.StringVar(&o.tally, "tally", "bin/tally", "the tally binary")
	flags.StringVar(&o.out, "out", "bin/bench/citus", "directory for the servers, their logs and the results (emptied first)")
	flags.IntVar(&o.rounds, "rounds", 2, "rounds; each runs every system once, in turn")
	flags.DurationVar(&o.duration, "duration", 10*time.Second, "how long each load runs")
	flags.StringVar(&clients, "clients", "16,64", "concurrent clients of the load, comma-separated")
	flags.IntVar(&o.pool, "pool", 16, "pool_max_conns of tally serve")
	if err := flags.Parse(args); err != nil {
		return err
	}
	for c := range strings.SplitSeq(clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil {
			return fmt.Errorf("-clients: %w", err)
		}
		o.clients = append(o.clients, n)
	}
	tally, err := filepath.Abs(o.tally)
	if err != nil {
		return err
	}
	o.tally = tally
	if err := os.RemoveAll(o.out); err != nil {
		return err
	}
	// PostgreSQL runs as user postgres when this runs as root: every directory on the way
	// must be open to it.
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	results, err := os.Create(filepath.Join(o.out, "throughput.tsv"))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, results.Close()) }()
	fmt.Fprintf(results, "# system\tclients\tround\twrites/s\n")
	for round := 1; round <= o.rounds; round++ {
		for _, s := range systems {
			last := round == o.rounds && s.workers == 2
			if err := measure(ctx, o, s, round, results, last); err != nil {
				return fmt.Errorf("%s, round %d: %w", s.name, round, err)
			}
		}
	}
	return nil
}

// measure starts the system, loads it at every client count, and in the last round on two
// workers measures the two-phase commit's cost.
func measure(ctx context.Context, o options, s system, round int, results io.Writer, twoPhase bool) (err error) {
	dir := filepath.Join(o.out, fmt.Sprintf("round%d-%d", round, s.workers))
	logFile, err := os.Create(dir + ".log")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, logFile.Close()) }()
	log := slog.New(slog.NewTextHandler(logFile, nil))
	var url string
	var stopDB func() error
	if s.workers == 0 {
		pg, err := devenv.StartPostgres(ctx, dir, log)
		if err != nil {
			return err
		}
		url, stopDB = pg.URL, func() error { return pg.Stop(log) }
	} else {
		c, err := devenv.StartCitus(ctx, dir, s.workers, log)
		if err != nil {
			return err
		}
		url, stopDB = c.Coordinator.URL, func() error { return c.Stop(log) }
	}
	defer stopDB() //nolint:errcheck // the log says how it ended
	if _, err := postgres.Migrate(ctx, url); err != nil {
		return err
	}
	port, err := devenv.FreePort(ctx)
	if err != nil {
		return err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	env := []string{"DATABASE_URL=" + url + "&pool_max_conns=" + strconv.Itoa(o.pool), "PORT=" + strconv.Itoa(port),
		"ADMIN_PORT=0", "LOG_LEVEL=warn", "MIGRATE_ON_START=false"}
	if s.batch != "" {
		env = append(env, "WRITE_BATCH_MAX="+s.batch)
	}
	stopServe, err := devenv.StartTally(ctx, o.tally, dir+"-serve.log", env, "serve")
	if err != nil {
		return err
	}
	defer stopServe()
	if err := devenv.WaitReady(ctx, base); err != nil {
		return err
	}
	for _, clients := range o.clients {
		out := filepath.Join(o.out, fmt.Sprintf("round%d-%d-%d.json", round, s.workers, clients))
		var benchLog bytes.Buffer
		// Writes only, half deposits and half withdrawals over 1,000 users, as performance.md.
		err := bench.Run(ctx, []string{"--url", base, "--database-url", url, "--workers", strconv.Itoa(clients),
			"--duration", o.duration.String(), "--users", "1000", "--deposit", "50", "--withdraw", "50",
			"--balance", "0", "--balance-at", "0", "--retry-share", "0", "--backdate-share", "0",
			"--verify", "--json", out}, &benchLog, io.Discard)
		if err != nil {
			return fmt.Errorf("bench, %d clients: %w\n%s", clients, err, benchLog.String())
		}
		var res bench.Results
		raw, err := os.ReadFile(out)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		writes := 0.0
		for _, op := range res.Ops {
			if op.Name == "deposit" || op.Name == "withdraw" {
				writes += op.Throughput
			}
		}
		fmt.Fprintf(results, "%s\t%d\t%d\t%.0f\n", s.name, clients, round, writes)
		fmt.Printf("%-40s %3d clients  round %d  %6.0f writes/s\n", s.name, clients, round, writes)
	}
	if twoPhase {
		return measureTwoPhase(ctx, o, base, url)
	}
	return nil
}

// measureTwoPhase sends deposits to users on one worker, with uids chosen so that each write's
// uid row lives on the user's worker (one-phase commit) or on the other worker (two-phase
// commit), alternately, at 1 and at 16 clients.
func measureTwoPhase(ctx context.Context, o options, base, url string) (err error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx)) //nolint:errcheck // nothing to flush
	// Users 1..1000 exist from the loads above; take those on the first user's worker.
	var home int
	if err := conn.QueryRow(ctx, placementPort+"('users', 1::bigint)").Scan(&home); err != nil {
		return err
	}
	rows, err := conn.Query(ctx, `SELECT id FROM generate_series(1::bigint, 1000) id WHERE (`+
		placementPort+`('users', id)) = $1 LIMIT 200`, home)
	if err != nil {
		return err
	}
	users, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return err
	}
	out, err := os.Create(filepath.Join(o.out, "two-phase.tsv"))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, out.Close()) }()
	fmt.Fprintf(out, "# uid row\tclients\twrites/s\tp50 ms\tp99 ms\n")
	for _, clients := range []int{1, 16} {
		for _, sameWorker := range []bool{true, false, true, false} {
			// Enough uids for the run, drawn before it so the load is only the writes.
			rows, err := conn.Query(ctx, `SELECT u::text FROM (SELECT gen_random_uuid() AS u FROM generate_series(1, $1)) g
				WHERE ((`+placementPort+`('transaction_uids', u)) = $2) = $3`, int(o.duration.Seconds())*2000, home, sameWorker)
			if err != nil {
				return err
			}
			uids, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			n, p50, p99, err := deposits(ctx, base, users, uids, clients, o.duration/2)
			if err != nil {
				return err
			}
			where := "other worker (2PC)"
			if sameWorker {
				where = "user's worker (1PC)"
			}
			fmt.Fprintf(out, "%s\t%d\t%.0f\t%.2f\t%.2f\n", where, clients, n, p50, p99)
			fmt.Printf("uid row on the %-20s %3d clients  %6.0f writes/s  p50 %.2f ms  p99 %.2f ms\n", where, clients, n, p50, p99)
		}
	}
	return nil
}

// placementPort, completed with "(table, value)", is the port of the worker holding the shard
// of a distributed table for a value. citus_shards would say the same, but it measures every
// shard's size on each call.
const placementPort = `SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
	WHERE p.shardid = get_shard_id_for_distribution_column`

// deposits sends deposits of 0.01 for the users from clients goroutines for d, one uid each,
// and returns writes/s and the p50 and p99 latency in milliseconds.
func deposits(ctx context.Context, base string, users []int64, uids []string, clients int, d time.Duration) (float64, float64, float64, error) {
	var mu sync.Mutex
	var latencies []time.Duration
	var errs []error
	next := 0
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				mu.Lock()
				if next >= len(uids) {
					mu.Unlock()
					return
				}
				i := next
				next++
				mu.Unlock()
				body := fmt.Sprintf(`{"uid":%q,"user_id":%d,"type":"DEPOSIT","amount":"0.01"}`, uids[i], users[i%len(users)])
				start := time.Now()
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/transaction", strings.NewReader(body))
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				req.Header.Set("Content-Type", "application/json")
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body) //nolint:errcheck // only the status matters
					resp.Body.Close()              //nolint:errcheck // read to the end
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("deposit: %s", resp.Status)
					}
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					latencies = append(latencies, time.Since(start))
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, 0, 0, err
	}
	if len(latencies) == 0 {
		return 0, 0, 0, errors.New("no deposit was answered")
	}
	slices.Sort(latencies)
	ms := func(q float64) float64 {
		return float64(latencies[int(q*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	return float64(len(latencies)) / d.Seconds(), ms(0.5), ms(0.99), nil
}
