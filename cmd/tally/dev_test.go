package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/internal/pgtest"
)

// devRun is a "tally dev" running in the background.
type devRun struct {
	base   string
	stderr *syncBuffer
	done   chan struct{} // closed when run has returned err
	err    error
	cancel context.CancelFunc
}

// startDev runs "tally dev" with args and waits until it serves.
func startDev(t *testing.T, env map[string]string, args ...string) *devRun {
	t.Helper()
	port, err := devenv.FreePort(context.Background())
	require.NoError(t, err)
	env["PORT"] = strconv.Itoa(port)
	env["SHUTDOWN_DELAY"] = "0s"
	ctx, cancel := context.WithCancel(context.Background())
	d := &devRun{base: fmt.Sprintf("http://127.0.0.1:%d", port), stderr: &syncBuffer{}, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(d.done)
		d.err = run(ctx, append([]string{"dev"}, args...), func(k string) string { return env[k] }, io.Discard, d.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-d.done:
		case <-time.After(30 * time.Second):
			t.Errorf("tally dev did not stop\nstderr: %s\ngoroutines: %s", d.stderr, goroutines())
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-d.done:
			t.Fatalf("tally dev stopped while starting: %v\nstderr: %s", d.err, d.stderr)
		default:
		}
		if resp, err := http.Get(d.base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		require.True(t, time.Now().Before(deadline), "tally dev was not ready within 60s")
		time.Sleep(50 * time.Millisecond)
	}
	require.Eventually(t, func() bool { return strings.Contains(d.stderr.String(), "tally is running") }, 5*time.Second, 10*time.Millisecond)
	require.Contains(t, d.stderr.String(), "API http://localhost:"+env["PORT"]+"  Swagger UI http://localhost:"+env["PORT"]+"/api/docs")
	return d
}

// goroutines is every goroutine's stack, for a test that found tally dev stuck.
func goroutines() string {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 1) //nolint:errcheck // a strings.Builder does not fail
	return b.String()
}

func (d *devRun) stop(t *testing.T) error {
	t.Helper()
	d.cancel()
	select {
	case <-d.done:
		return d.err
	case <-time.After(30 * time.Second):
		t.Fatal("tally dev did not stop within 30s")
		return nil
	}
}

