package shardlease

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Release reasons, the values of shardwarden_lease_releases_total{reason}.
const (
	reasonShutdown   = "shutdown"
	reasonRebalance  = "rebalance"
	reasonRunnerExit = "runner_exit"
)

// metrics are the shardwarden_lease_* series. Their names are a contract with the
// deployment's alert rules: do not rename.
type metrics struct {
	held                prometheus.Gauge
	heartbeatDuration   prometheus.Histogram
	heartbeatFailures   prometheus.Counter
	selfFences          prometheus.Counter
	lost                prometheus.Counter
	claims              prometheus.Counter
	releases            *prometheus.CounterVec
	staleShards         prometheus.Gauge
	liveReplicas        prometheus.Gauge
	duplicateReplica    prometheus.Gauge
	heartbeatStatements prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shardwarden_lease_held_shards",
			Help: "Shards this replica holds a lease on (running or handing off).",
		}),
		heartbeatDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "shardwarden_lease_heartbeat_duration_seconds",
			Help:    "Duration of the heartbeat statement that renews every held lease, failures included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		heartbeatFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shardwarden_lease_heartbeat_failures_total",
			Help: "Heartbeats that failed (database error or timeout).",
		}),
		selfFences: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shardwarden_lease_self_fences_total",
			Help: "Times this replica stopped all its shards because no renewal succeeded within the self-fence deadline.",
		}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shardwarden_lease_lost_total",
			Help: "Leases found lost by a renewal that matched no row (another replica owns the shard).",
		}),
		claims: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shardwarden_lease_claims_total",
			Help: "Shards claimed by this replica.",
		}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_lease_releases_total",
			Help: "Leases released with their resume state saved, by reason.",
		}, []string{"reason"}),
		staleShards: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shardwarden_lease_stale_shards",
			Help: "Owned shards whose lease was stale at the last scan (owner missed its heartbeats).",
		}),
		liveReplicas: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shardwarden_lease_live_replicas",
			Help: "Live, non-draining replicas at the last scan (the divisor of the fair share).",
		}),
		duplicateReplica: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shardwarden_lease_duplicate_replica",
			Help: "1 while this process is refused because another live process uses its replica id.",
		}),
		heartbeatStatements: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shardwarden_lease_heartbeat_statements_total",
			Help: "SQL statements sent by heartbeats (one per heartbeat, whatever the shard count).",
		}),
	}
	for _, r := range []string{reasonShutdown, reasonRebalance, reasonRunnerExit} {
		m.releases.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{
		m.held, m.heartbeatDuration, m.heartbeatFailures, m.selfFences, m.lost, m.claims,
		m.releases, m.staleShards, m.liveReplicas, m.duplicateReplica, m.heartbeatStatements,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register lease metrics (one Manager per registry): %w", err)
		}
	}
	return m, nil
}
