package gateway

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/pgtest"
	"github.com/shardwarden/shardwarden/internal/promtest"
)

func newLimiter(t *testing.T, pool *pgxpool.Pool, replica string, window time.Duration, reserve int) (*IdentifyLimiter, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	l, err := NewIdentifyLimiter(pool, IdentifyConfig{ReplicaID: replica, Window: window, Reserve: reserve, Registerer: reg})
	require.NoError(t, err)
	return l, reg
}

func TestIdentifyLimiterBucketsAcrossReplicas(t *testing.T) {
	db := pgtest.NewMigrated(t)
	const window = 150 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Three replicas, each with its own pool, six shards, max_concurrency 2.
	var limiters []*IdentifyLimiter
	for i := range 3 {
		l, _ := newLimiter(t, pgtest.Pool(t, db.URL), fmt.Sprintf("r%d", i), window, 10)
		require.NoError(t, l.SetLimits(ctx, SessionStartLimit{Total: 1000, Remaining: 1000, ResetAfter: time.Hour, MaxConcurrency: 2}))
		limiters = append(limiters, l)
	}

	type claim struct {
		shard int
		at    time.Time
	}
	var mu sync.Mutex
	var claims []claim
	var wg sync.WaitGroup
	start := time.Now()
	for shard := range 6 {
		wg.Go(func() {
			c, err := limiters[shard%3].Acquire(ctx, shard)
			if err != nil {
				t.Error(err)
				return
			}
			at := c.ClaimedAt // the database's clock: scheduling delays here do not matter
			require.True(t, c.Valid())
			if err := c.Sent(ctx); err != nil {
				t.Error(err)
			}
			mu.Lock()
			claims = append(claims, claim{shard, at})
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	require.Len(t, claims, 6)

	// Within a bucket, consecutive claims are at least one window apart.
	for bucket := range 2 {
		var at []time.Time
		for _, c := range claims {
			if c.shard%2 == bucket {
				at = append(at, c.at)
			}
		}
		sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
		for i := 1; i < len(at); i++ {
			require.GreaterOrEqual(t, at[i].Sub(at[i-1]), window, "bucket %d claims %d and %d", bucket, i-1, i)
		}
	}
	// Three per bucket: the minimum is two windows; waits are tight, not polled.
	require.GreaterOrEqual(t, elapsed, 2*window)
	require.Less(t, elapsed, 2*window+2*time.Second, "took %s", elapsed)

	var remaining int
	require.NoError(t, pgtest.Pool(t, db.URL).QueryRow(ctx, `SELECT remaining FROM discord_identify_budget`).Scan(&remaining))
	require.Equal(t, 994, remaining)
}

func TestIdentifyLimiterStopsAtReserve(t *testing.T) {
	db := pgtest.NewMigrated(t)
	pool := pgtest.Pool(t, db.URL)
	ctx := context.Background()
	l, reg := newLimiter(t, pool, "r0", 10*time.Millisecond, 2)

	_, err := l.Acquire(ctx, 0)
	require.ErrorIs(t, err, ErrBudgetUnknown)

	require.NoError(t, l.SetLimits(ctx, SessionStartLimit{Total: 1000, Remaining: 4, ResetAfter: time.Hour, MaxConcurrency: 16}))
	for shard := range 2 {
		c, err := l.Acquire(ctx, shard)
		require.NoError(t, err)
		require.NoError(t, c.Sent(ctx), "only a sent IDENTIFY spends the budget")
	}
	require.Equal(t, 2.0, gaugeValue(t, reg, "shardwarden_gateway_identify_budget_remaining"))

	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = l.Acquire(short, 3)
	require.ErrorIs(t, err, context.DeadlineExceeded, "at the reserve nobody identifies")
	require.Equal(t, 1.0, gaugeValue(t, reg, "shardwarden_gateway_identify_budget_low"))

	// A reset (budget refreshed from /gateway/bot) lifts the stop.
	require.NoError(t, l.SetLimits(ctx, SessionStartLimit{Total: 1000, Remaining: 1000, ResetAfter: time.Hour, MaxConcurrency: 16}))
	_, err = l.Acquire(ctx, 3)
	require.NoError(t, err)
	require.Equal(t, 0.0, gaugeValue(t, reg, "shardwarden_gateway_identify_budget_low"))

	// An expired budget is full again.
	require.NoError(t, l.SetLimits(ctx, SessionStartLimit{Total: 1000, Remaining: 0, ResetAfter: 0, MaxConcurrency: 16}))
	c, err := l.Acquire(ctx, 4)
	require.NoError(t, err)
	require.NoError(t, c.Sent(ctx))
	require.Equal(t, 999.0, gaugeValue(t, reg, "shardwarden_gateway_identify_budget_remaining"))
}

func TestIdentifyLimiterValidation(t *testing.T) {
	db := pgtest.NewMigrated(t)
	pool := pgtest.Pool(t, db.URL)
	for name, cfg := range map[string]IdentifyConfig{
		"no replica":       {},
		"negative window":  {ReplicaID: "r", Window: -time.Second},
		"negative reserve": {ReplicaID: "r", Reserve: -1},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewIdentifyLimiter(pool, cfg)
			require.Error(t, err)
		})
	}
	l, _ := newLimiter(t, pool, "r", time.Second, 1)
	require.ErrorContains(t, l.SetLimits(context.Background(), SessionStartLimit{Total: 1, Remaining: 1, MaxConcurrency: 0}), "max_concurrency")
}

func gaugeValue(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	return promtest.Value(t, reg, name, labels...)
}

// twoReplicasOneBucket is two replicas' limiters (a and b, window 1 s) over one
// bucket (max_concurrency 1), with a pool on the same database.
func twoReplicasOneBucket(t *testing.T) (context.Context, *pgxpool.Pool, *IdentifyLimiter, *IdentifyLimiter) {
	t.Helper()
	db := pgtest.NewMigrated(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	a, _ := newLimiter(t, pgtest.Pool(t, db.URL), "a", time.Second, 10)
	b, _ := newLimiter(t, pgtest.Pool(t, db.URL), "b", time.Second, 10)
	require.NoError(t, a.SetLimits(ctx, SessionStartLimit{Total: 1000, Remaining: 1000, ResetAfter: time.Hour, MaxConcurrency: 1}))
	return ctx, pgtest.Pool(t, db.URL), a, b
}

// A claim reserves its bucket for the longest it may wait before sending (its
// validity) plus the window: a replica whose Sent is slow or lost cannot let a
// peer IDENTIFY within one window of its own IDENTIFY. Sent gives the unused part
// of the reservation back. Times are the database's, read from the rows.
func TestIdentifyClaimReservesUntilItsSendIsKnown(t *testing.T) {
	ctx, pool, a, b := twoReplicasOneBucket(t)
	window := a.cfg.Window
	reservation := a.validity() + window + a.cfg.Margin
	nextAllowed := func() time.Time {
		var next time.Time
		require.NoError(t, pool.QueryRow(ctx, `SELECT next_allowed_at FROM discord_identify_buckets WHERE bucket = 0`).Scan(&next))
		return next
	}

	// a claims and its Sent never reaches the database (it is still dialing, or
	// the write is stuck): b must wait the whole reservation.
	ca, err := a.Acquire(ctx, 0)
	require.NoError(t, err)
	require.Equal(t, reservation, nextAllowed().Sub(ca.ClaimedAt).Round(time.Millisecond))
	cb, err := b.Acquire(ctx, 1)
	require.NoError(t, err)
	require.GreaterOrEqual(t, cb.ClaimedAt.Sub(ca.ClaimedAt), reservation, "b claimed inside a's validity + window")

	// b sends and says so: the bucket opens one window (plus margin) after that
	// send, before b's whole reservation is over.
	require.NoError(t, cb.Sent(ctx))
	next := nextAllowed()
	require.Less(t, next.Sub(cb.ClaimedAt), reservation, "Sent gave the unused reservation back")
	require.GreaterOrEqual(t, next.Sub(cb.ClaimedAt), window+a.cfg.Margin)

	// A Sent that arrives after someone else claimed the bucket must not move
	// that claim's reservation.
	cc, err := a.Acquire(ctx, 2)
	require.NoError(t, err)
	before := nextAllowed()
	require.NoError(t, ca.Sent(ctx)) // a's long-stale claim
	require.Equal(t, before, nextAllowed(), "the stale Sent left the current claim's reservation alone")
	require.GreaterOrEqual(t, before.Sub(cc.ClaimedAt), reservation-time.Millisecond)
}

// A shard that lost the bucket to a claim still dialing must not sleep through
// that claim's whole reservation: once the IDENTIFY is sent the bucket opens one
// window (plus margin) after the send, and the waiter claims then.
func TestIdentifyWaiterFollowsTheSendNotTheReservation(t *testing.T) {
	ctx, pool, a, b := twoReplicasOneBucket(t)
	window := a.cfg.Window
	reservation := a.validity() + window + a.cfg.Margin

	ca, err := a.Acquire(ctx, 0)
	require.NoError(t, err)
	got := make(chan *IdentifyClaim, 1)
	go func() {
		cb, err := b.Acquire(ctx, 1) // polls now, while a's claim is unsent
		if err != nil {
			t.Error(err)
		}
		got <- cb
	}()
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, ca.Sent(ctx))
	var sentAt time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT last_sent_at FROM discord_identify_buckets WHERE bucket = 0`).Scan(&sentAt))

	cb := <-got
	require.NotNil(t, cb)
	require.GreaterOrEqual(t, cb.ClaimedAt.Sub(sentAt), window+a.cfg.Margin, "b identified within a window of a's send")
	require.Less(t, cb.ClaimedAt.Sub(ca.ClaimedAt), reservation-a.validity()/2,
		"b slept through a's reservation although a had sent (claims %s apart)", cb.ClaimedAt.Sub(ca.ClaimedAt))
}
