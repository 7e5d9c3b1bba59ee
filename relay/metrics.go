package relay

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exports whether this relay leads, the slices it holds on Citus and, measured at
// scrape time, the outbox backlog and the age of its oldest unpublished event.
type collector struct {
	r                       *Relay
	leader, backlog, oldest *prometheus.Desc
	published, slicesHeld   *prometheus.Desc
}

// Collector returns the relay's Prometheus collector.
func (r *Relay) Collector() prometheus.Collector {
	return &collector{r: r,
		leader:    prometheus.NewDesc("tally_relay_leader", "1 on the relay that holds the lease and publishes, 0 on a standby.", nil, nil),
		backlog:   prometheus.NewDesc("tally_outbox_backlog", "Events not yet acknowledged by JetStream.", nil, nil),
		oldest:    prometheus.NewDesc("tally_outbox_oldest_age_seconds", "Age of the oldest event not yet acknowledged by JetStream.", nil, nil),
		published: prometheus.NewDesc("tally_relay_published_total", "Events this relay published and JetStream acknowledged.", nil, nil),
		slicesHeld: prometheus.NewDesc("tally_relay_slices_held",
			"On Citus, how many of the outbox's slices this relay publishes; 0 on one PostgreSQL.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.leader
	ch <- c.backlog
	ch <- c.oldest
	ch <- c.published
	ch <- c.slicesHeld
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	leader := 0.0
	if c.r.Leader() {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(c.published, prometheus.CounterValue, float64(c.r.Published.Load()))
	ch <- prometheus.MustNewConstMetric(c.slicesHeld, prometheus.GaugeValue, float64(c.r.SlicesHeld()))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, age, err := c.r.backlog(ctx)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age.Seconds())
}

// backlog counts the events not yet acknowledged by JetStream and the age of the oldest: past
// the relay's cursor, or on Citus those not marked published.
func (r *Relay) backlog(ctx context.Context) (int64, time.Duration, error) {
	distributed, err := r.db.Distributed(ctx)
	if err != nil {
		return 0, 0, err
	}
	if distributed {
		return r.db.Unpublished(ctx)
	}
	cursor, err := r.db.RelayCursor(ctx, cursorName)
	if err != nil {
		return 0, 0, err
	}
	return r.db.Backlog(ctx, cursor)
}
