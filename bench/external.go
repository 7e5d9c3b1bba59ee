package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tally-ledger/tally/client"
)

// A load generator other than bench's own (--load-with) sends the load after bench's setup:
// wrk with bench/wrk-writes.lua, a client in C like pgbench, whose cost per request is a
// fraction of the Go client's. It gets, in its environment, the first URL (TALLY_URL), a file
// of the users' ids, one a line (TALLY_USERS), and a path prefix for its logs (TALLY_WRITES):
// one file per thread, of lines
//
//	sent <uid> <user id> <DEPOSIT|WITHDRAW> <amount>
//	answer <status> <length>
//	<body of that length>
//
// which become the run's writes, audited like bench's own.

// externalLog is what a --load-with command logged.
type externalLog struct {
	writes []writeRecord
	// answered counts the final answers (200 and 402), failed every other answer.
	answered, failed int64
	violations       []Violation // answers no write may get: a 4xx other than 402
}

// runExternal runs the --load-with command and returns how long it ran and what it logged.
func (b *bench) runExternal(ctx context.Context) (time.Duration, *externalLog, error) {
	dir, err := os.MkdirTemp("", "tally-bench-")
	if err != nil {
		return 0, nil, err
	}
	defer os.RemoveAll(dir) //nolint:errcheck // a temporary directory; nothing to do if it stays
	var ids strings.Builder
	for _, id := range b.users {
		fmt.Fprintln(&ids, id)
	}
	usersFile, prefix := filepath.Join(dir, "users"), filepath.Join(dir, "writes")
	if err := os.WriteFile(usersFile, []byte(ids.String()), 0o644); err != nil {
		return 0, nil, err
	}
	cmd := exec.CommandContext(ctx, "sh", "-c", b.cfg.loadWith)
	cmd.Env = append(os.Environ(), "TALLY_URL="+b.cfg.urls[0], "TALLY_USERS="+usersFile, "TALLY_WRITES="+prefix)
	cmd.Stdout, cmd.Stderr = b.stderr, b.stderr
	// An interrupt stops the whole command, not only its shell.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	started := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, nil, fmt.Errorf("--load-with: %w", err)
	}
	elapsed := time.Since(started)
	logs, err := filepath.Glob(prefix + ".*")
	if err != nil {
		return 0, nil, err
	}
	if len(logs) == 0 {
		return 0, nil, errors.New("--load-with: the command logged no writes to $TALLY_WRITES.<thread>")
	}
	all := &externalLog{}
	for _, path := range logs {
		l, err := readExternalLog(path)
		if err != nil {
			return 0, nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
		}
		all.writes, all.violations = append(all.writes, l.writes...), append(all.violations, l.violations...)
		all.answered, all.failed = all.answered+l.answered, all.failed+l.failed
	}
	return elapsed, all, nil
}

// readExternalLog reads one log of a --load-with command. An answer of 200 or 402 carries the
// transaction, whose uid ties it to its write; a 5xx leaves the write's outcome unknown, as a
// client that gave up would; any other 4xx is a violation, as for bench's own writes.
func readExternalLog(path string) (*externalLog, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() //nolint:errcheck // read only
	r := bufio.NewReader(f)
	l := &externalLog{}
	index := map[string]int{}
	for {
		line, err := r.ReadString('\n')
		if errors.Is(err, io.EOF) && line == "" {
			return l, nil
		}
		if err != nil {
			return nil, fmt.Errorf("a line cut short: %q", line)
		}
		fields := strings.Fields(line)
		switch {
		case len(fields) == 5 && fields[0] == "sent":
			user, err := strconv.ParseInt(fields[2], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("sent: user %q: %w", fields[2], err)
			}
			amount, err := client.ParseAmount(fields[4])
			if err != nil {
				return nil, fmt.Errorf("sent: %w", err)
			}
			index[fields[1]] = len(l.writes)
			l.writes = append(l.writes, writeRecord{UID: fields[1], UserID: user, Type: fields[3], Amount: int64(amount)})
		case len(fields) == 3 && fields[0] == "answer":
			status, err1 := strconv.Atoi(fields[1])
			length, err2 := strconv.Atoi(fields[2])
			if err := errors.Join(err1, err2); err != nil {
				return nil, fmt.Errorf("answer: %w", err)
			}
			body := make([]byte, length+1)
			if _, err := io.ReadFull(r, body); err != nil || body[length] != '\n' {
				return nil, fmt.Errorf("answer: a body of %d bytes cut short", length)
			}
			body = body[:length]
			switch {
			case status >= 400 && status < 500 && status != http.StatusPaymentRequired:
				l.failed++
				l.violations = append(l.violations, Violation{Check: "answer",
					Detail: fmt.Sprintf("unexpected %d: %s", status, bytes.TrimSpace(body))})
				continue
			case status != http.StatusOK && status != http.StatusPaymentRequired:
				l.failed++
				continue
			}
			l.answered++
			uid, err := answeredUID(body)
			if err != nil {
				return nil, fmt.Errorf("answer %d: %w", status, err)
			}
			i, ok := index[uid]
			if !ok {
				return nil, fmt.Errorf("an answer for uid %s, which was never sent", uid)
			}
			l.writes[i].Status, l.writes[i].Body = status, body
		default:
			return nil, fmt.Errorf("not a log line: %q", line)
		}
	}
}

// answeredUID is the uid of the transaction in a 200 answer, or in a 402 problem's
// "transaction" member.
func answeredUID(body []byte) (string, error) {
	var answer struct {
		UID         string `json:"uid"`
		Transaction struct {
			UID string `json:"uid"`
		} `json:"transaction"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		return "", err
	}
	if answer.UID == "" {
		answer.UID = answer.Transaction.UID
	}
	if answer.UID == "" {
		return "", errors.New("no transaction uid in the answer")
	}
	return answer.UID, nil
}
