package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

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

func startDev(t *testing.T, env map[string]string) *devRun {
	t.Helper()
	port, err := freePort(context.Background())
	require.NoError(t, err)
	env["PORT"] = strconv.Itoa(port)
	env["SHUTDOWN_DELAY"] = "0s"
	ctx, cancel := context.WithCancel(context.Background())
	d := &devRun{base: fmt.Sprintf("http://127.0.0.1:%d", port), stderr: &syncBuffer{}, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(d.done)
		d.err = run(ctx, []string{"dev"}, func(k string) string { return env[k] }, io.Discard, d.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-d.done:
		case <-time.After(30 * time.Second):
			t.Error("tally dev did not stop")
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

func TestDevStartsPrivatePostgresWithDemoData(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(reachableTempDir(t), ".data")
	cluster := filepath.Join(dataDir, "postgres")
	d := startDev(t, map[string]string{"DEV_DATA_DIR": dataDir})
	requireVasya(t, d.base)
	require.Contains(t, d.stderr.String(), "data in "+dataDir+"/")
	pid := postmasterPID(t, cluster)

	require.NoError(t, d.stop(t))
	require.NoFileExists(t, filepath.Join(cluster, "postmaster.pid"), "PostgreSQL was not shut down cleanly")
	require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "PostgreSQL (pid %d) still runs", pid)

	t.Run("a second start reuses the data", func(t *testing.T) {
		d := startDev(t, map[string]string{"DEV_DATA_DIR": dataDir})
		requireVasya(t, d.base)
		resp, err := http.Get(d.base + "/v1/user/5")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusNotFound, resp.StatusCode, "the demo must not be loaded twice")
		require.NoError(t, d.stop(t))
	})

	t.Run("PostgreSQL dying is an error", func(t *testing.T) {
		d := startDev(t, map[string]string{"DEV_DATA_DIR": dataDir})
		require.NoError(t, syscall.Kill(postmasterPID(t, cluster), syscall.SIGQUIT))
		select {
		case <-d.done:
			require.ErrorContains(t, d.err, "PostgreSQL stopped unexpectedly")
		case <-time.After(30 * time.Second):
			t.Fatal("tally dev kept running without its database")
		}
	})
}

func TestDevUsesDatabaseURL(t *testing.T) {
	t.Parallel()
	d := startDev(t, map[string]string{"DATABASE_URL": pgtest.NewDatabase(t)})
	requireVasya(t, d.base)
	require.NoError(t, d.stop(t))
}

func TestDevExplainsUnreachableDataDir(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("only root runs PostgreSQL as another user")
	}
	// t.TempDir's parent is private to root, so the postgres user cannot reach inside it.
	dataDir := filepath.Join(t.TempDir(), ".data")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := run(ctx, []string{"dev"}, func(k string) string {
		return map[string]string{"DEV_DATA_DIR": dataDir}[k]
	}, io.Discard, io.Discard)
	require.Error(t, err)
	require.Contains(t, err.Error(), "was denied access to the data directory")
	require.False(t, errors.Is(err, context.DeadlineExceeded))
}
