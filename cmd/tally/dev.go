package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/postgres"
	"github.com/tally-ledger/tally/relay"
)

// dev runs the API with no setup: on DATABASE_URL if set, otherwise on a private PostgreSQL
// kept in cfg.devDataDir, with the demo data loaded into an empty database.
func dev(ctx context.Context, cfg config, log *slog.Logger, stderr io.Writer) error {
	if cfg.databaseURL != "" {
		return devServe(ctx, cfg, log, stderr, "database from DATABASE_URL", nil)
	}
	pg, err := devenv.StartPostgres(ctx, cfg.devDataDir, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped with Ctrl-C while starting
		}
		return err
	}
	cfg.databaseURL = pg.URL
	err = devServe(ctx, cfg, log, stderr, "data in "+pg.Dir+"/", pg.Exited())
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil // stopped with Ctrl-C while migrating or loading the demo
	}
	return errors.Join(err, pg.Stop(log))
}

// devCitusWorkers is how many workers `tally dev --citus` starts: two, so that shards and
// the two-phase commits between them are real.
const devCitusWorkers = 2

// devCitus runs the API like dev, on a local Citus cluster kept in cfg.devDataDir/citus: a
// coordinator, which tally connects to, and two workers.
func devCitus(ctx context.Context, cfg config, log *slog.Logger, stderr io.Writer) error {
	if cfg.databaseURL != "" {
		return errors.New("dev --citus starts its own cluster: unset DATABASE_URL, or run tally dev without --citus on it")
	}
	c, err := devenv.StartCitus(ctx, filepath.Join(cfg.devDataDir, "citus"), devCitusWorkers, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped with Ctrl-C while starting
		}
		return err
	}
	cfg.databaseURL = c.Coordinator.URL
	names := map[*devenv.Postgres]string{c.Coordinator: "the coordinator"}
	nodes := []*devenv.Postgres{c.Coordinator}
	ports := make([]string, len(c.Workers))
	for i, w := range c.Workers {
		names[w] = fmt.Sprintf("worker %d (port %d)", i+1, w.Port)
		nodes = append(nodes, w)
		ports[i] = strconv.Itoa(w.Port)
	}
	where := fmt.Sprintf("Citus: coordinator on port %d (data in %s/), workers on ports %s",
		c.Coordinator.Port, c.Coordinator.Dir, strings.Join(ports, " and "))
	err = devServe(ctx, cfg, log, stderr, where, anyExited(nodes))
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil
	}
	// Stop skips nodes that have exited; asked alone, such a node says how it ended.
	errs := []error{err}
	for _, pg := range nodes {
		select {
		case <-pg.Exited():
			errs = append(errs, fmt.Errorf("citus %s: %w", names[pg], pg.Stop(log)))
		default:
		}
	}
	return errors.Join(append(errs, c.Stop(log))...)
}

// anyExited is closed when the first of the servers exits.
func anyExited(servers []*devenv.Postgres) <-chan struct{} {
	exited := make(chan struct{})
	var once sync.Once
	for _, pg := range servers {
		go func() {
			<-pg.Exited()
			once.Do(func() { close(exited) })
		}()
	}
	return exited
}

// devServe migrates, loads the demo into a database without users, and serves until ctx
// ends or, when pgExited is not nil, the private PostgreSQL stops on its own.
func devServe(ctx context.Context, cfg config, log *slog.Logger, stderr io.Writer, where string, pgExited <-chan struct{}) error {
	if _, err := postgres.Migrate(ctx, cfg.databaseURL); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	cfg.migrateOnStart = false
	db, err := openDB(ctx, cfg)
	if err != nil {
		return err
	}
	var hasUsers bool
	err = db.Pool().QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM users)").Scan(&hasUsers)
	if err == nil && !hasUsers {
		err = loadDemoInto(ctx, db, log)
	}
	db.Close()
	if err != nil {
		return fmt.Errorf("demo data: %w", err)
	}

	if !cfg.natsURLSet {
		ns, err := devenv.StartNATS(0, filepath.Join(cfg.devDataDir, "nats"))
		if err != nil {
			return err
		}
		defer ns.Shutdown()
		cfg.nats = relay.NATS{URLs: ns.ClientURL()}
		where += ", events on " + cfg.nats.URLs
	}
	cfg.relay = true
	if !cfg.adminPortSet {
		cfg.adminPort = "0"
	}

	serveCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	listening := make(chan string, 1)
	served := make(chan error, 1)
	go func() { served <- serve(serveCtx, cfg, log, listening) }()
	for {
		select {
		case addr := <-listening:
			port := cfg.port
			if _, p, err := net.SplitHostPort(addr); err == nil {
				port = p
			}
			fmt.Fprintf(stderr, "tally is running: API http://localhost:%s  Swagger UI http://localhost:%s/api/docs  console http://localhost:%s/console  %s (Ctrl-C to stop)\n",
				port, port, port, where)
		case <-pgExited:
			// The caller reports it, with the end of PostgreSQL's log.
			pgExited = nil
			cancel()
		case err := <-served:
			return err
		}
	}
}
