package worker

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// workerMetrics are one worker's series, resolved once (no label lookup per message).
type workerMetrics struct {
	processed, failed, retried, deadLettered, deliveries prometheus.Counter
	redeliveries                                         prometheus.Counter
	duration                                             prometheus.Observer
	pending, ackPending, redelivered                     prometheus.Gauge
}

func (m *metrics) forWorker(name string) workerMetrics {
	return workerMetrics{
		processed: m.processed.WithLabelValues(name), failed: m.failed.WithLabelValues(name),
		retried: m.retried.WithLabelValues(name), deadLettered: m.deadLettered.WithLabelValues(name),
		deliveries: m.deliveries.WithLabelValues(name), redeliveries: m.redeliveries.WithLabelValues(name),
		duration: m.duration.WithLabelValues(name),
		pending:  m.pending.WithLabelValues(name), ackPending: m.ackPending.WithLabelValues(name),
		redelivered: m.redelivered.WithLabelValues(name),
	}
}

// metrics are labelled by worker; several workers may share one registry.
type metrics struct {
	processed, failed, retried, deadLettered, deliveries *prometheus.CounterVec
	redeliveries                                         *prometheus.CounterVec
	duration                                             *prometheus.HistogramVec
	pending, ackPending, redelivered                     *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"worker"})
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{"worker"})
	}
	m := &metrics{
		processed:    counter("shardwarden_worker_processed_total", "Events handled successfully and acked."),
		failed:       counter("shardwarden_worker_failed_total", "Handler failures (errors, panics, timeouts), each delivery counted."),
		retried:      counter("shardwarden_worker_retried_total", "Failed deliveries sent back for a delayed retry (NakWithDelay)."),
		deadLettered: counter("shardwarden_worker_dead_lettered_total", "Events given up on and published to DISCORD_DLQ."),
		deliveries:   counter("shardwarden_worker_deliveries_total", "Every delivery received, first ones and redeliveries."),
		redeliveries: counter("shardwarden_worker_redeliveries_total", "Deliveries after the first: retries after a failed handler, and messages whose ack did not arrive in AckWait (a worker stopped or was too slow)."),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "shardwarden_worker_handler_duration_seconds",
			Help:    "Handler run time, successes and failures.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"worker"}),
		pending:     gauge("shardwarden_worker_consumer_pending", "Messages not yet delivered to the worker's consumer (consumer info)."),
		ackPending:  gauge("shardwarden_worker_consumer_ack_pending", "Messages delivered and not yet acked (consumer info)."),
		redelivered: gauge("shardwarden_worker_consumer_redelivered", "Messages redelivered and not yet acked (consumer info)."),
	}
	var err error
	m.processed, err = register(reg, m.processed)
	if err == nil {
		m.failed, err = register(reg, m.failed)
	}
	if err == nil {
		m.retried, err = register(reg, m.retried)
	}
	if err == nil {
		m.deadLettered, err = register(reg, m.deadLettered)
	}
	if err == nil {
		m.deliveries, err = register(reg, m.deliveries)
	}
	if err == nil {
		m.redeliveries, err = register(reg, m.redeliveries)
	}
	if err == nil {
		m.duration, err = register(reg, m.duration)
	}
	if err == nil {
		m.pending, err = register(reg, m.pending)
	}
	if err == nil {
		m.ackPending, err = register(reg, m.ackPending)
	}
	if err == nil {
		m.redelivered, err = register(reg, m.redelivered)
	}
	return m, err
}

// register registers c, or returns the collector already registered under its name
// (two workers in one process sharing a registry).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

// Register is register for other packages' worker-labelled metrics (the commands
// worker's late interactions): a collector already registered is reused.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	return register(reg, c)
}
