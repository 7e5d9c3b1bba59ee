package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// TestMain doubles as the command testenv runs in these tests: with TESTENV_CHILD set, the
// test binary uses the services it was handed and prints their URLs.
func TestMain(m *testing.M) {
	if os.Getenv("TESTENV_CHILD") != "" {
		if err := useServices(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// useServices runs a query on TEST_DATABASE_URL and asks NATS_URL's JetStream for its
// account, then prints both URLs.
func useServices() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, os.Getenv("TEST_DATABASE_URL"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE child_made_this"); err != nil {
		return err
	}
	nc, err := nats.Connect(os.Getenv("NATS_URL"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if _, err := js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("JetStream: %w", err)
	}
	fmt.Printf("TEST_DATABASE_URL=%s\nNATS_URL=%s\n", os.Getenv("TEST_DATABASE_URL"), os.Getenv("NATS_URL"))
	return nil
}

// environ is this process's environment without the variables testenv looks at.
func environ(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TEST_DATABASE_URL=") && !strings.HasPrefix(kv, "NATS_URL=") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// silentAddr is a local address where nothing listens.
func silentAddr(t *testing.T) string {
	t.Helper()
	// Port 1 (tcpmux) is privileged and unused, so no test's server can take it between the
	// check below and the probe, as a free ephemeral port could be taken under load.
	const addr = "127.0.0.1:1"
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		conn.Close() //nolint:errcheck // only the answer mattered
	}
	require.Error(t, err, "something listens on %s", addr)
	return addr
}

// On a bare machine nothing answers on :5432 or :4222; the probes point at ports where
// nothing listens to stand in for that.
func TestStartsWhatIsMissing(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	code, err := run([]string{"-postgres", silentAddr(t), "-nats", silentAddr(t), "--", os.Args[0]},
		environ("TESTENV_CHILD=1"), &stdout, &stderr, nil)
	require.NoError(t, err, stderr.String())
	require.Equal(t, 0, code, "the child could not use the services: %s", stderr.String())
	require.Contains(t, stderr.String(), "started a private PostgreSQL")
	require.Contains(t, stderr.String(), "started an embedded NATS with JetStream")

	handed := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(stdout.String()), "\n") {
		k, v, _ := strings.Cut(line, "=")
		handed[k] = v
	}
	require.NotEmpty(t, handed["TEST_DATABASE_URL"], stdout.String())
	require.NotEmpty(t, handed["NATS_URL"], stdout.String())

	// Both were stopped when the child ended.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = pgx.Connect(ctx, handed["TEST_DATABASE_URL"])
	require.Error(t, err, "PostgreSQL still runs")
	_, err = nats.Connect(handed["NATS_URL"], nats.MaxReconnects(0))
	require.Error(t, err, "NATS still runs")
	dirs := regexp.MustCompile(`dir=(\S+)`).FindAllStringSubmatch(stderr.String(), -1)
	require.NotEmpty(t, dirs, stderr.String())
	for _, m := range dirs {
		require.NoDirExists(t, m[1], "the private cluster was not removed")
	}
}

func TestUsesWhatIsThere(t *testing.T) {
	t.Parallel()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { listener.Close() }) //nolint:errcheck // the test is over
	listening := listener.Addr().String()

	for _, tc := range []struct {
		name      string
		args, env []string
		want      string
	}{
		{name: "variables set", args: []string{"-postgres", silentAddr(t), "-nats", silentAddr(t)},
			env:  []string{"TEST_DATABASE_URL=postgres://given/db", "NATS_URL=nats://given:1"},
			want: "postgres://given/db|nats://given:1"},
		{name: "something answers on both ports", args: []string{"-postgres", listening, "-nats", listening},
			want: "|"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			args := append(tc.args, "--", "sh", "-c", `echo "$TEST_DATABASE_URL|$NATS_URL"`)
			code, err := run(args, environ(tc.env...), &stdout, &stderr, nil)
			require.NoError(t, err)
			require.Equal(t, 0, code)
			require.Equal(t, tc.want, strings.TrimSpace(stdout.String()))
			require.NotContains(t, stderr.String(), "started")
		})
	}
}

func TestExitCodeAndSignals(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	given := []string{"TEST_DATABASE_URL=postgres://given/db", "NATS_URL=nats://given:1"}

	code, err := run([]string{"--", "sh", "-c", "exit 3"}, environ(given...), &stdout, &stderr, nil)
	require.NoError(t, err)
	require.Equal(t, 3, code, "the command's exit code is testenv's")

	signals := make(chan os.Signal, 1)
	signals <- os.Interrupt
	code, err = run([]string{"--", "sh", "-c", `trap "exit 130" INT; while :; do sleep 0.05; done`},
		environ(given...), &stdout, &stderr, signals)
	require.NoError(t, err)
	require.Equal(t, 130, code, "a signal to testenv reaches the command")

	code, err = run(nil, environ(given...), &stdout, &stderr, nil)
	require.Error(t, err)
	require.Equal(t, 2, code)
}

func TestInstallCommandsSaysWhatIsMissing(t *testing.T) {
	t.Parallel()
	require.NoError(t, installCommands(context.Background(), []string{"sh"}, false, &bytes.Buffer{}))
	err := installCommands(context.Background(), []string{"sh", "tally-no-such-command"}, false, &bytes.Buffer{})
	require.ErrorContains(t, err, "sudo apt-get install -y tally-no-such-command")
}

func TestPythonModules(t *testing.T) {
	t.Parallel()
	fake := func(t *testing.T, exit int) string {
		path := filepath.Join(t.TempDir(), "python3")
		require.NoError(t, os.WriteFile(path, fmt.Appendf(nil, "#!/bin/sh\nexit %d\n", exit), 0o700))
		return path
	}
	for _, tc := range []struct {
		name    string
		exit    int
		problem string
	}{
		{name: "modules present", exit: 0},
		{name: "modules missing, not root", exit: 1, problem: "sudo apt-get install -y python3-pytest python3-requests"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := pythonModules(context.Background(), fake(t, tc.exit), false, &bytes.Buffer{})
			if tc.problem == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tc.problem)
			}
		})
	}
}
