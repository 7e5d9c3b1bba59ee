package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/tally-ledger/tally/ledger"
)

// op is one kind of request the load generator sends.
type op int

const (
	opDeposit op = iota
	opWithdraw
	opBalance
	opBalanceAt
	opReplay // a write sent again with the same uid and body, as a client retry would
	numOps
)

var opNames = [numOps]string{"deposit", "withdraw", "balance", "balance_at", "replay"}

// writeRecord is one write as the client saw it; the audit checks the database against it.
type writeRecord struct {
	UID       string `json:"uid"`
	UserID    int64  `json:"user_id"`
	Type      string `json:"type"`
	Amount    int64  `json:"amount"`              // minor units
	Timestamp string `json:"timestamp,omitempty"` // as sent; empty when omitted
	// Status is the first final answer's status: 200 or 402 acknowledge the write; 0 (no
	// answer) or a 5xx after the last attempt leave its outcome unknown.
	Status int `json:"status"`
	// Body is the first answer's body, kept for 200 and 402: every replay must equal it.
	Body []byte `json:"body,omitempty"`
}

// acknowledged reports whether the service gave a final answer that the audit can hold it to.
func (w writeRecord) acknowledged() bool {
	return w.Status == http.StatusOK || w.Status == http.StatusPaymentRequired
}

// requestBody is the JSON the write was sent with, the same bytes on every attempt.
func (w writeRecord) requestBody() []byte {
	b := fmt.Appendf(nil, `{"uid":%q,"user_id":%d,"type":%q,"amount":%q`,
		w.UID, w.UserID, w.Type, ledger.Amount(w.Amount).String())
	if w.Timestamp != "" {
		b = fmt.Appendf(b, `,"timestamp":%q`, w.Timestamp)
	}
	return append(b, '}')
}

// response is an answer read in full.
type response struct {
	status   int
	replayed bool
	body     []byte
	attempts int
}

// send makes one logical request: it is sent again, to the next base URL, after a network
// error, a timeout, a 429 or a 5xx, with the same bytes (for a write: the same uid), until it
// gets another answer or runs out of attempts. retry false sends again only when the
// connection could not be made, for requests without an idempotency key.
func (b *bench) send(ctx context.Context, method, path string, body []byte, retry bool) (response, error) {
	var res response
	var err error
	for res.attempts < b.cfg.maxAttempts {
		if res.attempts > 0 {
			delay := min(b.cfg.retryDelay<<(res.attempts-1), time.Second)
			timer := time.NewTimer(delay/2 + rand.N(delay/2+1))
			select {
			case <-ctx.Done():
				timer.Stop()
				return res, ctx.Err()
			case <-timer.C:
			}
		}
		res.attempts++
		var status int
		var header http.Header
		var answer []byte
		status, header, answer, err = b.attempt(ctx, method, path, body)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return res, err
			}
			// Without an idempotency key, only a request that never left may be sent again.
			var op *net.OpError
			if neverSent := errors.As(err, &op) && op.Op == "dial"; !retry && !neverSent {
				return res, err
			}
		case status >= 500 || status == http.StatusTooManyRequests:
			err = fmt.Errorf("%s %s: %d %s", method, path, status, bytes.TrimSpace(answer))
			res.status = status
			if !retry {
				return res, err
			}
		default:
			return response{status: status, replayed: header.Get("Idempotent-Replayed") == "true", body: answer, attempts: res.attempts}, nil
		}
	}
	return res, err
}

// attempt is one try at one base URL, bounded by the attempt timeout.
func (b *bench) attempt(ctx context.Context, method, path string, body []byte) (int, http.Header, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.timeout)
	defer cancel()
	base := b.cfg.urls[(b.next.Add(1)-1)%uint64(len(b.cfg.urls))]
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, reader)
	if err != nil {
		return 0, nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, err
	}
	return resp.StatusCode, resp.Header, answer, nil
}

// createUser creates one user; it is not retried once the request may have arrived, since a
// user has no idempotency key.
func (b *bench) createUser(ctx context.Context, name string) (int64, error) {
	res, err := b.send(ctx, http.MethodPost, "/v1/user", fmt.Appendf(nil, `{"name":%q}`, name), false)
	if err != nil {
		return 0, err
	}
	if res.status != http.StatusCreated {
		return 0, fmt.Errorf("create user: %d %s", res.status, bytes.TrimSpace(res.body))
	}
	var u struct {
		ID int64 `json:"id"`
	}
	if err := json.Unmarshal(res.body, &u); err != nil {
		return 0, fmt.Errorf("create user: %w", err)
	}
	return u.ID, nil
}

// balance reads a user's balance through the API, now or at an instant.
func (b *bench) balance(ctx context.Context, userID int64, at string) (int64, error) {
	path := "/v1/user/" + strconv.FormatInt(userID, 10) + "/balance"
	if at != "" {
		path += "?date=" + url.QueryEscape(at)
	}
	res, err := b.send(ctx, http.MethodGet, path, nil, true)
	if err != nil {
		return 0, err
	}
	if res.status != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %d %s", path, res.status, bytes.TrimSpace(res.body))
	}
	var body struct {
		Balance string `json:"balance"`
	}
	if err := json.Unmarshal(res.body, &body); err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	return parseCents(body.Balance)
}

