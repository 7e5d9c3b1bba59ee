// Command testenv runs a command with the services tally's tests need, starting those that
// are missing, and stops them when the command ends, however it ends. `make test` runs the
// Go tests and the acceptance suite under it:
//
//	go run ./internal/testenv -python /usr/bin/python3 -- make gotest acceptance
//
// When TEST_DATABASE_URL is unset and nothing answers on 127.0.0.1:5432, it starts a private
// PostgreSQL cluster in a temporary directory and hands it to the command as
// TEST_DATABASE_URL; when NATS_URL is unset and nothing answers on 127.0.0.1:4222, it starts
// an embedded NATS with JetStream and hands it over as NATS_URL. Both are started by the same
// code as `tally dev` (internal/devenv). With -python it first makes sure that interpreter
// has pytest and requests.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tally-ledger/tally/internal/devenv"
)

func main() {
	// A terminal's Ctrl-C reaches the command too; testenv outlives it to stop the services.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	code, err := run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr, signals)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// run runs the command in args after "--" and returns its exit code. Signals received
// meanwhile are passed on to the command.
func run(args, environ []string, stdout, stderr io.Writer, signals <-chan os.Signal) (code int, err error) {
	flags := flag.NewFlagSet("testenv", flag.ContinueOnError)
	flags.SetOutput(stderr)
	pgProbe := flags.String("postgres", "127.0.0.1:5432", "where to look for a running PostgreSQL")
	natsProbe := flags.String("nats", "127.0.0.1:4222", "where to look for a running NATS")
	python := flags.String("python", "", "an interpreter that must have pytest and requests")
	commands := flags.String("commands", "", "commands the tests run, comma-separated, each installed from Debian's package of the same name when missing")
	citusWorkers := flags.Int("citus", 0, "start a private Citus cluster with this many workers instead of using a PostgreSQL")
	if err := flags.Parse(args); err != nil {
		return 2, err
	}
	command := flags.Args()
	if len(command) == 0 {
		return 2, errors.New("usage: testenv [-postgres host:port] [-nats host:port] [-python path] [-citus workers] -- command [args...]")
	}
	ctx := context.Background()
	if *python != "" {
		if err := pythonModules(ctx, *python, os.Geteuid() == 0, stderr); err != nil {
			return 1, err
		}
	}
	if *commands != "" {
		if err := installCommands(ctx, strings.Split(*commands, ","), os.Geteuid() == 0, stderr); err != nil {
			return 1, err
		}
	}
	getenv := func(key string) string {
		value := ""
		for _, kv := range environ {
			if k, v, ok := strings.Cut(kv, "="); ok && k == key {
				value = v // the last one wins, as for exec
			}
		}
		return value
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("from", "testenv")

	dir, err := os.MkdirTemp("", "tally-test-")
	if err != nil {
		return 1, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	// Run as root, PostgreSQL runs as another user, which must reach its cluster in here.
	if err := os.Chmod(dir, 0o755); err != nil {
		return 1, err
	}

	var env []string
	switch {
	case *citusWorkers > 0:
		c, err := devenv.StartCitus(ctx, dir, *citusWorkers, log)
		if err != nil {
			return 1, err
		}
		defer func() { err = errors.Join(err, c.Stop(log), removeMoved(c.Coordinator, dir)) }()
		workers := make([]string, len(c.Workers))
		for i, w := range c.Workers {
			workers[i] = w.AdminURL
			defer func() { err = errors.Join(err, removeMoved(w, dir)) }()
		}
		env = append(env, "TEST_DATABASE_URL="+c.Coordinator.AdminURL, "TEST_CITUS_WORKER_URLS="+strings.Join(workers, ","))
		log.Info("started a private Citus cluster", "TEST_DATABASE_URL", c.Coordinator.AdminURL, "TEST_CITUS_WORKER_URLS", strings.Join(workers, ","))
	case getenv("TEST_DATABASE_URL") == "" && !answers(ctx, *pgProbe):
		pg, err := devenv.StartPostgres(ctx, dir, log)
		if err != nil {
			return 1, err
		}
		defer func() { err = errors.Join(err, pg.Stop(log), removeMoved(pg, dir)) }()
		env = append(env, "TEST_DATABASE_URL="+pg.AdminURL)
		log.Info("nothing answers on "+*pgProbe+"; started a private PostgreSQL", "TEST_DATABASE_URL", pg.AdminURL)
	}
	if getenv("NATS_URL") == "" && !answers(ctx, *natsProbe) {
		ns, err := devenv.StartNATS(0, filepath.Join(dir, "nats"))
		if err != nil {
			return 1, err
		}
		defer ns.Shutdown()
		env = append(env, "NATS_URL="+ns.ClientURL())
		log.Info("nothing answers on "+*natsProbe+"; started an embedded NATS with JetStream", "NATS_URL", ns.ClientURL())
	}

	cmd := exec.Command(command[0], command[1:]...) //nolint:noctx // it ends by itself or by the signals passed on below
	cmd.Env = slices.Concat(environ, env)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	if err := cmd.Start(); err != nil {
		return 1, err
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	for {
		select {
		case sig := <-signals:
			cmd.Process.Signal(sig) //nolint:errcheck // it may have exited meanwhile
		case err := <-waited:
			var exit *exec.ExitError
			switch {
			case err == nil:
				return 0, nil
			case errors.As(err, &exit) && exit.ExitCode() > 0:
				return exit.ExitCode(), nil
			case errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled():
				// As a shell reports it.
				return 128 + int(exit.Sys().(syscall.WaitStatus).Signal()), nil
			default:
				return 1, fmt.Errorf("%s: %w", command[0], err)
			}
		}
	}
}

// removeMoved removes pg's cluster if it was kept outside dir, out of the user's reach.
func removeMoved(pg *devenv.Postgres, dir string) error {
	if strings.HasPrefix(pg.Dir, dir+string(filepath.Separator)) {
		return nil
	}
	return os.RemoveAll(pg.Dir)
}

// answers reports whether something accepts TCP connections at addr.
func answers(ctx context.Context, addr string) bool {
	conn, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	conn.Close() //nolint:errcheck // only the answer was wanted
	return true
}

// pythonModules makes sure python can import pytest and requests: as root it installs
// Debian's packages, otherwise it says the command to run.
func pythonModules(ctx context.Context, python string, root bool, stderr io.Writer) error {
	check := func() error {
		return exec.CommandContext(ctx, python, "-c", "import pytest, requests").Run()
	}
	if check() == nil {
		return nil
	}
	const packages = "python3-pytest python3-requests"
	if !root {
		return fmt.Errorf("%s cannot import pytest and requests, which the acceptance suite needs; install them with:\n"+
			"  sudo apt-get install -y %s", python, packages)
	}
	if err := aptInstall(ctx, strings.Fields(packages), stderr); err != nil {
		return err
	}
	return check()
}

// installCommands makes sure each command is on PATH: as root it installs Debian's package of
// the same name, otherwise it says the command to run.
func installCommands(ctx context.Context, commands []string, root bool, stderr io.Writer) error {
	var missing []string
	for _, c := range commands {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	switch {
	case len(missing) == 0:
		return nil
	case !root:
		return fmt.Errorf("the tests need %s; install with:\n  sudo apt-get install -y %s",
			strings.Join(missing, ", "), strings.Join(missing, " "))
	}
	return aptInstall(ctx, missing, stderr)
}

// aptInstall installs Debian's packages.
func aptInstall(ctx context.Context, packages []string, stderr io.Writer) error {
	fmt.Fprintf(stderr, "testenv: installing %s\n", strings.Join(packages, " "))
	for _, args := range [][]string{{"update", "-qq"}, append([]string{"install", "-y", "-qq"}, packages...)} {
		apt := exec.CommandContext(ctx, "apt-get", args...)
		apt.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		apt.Stdout, apt.Stderr = stderr, stderr
		if err := apt.Run(); err != nil {
			return fmt.Errorf("apt-get %s: %w", args[0], err)
		}
	}
	return nil
}
