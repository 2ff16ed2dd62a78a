package discordrest

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests    *prometheus.CounterVec
	rateLimited *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_rest_requests_total",
			Help: "Discord REST requests sent, by route template and HTTP status (\"error\": no answer).",
		}, []string{"route", "code"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_rest_rate_limited_total",
			Help: "429 answers from Discord, by X-RateLimit-Scope (user, global, shared).",
		}, []string{"scope"}),
	}
	for _, c := range []**prometheus.CounterVec{&m.requests, &m.rateLimited} {
		if err := reg.Register(*c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
			existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
			if !ok {
				return nil, err
			}
			*c = existing
		}
	}
	for _, scope := range []string{"user", "global", "shared"} {
		m.rateLimited.WithLabelValues(scope) // at zero from the start: increase() sees the first 429
	}
	return m, nil
}
