package httpapi

import (
	"net/http"
	"slices"
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

// request counts one request. Every label comes from a closed set, so no client can add
// series: route is a pattern of the route table (or "unmatched"), method one of
// knownMethods or "OTHER", status a three-digit code.
func (m *Metrics) request(route, method string, status int, elapsed time.Duration) {
	if m == nil {
		return
	}
	if route == "" {
		route = "unmatched"
	}
	if !slices.Contains(knownMethods, method) {
		method = "OTHER"
	}
	code := "other"
	switch {
	case status == 0:
		code = "200" // a handler that writes nothing is answered 200 by net/http
	case status >= 100 && status <= 599:
		code = strconv.Itoa(status)
	}
	m.requests.WithLabelValues(route, method, code).Inc()
	m.duration.WithLabelValues(route, method).Observe(elapsed.Seconds())
}

// knownMethods are the methods a metric label may name.
var knownMethods = []string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace,
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
