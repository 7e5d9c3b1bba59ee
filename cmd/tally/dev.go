package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/tally-ledger/tally/postgres"
)

// dev runs the API with no setup: on DATABASE_URL if set, otherwise on a private PostgreSQL
// kept in cfg.devDataDir, with the demo data loaded into an empty database.
func dev(ctx context.Context, cfg config, log *slog.Logger, stderr io.Writer) error {
	if cfg.databaseURL != "" {
		return devServe(ctx, cfg, log, stderr, "database from DATABASE_URL", nil)
	}
	pg, err := startPostgres(ctx, cfg.devDataDir, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped with Ctrl-C while starting
		}
		return err
	}
	cfg.databaseURL = pg.url
	err = devServe(ctx, cfg, log, stderr, "data in "+filepath.Clean(cfg.devDataDir)+"/", pg.exited)
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil // stopped with Ctrl-C while migrating or loading the demo
	}
	return errors.Join(err, pg.stop(log))
}

// devServe migrates, loads the demo into a database without users, and serves until ctx
// ends or, when pgExited is not nil, the private PostgreSQL stops on its own.
func devServe(ctx context.Context, cfg config, log *slog.Logger, stderr io.Writer, where string, pgExited <-chan struct{}) error {
	if _, err := postgres.Migrate(ctx, cfg.databaseURL); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	cfg.migrateOnStart = false
	db, err := postgres.Open(ctx, cfg.databaseURL)
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
		ns, err := startNATS(filepath.Join(cfg.devDataDir, "nats"))
		if err != nil {
			return err
		}
		defer ns.Shutdown()
		cfg.natsURL = ns.ClientURL()
		where += ", events on " + cfg.natsURL
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
			fmt.Fprintf(stderr, "tally is running: API http://localhost:%s  Swagger UI http://localhost:%s/api/docs  %s (Ctrl-C to stop)\n",
				port, port, where)
		case <-pgExited:
			// The caller reports it, with the end of PostgreSQL's log.
			pgExited = nil
			cancel()
		case err := <-served:
			return err
		}
	}
}

// devPostgres is a PostgreSQL server started by dev.
type devPostgres struct {
	url     string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed when the server process has exited
}