// parseCents reads an amount as tally writes it, "123.45", into minor units.
func parseCents(s string) (int64, error) {
	whole, frac, ok := strings.Cut(s, ".")
	w, err1 := strconv.ParseInt(whole, 10, 64)
	f, err2 := strconv.ParseInt(frac, 10, 64)
	if !ok || len(frac) != 2 || err1 != nil || err2 != nil || f < 0 {
		return 0, fmt.Errorf("amount %q is not in the form 123.45", s)
	}
	return w*100 + f, nil
}

// recorder collects latencies and statuses from every worker, and the per-second series.
type recorder struct {
	mu  sync.Mutex
	ops [numOps]opTally
	// The current second's requests, for the progress line and the time series.
	second         Histogram
	secondRequests int64
	secondErrors   int64
	series         []secondPoint
}

type opTally struct {
	latency  Histogram
	statuses map[int]int64 // 0: no answer
	errors   int64
	retries  int64 // attempts beyond the first
}

// secondPoint is one second of the run, for plotting.
type secondPoint struct {
	T          float64 `json:"t"` // seconds since the load started, at the end of the interval
	Requests   int64   `json:"requests"`
	Throughput float64 `json:"throughput"`
	Errors     int64   `json:"errors"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
}

// failed says whether an answer counts as an error: no answer, a 5xx, or a 4xx the workload
// never provokes (a 402 refusal is an expected outcome).
func failed(status int) bool {
	return status == 0 || (status >= 400 && status != http.StatusPaymentRequired)
}

func (r *recorder) record(o op, status int, latency time.Duration, attempts int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := &r.ops[o]
	if t.statuses == nil {
		t.statuses = map[int]int64{}
	}
	t.latency.Record(latency)
	t.statuses[status]++
	t.retries += int64(max(attempts-1, 0))
	r.second.Record(latency)
	r.secondRequests++
	if failed(status) {
		t.errors++
		r.secondErrors++
	}
}

// tick closes the current second and returns it.
func (r *recorder) tick(elapsed, interval time.Duration) secondPoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := secondPoint{
		T: elapsed.Seconds(), Requests: r.secondRequests, Errors: r.secondErrors,
		Throughput: float64(r.secondRequests) / interval.Seconds(),
		P50Ms:      ms(r.second.Percentile(50)), P99Ms: ms(r.second.Percentile(99)),
	}
	r.series = append(r.series, p)
	r.second.Reset()
	r.secondRequests, r.secondErrors = 0, 0
	return p
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// worker sends requests one at a time and keeps what it saw.
type worker struct {
	b          *bench
	id         int
	rng        *rand.Rand
	writes     []writeRecord
	violations []Violation
}

// loop runs the worker until end: back to back (closed loop), or at its share of the rate on
// a fixed schedule (open loop), where latency counts from the scheduled instant, so that a
// slow answer delays no measurement (no coordinated omission).
func (w *worker) loop(ctx context.Context, start, end time.Time) {
	cfg := w.b.cfg
	for k := 0; ctx.Err() == nil; k++ {
		var intended time.Time
		if cfg.rate > 0 {
			offset := float64(k*cfg.workers+w.id) / cfg.rate
			intended = start.Add(time.Duration(offset * float64(time.Second)))
			if !intended.Before(end) {
				return
			}
			if wait := time.Until(intended); wait > 0 {
				timer := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					timer.Stop()
					return
				case <-timer.C:
				}
			}
		} else {
			intended = time.Now()
			if !intended.Before(end) {
				return
			}
		}
		w.one(ctx, intended)
	}
}

// one sends one request of the workload mix.
func (w *worker) one(ctx context.Context, intended time.Time) {
	cfg := w.b.cfg
	user := w.pickUser()
	x := w.rng.Float64() * cfg.mixTotal
	switch {
	case x < cfg.mix[opDeposit]:
		w.write(ctx, intended, opDeposit, user)
	case x < cfg.mix[opDeposit]+cfg.mix[opWithdraw]:
		w.write(ctx, intended, opWithdraw, user)
	case x < cfg.mix[opDeposit]+cfg.mix[opWithdraw]+cfg.mix[opBalance]:
		w.read(ctx, intended, opBalance, user, "")
	default:
		at := time.Now().Add(-time.Duration(w.rng.Int64N(int64(cfg.backdateMax) + 1)))
		w.read(ctx, intended, opBalanceAt, user, ledger.FormatTime(at))
	}
}

// pickUser draws a user: from the hot set with probability hot-share, otherwise from the rest.
func (w *worker) pickUser() int64 {
	users, hot := w.b.users, w.b.cfg.hotUsers
	if hot == 0 || hot >= len(users) {
		return users[w.rng.IntN(len(users))]
	}
	if w.rng.Float64() < w.b.cfg.hotShare {
		return users[w.rng.IntN(hot)]
	}
	return users[hot+w.rng.IntN(len(users)-hot)]
}

func (w *worker) read(ctx context.Context, intended time.Time, o op, user int64, at string) {
	path := "/v1/user/" + strconv.FormatInt(user, 10) + "/balance"
	if at != "" {
		path += "?date=" + url.QueryEscape(at)
	}
	res, _ := w.b.send(ctx, http.MethodGet, path, nil, true)
	w.b.rec.record(o, res.status, time.Since(intended), res.attempts)
}

func (w *worker) write(ctx context.Context, intended time.Time, o op, user int64) {
	cfg := w.b.cfg
	rec := writeRecord{UID: uuid.NewString(), UserID: user, Type: "DEPOSIT", Amount: 1 + w.rng.Int64N(cfg.amountMax)}
	if o == opWithdraw {
		rec.Type = "WITHDRAW"
	}
	if w.rng.Float64() < cfg.backdateShare {
		rec.Timestamp = ledger.FormatTime(time.Now().Add(-time.Duration(w.rng.Int64N(int64(cfg.backdateMax)) + 1)))
	}
	body := rec.requestBody()
	res, _ := w.b.send(ctx, http.MethodPost, "/v1/transaction", body, true)
	w.b.rec.record(o, res.status, time.Since(intended), res.attempts)
	rec.Status = res.status
	if rec.acknowledged() {
		rec.Body = res.body
	} else if res.status >= 400 && res.status < 500 {
		w.violations = append(w.violations, Violation{Check: "answer", UID: rec.UID, UserID: user,
			Detail: fmt.Sprintf("unexpected %d: %s", res.status, bytes.TrimSpace(res.body))})
	}
	w.writes = append(w.writes, rec)
	if rec.acknowledged() && w.rng.Float64() < cfg.retryShare {
		w.replay(ctx, rec, body)
	}
}

// replay sends an answered write again and requires the first answer back, marked replayed.
func (w *worker) replay(ctx context.Context, rec writeRecord, body []byte) {
	start := time.Now()
	res, err := w.b.send(ctx, http.MethodPost, "/v1/transaction", body, true)
	w.b.rec.record(opReplay, res.status, time.Since(start), res.attempts)
	if err != nil {
		return // no answer: the service may be overloaded; nothing to hold it to
	}
	if v := checkReplay(rec, res); v != "" {
		w.violations = append(w.violations, Violation{Check: "replay", UID: rec.UID, UserID: rec.UserID, Detail: v})
	}
}

// checkReplay compares the answer to a repeated write with the first one; "" when they agree.
func checkReplay(rec writeRecord, res response) string {
	switch {
	case res.status != rec.Status:
		return fmt.Sprintf("first answer %d, the repeat got %d: %s", rec.Status, res.status, bytes.TrimSpace(res.body))
	case !res.replayed:
		return "the repeat was not marked Idempotent-Replayed: true"
	case !bytes.Equal(res.body, rec.Body):
		return fmt.Sprintf("the repeat's body differs from the first answer: first %s, repeat %s",
			bytes.TrimSpace(rec.Body), bytes.TrimSpace(res.body))
	}
	return ""
}

// runWorkers runs the load phase, printing a progress line every second.
func (b *bench) runWorkers(ctx context.Context) (time.Duration, []writeRecord, []Violation) {
	start := time.Now()
	end := start.Add(b.cfg.duration)
	workers := make([]*worker, b.cfg.workers)
	var wg sync.WaitGroup
	for i := range workers {
		workers[i] = &worker{b: b, id: i, rng: rand.New(rand.NewPCG(uint64(start.UnixNano()), uint64(i)))}
		wg.Go(func() { workers[i].loop(ctx, start, end) })
	}
	done := make(chan struct{})
	var progress sync.WaitGroup
	var finished atomic.Bool
	progress.Go(func() {
		ticker := time.NewTicker(time.Second)
		defer ticker.Stop()
		last := start
		for {
			select {
			case <-done:
				now := time.Now()
				if now.Sub(last) > 10*time.Millisecond {
					b.rec.tick(now.Sub(start), now.Sub(last))
				}
				return
			case now := <-ticker.C:
				p := b.rec.tick(now.Sub(start), now.Sub(last))
				last = now
				if !finished.Load() {
					fmt.Fprintf(b.stderr, "%5.0fs %8.0f req/s  errors %-5d p50 %7.2fms  p99 %7.2fms\n",
						p.T, p.Throughput, p.Errors, p.P50Ms, p.P99Ms)
				}
			}
		}
	})
	wg.Wait()
	elapsed := time.Since(start)
	finished.Store(true)
	close(done)
	progress.Wait()
	var writes []writeRecord
	var violations []Violation
	for _, w := range workers {
		writes = append(writes, w.writes...)
		violations = append(violations, w.violations...)
	}
	return elapsed, writes, violations
}