func requireVasya(t *testing.T, base string) {
	t.Helper()
	resp, err := http.Get(base + "/v1/user/1")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var user struct {
		ID   int64  `json:"id"`
		Name string `json:"name"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&user))
	require.Equal(t, int64(1), user.ID)
	require.Equal(t, "Vasya", user.Name)
}

// requireDemoLoadedOnce checks that a restart on kept data did not load the demo again: the
// demo has four users, so a second load would have made a fifth.
func requireDemoLoadedOnce(t *testing.T, base string) {
	t.Helper()
	resp, err := http.Get(base + "/v1/user/5")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "the demo must not be loaded twice")
}

// reachableTempDir is a temporary directory that PostgreSQL, run as another user when the
// tests run as root, can reach: t.TempDir and its parent are private to the owner.
func reachableTempDir(t *testing.T) string {
	dir := t.TempDir()
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	require.NoError(t, os.Chmod(dir, 0o755))
	return dir
}

func postmasterPID(t *testing.T, cluster string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cluster, "postmaster.pid"))
	require.NoError(t, err, "a running PostgreSQL keeps postmaster.pid")
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	require.NoError(t, err)
	return pid
}

// killNode kills the PostgreSQL serving cluster, every process of it at once, as a lost
// machine or container dies (devenv.KillCluster), and returns once none is left. After a
// SIGQUIT, PostgreSQL's immediate shutdown, tally dev once in CI and once in 21 local runs
// still waited after 30s for the worker's postmaster to exit, when the test ran after the
// Citus load tests.
func killNode(t *testing.T, cluster string) {
	t.Helper()
	require.NoError(t, devenv.KillCluster(cluster))
}

func TestDevStartsPrivatePostgresWithDemoData(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(reachableTempDir(t), ".data")
	cluster := filepath.Join(dataDir, "postgres")
	d := startDev(t, map[string]string{"DEV_DATA_DIR": dataDir})
	requireVasya(t, d.base)
	require.Contains(t, d.stderr.String(), "data in "+cluster+"/")
	pid := postmasterPID(t, cluster)

	require.NoError(t, d.stop(t))
	require.NoFileExists(t, filepath.Join(cluster, "postmaster.pid"), "PostgreSQL was not shut down cleanly")
	require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "PostgreSQL (pid %d) still runs", pid)

	t.Run("a second start reuses the data", func(t *testing.T) {
		d := startDev(t, map[string]string{"DEV_DATA_DIR": dataDir})
		requireVasya(t, d.base)
		requireDemoLoadedOnce(t, d.base)
		require.NoError(t, d.stop(t))
	})

	t.Run("PostgreSQL dying is an error", func(t *testing.T) {
		d := startDev(t, map[string]string{"DEV_DATA_DIR": dataDir})
		killNode(t, cluster)
		select {
		case <-d.done:
			require.ErrorContains(t, d.err, "PostgreSQL stopped unexpectedly")
		case <-time.After(30 * time.Second):
			t.Fatalf("tally dev kept running without its database\nstderr: %s\ngoroutines: %s", d.stderr, goroutines())
		}
	})
}

func TestDevUsesDatabaseURL(t *testing.T) {
	t.Parallel()
	d := startDev(t, map[string]string{"DATABASE_URL": pgtest.NewDatabase(t)})
	requireVasya(t, d.base)
	require.NoError(t, d.stop(t))
}

// A clone under a home of mode 0700, as root: PostgreSQL runs as another user, which cannot
// reach the checkout, so its cluster goes to a directory of its own, found again next time.
func TestDevMovesClusterOutOfUnreachableDataDir(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("only root runs PostgreSQL as another user")
	}
	// t.TempDir's parent is private to root, so the postgres user cannot reach inside it.
	dataDir := filepath.Join(t.TempDir(), ".data")
	env := map[string]string{"DEV_DATA_DIR": dataDir}
	d := startDev(t, env)
	requireVasya(t, d.base)
	cluster := dataDirIn(t, d.stderr.String())
	t.Cleanup(func() { os.RemoveAll(cluster) }) //nolint:errcheck // best effort
	require.True(t, strings.HasPrefix(cluster, "/var/tmp/tally-dev-"), cluster)
	info, err := os.Stat(cluster)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), info.Mode().Perm())
	require.NoError(t, d.stop(t))

	d = startDev(t, env)
	require.Equal(t, cluster, dataDirIn(t, d.stderr.String()), "the next start finds the cluster again")
	requireDemoLoadedOnce(t, d.base)
	require.NoError(t, d.stop(t))
}

// dataDirIn reads the cluster's directory from the "tally is running" line.
func dataDirIn(t *testing.T, stderr string) string {
	t.Helper()
	_, after, ok := strings.Cut(stderr, "data in ")
	require.True(t, ok, stderr)
	dir, _, ok := strings.Cut(after, "/,")
	require.True(t, ok, stderr)
	return dir
}

// A killed tally dev leaves postmaster.pid behind, and by the next start its pid may belong
// to an unrelated process; PostgreSQL would refuse to start on it.
func TestDevRecoversStalePIDFile(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(reachableTempDir(t), ".data")
	cluster := filepath.Join(dataDir, "postgres")
	d := startDev(t, map[string]string{"DEV_DATA_DIR": dataDir})
	require.NoError(t, d.stop(t))
	// The pid now belongs to a process of the cluster's owner, which PostgreSQL may signal and
	// so takes for another server on its data.
	info, err := os.Stat(cluster)
	require.NoError(t, err)
	owner := info.Sys().(*syscall.Stat_t)
	other := exec.Command("sleep", "60")
	if os.Geteuid() == 0 {
		other.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: owner.Uid, Gid: owner.Gid}}
	}
	require.NoError(t, other.Start())
	t.Cleanup(func() { other.Process.Kill(); other.Wait() }) //nolint:errcheck // only its pid was wanted
	stale := fmt.Sprintf("%d\n%s\n1700000000\n5432\n\n127.0.0.1\n  5432001         0\nready   \n", other.Process.Pid, cluster)
	require.NoError(t, os.WriteFile(filepath.Join(cluster, "postmaster.pid"), []byte(stale), 0o600))

	d = startDev(t, map[string]string{"DEV_DATA_DIR": dataDir})
	requireVasya(t, d.base)
	require.NoError(t, d.stop(t))
}

// tally dev --citus: a coordinator and two workers, the users' shards on both workers, the
// demo data, and every node stopped cleanly on Ctrl-C; a second start finds the cluster again.
func TestDevCitusStartsClusterWithDemoData(t *testing.T) {
	pgtest.RequireCitus(t)
	t.Parallel()
	dataDir := filepath.Join(reachableTempDir(t), ".data")
	clusters := map[string]string{}
	for _, node := range []string{"coordinator", "worker1", "worker2"} {
		clusters[node] = filepath.Join(dataDir, "citus", node, "postgres")
	}
	d := startDev(t, map[string]string{"DEV_DATA_DIR": dataDir}, "--citus")
	requireVasya(t, d.base)
	require.Contains(t, d.stderr.String(), "Citus: coordinator on port")
	require.Contains(t, d.stderr.String(), "data in "+clusters["coordinator"]+"/")

	coordinator := "postgres://postgres@127.0.0.1:" + strconv.Itoa(postmasterPort(t, clusters["coordinator"])) + "/tally?sslmode=disable"
	conn, err := pgx.Connect(context.Background(), coordinator)
	require.NoError(t, err)
	var workers, nodesWithUsers int
	require.NoError(t, conn.QueryRow(context.Background(),
		"SELECT count(*) FROM pg_dist_node WHERE groupid <> 0 AND isactive").Scan(&workers))
	require.Equal(t, 2, workers)
	require.NoError(t, conn.QueryRow(context.Background(),
		"SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = 'users'::regclass").Scan(&nodesWithUsers))
	require.Equal(t, 2, nodesWithUsers, "users are distributed over both workers")
	require.NoError(t, conn.Close(context.Background()))

	pids := map[string]int{}
	for node, cluster := range clusters {
		pids[node] = postmasterPID(t, cluster)
	}
	require.NoError(t, d.stop(t))
	for node, cluster := range clusters {
		require.NoFileExists(t, filepath.Join(cluster, "postmaster.pid"), "%s was not shut down cleanly", node)
		require.ErrorIs(t, syscall.Kill(pids[node], 0), syscall.ESRCH, "%s (pid %d) still runs", node, pids[node])
	}

	t.Run("a second start reuses the cluster", func(t *testing.T) {
		d := startDev(t, map[string]string{"DEV_DATA_DIR": dataDir}, "--citus")
		requireVasya(t, d.base)
		requireDemoLoadedOnce(t, d.base)
		require.NoError(t, d.stop(t))
	})

	t.Run("a worker dying is an error", func(t *testing.T) {
		d := startDev(t, map[string]string{"DEV_DATA_DIR": dataDir}, "--citus")
		killNode(t, clusters["worker2"])
		select {
		case <-d.done:
			require.ErrorContains(t, d.err, "citus worker 2")
			require.ErrorContains(t, d.err, "PostgreSQL stopped unexpectedly")
		case <-time.After(30 * time.Second):
			t.Fatalf("tally dev --citus kept running without a worker\nstderr: %s\ngoroutines: %s", d.stderr, goroutines())
		}
		for node, cluster := range clusters {
			if node != "worker2" {
				require.NoFileExists(t, filepath.Join(cluster, "postmaster.pid"), "%s still runs", node)
			}
		}
	})
}

func TestDevCitusRefusesDatabaseURL(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"dev", "--citus"},
		func(k string) string { return map[string]string{"DATABASE_URL": "postgres://127.0.0.1:1/x"}[k] }, io.Discard, io.Discard)
	require.ErrorContains(t, err, "unset DATABASE_URL")
}

// postmasterPort reads the port a running PostgreSQL listens on from postmaster.pid.
func postmasterPort(t *testing.T, cluster string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cluster, "postmaster.pid"))
	require.NoError(t, err, "a running PostgreSQL keeps postmaster.pid")
	lines := strings.Split(string(b), "\n")
	require.Greater(t, len(lines), 3, string(b))
	port, err := strconv.Atoi(strings.TrimSpace(lines[3]))
	require.NoError(t, err)
	return port
}
