package shardlease_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/faultproxy"
	"github.com/shardwarden/shardwarden/internal/logging/logtest"
	"github.com/shardwarden/shardwarden/internal/pgtest"
	"github.com/shardwarden/shardwarden/internal/promtest"
	"github.com/shardwarden/shardwarden/internal/shardlease"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Fast timings for tests: a lease is stale after 600 ms by the database clock and
// its holder fences itself after 400 ms without a renewal.
const (
	testInterval   = 200 * time.Millisecond
	testSelfFence  = 400 * time.Millisecond
	testMissed     = 3
	testTTL        = testInterval * testMissed
	testShutdown   = 2 * time.Second
	convergeWithin = 20 * time.Second
)

// cluster is one test's database plus the replicas started on it.
type cluster struct {
	t   *testing.T
	db  pgtest.DB
	rec *recorder
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	return &cluster{t: t, db: pgtest.NewMigrated(t), rec: newRecorder()}
}

// replica is one Manager with its own pool, registry and log.
type replica struct {
	id    string
	m     *shardlease.Manager
	reg   *prometheus.Registry
	pool  *pgxpool.Pool
	proxy *faultproxy.Proxy // nil when connected directly
	logs  *logtest.Buffer
}

type replicaOpts struct {
	shards  int
	proxied bool
	cut     bool // start with the proxy cut
	body    runBody
	config  func(*shardlease.Config)
}

// start creates and starts a replica; it is stopped (gracefully, unless the test
// stopped or abandoned it) when the test ends.
func (c *cluster) start(id string, o replicaOpts) *replica {
	t := c.t
	t.Helper()
	r := c.create(id, o)
	require.NoError(t, r.m.Start(context.Background()))
	return r
}

