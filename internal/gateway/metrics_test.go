package gateway

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/promtest"
)

// A shard's reconnect reasons exist at zero from the moment it is held: a series
// that first appears at 1 is invisible to increase().
func TestReconnectSeriesStartAtZero(t *testing.T) {
	m := newMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.collectors()...)
	m.forShard(3).reconnect(reconnectZombie)

	got := promtest.Series(t, reg, "shardwarden_gateway_reconnects_total", "shard", "3")
	want := make([]string, 0, len(reconnectReasons))
	for _, r := range reconnectReasons {
		want = append(want, "reason="+string(r)+",shard=3")
	}
	require.ElementsMatch(t, want, got)
	require.Equal(t, 1.0, promtest.Value(t, reg, "shardwarden_gateway_reconnects_total", "shard", "3"))
}
