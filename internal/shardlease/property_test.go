package shardlease_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Random churn over 64 shards and 5–10 replicas, each on its own pool behind its
// own proxy: joins (new ids and ids of dead replicas), graceful stops, crashes
// (stop renewing without releasing) and pauses (the replica's database link cut
// or black-holed for a while, sometimes past the lease TTL). The recorder checks
// that no shard is ever driven by two runners at once; after the churn every
// shard must be held and the spread must be at most one, within a bound.
//
// SHARDLEASE_SEED=<n> replays one run; the seed is logged.
func TestPropertyNoOverlapAndConvergence(t *testing.T) {
	t.Parallel()
	const (
		shards      = 64
		minReplicas = 5
		maxReplicas = 10
		steps       = 250
	)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SHARDLEASE_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err)
		seed = v
	}
	t.Logf("seed %d (SHARDLEASE_SEED=%d replays it)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))

	c := newCluster(t)
	type member struct {
		r           *replica
		pausedUntil time.Time // zero when not paused
	}
	var (
		live    []*member
		deadIDs []string
		nextID  int
		stops   sync.WaitGroup
		counts  = map[string]int{}
	)
	join := func() {
		id := fmt.Sprintf("r%02d", nextID)
		if len(deadIDs) > 0 && rng.IntN(3) == 0 { // a restart under an old id
			i := rng.IntN(len(deadIDs))
			id = deadIDs[i]
			deadIDs = append(deadIDs[:i], deadIDs[i+1:]...)
		} else {
			nextID++
		}
		live = append(live, &member{r: c.start(id, replicaOpts{shards: shards, proxied: true})})
		counts["join"]++
	}
	// remove takes a random unpaused member out of live.
	remove := func() *member {
		var idx []int
		for i, m := range live {
			if m.pausedUntil.IsZero() {
				idx = append(idx, i)
			}
		}
		if len(idx) == 0 {
			return nil
		}
		i := idx[rng.IntN(len(idx))]
		m := live[i]
		live = append(live[:i], live[i+1:]...)
		return m
	}
	restoreDue := func(now time.Time) {
		for _, m := range live {
			if !m.pausedUntil.IsZero() && now.After(m.pausedUntil) {
				m.r.proxy.Restore()
				m.pausedUntil = time.Time{}
			}
		}
	}

	for range minReplicas + rng.IntN(3) {
		join()
	}
	start := time.Now()
	for range steps {
		time.Sleep(time.Duration(10+rng.IntN(70)) * time.Millisecond)
		restoreDue(time.Now())
		switch op := rng.IntN(10); {
		case op < 3 && len(live) < maxReplicas:
			join()
		case op < 5 && len(live) > minReplicas:
			if m := remove(); m != nil {
				counts["stop"]++
				deadIDs = append(deadIDs, m.r.id)
				stops.Add(1)
				go func() { defer stops.Done(); m.r.m.Stop(); m.r.pool.Close() }()
			}
		case op < 7 && len(live) > minReplicas:
			if m := remove(); m != nil {
				counts["crash"]++
				deadIDs = append(deadIDs, m.r.id)
				stops.Add(1)
				go func() { defer stops.Done(); m.r.m.Abandon(); m.r.pool.Close() }()
			}
		case op < 9:
			m := live[rng.IntN(len(live))]
			if !m.pausedUntil.IsZero() {
				break
			}
			counts["pause"]++
			if rng.IntN(2) == 0 {
				m.r.proxy.Cut()
			} else {
				m.r.proxy.Blackhole()
			}
			m.pausedUntil = time.Now().Add(time.Duration(100+rng.IntN(1100)) * time.Millisecond)
		}
	}
	for _, m := range live {
		if !m.pausedUntil.IsZero() {
			m.r.proxy.Restore()
			m.pausedUntil = time.Time{}
		}
	}
	stops.Wait()
	churn := time.Since(start)

	rs := make([]*replica, len(live))
	for i, m := range live {
		rs[i] = m.r
	}
	waitFor(t, convergeWithin, "convergence after churn", func() (bool, string) {
		for _, r := range rs {
			if err := r.m.Ready(context.Background()); err != nil {
				return false, fmt.Sprintf("%s not ready: %v", r.id, err)
			}
		}
		return balanced(shards, rs...)
	})
	converged := time.Since(start) - churn
	_, spread := balanced(shards, rs...)

	// The database agrees: every row held, by a live replica.
	liveIDs := map[string]bool{}
	for _, r := range rs {
		liveIDs[r.id] = true
	}
	for id, s := range dbOwners(t, rs[0].pool) {
		owner := s[:len(s)-len("/held")]
		require.True(t, liveIDs[owner] && s[len(owner):] == "/held", "shard %d: %s", id, s)
	}
	c.rec.check(t)
	t.Logf("%d steps in %s (%v), %d held intervals, converged %s after the churn: %s",
		steps, churn.Round(time.Millisecond), counts, len(c.rec.intervals()), converged.Round(time.Millisecond), spread)
}
