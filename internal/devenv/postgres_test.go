package devenv

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// reachableTempDir is a temporary directory that PostgreSQL, run as another user when the
// tests run as root, can reach: t.TempDir and its parent are private to the owner.
func reachableTempDir(t *testing.T) string {
	dir := t.TempDir()
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	require.NoError(t, os.Chmod(dir, 0o755))
	return dir
}

func TestCheckPrivateDir(t *testing.T) {
	t.Parallel()
	uid := uint32(os.Geteuid())
	for _, tc := range []struct {
		name    string
		make    func(t *testing.T, path string)
		uid     uint32
		problem string // "" when the directory is fit to use
	}{
		{name: "private directory of the user", uid: uid,
			make: func(t *testing.T, path string) { require.NoError(t, os.Mkdir(path, 0o700)) }},
		{name: "symbolic link to a directory", uid: uid, problem: "is a symbolic link",
			make: func(t *testing.T, path string) { require.NoError(t, os.Symlink(t.TempDir(), path)) }},
		{name: "plain file", uid: uid, problem: "is not a directory",
			make: func(t *testing.T, path string) { require.NoError(t, os.WriteFile(path, nil, 0o600)) }},
		{name: "owned by someone else", uid: uid + 1, problem: "is not owned by uid",
			make: func(t *testing.T, path string) { require.NoError(t, os.Mkdir(path, 0o700)) }},
		{name: "open to others", uid: uid, problem: "has mode 777",
			make: func(t *testing.T, path string) {
				require.NoError(t, os.Mkdir(path, 0o700))
				require.NoError(t, os.Chmod(path, 0o777))
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "tally-dev-x")
			tc.make(t, path)
			err := checkPrivateDir(path, tc.uid)
			if tc.problem == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tc.problem)
			}
		})
	}
}

// The fallback directory lives in a world-writable directory, where another user may have
// made its name first.
// Not parallel: it sets fallbackRoot.
func TestFallbackCluster(t *testing.T) {
	root := t.TempDir()
	require.NoError(t, os.Chmod(root, 0o1777))
	defer func(old string) { fallbackRoot = old }(fallbackRoot)
	fallbackRoot = root
	me := &runAsUser{uid: uint32(os.Geteuid()), gid: uint32(os.Getegid()), name: "me"}

	dir, err := fallbackCluster("/home/someone/tally/.data", me)
	require.NoError(t, err)
	require.Equal(t, root, filepath.Dir(dir))
	info, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), info.Mode().Perm())
	again, err := fallbackCluster("/home/someone/tally/.data", me)
	require.NoError(t, err)
	require.Equal(t, dir, again, "the same checkout finds the same directory")
	other, err := fallbackCluster("/home/someone/other/.data", me)
	require.NoError(t, err)
	require.NotEqual(t, dir, other, "each checkout has its own")

	hostile := filepath.Join(root, "planted")
	require.NoError(t, os.Mkdir(hostile, 0o700))
	require.NoError(t, os.Remove(other))
	require.NoError(t, os.Symlink(hostile, other))
	_, err = fallbackCluster("/home/someone/other/.data", me)
	require.ErrorContains(t, err, "is a symbolic link")
	require.ErrorContains(t, err, "remove it")
}

func TestRecoverPIDFile(t *testing.T) {
	t.Parallel()
	exited := exec.Command("true")
	require.NoError(t, exited.Run())
	for _, tc := range []struct {
		name    string
		content string
	}{
		{name: "names a process that has exited", content: strconv.Itoa(exited.Process.Pid) + "\n/x\n"},
		{name: "names a live process that is not PostgreSQL", content: strconv.Itoa(os.Getpid()) + "\n/x\n"},
		{name: "unreadable", content: "garbage\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cluster := t.TempDir()
			pidFile := filepath.Join(cluster, "postmaster.pid")
			require.NoError(t, os.WriteFile(pidFile, []byte(tc.content), 0o600))
			require.NoError(t, recoverPIDFile(context.Background(), cluster, quiet))
			require.NoFileExists(t, pidFile)
		})
	}
}

// tally dev killed with SIGKILL leaves its PostgreSQL running; the next start stops it and
// starts its own on the same cluster.
func TestStartPostgresStopsServerLeftRunning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dataDir := filepath.Join(reachableTempDir(t), ".data")
	orphan, err := StartPostgres(ctx, dataDir, quiet)
	require.NoError(t, err)
	t.Cleanup(func() { orphan.cmd.Process.Kill() }) //nolint:errcheck // stopped by the test unless it failed

	pg, err := StartPostgres(ctx, dataDir, quiet)
	require.NoError(t, err)
	require.Equal(t, orphan.Dir, pg.Dir)
	select {
	case <-orphan.Exited():
	default:
		t.Fatal("the server left running was not stopped")
	}
	conn, err := pgx.Connect(ctx, pg.URL)
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))
	require.NoError(t, pg.Stop(quiet))
	require.NoFileExists(t, filepath.Join(pg.Dir, "postmaster.pid"))
}

// Kill ends the server whole: the postmaster and its children, each of which runs in a
// session of its own, a backend serving a client included.
func TestKillEndsEveryProcess(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg, err := StartPostgres(ctx, filepath.Join(reachableTempDir(t), ".data"), quiet)
	require.NoError(t, err)
	conn, err := pgx.Connect(ctx, pg.URL)
	require.NoError(t, err)
	defer conn.Close(ctx) //nolint:errcheck // its server is gone
	var backend int
	require.NoError(t, conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend))
	children := childrenOf(t, pg.cmd.Process.Pid)
	require.Contains(t, children, backend)
	require.Greater(t, len(children), 1, "a checkpointer and others run beside the backend")

	require.NoError(t, pg.Kill())
	for _, pid := range append(children, pg.cmd.Process.Pid) {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err == nil { // reaped, or a zombie nobody reaps yet
			require.Contains(t, string(stat), ") Z ", "process %d of the killed server still runs", pid)
		}
	}
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	require.NoError(t, err)
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		child, err := strconv.Atoi(f)
		require.NoError(t, err)
		pids = append(pids, child)
	}
	return pids
}

func TestStartNATS(t *testing.T) {
	t.Parallel()
	ns, err := StartNATS(0, t.TempDir())
	require.NoError(t, err)
	defer ns.Shutdown()
	require.True(t, ns.JetStreamEnabled())
	require.NotContains(t, ns.ClientURL(), ":4222", "port 0 means any free port")
}
