package bench

import (
	"bufio"
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

// runExternal runs the --load-with command and returns how long it ran, the writes it logged,
// and how many answers it logged.
func (b *bench) runExternal(ctx context.Context) (time.Duration, []writeRecord, int64, error) {
	dir, err := os.MkdirTemp("", "tally-bench-")
	if err != nil {
		return 0, nil, 0, err
	}
	defer os.RemoveAll(dir)
	var ids strings.Builder
	for _, id := range b.users {
		fmt.Fprintln(&ids, id)
	}
	usersFile, prefix := filepath.Join(dir, "users"), filepath.Join(dir, "writes")
	if err := os.WriteFile(usersFile, []byte(ids.String()), 0o644); err != nil {
		return 0, nil, 0, err
	}
	cmd := exec.CommandContext(ctx, "sh", "-c", b.cfg.loadWith)
	cmd.Env = append(os.Environ(), "TALLY_URL="+b.cfg.urls[0], "TALLY_USERS="+usersFile, "TALLY_WRITES="+prefix)
	cmd.Stdout, cmd.Stderr = b.stderr, b.stderr
	started := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, nil, 0, fmt.Errorf("--load-with: %w", err)
	}
	elapsed := time.Since(started)
	logs, err := filepath.Glob(prefix + ".*")
	if err != nil {
		return 0, nil, 0, err
	}
	if len(logs) == 0 {
		return 0, nil, 0, errors.New("--load-with: the command logged no writes to $TALLY_WRITES.<thread>")
	}
	var writes []writeRecord
	var answers int64
	for _, path := range logs {
		w, n, err := readExternalLog(path)
		if err != nil {
			return 0, nil, 0, fmt.Errorf("%s: %w", filepath.Base(path), err)
		}
		writes, answers = append(writes, w...), answers+n
	}
	return elapsed, writes, answers, nil
}

// readExternalLog reads one log of a --load-with command. An answer of 200 or 402 carries the
// transaction, whose uid ties it to its write; other answers (a 5xx, say) leave the write's
// outcome unknown, as a client that gave up would.
func readExternalLog(path string) (writes []writeRecord, answers int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	index := map[string]int{}
	for {
		line, err := r.ReadString('\n')
		if errors.Is(err, io.EOF) && line == "" {
			return writes, answers, nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("a line cut short: %q", line)
		}
		fields := strings.Fields(line)
		switch {
		case len(fields) == 5 && fields[0] == "sent":
			user, err := strconv.ParseInt(fields[2], 10, 64)
			if err != nil {
				return nil, 0, fmt.Errorf("sent: user %q: %w", fields[2], err)
			}
			amount, err := client.ParseAmount(fields[4])
			if err != nil {
				return nil, 0, fmt.Errorf("sent: %w", err)
			}
			index[fields[1]] = len(writes)
			writes = append(writes, writeRecord{UID: fields[1], UserID: user, Type: fields[3], Amount: int64(amount)})
		case len(fields) == 3 && fields[0] == "answer":
			status, err1 := strconv.Atoi(fields[1])
			length, err2 := strconv.Atoi(fields[2])
			if err := errors.Join(err1, err2); err != nil {
				return nil, 0, fmt.Errorf("answer: %w", err)
			}
			body := make([]byte, length+1)
			if _, err := io.ReadFull(r, body); err != nil || body[length] != '\n' {
				return nil, 0, fmt.Errorf("answer: a body of %d bytes cut short", length)
			}
			answers++
			if status != http.StatusOK && status != http.StatusPaymentRequired {
				continue
			}
			uid, err := answeredUID(body[:length])
			if err != nil {
				return nil, 0, fmt.Errorf("answer %d: %w", status, err)
			}
			i, ok := index[uid]
			if !ok {
				return nil, 0, fmt.Errorf("an answer for uid %s, which was never sent", uid)
			}
			writes[i].Status, writes[i].Body = status, body[:length]
		default:
			return nil, 0, fmt.Errorf("not a log line: %q", line)
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
