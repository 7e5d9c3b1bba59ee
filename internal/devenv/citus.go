package devenv

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// citusSettings go into every node's postgresql.conf when its cluster is created.
var citusSettings = []string{
	"shared_preload_libraries = 'citus'",
	// A transaction that writes on two workers commits with two-phase commit: one prepared
	// transaction per worker connection, so as many as there are connections.
	"max_connections = 200",
	"max_prepared_transactions = 200",
	// Shard moves (citus_move_shard_placement, the rebalancer) copy shards with logical
	// replication.
	"wal_level = logical",
	"max_replication_slots = 20",
	"max_wal_senders = 20",
	// The rebalancer and the 2PC recovery run as background workers.
	"max_worker_processes = 32",
	// The nodes talk over 127.0.0.1 on one machine: TLS there costs and protects nothing.
	"citus.node_conninfo = 'sslmode=disable'",
}

// Citus is a private Citus cluster started by StartCitus: a coordinator, which clients talk
// to, and workers, which hold the shards.
type Citus struct {
	// Coordinator is the node that holds the metadata and routes queries; its URL is what
	// tally connects to.
	Coordinator *Postgres
	// Workers hold the shards, in the order they joined the cluster.
	Workers []*Postgres

	workerDirs []string
}

// CitusInstalled says why Citus cannot run here, or returns nil when citus.so is in the
// library directory of the local PostgreSQL.
func CitusInstalled(ctx context.Context) error {
	pgConfig := "pg_config"
	if bin, err := findPostgres(ctx); err == nil {
		if _, err := os.Stat(filepath.Join(bin, "pg_config")); err == nil {
			pgConfig = filepath.Join(bin, "pg_config")
		}
	}
	out, err := exec.CommandContext(ctx, pgConfig, "--pkglibdir").Output()
	if err != nil {
		return fmt.Errorf("citus: cannot ask pg_config for PostgreSQL's library directory: %w", err)
	}
	lib := filepath.Join(strings.TrimSpace(string(out)), "citus.so")
	if _, err := os.Stat(lib); err != nil {
		return fmt.Errorf("citus is not installed (%s is missing)", lib)
	}
	return nil
}

// CitusRequired reports whether the environment asks for the Citus tests to run, so that
// they fail rather than skip when Citus is missing: CI=1 or TALLY_REQUIRE_CITUS=1.
func CitusRequired(getenv func(string) string) bool {
	return getenv("CI") == "1" || getenv("TALLY_REQUIRE_CITUS") == "1"
}

// StartCitus starts a coordinator in dataDir/coordinator and workers in dataDir/worker1,
// dataDir/worker2, ..., each a private PostgreSQL with Citus loaded and the citus extension in
// its "tally" database, and joins the workers to the coordinator. On a dataDir that holds a
// cluster already it starts that cluster again, with as many workers as it had if that is
// more. Each node keeps the port it was first given (in its directory's file "port"): the
// coordinator's metadata names the workers by host and port.
func StartCitus(ctx context.Context, dataDir string, workers int, log *slog.Logger) (c *Citus, err error) {
	if err := CitusInstalled(ctx); err != nil {
		return nil, err
	}
	c = &Citus{}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Stop(log))
		}
	}()
	if c.Coordinator, err = startCitusNode(ctx, filepath.Join(dataDir, "coordinator"), log.With("node", "coordinator")); err != nil {
		return c, err
	}
	var known int
	if err := c.Coordinator.tally(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT count(*) FROM pg_dist_node WHERE groupid <> 0").Scan(&known)
	}); err != nil {
		return c, fmt.Errorf("citus: count the workers: %w", err)
	}
	for i := range known {
		dir := filepath.Join(dataDir, "worker"+strconv.Itoa(i+1))
		w, err := startCitusNode(ctx, dir, log.With("node", "worker"+strconv.Itoa(i+1)))
		if err != nil {
			return c, err
		}
		c.Workers, c.workerDirs = append(c.Workers, w), append(c.workerDirs, dir)
	}
	if err := c.Coordinator.tally(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "SELECT citus_set_coordinator_host('127.0.0.1', $1)", c.Coordinator.Port)
		return err
	}); err != nil {
		return c, fmt.Errorf("citus: set the coordinator's host: %w", err)
	}
	for i := known; i < workers; i++ {
		if _, err := c.AddWorker(ctx, filepath.Join(dataDir, "worker"+strconv.Itoa(i+1)), log); err != nil {
			return c, err
		}
	}
	return c, nil
}

