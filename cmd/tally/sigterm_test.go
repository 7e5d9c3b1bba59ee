package main

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/internal/pgtest"
)

// SIGTERM to a real tally serve with long polls waiting on /v1/events: the polls are answered
// at once, and the process exits 0 well within the drain timeout, as Kubernetes' grace period
// expects, rather than waiting out the polls and exiting 1 with "context deadline exceeded".
func TestSIGTERMEndsLongPolls(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "tally")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	ctx := context.Background()
	port, err := devenv.FreePort(ctx)
	require.NoError(t, err)
	adminPort, err := devenv.FreePort(ctx)
	require.NoError(t, err)
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+pgtest.NewDatabase(t), "MIGRATE_ON_START=false",
		"PORT="+strconv.Itoa(port), "ADMIN_PORT="+strconv.Itoa(adminPort),
		"SHUTDOWN_DELAY=300ms", "SHUTDOWN_TIMEOUT=10s")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill() //nolint:errcheck // gone already when the test passed
	})
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	require.Eventually(t, func() bool { return get(t, base+"/readyz") == http.StatusOK }, 30*time.Second, 50*time.Millisecond)

	const polls = 3
	answered := make(chan int, polls)
	for range polls {
		go func() {
			resp, err := http.Get(base + "/v1/events?wait=30")
			if err != nil {
				answered <- 0
				return
			}
			resp.Body.Close() //nolint:errcheck // only the status matters
			answered <- resp.StatusCode
		}()
	}
	time.Sleep(500 * time.Millisecond) // the polls are waiting

	began := time.Now()
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	for range polls {
		select {
		case status := <-answered:
			require.Equal(t, http.StatusOK, status)
		case <-time.After(5 * time.Second):
			t.Fatal("a long poll was not answered after SIGTERM")
		}
	}
	select {
	case err := <-exited:
		require.NoError(t, err, "exit status; stderr:\n%s", stderr.String())
	case <-time.After(8 * time.Second):
		t.Fatalf("tally did not exit within 8 s of SIGTERM; stderr:\n%s", stderr.String())
	}
	require.Empty(t, stderr.String())
	t.Logf("SIGTERM to exit: %v", time.Since(began).Round(time.Millisecond))
}
