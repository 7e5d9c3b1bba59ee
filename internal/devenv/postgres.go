// Package devenv starts what tally needs on a machine where nothing runs: a private
// PostgreSQL cluster and an embedded NATS server with JetStream. `tally dev` and the test
// wrapper (internal/testenv) both use it, so `make run` and `make test` start services the
// same way.
package devenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// fallbackRoot is where a cluster goes when the user running PostgreSQL cannot reach the
// data directory. /var/tmp survives reboots, so the next start finds the cluster again.
var fallbackRoot = "/var/tmp"

// Postgres is a private PostgreSQL server started by StartPostgres.
type Postgres struct {
	// URL is the "tally" database on this server.
	URL string
	// AdminURL is the "postgres" database, for creating and dropping databases.
	AdminURL string
	// Dir is the cluster's data directory.
	Dir string
	// Port is the TCP port it listens on at 127.0.0.1.
	Port int

	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed when the server process has exited
}

// Exited is closed when the server process has exited, asked to or not.
func (pg *Postgres) Exited() <-chan struct{} { return pg.exited }

// StartPostgres starts a private PostgreSQL on a free local port with its cluster in
// dataDir/postgres (or, when the user running it cannot reach that, in a directory of its
// own under /var/tmp), creating the cluster and the "tally" database when missing.
func StartPostgres(ctx context.Context, dataDir string, log *slog.Logger) (*Postgres, error) {
	return startPostgres(ctx, dataDir, 0, log, func(command commandFunc, cluster string) error {
		log.Info("creating a PostgreSQL cluster", "dir", cluster)
		if err := command(cluster, "initdb", "-D", cluster, "-A", "trust", "-U", "postgres", "--encoding=UTF8", "--no-locale").Run(); err != nil {
			return fmt.Errorf("initdb failed: %w", err)
		}
		return nil
	})
}

// commandFunc prepares one of PostgreSQL's programs to run in dir as the cluster's user.
type commandFunc func(dir, name string, args ...string) *exec.Cmd

// startPostgres starts a server on the cluster in dataDir/postgres, which create makes when
// it holds none yet, and waits until it accepts connections and has the "tally" database. It
// listens on port, or on a free port when port is 0.
func startPostgres(ctx context.Context, dataDir string, port int, log *slog.Logger, create func(command commandFunc, cluster string) error) (*Postgres, error) {
	bin, err := findPostgres(ctx)
	if err != nil {
		return nil, err
	}
	base, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(base, "postgres.log")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	cluster := filepath.Join(base, "postgres")
	if err := os.Mkdir(cluster, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	runAs, err := postgresUser(cluster)
	if err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() //nolint:errcheck // the server writes through its own copy of the descriptor
	command := func(dir, name string, args ...string) *exec.Cmd {
		// PostgreSQL outlives ctx: its owner stops it itself once the API has drained.
		cmd := exec.CommandContext(context.WithoutCancel(ctx), filepath.Join(bin, name), args...)
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = logFile, logFile
		// Its own process group keeps a terminal's Ctrl-C away from PostgreSQL, so the API
		// drains its requests before the database is stopped.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: runAs.credential()}
		return cmd
	}

	if runAs != nil {
		if err := runAs.own(cluster); err != nil {
			return nil, err
		}
		// The kernel is the judge of whether that user can reach the cluster: every directory
		// on the way must be searchable by it, and a home of mode 0700 is not.
		probe := command(cluster, "postgres", "--version")
		probe.Stdout = nil
		if err := probe.Run(); err != nil {
			moved, err := fallbackCluster(base, runAs)
			if err != nil {
				return nil, err
			}
			log.Info("user "+runAs.name+" cannot reach the data directory; the PostgreSQL cluster is kept elsewhere",
				"unreachable", cluster, "dir", moved)
			cluster = moved
		}
	}

	if _, err := os.Stat(filepath.Join(cluster, "PG_VERSION")); errors.Is(err, fs.ErrNotExist) {
		if err := create(command, cluster); err != nil {
			return nil, postgresFailed(err, logPath)
		}
	}
	if err := recoverPIDFile(ctx, cluster, log); err != nil {
		return nil, err
	}

	if port == 0 {
		if port, err = FreePort(ctx); err != nil {
			return nil, err
		}
	}
	cmd := command(cluster, "postgres", "-D", cluster, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=")
	if err := cmd.Start(); err != nil {
		return nil, postgresFailed(fmt.Errorf("start PostgreSQL: %w", err), logPath)
	}
	pg := &Postgres{
		URL:      fmt.Sprintf("postgres://postgres@127.0.0.1:%d/tally?sslmode=disable", port),
		AdminURL: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port),
		Dir:      cluster,
		Port:     port,
		cmd:      cmd,
		logPath:  logPath,
		exited:   make(chan struct{}),
	}
	go func() {
		cmd.Wait() //nolint:errcheck // how it ended is in its log
		close(pg.exited)
	}()
	log.Info("PostgreSQL started", "pid", cmd.Process.Pid, "port", port, "dir", cluster, "log", logPath)
	if err := createDatabase(ctx, pg.AdminURL, pg.exited); err != nil {
		err = postgresFailed(fmt.Errorf("PostgreSQL failed: %w", err), logPath)
		select {
		case <-pg.exited: // err already ends with its log
		default:
			err = errors.Join(err, pg.Stop(log))
		}
		return nil, err
	}
	return pg, nil
}

// Stop shuts PostgreSQL down with a fast shutdown, which rolls back open transactions and
// keeps everything committed, and kills it if it has not stopped within 10 seconds.
func (pg *Postgres) Stop(log *slog.Logger) error {
	select {
	case <-pg.exited:
		return postgresFailed(errors.New("PostgreSQL stopped unexpectedly"), pg.logPath)
	default:
	}
	if err := pg.cmd.Process.Signal(syscall.SIGINT); err != nil {
		return err
	}
	select {
	case <-pg.exited:
		log.Info("PostgreSQL stopped")
		return nil
	case <-time.After(10 * time.Second):
	}
	pg.cmd.Process.Kill() //nolint:errcheck // it may have exited meanwhile
	<-pg.exited
	return errors.New("PostgreSQL did not stop within 10s and was killed")
}

// createDatabase waits up to 30 seconds for the server to accept connections, then creates
// the "tally" database if it is missing.
func createDatabase(ctx context.Context, adminURL string, exited <-chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	var conn *pgx.Conn
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var err error
		conn, err = pgx.Connect(attemptCtx, adminURL)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("it did not accept connections within 30s: %w", err)
		}
		select {
		case <-exited:
			return errors.New("it exited while starting")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tally')").Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	_, err := conn.Exec(ctx, "CREATE DATABASE tally")
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database
		return nil
	}
	return err
}

