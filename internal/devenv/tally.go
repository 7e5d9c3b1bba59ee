package devenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// StartTally runs `tally <command>` (the binary at tally) with env, its output in logPath, until the returned function
// stops it with SIGTERM.
func StartTally(ctx context.Context, tally, logPath string, env []string, command string) (func(), error) {
	out, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(context.WithoutCancel(ctx), tally, command)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close() //nolint:errcheck // nothing was written
		return nil, err
	}
	return func() {
		cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck // it may have exited
		cmd.Wait()                          //nolint:errcheck // its log says how it ended
		out.Close()                         //nolint:errcheck // nothing is left to write
	}, nil
}

// WaitReady waits up to 30 seconds for /readyz at base to answer 200.
func WaitReady(ctx context.Context, base string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close() //nolint:errcheck // only the status matters
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s was not ready within 30s", base)
}