// AddWorker starts a new worker in dataDir and adds it to the cluster. It holds no shards
// until they are moved to it (citus_rebalance_start) or new tables are distributed.
func (c *Citus) AddWorker(ctx context.Context, dataDir string, log *slog.Logger) (*Postgres, error) {
	w, err := startCitusNode(ctx, dataDir, log.With("node", "worker"+strconv.Itoa(len(c.Workers)+1)))
	if err != nil {
		return nil, err
	}
	c.Workers, c.workerDirs = append(c.Workers, w), append(c.workerDirs, dataDir)
	if err := c.Coordinator.tally(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "SELECT citus_add_node('127.0.0.1', $1)", w.Port)
		return err
	}); err != nil {
		return nil, fmt.Errorf("citus: add worker on port %d: %w", w.Port, err)
	}
	return w, nil
}

// RestartWorker starts worker i (counted from 0) again, on its port, after it stopped or was
// killed.
func (c *Citus) RestartWorker(ctx context.Context, i int, log *slog.Logger) error {
	select {
	case <-c.Workers[i].exited:
	default:
		return fmt.Errorf("citus: worker %d is still running", i+1)
	}
	w, err := startCitusNode(ctx, c.workerDirs[i], log.With("node", "worker"+strconv.Itoa(i+1)))
	if err != nil {
		return err
	}
	c.Workers[i] = w
	return nil
}

// Stop stops the workers, then the coordinator; nodes that have exited already are skipped.
func (c *Citus) Stop(log *slog.Logger) error {
	var errs []error
	stop := func(pg *Postgres) {
		if pg == nil {
			return
		}
		select {
		case <-pg.exited:
			return
		default:
		}
		errs = append(errs, pg.Stop(log))
	}
	for _, w := range c.Workers {
		stop(w)
	}
	stop(c.Coordinator)
	return errors.Join(errs...)
}

// nodePort is the port of the node in dataDir: the one in dataDir/port, or a free one, which
// is written there.
func nodePort(ctx context.Context, dataDir string) (int, error) {
	path := filepath.Join(dataDir, "port")
	if b, err := os.ReadFile(path); err == nil {
		return strconv.Atoi(strings.TrimSpace(string(b)))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	port, err := FreePort(ctx)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return 0, err
	}
	return port, os.WriteFile(path, []byte(strconv.Itoa(port)+"\n"), 0o644)
}

// startCitusNode starts one node: a PostgreSQL whose cluster is created with Citus's
// settings, with the citus extension in its "tally" database.
func startCitusNode(ctx context.Context, dataDir string, log *slog.Logger) (*Postgres, error) {
	port, err := nodePort(ctx, dataDir)
	if err != nil {
		return nil, err
	}
	pg, err := startPostgres(ctx, dataDir, port, log, func(command commandFunc, cluster string) error {
		log.Info("creating a Citus node", "dir", cluster)
		if err := command(cluster, "initdb", "-D", cluster, "-A", "trust", "-U", "postgres", "--encoding=UTF8", "--no-locale").Run(); err != nil {
			return fmt.Errorf("initdb failed: %w", err)
		}
		// postgresql.conf belongs to the cluster's user; appending as root keeps its owner.
		conf, err := os.OpenFile(filepath.Join(cluster, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = conf.WriteString("\n# Citus\n" + strings.Join(citusSettings, "\n") + "\n")
		return errors.Join(err, conf.Close())
	})
	if err != nil {
		return nil, err
	}
	if err := pg.tally(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS citus")
		return err
	}); err != nil {
		return nil, errors.Join(postgresFailed(fmt.Errorf("citus: create the extension: %w", err), pg.logPath), pg.Stop(log))
	}
	return pg, nil
}

// tally runs fn on a new connection to the server's "tally" database.
func (pg *Postgres) tally(ctx context.Context, fn func(*pgx.Conn) error) error {
	return withConn(ctx, pg.URL, fn)
}