// findPostgres returns the directory holding the PostgreSQL server binaries.
func findPostgres(ctx context.Context) (string, error) {
	has := func(dir string) bool {
		for _, name := range []string{"postgres", "initdb"} {
			if info, err := os.Stat(filepath.Join(dir, name)); err != nil || info.IsDir() {
				return false
			}
		}
		return true
	}
	if out, err := exec.CommandContext(ctx, "pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); has(dir) {
			return dir, nil
		}
	}
	// Debian and Ubuntu install servers side by side and keep them off PATH.
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return debianVersion(dirs[i]) > debianVersion(dirs[j]) })
	for _, dir := range dirs {
		if has(dir) {
			return dir, nil
		}
	}
	if path, err := exec.LookPath("postgres"); err == nil {
		if dir := filepath.Dir(path); has(dir) {
			return dir, nil
		}
	}
	return "", errors.New("PostgreSQL server binaries not found: install them (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql) or set DATABASE_URL")
}

// debianVersion reads the major version from /usr/lib/postgresql/<version>/bin.
func debianVersion(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

// runAsUser is the unprivileged user root runs PostgreSQL as.
type runAsUser struct {
	uid, gid uint32
	name     string
}

func (u *runAsUser) credential() *syscall.Credential {
	if u == nil {
		return nil
	}
	return &syscall.Credential{Uid: u.uid, Gid: u.gid}
}

func (u *runAsUser) String() string {
	if u == nil {
		return strconv.Itoa(os.Geteuid())
	}
	return u.name
}

// own hands dir and everything in it to the user.
func (u *runAsUser) own(dir string) error {
	err := filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(u.uid), int(u.gid))
	})
	if err != nil {
		return fmt.Errorf("hand %s to user %s: %w", dir, u.name, err)
	}
	return nil
}

