package promtest_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/promtest"
)

func TestValue(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "x"}, []string{"shard", "reason"})
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "y_seconds", Help: "y"})
	reg.MustRegister(c, h)
	require.Zero(t, promtest.Value(t, reg, "x_total"), "a vector without series")
	c.WithLabelValues("1", "a").Add(2)
	c.WithLabelValues("1", "b").Add(3)
	c.WithLabelValues("2", "a").Add(5)
	h.Observe(1)
	h.Observe(2)
	require.Equal(t, 10.0, promtest.Value(t, reg, "x_total"))
	require.Equal(t, 5.0, promtest.Value(t, reg, "x_total", "shard", "1"))
	require.Equal(t, 2.0, promtest.Value(t, reg, "x_total", "shard", "1", "reason", "a"))
	require.Zero(t, promtest.Value(t, reg, "x_total", "shard", "3"))
	require.Equal(t, 2.0, promtest.Value(t, reg, "y_seconds"), "a histogram's sample count")
}

func TestSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "x"}, []string{"shard", "reason"})
	reg.MustRegister(c)
	require.Empty(t, promtest.Series(t, reg, "x_total"))
	c.WithLabelValues("1", "a") // at zero: a series all the same
	c.WithLabelValues("2", "b").Inc()
	require.ElementsMatch(t, []string{"reason=a,shard=1", "reason=b,shard=2"}, promtest.Series(t, reg, "x_total"))
	require.Equal(t, []string{"reason=b,shard=2"}, promtest.Series(t, reg, "x_total", "shard", "2"))
}