// startPostgres starts a private PostgreSQL on a free local port with its data in
// dataDir/postgres, creating the cluster and the "tally" database when missing.
func startPostgres(ctx context.Context, dataDir string, log *slog.Logger) (*devPostgres, error) {
	bin, err := findPostgres(ctx)
	if err != nil {
		return nil, err
	}
	base, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, err
	}
	cluster := filepath.Join(base, "postgres")
	logPath := filepath.Join(base, "postgres.log")
	// The cluster's parents must stay searchable when PostgreSQL runs as another user.
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(cluster, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	cred, who, err := postgresCredential(cluster)
	if err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() //nolint:errcheck // the server writes through its own copy of the descriptor
	command := func(name string, args ...string) *exec.Cmd {
		// PostgreSQL outlives ctx: dev stops it itself once the API has drained.
		cmd := exec.CommandContext(context.WithoutCancel(ctx), filepath.Join(bin, name), args...)
		cmd.Dir = cluster
		cmd.Stdout, cmd.Stderr = logFile, logFile
		// Its own process group keeps a terminal's Ctrl-C away from PostgreSQL, so the API
		// drains its requests before dev stops the database.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
		return cmd
	}

	if _, err := os.Stat(filepath.Join(cluster, "PG_VERSION")); errors.Is(err, fs.ErrNotExist) {
		log.Info("creating a PostgreSQL cluster", "dir", cluster, "user", who)
		if err := command("initdb", "-D", cluster, "-A", "trust", "-U", "postgres", "--encoding=UTF8", "--no-locale").Run(); err != nil {
			return nil, postgresFailed(fmt.Errorf("initdb failed: %w", err), logPath, who)
		}
	}

	port, err := freePort(ctx)
	if err != nil {
		return nil, err
	}
	cmd := command("postgres", "-D", cluster, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=")
	if err := cmd.Start(); err != nil {
		return nil, postgresFailed(fmt.Errorf("start PostgreSQL: %w", err), logPath, who)
	}
	pg := &devPostgres{
		url:     fmt.Sprintf("postgres://postgres@127.0.0.1:%d/tally?sslmode=disable", port),
		cmd:     cmd,
		logPath: logPath,
		exited:  make(chan struct{}),
	}
	go func() {
		cmd.Wait() //nolint:errcheck // how it ended is in its log
		close(pg.exited)
	}()
	log.Info("PostgreSQL started", "pid", cmd.Process.Pid, "port", port, "log", logPath)
	adminURL := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	if err := createDevDatabase(ctx, adminURL, pg.exited); err != nil {
		err = postgresFailed(fmt.Errorf("PostgreSQL failed: %w", err), logPath, who)
		select {
		case <-pg.exited: // err already ends with its log
		default:
			err = errors.Join(err, pg.stop(log))
		}
		return nil, err
	}
	return pg, nil
}

// stop shuts PostgreSQL down with a fast shutdown, which rolls back open transactions and
// keeps everything committed, and kills it if it has not stopped within 10 seconds.
func (pg *devPostgres) stop(log *slog.Logger) error {
	select {
	case <-pg.exited:
		return postgresFailed(errors.New("PostgreSQL stopped unexpectedly"), pg.logPath, "")
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

// createDevDatabase waits up to 30 seconds for the server to accept connections, then
// creates the "tally" database if it is missing.
func createDevDatabase(ctx context.Context, adminURL string, exited <-chan struct{}) error {
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

// postgresCredential chooses who runs PostgreSQL. initdb and postgres refuse to run as root,
// so root runs them as the owner of an existing cluster, else as "postgres" or "nobody", and
// hands the cluster directory to that user.
func postgresCredential(cluster string) (*syscall.Credential, string, error) {
	if os.Geteuid() != 0 {
		return nil, "", nil
	}
	info, err := os.Stat(cluster)
	if err != nil {
		return nil, "", err
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
		who := strconv.Itoa(int(st.Uid))
		if u, err := user.LookupId(who); err == nil {
			who = u.Username
		}
		return &syscall.Credential{Uid: st.Uid, Gid: st.Gid}, who, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		if u, err = user.Lookup("nobody"); err != nil {
			return nil, "", errors.New(`running as root, but neither user "postgres" nor "nobody" exists to run PostgreSQL`)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, "", err
	}
	err = filepath.WalkDir(cluster, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(uid), int(gid))
	})
	if err != nil {
		return nil, "", fmt.Errorf("hand %s to user %s: %w", cluster, u.Username, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, u.Username, nil
}

// postgresFailed adds to err the end of PostgreSQL's log, where the reason is.
func postgresFailed(err error, logPath, who string) error {
	tail := logTail(logPath, 10)
	msg := err.Error()
	if who != "" && strings.Contains(strings.ToLower(msg+tail), "permission denied") {
		msg += fmt.Sprintf("\nuser %s was denied access to the data directory: every directory on the way to %s must be "+
			"searchable by it (chmod o+x), or set DEV_DATA_DIR to a directory it can reach", who, filepath.Join(filepath.Dir(logPath), "postgres"))
	}
	if tail != "" {
		msg += "\nlast lines of " + logPath + ":\n" + tail
	}
	return errors.New(msg)
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

// freePort asks the kernel for a free local port.
func freePort(ctx context.Context) (int, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close() //nolint:errcheck // only its port number was wanted
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startNATS runs an embedded NATS server with JetStream on a free local port, so that the
// whole event pipeline runs with nothing installed.
func startNATS(storeDir string) (*natsserver.Server, error) {
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: storeDir, NoSigs: true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded NATS did not start within 10s")
	}
	return ns, nil
}