// postgresUser chooses who runs PostgreSQL: nil (this process's user) unless running as
// root, which initdb and postgres refuse. Root runs them as the owner of an existing cluster,
// else as "postgres" or "nobody".
func postgresUser(cluster string) (*runAsUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	info, err := os.Stat(cluster)
	if err != nil {
		return nil, err
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
		name := strconv.Itoa(int(st.Uid))
		if u, err := user.LookupId(name); err == nil {
			name = u.Username
		}
		return &runAsUser{uid: st.Uid, gid: st.Gid, name: name}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		if u, err = user.Lookup("nobody"); err != nil {
			return nil, errors.New(`running as root, but neither user "postgres" nor "nobody" exists to run PostgreSQL`)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	return &runAsUser{uid: uint32(uid), gid: uint32(gid), name: u.Username}, nil
}

// fallbackCluster returns the cluster directory for a checkout whose data directory base the
// user cannot reach: <fallbackRoot>/tally-dev-<hash of base>, the same on every start,
// created for the user with mode 0700 when missing. The parent is world-writable, so anyone
// could have made that name first: a directory that is not a plain one owned by the user
// and private to it is refused, never used.
func fallbackCluster(base string, u *runAsUser) (string, error) {
	sum := sha256.Sum256([]byte(base))
	dir := filepath.Join(fallbackRoot, "tally-dev-"+hex.EncodeToString(sum[:6]))
	err := os.Mkdir(dir, 0o700)
	switch {
	case err == nil:
		// Root owns it until this chown, so nobody can swap it in the meantime.
		if err := os.Lchown(dir, int(u.uid), int(u.gid)); err != nil {
			return "", fmt.Errorf("hand %s to user %s: %w", dir, u.name, err)
		}
		return dir, nil
	case !errors.Is(err, fs.ErrExist):
		return "", err
	}
	if err := checkPrivateDir(dir, u.uid); err != nil {
		return "", fmt.Errorf("user %s cannot reach %s, and %w; remove it, or set DEV_DATA_DIR to a directory every user can reach", u.name, base, err)
	}
	return dir, nil
}

// checkPrivateDir says why dir is not a directory owned by uid that no one else may enter.
func checkPrivateDir(dir string, uid uint32) error {
	info, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	switch {
	case info.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link", dir)
	case !info.IsDir():
		return fmt.Errorf("%s is not a directory", dir)
	case !ok || st.Uid != uid:
		return fmt.Errorf("%s is not owned by uid %d", dir, uid)
	case info.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%s has mode %o; PostgreSQL needs 0700", dir, info.Mode().Perm())
	}
	return nil
}

// recoverPIDFile clears the way for a new server when a killed owner left postmaster.pid
// behind. If the file names a PostgreSQL still serving this cluster (its owner was killed
// and it outlived it), that server is stopped with a fast shutdown; if it names any other
// process or none, the file is stale and removed. PostgreSQL would refuse to start on a
// stale file whose pid now belongs to an unrelated process it may not signal.
func recoverPIDFile(ctx context.Context, cluster string, log *slog.Logger) error {
	pidFile := filepath.Join(cluster, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pid, ok := pidOf(b)
	if !ok {
		log.Info("removing an unreadable postmaster.pid", "file", pidFile)
		return os.Remove(pidFile)
	}
	if !servesCluster(pid, cluster) {
		log.Info("removing a stale postmaster.pid", "file", pidFile, "pid", pid)
		return removeIfPresent(pidFile)
	}
	log.Info("stopping a PostgreSQL left running on this cluster", "pid", pid, "dir", cluster)
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop the PostgreSQL left running on %s (pid %d): %w", cluster, pid, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for servesCluster(pid, cluster) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the PostgreSQL left running on %s (pid %d) did not stop within 30s", cluster, pid)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	// A clean shutdown removes the file itself; one that was a zombie already may not have.
	return removeIfPresent(pidFile)
}

// pidOf reads the postmaster's pid, the first line of postmaster.pid.
func pidOf(pidFile []byte) (int, bool) {
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(pidFile), "\n", 2)[0]))
	return pid, err == nil && pid > 0
}

// servesCluster reports whether pid is a live (not zombie) postgres whose working directory
// is cluster; PostgreSQL changes into its data directory on start.
func servesCluster(pid int, cluster string) bool {
	proc := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(proc + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses, which may itself hold ") ".
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	cwd, err := os.Readlink(proc + "/cwd")
	if err != nil {
		return false
	}
	exe, err := os.Readlink(proc + "/exe")
	return err == nil && filepath.Base(exe) == "postgres" && filepath.Clean(cwd) == filepath.Clean(cluster)
}

func removeIfPresent(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// postgresFailed adds to err the end of PostgreSQL's log, where the reason is.
func postgresFailed(err error, logPath string) error {
	tail := logTail(logPath, 10)
	if tail == "" {
		return err
	}
	return fmt.Errorf("%w\nlast lines of %s:\n%s", err, logPath, tail)
}

// logTail returns the last n lines of a file, or "" if it cannot be read.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// FreePort asks the kernel for a free local port.
func FreePort(ctx context.Context) (int, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close() //nolint:errcheck // only its port number was wanted
	return ln.Addr().(*net.TCPAddr).Port, nil
}
