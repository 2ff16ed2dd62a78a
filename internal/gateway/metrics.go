package gateway

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Shard states of the state metric (the lease row knows connecting, resuming and
// ready; backpressure is reported as connecting there).
const (
	stateConnecting   = "connecting"
	stateResuming     = "resuming"
	stateReady        = "ready"
	stateBackpressure = "backpressure"
)

var allStates = []string{stateConnecting, stateResuming, stateReady, stateBackpressure}

type metrics struct {
	ackLatency     *prometheus.GaugeVec
	received       *prometheus.CounterVec
	published      *prometheus.CounterVec
	byType         *prometheus.CounterVec
	state          *prometheus.GaugeVec
	guilds         *prometheus.GaugeVec
	identifies     *prometheus.CounterVec
	resumes        *prometheus.CounterVec
	sessionLosses  *prometheus.CounterVec
	reconnects     *prometheus.CounterVec
	bufferFull     *prometheus.CounterVec
	lastEventAge   *prometheus.Desc
	publishRetries *prometheus.CounterVec
}

func newMetrics() *metrics {
	shard := []string{"shard"}
	return &metrics{
		ackLatency: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "shardwarden_gateway_heartbeat_ack_latency_seconds",
			Help: "Time between the last heartbeat and its ACK.",
		}, shard),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_gateway_events_received_total",
			Help: "Dispatches received from Discord (replays after RESUME not counted twice).",
		}, shard),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_gateway_events_published_total",
			Help: "Dispatches acknowledged by JetStream.",
		}, shard),
		byType: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_gateway_events_by_type_total",
			Help: "Dispatches received, by Discord event type (undocumented types count as \"other\").",
		}, []string{"type"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "shardwarden_gateway_shard_state",
			Help: "1 for the current state of each shard held by this replica.",
		}, []string{"shard", "state"}),
		guilds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "shardwarden_gateway_guilds",
			Help: "Guilds on the shard (from READY, GUILD_CREATE and GUILD_DELETE).",
		}, shard),
		identifies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_gateway_identifies_total",
			Help: "IDENTIFYs sent (each spends one from Discord's daily budget).",
		}, shard),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_gateway_resumes_total",
			Help: "RESUMEs sent.",
		}, shard),
		sessionLosses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_gateway_session_losses_total",
			Help: "Sessions Discord refused to resume (the shard had to IDENTIFY again; events in the gap are lost).",
		}, shard),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_gateway_reconnects_total",
			Help: "Gateway reconnects by reason.",
		}, []string{"shard", "reason"}),
		bufferFull: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_gateway_buffer_full_total",
			Help: "Times the shard's buffer filled because JetStream did not keep up (the shard disconnects and resumes later).",
		}, shard),
		publishRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_gateway_publish_retries_total",
			Help: "Dispatches published again after a failed or unacknowledged publish.",
		}, shard),
		lastEventAge: prometheus.NewDesc("shardwarden_gateway_last_event_age_seconds",
			"Seconds since the shard's last dispatch (since it was acquired when none yet).", shard, nil),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.ackLatency, m.received, m.published, m.byType, m.state, m.guilds,
		m.identifies, m.resumes, m.sessionLosses, m.reconnects, m.bufferFull, m.publishRetries}
}

// shardMetrics are the metrics curried with one shard's label.
type shardMetrics struct {
	m             *metrics
	label         string
	ackLatency    prometheus.Gauge
	received      prometheus.Counter
	published     prometheus.Counter
	guilds        prometheus.Gauge
	identifies    prometheus.Counter
	resumes       prometheus.Counter
	sessionLosses prometheus.Counter
	bufferFull    prometheus.Counter
	retries       prometheus.Counter
	byType        map[string]prometheus.Counter // only touched by the reader goroutine
}

func (m *metrics) forShard(id int) *shardMetrics {
	l := strconv.Itoa(id)
	sm := &shardMetrics{
		m:             m,
		label:         l,
		ackLatency:    m.ackLatency.WithLabelValues(l),
		received:      m.received.WithLabelValues(l),
		published:     m.published.WithLabelValues(l),
		guilds:        m.guilds.WithLabelValues(l),
		identifies:    m.identifies.WithLabelValues(l),
		resumes:       m.resumes.WithLabelValues(l),
		sessionLosses: m.sessionLosses.WithLabelValues(l),
		bufferFull:    m.bufferFull.WithLabelValues(l),
		retries:       m.publishRetries.WithLabelValues(l),
		byType:        map[string]prometheus.Counter{},
	}
	for _, r := range reconnectReasons {
		m.reconnects.WithLabelValues(l, string(r))
	}
	return sm
}

// reconnectReason labels shardwarden_gateway_reconnects_total.
type reconnectReason string

const (
	reconnectDialError        reconnectReason = "dial_error"
	reconnectHandshakeTimeout reconnectReason = "handshake_timeout"
	reconnectZombie           reconnectReason = "zombie"
	reconnectClaimExpired     reconnectReason = "identify_claim_expired"
	reconnectConnectionLost   reconnectReason = "connection_lost"
	reconnectOp7              reconnectReason = "op7_reconnect"
	reconnectOp9              reconnectReason = "op9_invalid_session"
	reconnectBufferFull       reconnectReason = "buffer_full"
	reconnectReadError        reconnectReason = "read_error"
	reconnectDecodeError      reconnectReason = "decode_error"
	reconnectBadHello         reconnectReason = "bad_hello"
)

// reconnectReasons are exported at zero for every shard, so that increase() sees
// the first reconnect of a kind (the close codes, nineteen more, are not: they
// would triple the series per shard).
var reconnectReasons = []reconnectReason{reconnectDialError, reconnectHandshakeTimeout, reconnectZombie,
	reconnectClaimExpired, reconnectConnectionLost, reconnectOp7, reconnectOp9, reconnectBufferFull,
	reconnectReadError, reconnectDecodeError, reconnectBadHello}

func (sm *shardMetrics) reconnect(reason reconnectReason) {
	sm.m.reconnects.WithLabelValues(sm.label, string(reason)).Inc()
}

func (sm *shardMetrics) countType(t string) {
	c, ok := sm.byType[t]
	if !ok {
		c = sm.m.byType.WithLabelValues(typeLabel(t))
		sm.byType[t] = c // bounded: at most the known types plus "other" per distinct t seen
		if len(sm.byType) > 1024 {
			clear(sm.byType)
		}
	}
	c.Inc()
}

func (sm *shardMetrics) setState(state string) {
	for _, s := range allStates {
		v := 0.0
		if s == state {
			v = 1
		}
		sm.m.state.WithLabelValues(sm.label, s).Set(v)
	}
}

// forget removes the shard's gauges when this replica no longer holds it.
func (sm *shardMetrics) forget() {
	for _, s := range allStates {
		sm.m.state.DeleteLabelValues(sm.label, s)
	}
	sm.m.guilds.DeleteLabelValues(sm.label)
	sm.m.ackLatency.DeleteLabelValues(sm.label)
}

func ageSeconds(t time.Time) float64 { return time.Since(t).Seconds() }
