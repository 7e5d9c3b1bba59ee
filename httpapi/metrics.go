package httpapi

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-ledger/tally/ledger"
)

// Metrics are the API's Prometheus metrics.
type Metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	transactions  *prometheus.CounterVec
	replays       prometheus.Counter
	backdated     prometheus.Counter
	backdatedRows prometheus.Counter
}

// NewMetrics registers the API's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_requests_total", Help: "HTTP requests by route pattern, method and status.",
		}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "http_request_duration_seconds", Help: "HTTP request latency by route pattern and method.",
			Buckets: []float64{.001, .0025, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "method"}),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_transactions_total", Help: "Transactions decided, by type and outcome (applied or rejected); replays are not counted.",
		}, []string{"type", "outcome"}),
		replays: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_idempotent_replays_total", Help: "Transaction requests answered with the first answer of an earlier request with the same uid.",
		}),
		backdated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_backdated_total", Help: "Applied transactions inserted before a user's latest one.",
		}),
		backdatedRows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_backdated_rows_moved_total", Help: "Later transactions whose balance_after a back-dated transaction moved.",
		}),
	}
	reg.MustRegister(m.requests, m.duration, m.transactions, m.replays, m.backdated, m.backdatedRows)
	return m
}

func (m *Metrics) request(route, method string, status int, elapsed time.Duration) {
	if m == nil {
		return
	}
	if route == "" {
		route = "unmatched"
	}
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(route, method).Observe(elapsed.Seconds())
}

func (m *Metrics) transaction(out ledger.Outcome) {
	if m == nil {
		return
	}
	if out.Replayed {
		m.replays.Inc()
		return
	}
	outcome := "applied"
	if out.Tx.Status == ledger.Rejected {
		outcome = "rejected"
	}
	m.transactions.WithLabelValues(string(out.Tx.Type), outcome).Inc()
	if out.BackDated && out.Tx.Status == ledger.Applied {
		m.backdated.Inc()
		m.backdatedRows.Add(float64(out.RowsMoved))
	}
}
