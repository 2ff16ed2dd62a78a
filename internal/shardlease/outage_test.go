package shardlease_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/faultproxy"
)

// One replica loses Postgres: it must stop its shards before the lease TTL lets a
// peer take them, the peers take over, and it rejoins cleanly when Postgres is back.
func TestDatabaseOutageSelfFencesBeforeTakeover(t *testing.T) {
	t.Parallel()
	for _, mode := range []faultproxy.Mode{faultproxy.Cut, faultproxy.Blackhole} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			const shards = 12
			c := newCluster(t)
			a := c.start("a", replicaOpts{shards: shards, proxied: true})
			b := c.start("b", replicaOpts{shards: shards})
			d := c.start("d", replicaOpts{shards: shards})
			waitFor(t, convergeWithin, "balanced", func() (bool, string) { return balanced(shards, a, b, d) })
			held := a.m.Held()
			require.Len(t, held, 4)

			cutAt := time.Now()
			if mode == faultproxy.Cut {
				a.proxy.Cut()
			} else {
				a.proxy.Blackhole()
			}
			waitFor(t, 5*time.Second, "a self-fences", func() (bool, string) {
				return len(a.m.Held()) == 0, fmt.Sprint(a.m.Held())
			})
			require.ErrorContains(t, a.m.Ready(context.Background()), "self-fenced")
			require.Equal(t, 1.0, a.metric(t, "shardwarden_lease_self_fences_total"))
			require.Contains(t, a.logs.String(), "self-fenced")

			waitFor(t, convergeWithin, "b and d take over", func() (bool, string) { return balanced(shards, b, d) })

			// a's runners stopped within its self-fence deadline of the cut (its last
			// renewal started before the cut), strictly before the first takeover.
			var aEnd, takeover time.Time
			for _, iv := range c.rec.intervals() {
				switch {
				case iv.replica == "a" && !iv.to.IsZero() && iv.to.After(aEnd):
					aEnd = iv.to
				case iv.replica != "a" && iv.from.After(cutAt) && (takeover.IsZero() || iv.from.Before(takeover)):
					takeover = iv.from
				}
			}
			require.Less(t, aEnd.Sub(cutAt), testSelfFence+testInterval, "a fenced late")
			require.True(t, aEnd.Before(takeover), "a stopped at %s, a peer took over at %s", aEnd, takeover)
			require.GreaterOrEqual(t, takeover.Sub(cutAt), testSelfFence, "peers waited for the lease to go stale")

			a.proxy.Restore()
			waitFor(t, convergeWithin, "a rejoins and gets its share back", func() (bool, string) {
				err := a.m.Ready(context.Background())
				ok, why := balanced(shards, a, b, d)
				return err == nil && ok, fmt.Sprintf("ready: %v; %s", err, why)
			})
			require.Contains(t, a.logs.String(), "rejoining")
			c.rec.check(t)
		})
	}
}
