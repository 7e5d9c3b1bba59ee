package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tally-ledger/tally/client"
)

// op is one kind of request the load generator sends.
type op int

const (
	opDeposit op = iota
	opWithdraw
	opBalance
	opBalanceAt
	opHealthz // GET /healthz, which touches no database: what the HTTP layer alone serves
	opReplay  // a write sent again with the same uid and body, as a client retry would
	numOps
)

var opNames = [numOps]string{"deposit", "withdraw", "balance", "balance_at", "healthz", "replay"}

// writeRecord is one write as the client saw it; the audit checks the database against it.
type writeRecord struct {
	UID       string     `json:"uid"`
	UserID    int64      `json:"user_id"`
	Type      string     `json:"type"`
	Amount    int64      `json:"amount"`              // minor units
	Timestamp *time.Time `json:"timestamp,omitempty"` // as sent; nil when omitted
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

// request is the write as the client sends it, the same on every attempt and every replay.
func (w writeRecord) request() client.TransactionRequest {
	return client.TransactionRequest{UID: w.UID, UserID: w.UserID, Type: client.TransactionType(w.Type),
		Amount: client.Amount(w.Amount), Timestamp: w.Timestamp}
}

// roundRobin sends each attempt to the next base URL, so that a retry goes to another
// instance, and counts the attempts of a request whose context carries a counter.
type roundRobin struct {
	hosts []*url.URL
	next  atomic.Uint64
	base  http.RoundTripper
}

type attemptsKey struct{}

// withAttempts returns a context whose requests roundRobin counts in the returned counter.
func withAttempts(ctx context.Context) (context.Context, *atomic.Int64) {
	n := new(atomic.Int64)
	return context.WithValue(ctx, attemptsKey{}, n), n
}

// RoundTrip sends one attempt to the next instance.
func (rr *roundRobin) RoundTrip(req *http.Request) (*http.Response, error) {
	if n, ok := req.Context().Value(attemptsKey{}).(*atomic.Int64); ok {
		n.Add(1)
	}
	host := rr.hosts[(rr.next.Add(1)-1)%uint64(len(rr.hosts))]
	out := req.Clone(req.Context())
	out.URL.Scheme, out.URL.Host, out.Host = host.Scheme, host.Host, ""
	return rr.base.RoundTrip(out)
}

// transact sends a write through the client, which retries it with the same uid after a
// network error, a timeout, a 429 or a 5xx. It returns the last answer (Status 0 when none
// came) and the attempts made; a refusal is an answer, not an error.
func (b *bench) transact(ctx context.Context, w writeRecord) (client.TransactionResult, int, error) {
	ctx, attempts := withAttempts(ctx)
	res, err := b.api.Transact(ctx, w.request())
	return res, int(attempts.Load()), err
}

// balance reads a user's balance through the API, now (at nil) or at an instant.
func (b *bench) balance(ctx context.Context, userID int64, at *time.Time) (int64, error) {
	var ub client.UserBalance
	var err error
	if at == nil {
		ub, err = b.api.Balance(ctx, userID)
	} else {
		ub, err = b.api.BalanceAt(ctx, userID, *at)
	}
	return int64(ub.Balance), err
}

// healthz asks one instance's /healthz and returns the status, 0 when no answer came.
func (b *bench) healthz(ctx context.Context) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.cfg.urls[0]+"/healthz", nil)
	if err != nil {
		return 0
	}
	res, err := b.http.Do(req)
	if err != nil {
		return 0
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode
}

// answerStatus is the status of the answer behind a client call's error: 200 for none, 0 when
// no answer came.
func answerStatus(err error) int {
	if err == nil {
		return http.StatusOK
	}
	var e *client.Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
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
		w.read(ctx, intended, opBalance, user, nil)
	case x >= cfg.mix[opDeposit]+cfg.mix[opWithdraw]+cfg.mix[opBalance]+cfg.mix[opBalanceAt]:
		w.b.rec.record(opHealthz, w.b.healthz(ctx), time.Since(intended), 1)
	default:
		at := time.Now().Add(-time.Duration(w.rng.Int64N(int64(cfg.backdateMax) + 1)))
		w.read(ctx, intended, opBalanceAt, user, &at)
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

func (w *worker) read(ctx context.Context, intended time.Time, o op, user int64, at *time.Time) {
	ctx, attempts := withAttempts(ctx)
	_, err := w.b.balance(ctx, user, at)
	w.b.rec.record(o, answerStatus(err), time.Since(intended), int(attempts.Load()))
}

func (w *worker) write(ctx context.Context, intended time.Time, o op, user int64) {
	cfg := w.b.cfg
	rec := writeRecord{UID: client.NewUID(), UserID: user, Type: string(client.Deposit), Amount: 1 + w.rng.Int64N(cfg.amountMax)}
	if o == opWithdraw {
		rec.Type = string(client.Withdraw)
	}
	if w.rng.Float64() < cfg.backdateShare {
		// tally keeps microseconds; the audit compares the instant sent with the one stored.
		at := time.Now().Add(-time.Duration(w.rng.Int64N(int64(cfg.backdateMax)) + 1)).UTC().Truncate(time.Microsecond)
		rec.Timestamp = &at
	}
	res, attempts, _ := w.b.transact(ctx, rec)
	w.b.rec.record(o, res.Status, time.Since(intended), attempts)
	rec.Status = res.Status
	if rec.acknowledged() {
		rec.Body = res.Body
	} else if res.Status >= 400 && res.Status < 500 {
		w.violations = append(w.violations, Violation{Check: "answer", UID: rec.UID, UserID: user,
			Detail: fmt.Sprintf("unexpected %d: %s", res.Status, bytes.TrimSpace(res.Body))})
	}
	w.writes = append(w.writes, rec)
	if rec.acknowledged() && w.rng.Float64() < cfg.retryShare {
		w.replay(ctx, rec)
	}
}

// replay sends an answered write again and requires the first answer back, marked replayed.
func (w *worker) replay(ctx context.Context, rec writeRecord) {
	start := time.Now()
	res, attempts, _ := w.b.transact(ctx, rec)
	w.b.rec.record(opReplay, res.Status, time.Since(start), attempts)
	if res.Status == 0 || res.Status >= 500 {
		return // no final answer: the service may be overloaded; nothing to hold it to
	}
	if v := checkReplay(rec, res); v != "" {
		w.violations = append(w.violations, Violation{Check: "replay", UID: rec.UID, UserID: rec.UserID, Detail: v})
	}
}

// checkReplay compares the answer to a repeated write with the first one; "" when they agree.
func checkReplay(rec writeRecord, res client.TransactionResult) string {
	switch {
	case res.Status != rec.Status:
		return fmt.Sprintf("first answer %d, the repeat got %d: %s", rec.Status, res.Status, bytes.TrimSpace(res.Body))
	case !res.Replayed:
		return "the repeat was not marked Idempotent-Replayed: true"
	case !bytes.Equal(res.Body, rec.Body):
		return fmt.Sprintf("the repeat's body differs from the first answer: first %s, repeat %s",
			bytes.TrimSpace(rec.Body), bytes.TrimSpace(res.Body))
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
