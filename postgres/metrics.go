package postgres

import (
	"context"
	"time"

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

// replicaLagSQL measures how far this server's data is behind its primary: zero on a primary
// and on a standby that has replayed everything it received, else the age of the last
// transaction it replayed. An idle primary therefore shows no lag, not a growing one.
const replicaLagSQL = `SELECT CASE
	WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
	ELSE COALESCE(EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8`

// ReplicaCollector exports, at scrape time, whether this database (READ_DATABASE_URL) answers
// and how far it lags behind the primary.
func (db *DB) ReplicaCollector() prometheus.Collector {
	return &replicaCollector{db: db,
		up:  prometheus.NewDesc("tally_read_database_up", "Whether the read database (READ_DATABASE_URL) answered the last scrape.", nil, nil),
		lag: prometheus.NewDesc("tally_read_database_lag_seconds", "How far the read database lags behind the primary: the age of the last transaction it replayed while WAL is still to replay, else 0.", nil, nil),
	}
}

type replicaCollector struct {
	db      *DB
	up, lag *prometheus.Desc
}

func (c *replicaCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.up; ch <- c.lag }

func (c *replicaCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var lag float64
	up := 1.0
	if err := c.db.pool.QueryRow(ctx, replicaLagSQL).Scan(&lag); err != nil {
		up = 0
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
	if up == 1 {
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, lag)
	}
}
