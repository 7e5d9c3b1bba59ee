package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-ledger/tally/ledger"
)

// Group commit. Concurrent transaction requests queue here; each of a few workers takes
// everything queued, up to a maximum, the moment it is free, and records it as one batch in
// one database transaction (write.go). There is no timer: a request that finds a worker idle
// starts at once, so a lone client waits no longer than it would without batching, and under
// load a batch is whatever arrived while the previous ones were committing. The batcher lives
// beside the SQL because a batch is a database transaction: the API hands it requests one by
// one, as before.

// Defaults of the write batching (WRITE_BATCH_MAX and WRITE_WORKERS). docs/performance.md
// ("Batch size") found 16, 64 and 256 alike at 256 clients; 64 bounds a batch's statement.
// One worker: a batch costs PostgreSQL and tally about the same whatever its size, so more
// workers, each taking a share of the queue, spend more per write; with one, a batch is
// everything that arrived while the last one committed. docs/performance.md ("Workers")
// measured one worker ahead of two at 4, 16, 64 and 256 clients, and two ahead of four.
const (
	DefaultWriteBatchMax = 64
	DefaultWriteWorkers  = 1
)

// WithWriteBatching sets the largest batch and the number of workers, each of which holds a
// pooled connection while it records a batch. A maximum of 1 turns batching off: each request
// is then recorded alone by its own caller.
func WithWriteBatching(max, workers int) Option {
	return func(o *options) { o.batchMax, o.workers = max, workers }
}

type batcher struct {
	db      *DB
	max     int
	queue   chan *writeRequest
	stop    chan struct{}
	stopped sync.WaitGroup

	mu     sync.RWMutex // held for reading to queue a request, for writing to close
	closed bool
}

// queueLength bounds the requests waiting for a worker; a request that finds the queue full is
// recorded alone by its caller. Requests in flight are bounded by the API's MAX_CONNECTIONS.
const queueLength = 4096

func newBatcher(db *DB, max, workers int) *batcher {
	b := &batcher{db: db, max: max, queue: make(chan *writeRequest, queueLength), stop: make(chan struct{})}
	for range workers {
		b.stopped.Add(1)
		go b.work()
	}
	return b
}

// submit queues w and waits for its batch to commit. A request whose context ends while it
// is queued is dropped before its batch starts; once a batch holding it started, it ends as
// a whole, committed or not, whatever the request's context does, and a later retry with the
// same uid finds out which. The queue is never waited on: a request that finds it full is
// marked alone.
func (b *batcher) submit(ctx context.Context, w *writeRequest) error {
	w.ctx, w.enqueued, w.done = ctx, time.Now(), make(chan struct{})
	b.mu.RLock()
	closed := b.closed
	queued := false
	if !closed {
		select {
		case b.queue <- w:
			queued = true
		default:
		}
	}
	b.mu.RUnlock()
	switch {
	case closed:
		return errBatcherStopped
	case !queued:
		w.alone = true
		return nil
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *batcher) work() {
	defer b.stopped.Done()
	batch := make([]*writeRequest, 0, b.max)
	for {
		select {
		case w := <-b.queue:
			batch = append(batch[:0], w)
		case <-b.stop:
			return
		}
	fill:
		for len(batch) < b.max {
			select {
			case w := <-b.queue:
				batch = append(batch, w)
			default:
				break fill
			}
		}
		b.run(batch)
	}
}

// run records one batch and answers its members.
func (b *batcher) run(batch []*writeRequest) {
	start := time.Now()
	live := batch[:0]
	for _, w := range batch {
		b.db.metrics.queueWait.Observe(start.Sub(w.enqueued).Seconds())
		if err := w.ctx.Err(); err != nil {
			w.err = err
			close(w.done)
			continue
		}
		live = append(live, w)
	}
	if len(live) == 0 {
		return
	}
	b.db.metrics.size.Observe(float64(len(live)))
	// The server drains before Close stops the workers, so a batch always finishes: it never
	// waits on a user's lock (tryUsersSQL).
	ctx, end := batchContext(live)
	defer end()
	defer func() {
		// A panic (a bug) fails this batch's requests, not the process.
		if r := recover(); r != nil {
			for _, w := range live {
				w.out, w.err, w.alone = ledger.Outcome{}, fmt.Errorf("write batch: panic: %v", r), false
			}
			for _, w := range live {
				close(w.done)
			}
		}
	}()
	b.db.record(ctx, live, false, false)
	b.db.metrics.duration.Observe(time.Since(start).Seconds())
	for _, w := range live {
		close(w.done)
	}
}

// close stops the workers once their current batches are done. Requests still queued, and
// any submitted later, are refused.
func (b *batcher) close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	b.mu.Unlock()
	close(b.stop)
	b.stopped.Wait()
	for {
		select {
		case w := <-b.queue:
			w.err = errBatcherStopped
			close(w.done)
		default:
			return
		}
	}
}

type batchMetrics struct {
	size, duration, queueWait prometheus.Histogram
	guesses                   *prometheus.CounterVec
}

func newBatchMetrics() batchMetrics {
	return batchMetrics{
		size: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_write_batch_size", Help: "Transaction requests recorded together in one database transaction.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_write_batch_duration_seconds", Help: "Time from a batch's start to its commit, retries included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .02, .05, .1, .25, .5, 1},
		}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_write_queue_wait_seconds", Help: "Time a transaction request waited for a free write worker.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
		}),
		guesses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_write_guesses_total",
			Help: "Batches decided from this instance's copy of their users and sent in one round trip, by outcome: committed, or missed (decided again from the rows read).",
		}, []string{"outcome"}),
	}
}

// WriteCollector returns the Prometheus collector of the write batching: batch sizes, batch
// durations and queue waits, which stay empty when batching is off.
func (db *DB) WriteCollector() prometheus.Collector {
	m := db.metrics
	return collectors{m.size, m.duration, m.queueWait, m.guesses}
}

// collectors is several collectors registered as one.
type collectors []prometheus.Collector

func (c collectors) Describe(ch chan<- *prometheus.Desc) {
	for _, x := range c {
		x.Describe(ch)
	}
}

func (c collectors) Collect(ch chan<- prometheus.Metric) {
	for _, x := range c {
		x.Collect(ch)
	}
}