func (c *cluster) create(id string, o replicaOpts) *replica {
	t := c.t
	t.Helper()
	url := c.db.URL
	r := &replica{id: id, reg: prometheus.NewRegistry(), logs: &logtest.Buffer{}}
	if o.proxied {
		up, err := faultproxy.UpstreamOf(url)
		require.NoError(t, err)
		r.proxy = faultproxy.Start(t, up)
		url, err = r.proxy.RewriteURL(url)
		require.NoError(t, err)
		if o.cut {
			r.proxy.Cut()
		}
	}
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = 4
	r.pool, err = pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(r.pool.Close)

	lc := shardlease.Config{
		ReplicaID:         id,
		ShardCount:        cmpOr(o.shards, 8),
		HeartbeatInterval: testInterval,
		MissedHeartbeats:  testMissed,
		SelfFenceAfter:    testSelfFence,
		ShutdownTimeout:   testShutdown,
		Version:           "test",
		Runner:            c.rec.runner(id, o.body),
		Logger:            slog.New(slog.NewJSONHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:        r.reg,
	}
	if o.config != nil {
		o.config(&lc)
	}
	r.m, err = shardlease.New(r.pool, lc)
	require.NoError(t, err)
	t.Cleanup(r.m.Stop) // runs before the pool and proxy cleanups
	return r
}

func cmpOr(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// metric returns the value of a counter or gauge (summed over label sets that
// match labels), or the sample count of a histogram.
func (r *replica) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	return promtest.Value(t, r.reg, name, labels...)
}

// waitFor polls cond until it holds or the deadline passes, then fails with the
// last explanation cond gave.
func waitFor(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %s", what, within, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// balanced reports whether the replicas hold every one of n shards exactly once,
// spread at most one apart.
func balanced(n int, rs ...*replica) (bool, string) {
	seen := map[int]string{}
	lo, hi := n+1, -1
	var parts []string
	for _, r := range rs {
		held := r.m.Held()
		parts = append(parts, fmt.Sprintf("%s=%d", r.id, len(held)))
		lo, hi = min(lo, len(held)), max(hi, len(held))
		for _, s := range held {
			if other, dup := seen[s]; dup {
				return false, fmt.Sprintf("shard %d held by %s and %s", s, other, r.id)
			}
			seen[s] = r.id
		}
	}
	desc := strings.Join(parts, " ")
	switch {
	case len(seen) != n:
		return false, fmt.Sprintf("%d of %d shards held (%s)", len(seen), n, desc)
	case hi-lo > 1:
		return false, "unbalanced: " + desc
	}
	return true, desc
}

// dbOwners reads owner and freshness of every shard row.
func dbOwners(t *testing.T, pool *pgxpool.Pool) map[int]string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT shard_id, coalesce(owner_id, ''), status FROM discord_bot_shards_status`)
	require.NoError(t, err)
	defer rows.Close()
	out := map[int]string{}
	for rows.Next() {
		var id int
		var owner, status string
		require.NoError(t, rows.Scan(&id, &owner, &status))
		out[id] = owner + "/" + status
	}
	require.NoError(t, rows.Err())
	return out
}

// runBody is what a test Runner does with a lease; nil means "drive until the
// context is cancelled or the lease drains".
type runBody func(ctx context.Context, lease *shardlease.Lease) (shardlease.ResumeState, error)

// interval is one holding of a shard, from RunShard's call to its return.
type interval struct {
	shard    int
	replica  string
	epoch    int64
	from, to time.Time
	resume   shardlease.ResumeState // what the lease was handed
	returned shardlease.ResumeState // what the runner returned
	drained  bool                   // returned because Draining() closed
}

// recorder is the safety checker: it records every held interval from the
// Runner callbacks and flags, at the moment it happens, a shard started while
// another interval of it is open, or an epoch that does not grow.
type recorder struct {
	mu         sync.Mutex
	open       map[int]*interval
	all        []*interval
	lastEpoch  map[int]int64
	violations []string
}

func newRecorder() *recorder {
	return &recorder{open: map[int]*interval{}, lastEpoch: map[int]int64{}}
}

// drainState is what a test runner returns on hand-off.
func drainState(shard int, epoch int64) shardlease.ResumeState {
	return shardlease.ResumeState{SessionID: fmt.Sprintf("drained-%d-%d", shard, epoch), ResumeURL: "wss://resume.test", Seq: epoch * 1000}
}

func (rc *recorder) runner(replica string, body runBody) shardlease.Runner {
	return shardlease.RunnerFunc(func(ctx context.Context, lease *shardlease.Lease) (st shardlease.ResumeState, err error) {
		iv := rc.begin(replica, lease)
		defer func() { rc.end(iv, st) }()
		lease.Report(shardlease.Status{
			State:       shardlease.StateReady,
			Resume:      shardlease.ResumeState{SessionID: fmt.Sprintf("live-%d-%d", lease.ShardID, lease.Epoch), ResumeURL: "wss://live.test", Seq: 7},
			Guilds:      lease.ShardID + 1,
			LastEventAt: time.Now(),
		})
		if body != nil {
			return body(ctx, lease)
		}
		select {
		case <-ctx.Done():
			return shardlease.ResumeState{}, nil
		case <-lease.Draining():
			rc.mu.Lock()
			iv.drained = true
			rc.mu.Unlock()
			return drainState(lease.ShardID, lease.Epoch), nil
		}
	})
}

func (rc *recorder) begin(replica string, lease *shardlease.Lease) *interval {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	iv := &interval{shard: lease.ShardID, replica: replica, epoch: lease.Epoch, from: time.Now(), resume: lease.Resume}
	if o := rc.open[lease.ShardID]; o != nil {
		rc.violations = append(rc.violations, fmt.Sprintf("shard %d: %s (epoch %d) started while %s (epoch %d) still holds it",
			lease.ShardID, replica, lease.Epoch, o.replica, o.epoch))
	}
	if lease.Epoch <= rc.lastEpoch[lease.ShardID] {
		rc.violations = append(rc.violations, fmt.Sprintf("shard %d: epoch %d handed to %s after epoch %d",
			lease.ShardID, lease.Epoch, replica, rc.lastEpoch[lease.ShardID]))
	}
	rc.lastEpoch[lease.ShardID] = lease.Epoch
	rc.open[lease.ShardID] = iv
	rc.all = append(rc.all, iv)
	return iv
}

func (rc *recorder) end(iv *interval, returned shardlease.ResumeState) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	iv.to, iv.returned = time.Now(), returned
	if rc.open[iv.shard] == iv {
		delete(rc.open, iv.shard)
	}
}

// intervals returns a copy of every recorded interval.
func (rc *recorder) intervals() []interval {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := make([]interval, len(rc.all))
	for i, iv := range rc.all {
		out[i] = *iv
	}
	return out
}

// check fails t on any overlap: the violations seen live, and a sweep over the
// closed intervals of each shard.
func (rc *recorder) check(t *testing.T) {
	t.Helper()
	rc.mu.Lock()
	violations := slices.Clone(rc.violations)
	rc.mu.Unlock()
	byShard := map[int][]interval{}
	for _, iv := range rc.intervals() {
		byShard[iv.shard] = append(byShard[iv.shard], iv)
	}
	for shard, ivs := range byShard {
		sort.Slice(ivs, func(i, j int) bool { return ivs[i].from.Before(ivs[j].from) })
		for i := 1; i < len(ivs); i++ {
			prev, cur := ivs[i-1], ivs[i]
			if prev.to.IsZero() || cur.from.Before(prev.to) {
				violations = append(violations, fmt.Sprintf("shard %d: %s epoch %d [%s, %s) overlaps %s epoch %d from %s",
					shard, prev.replica, prev.epoch, prev.from.Format(time.StampMicro), prev.to.Format(time.StampMicro),
					cur.replica, cur.epoch, cur.from.Format(time.StampMicro)))
			}
		}
	}
	if len(violations) > 10 {
		violations = append(violations[:10], fmt.Sprintf("... and %d more", len(violations)-10))
	}
	require.Empty(t, violations, "a shard was driven by two runners at once")
}
