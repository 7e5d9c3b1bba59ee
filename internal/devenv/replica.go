package devenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// StartStandby clones primary with pg_basebackup into dataDir/postgres and starts it on a
// free port as a hot standby streaming from primary. The standby is asynchronous until
// primary.SetSynchronousStandbys names it; the fault tests use a pair like this one to play
// a failover.
func StartStandby(ctx context.Context, primary *Postgres, dataDir string, log *slog.Logger) (*Postgres, error) {
	standby, err := startPostgres(ctx, dataDir, 0, log, func(command commandFunc, cluster string) error {
		log.Info("cloning the primary", "dir", cluster, "primary_port", primary.Port)
		// -R writes standby.signal and primary_conninfo; -X stream copies the WAL written
		// during the copy, so the clone is consistent on its own.
		backup := command(cluster, "pg_basebackup", "-D", cluster, "-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port),
			"-U", "postgres", "-R", "-X", "stream", "-c", "fast")
		if err := backup.Run(); err != nil {
			return fmt.Errorf("pg_basebackup failed: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := waitStreaming(ctx, primary, standby); err != nil {
		return nil, errors.Join(err, standby.Stop(log))
	}
	return standby, nil
}

// waitStreaming waits up to 30 seconds until primary lists a WAL sender streaming to standby.
func waitStreaming(ctx context.Context, primary, standby *Postgres) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var streaming bool
		err := primary.query(ctx, func(conn *pgx.Conn) error {
			return conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE state = 'streaming')").Scan(&streaming)
		})
		if err == nil && streaming {
			return nil
		}
		if time.Now().After(deadline) {
			return postgresFailed(errors.Join(errors.New("the standby did not stream within 30s"), err), standby.logPath)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-standby.exited:
			return postgresFailed(errors.New("the standby exited while starting"), standby.logPath)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// SetSynchronousStandbys sets synchronous_standby_names (e.g. "*": any one standby; "": none)
// and reloads the configuration. With a name set, a commit is acknowledged only once a
// standby has flushed it to disk.
func (pg *Postgres) SetSynchronousStandbys(ctx context.Context, names string) error {
	return pg.query(ctx, func(conn *pgx.Conn) error {
		if _, err := conn.Exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = '"+strings.ReplaceAll(names, "'", "''")+"'"); err != nil {
			return err
		}
		_, err := conn.Exec(ctx, "SELECT pg_reload_conf()")
		return err
	})
}

// Promote does what a failover manager does to the surviving standby: it promotes it to a
// primary, waiting up to a minute, and clears synchronous_standby_names on it. The setting is
// copied from the old primary with its configuration; left set, every commit on the new
// primary would wait for a standby that does not exist.
func (pg *Postgres) Promote(ctx context.Context) error {
	return pg.query(ctx, func(conn *pgx.Conn) error {
		var promoted bool
		if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&promoted); err != nil {
			return fmt.Errorf("promote: %w", err)
		}
		if !promoted {
			return errors.New("promote: the standby did not become a primary within 60s")
		}
		if _, err := conn.Exec(ctx, "ALTER SYSTEM RESET synchronous_standby_names"); err != nil {
			return err
		}
		_, err := conn.Exec(ctx, "SELECT pg_reload_conf()")
		return err
	})
}

// Kill ends the server and every one of its processes with SIGKILL, as a crash of its
// machine would: nothing is flushed or shut down cleanly. It returns once the server is gone.
func (pg *Postgres) Kill() error {
	if err := KillCluster(pg.Dir); err != nil {
		return err
	}
	<-pg.exited
	return nil
}

// KillCluster ends every process serving cluster with SIGKILL, as a crash of its machine
// would, and returns once none is left. PostgreSQL's children each start a session of their
// own (setsid), so no process group holds them all: they are found by their working
// directory, as servesCluster does. The postmaster is stopped first, so that it starts no new
// one meanwhile.
func KillCluster(cluster string) error {
	if b, err := os.ReadFile(filepath.Join(cluster, "postmaster.pid")); err == nil {
		if pid, ok := pidOf(b); ok && servesCluster(pid, cluster) {
			syscall.Kill(pid, syscall.SIGSTOP) //nolint:errcheck // it may have exited meanwhile
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		pids, err := clusterProcesses(cluster)
		if err != nil || len(pids) == 0 {
			return err
		}
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("kill PostgreSQL process %d of %s: %w", pid, cluster, err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v of %s outlived SIGKILL for 30s", pids, cluster)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clusterProcesses lists the live processes serving cluster.
func clusterProcesses(cluster string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && servesCluster(pid, cluster) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// query runs fn on a new connection to the server's "postgres" database.
func (pg *Postgres) query(ctx context.Context, fn func(*pgx.Conn) error) error {
	return withConn(ctx, pg.AdminURL, fn)
}

// withConn runs fn on a new connection to url.
func withConn(ctx context.Context, url string, fn func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx)) //nolint:errcheck // nothing is left to flush
	return fn(conn)
}
