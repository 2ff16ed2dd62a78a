package discordrest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/promtest"
)

// The 429 scopes exist at zero from the start: increase() sees the first one.
func TestRateLimitedSeriesStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, err := newMetrics(reg)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"scope=user", "scope=global", "scope=shared"},
		promtest.Series(t, reg, "shardwarden_rest_rate_limited_total"))
}
