package postgres

import (
	"github.com/prometheus/client_golang/prometheus"
)

// poolCollector exports pgxpool statistics at scrape time.
type poolCollector struct {
	db    *DB
	descs map[string]*prometheus.Desc
}

// PoolCollector returns a Prometheus collector of the pool's statistics.
func (db *DB) PoolCollector() prometheus.Collector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &poolCollector{db: db, descs: map[string]*prometheus.Desc{
		"acquired":      d("pgxpool_acquired_conns", "Connections in use."),
		"idle":          d("pgxpool_idle_conns", "Idle connections."),
		"total":         d("pgxpool_total_conns", "Open connections."),
		"max":           d("pgxpool_max_conns", "The pool's maximum size."),
		"acquires":      d("pgxpool_acquire_total", "Connections acquired."),
		"empty":         d("pgxpool_empty_acquire_total", "Acquires that had to wait because no connection was idle."),
		"acquireWait":   d("pgxpool_acquire_duration_seconds_total", "Time spent acquiring connections."),
		"canceled":      d("pgxpool_canceled_acquire_total", "Acquires cancelled by their context."),
		"emptyWaitTime": d("pgxpool_empty_acquire_wait_seconds_total", "Time spent waiting for a connection when none was idle."),
	}}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.db.pool.Stat()
	gauge := func(name string, v float64) {
		ch <- prometheus.MustNewConstMetric(c.descs[name], prometheus.GaugeValue, v)
	}
	counter := func(name string, v float64) {
		ch <- prometheus.MustNewConstMetric(c.descs[name], prometheus.CounterValue, v)
	}
	gauge("acquired", float64(s.AcquiredConns()))
	gauge("idle", float64(s.IdleConns()))
	gauge("total", float64(s.TotalConns()))
	gauge("max", float64(s.MaxConns()))
	counter("acquires", float64(s.AcquireCount()))
	counter("empty", float64(s.EmptyAcquireCount()))
	counter("acquireWait", s.AcquireDuration().Seconds())
	counter("canceled", float64(s.CanceledAcquireCount()))
	counter("emptyWaitTime", s.EmptyAcquireWaitTime().Seconds())
}
