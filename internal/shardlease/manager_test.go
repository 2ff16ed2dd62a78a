package shardlease_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/pgtest"
	"github.com/shardwarden/shardwarden/internal/shardlease"
)

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, pgtest.New(t).URL)
	valid := func() shardlease.Config {
		return shardlease.Config{ReplicaID: "r1", ShardCount: 4, Runner: shardlease.RunnerFunc(func(context.Context, *shardlease.Lease) (shardlease.ResumeState, error) {
			return shardlease.ResumeState{}, nil
		})}
	}
	for _, tc := range []struct {
		name   string
		mutate func(*shardlease.Config)
		want   string
	}{
		{"zero shard count", func(c *shardlease.Config) { c.ShardCount = 0 }, "ShardCount"},
		{"negative shard count", func(c *shardlease.Config) { c.ShardCount = -3 }, "ShardCount"},
		{"absurd shard count", func(c *shardlease.Config) { c.ShardCount = shardlease.MaxShardCount + 1 }, "ShardCount"},
		{"empty replica id", func(c *shardlease.Config) { c.ReplicaID = "  " }, "ReplicaID"},
		{"no runner", func(c *shardlease.Config) { c.Runner = nil }, "Runner"},
		{"negative interval", func(c *shardlease.Config) { c.HeartbeatInterval = -time.Second }, "HeartbeatInterval"},
		{"one missed heartbeat", func(c *shardlease.Config) { c.MissedHeartbeats = 1 }, "MissedHeartbeats"},
		{"self-fence after the TTL", func(c *shardlease.Config) { c.SelfFenceAfter = 30 * time.Second }, "SelfFenceAfter"},
		{"self-fence within one interval", func(c *shardlease.Config) { c.SelfFenceAfter = 5 * time.Second }, "SelfFenceAfter"},
		{"negative shutdown timeout", func(c *shardlease.Config) { c.ShutdownTimeout = -time.Second }, "ShutdownTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid()
			tc.mutate(&cfg)
			m, err := shardlease.New(pool, cfg)
			require.ErrorIs(t, err, shardlease.ErrInvalidConfig)
			require.ErrorContains(t, err, tc.want)
			require.Nil(t, m)
		})
	}
	t.Run("nil pool", func(t *testing.T) {
		_, err := shardlease.New(nil, valid())
		require.ErrorIs(t, err, shardlease.ErrInvalidConfig)
	})
	t.Run("defaults", func(t *testing.T) {
		m, err := shardlease.New(pool, valid())
		require.NoError(t, err)
		require.Equal(t, 30*time.Second, m.LeaseTTL())
		require.Len(t, m.InstanceID(), 36)
		m.Stop() // never started: returns at once
		require.Error(t, m.Start(context.Background()), "no Start after Stop")
	})
	t.Run("one registry per manager", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		cfg := valid()
		cfg.Registerer = reg
		_, err := shardlease.New(pool, cfg)
		require.NoError(t, err)
		_, err = shardlease.New(pool, cfg)
		require.ErrorContains(t, err, "register lease metrics")
	})
}

func TestSingleReplicaClaimsAllAndReleasesOnStop(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("a", replicaOpts{shards: 8})
	waitFor(t, 10*time.Second, "a holds every shard", func() (bool, string) { return balanced(8, a) })
	require.NoError(t, a.m.Ready(context.Background()))
	require.Error(t, a.m.Start(context.Background()), "second Start")

	// Heartbeats write the runners' reports into the rows.
	waitFor(t, 5*time.Second, "status written", func() (bool, string) {
		var n int
		err := a.pool.QueryRow(context.Background(),
			`SELECT count(*) FROM discord_bot_shards WHERE state = 'ready' AND session_id LIKE 'live-%' AND guilds = shard_id + 1 AND last_event_at IS NOT NULL`).Scan(&n)
		return err == nil && n == 8, fmt.Sprintf("%d rows with status (err %v)", n, err)
	})
	for id, s := range dbOwners(t, a.pool) {
		require.Equal(t, "a/held", s, "shard %d", id)
	}
	require.Equal(t, 8.0, a.metric(t, "shardwarden_lease_held_shards"))
	require.Equal(t, 8.0, a.metric(t, "shardwarden_lease_claims_total"))
	require.Equal(t, 1.0, a.metric(t, "shardwarden_lease_live_replicas"))

	a.m.Stop()
	a.m.Stop() // idempotent
	require.Empty(t, a.m.Held())
	require.Error(t, a.m.Ready(context.Background()))
	require.NoError(t, a.m.Err())
	select {
	case <-a.m.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	require.Equal(t, 8.0, a.metric(t, "shardwarden_lease_releases_total", "reason", "shutdown"))

	// Every row is free with the runner's final state saved; the replica row is gone.
	rows, err := a.pool.Query(context.Background(),
		`SELECT shard_id, epoch, owner_id IS NULL, state, session_id, resume_url, resume_seq, released_at IS NOT NULL FROM discord_bot_shards ORDER BY shard_id`)
	require.NoError(t, err)
	type row struct {
		id                 int
		epoch              int64
		free               bool
		state, session, ru string
		seq                int64
		released           bool
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.id, &x.epoch, &x.free, &x.state, &x.session, &x.ru, &x.seq, &x.released)
		return x, err
	})
	require.NoError(t, err)
	require.Len(t, got, 8)
	for _, r := range got {
		want := drainState(r.id, r.epoch)
		require.Equal(t, row{r.id, 1, true, "free", want.SessionID, want.ResumeURL, want.Seq, true}, r)
	}
	var replicas int
	require.NoError(t, a.pool.QueryRow(context.Background(), `SELECT count(*) FROM discord_bot_replicas`).Scan(&replicas))
	require.Zero(t, replicas)
	c.rec.check(t)
}

// rebalancedPair starts a on eight shards, then b, and waits until a has handed
// b its half.
func rebalancedPair(t *testing.T) (c *cluster, a, b *replica) {
	t.Helper()
	c = newCluster(t)
	a = c.start("a", replicaOpts{shards: 8})
	waitFor(t, 10*time.Second, "a holds every shard", func() (bool, string) { return balanced(8, a) })
	b = c.start("b", replicaOpts{shards: 8})
	waitFor(t, convergeWithin, "a and b balanced", func() (bool, string) {
		ok, why := balanced(8, a, b)
		return ok && len(b.m.Held()) == 4, why
	})
	return c, a, b
}

func TestRebalanceHandsOffWithResumeState(t *testing.T) {
	t.Parallel()
	c, a, b := rebalancedPair(t)
	require.Equal(t, 4.0, a.metric(t, "shardwarden_lease_releases_total", "reason", "rebalance"))

	// b's leases carry exactly what a's runners returned when they handed off.
	for _, iv := range c.rec.intervals() {
		if iv.replica != "b" {
			continue
		}
		require.Equal(t, drainState(iv.shard, iv.epoch-1), iv.resume, "shard %d", iv.shard)
	}

	// No flapping: once balanced, nobody claims or releases any more.
	claims := a.metric(t, "shardwarden_lease_claims_total") + b.metric(t, "shardwarden_lease_claims_total")
	time.Sleep(6 * testInterval)
	require.Equal(t, claims, a.metric(t, "shardwarden_lease_claims_total")+b.metric(t, "shardwarden_lease_claims_total"))
	ok, why := balanced(8, a, b)
	require.True(t, ok, why)
	c.rec.check(t)
}

func TestNotifyWakesPeersBeforeTheirHeartbeat(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("a", replicaOpts{shards: 8})
	waitFor(t, 10*time.Second, "a holds every shard", func() (bool, string) { return balanced(8, a) })

	// b heartbeats once an hour: after its start-up claim, only notifications
	// can make it claim.
	b := c.start("b", replicaOpts{shards: 8, config: func(cfg *shardlease.Config) {
		cfg.HeartbeatInterval, cfg.SelfFenceAfter = time.Hour, 2*time.Hour
		cfg.ClaimRetryDelay = 20 * time.Millisecond
	}})
	waitFor(t, 10*time.Second, "b gets the half a hands back", func() (bool, string) {
		return len(b.m.Held()) == 4 && len(a.m.Held()) == 4, fmt.Sprintf("a=%v b=%v", a.m.Held(), b.m.Held())
	})
	a.m.Stop()
	waitFor(t, 3*time.Second, "b claims what a released on stop", func() (bool, string) { return balanced(8, b) })
	require.Zero(t, b.metric(t, "shardwarden_lease_heartbeat_duration_seconds"), "b never heartbeated: the claims came from NOTIFY")
	c.rec.check(t)
}

func TestShardCountMismatchRefusesToClaim(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("a", replicaOpts{shards: 8})
	waitFor(t, 10*time.Second, "a holds every shard", func() (bool, string) { return balanced(8, a) })
	b := c.start("b", replicaOpts{shards: 16})
	waitFor(t, 5*time.Second, "b says why it is not ready", func() (bool, string) {
		err := b.m.Ready(context.Background())
		return errors.Is(err, shardlease.ErrShardCountMismatch), fmt.Sprint(err)
	})
	err := b.m.Ready(context.Background())
	require.ErrorContains(t, err, "configured with 16 shards, the cluster runs 8")
	require.Contains(t, b.logs.String(), "shard count differs")
	require.Contains(t, b.logs.String(), `"level":"ERROR"`)

	// b does not count as a live replica: a keeps all eight, past its hysteresis.
	time.Sleep(5 * testInterval)
	require.Empty(t, b.m.Held())
	ok, why := balanced(8, a)
	require.True(t, ok, why)
	var count int
	require.NoError(t, a.pool.QueryRow(context.Background(), `SELECT shard_count FROM discord_bot_cluster`).Scan(&count))
	require.Equal(t, 8, count)
	require.NoError(t, a.pool.QueryRow(context.Background(), `SELECT count(*) FROM discord_bot_shards`).Scan(&count))
	require.Equal(t, 8, count, "b created no rows for its 16 shards")
	c.rec.check(t)
}

func TestDuplicateReplicaIDIsRefusedUntilThePredecessorIsGone(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("same", replicaOpts{shards: 4})
	waitFor(t, 10*time.Second, "a holds every shard", func() (bool, string) { return balanced(4, a) })
	b := c.start("same", replicaOpts{shards: 4})
	waitFor(t, 5*time.Second, "b refused", func() (bool, string) {
		err := b.m.Ready(context.Background())
		return errors.Is(err, shardlease.ErrDuplicateReplica), fmt.Sprint(err)
	})
	require.ErrorContains(t, b.m.Ready(context.Background()), a.m.InstanceID())
	require.Equal(t, 1.0, b.metric(t, "shardwarden_lease_duplicate_replica"))
	waitFor(t, 5*time.Second, "b logs each refusal", func() (bool, string) {
		n := strings.Count(b.logs.String(), "replica refused")
		return n >= 2, fmt.Sprintf("%d refusals logged", n)
	})
	require.Contains(t, b.logs.String(), `"level":"ERROR"`)
	require.Empty(t, b.m.Held())
	require.NoError(t, a.m.Ready(context.Background()))
	ok, why := balanced(4, a)
	require.True(t, ok, why)

	// a crashes: once its row is stale, b takes the id and the shards.
	a.m.Abandon()
	waitFor(t, convergeWithin, "b takes over", func() (bool, string) {
		err := b.m.Ready(context.Background())
		ok, why := balanced(4, b)
		return err == nil && ok, fmt.Sprintf("ready: %v; %s", err, why)
	})
	require.Zero(t, b.metric(t, "shardwarden_lease_duplicate_replica"))
	var instance string
	require.NoError(t, b.pool.QueryRow(context.Background(), `SELECT instance_id::text FROM discord_bot_replicas WHERE replica_id = 'same'`).Scan(&instance))
	require.Equal(t, b.m.InstanceID(), instance)
	c.rec.check(t)
}

func TestUnreachableDatabaseAtStart(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("a", replicaOpts{shards: 4, proxied: true, cut: true})
	time.Sleep(5 * testInterval)
	require.ErrorContains(t, a.m.Ready(context.Background()), "not registered")
	require.Empty(t, a.m.Held())
	require.Contains(t, a.logs.String(), "cannot register replica; retrying with backoff")
	select {
	case <-a.m.Done():
		t.Fatal("manager stopped while the database was down")
	default:
	}

	a.proxy.Restore()
	waitFor(t, 10*time.Second, "a becomes healthy once the database answers", func() (bool, string) {
		err := a.m.Ready(context.Background())
		ok, why := balanced(4, a)
		return err == nil && ok, fmt.Sprintf("ready: %v; %s", err, why)
	})
	c.rec.check(t)
}

func TestLostLeaseCancelsTheRunnerAtOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("a", replicaOpts{shards: 4})
	waitFor(t, 10*time.Second, "a holds every shard", func() (bool, string) { return balanced(4, a) })

	// Someone else owns shard 2 now (its epoch moved on).
	_, err := a.pool.Exec(context.Background(),
		`UPDATE discord_bot_shards SET owner_id = 'intruder', epoch = epoch + 1, heartbeat_at = now() + interval '1 hour' WHERE shard_id = 2`)
	require.NoError(t, err)
	waitFor(t, 3*testInterval, "runner of shard 2 stopped", func() (bool, string) {
		return !slices.Contains(a.m.Held(), 2), fmt.Sprint(a.m.Held())
	})
	require.Equal(t, 1.0, a.metric(t, "shardwarden_lease_lost_total"))
	for _, iv := range c.rec.intervals() {
		if iv.shard == 2 {
			require.False(t, iv.to.IsZero(), "runner returned")
		}
	}
	require.Equal(t, 3.0, a.metric(t, "shardwarden_lease_held_shards"))
	require.Contains(t, a.logs.String(), "lease lost")
}

func TestRunnerExitReleasesAndBacksOff(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	var exited atomic.Bool
	exitState := shardlease.ResumeState{SessionID: "exit-session", ResumeURL: "wss://exit.test", Seq: 42}
	a := c.start("a", replicaOpts{shards: 2, body: func(ctx context.Context, lease *shardlease.Lease) (shardlease.ResumeState, error) {
		if lease.ShardID == 1 && exited.CompareAndSwap(false, true) {
			return exitState, errors.New("websocket closed 4000")
		}
		select {
		case <-ctx.Done():
			return shardlease.ResumeState{}, nil
		case <-lease.Draining():
			return drainState(lease.ShardID, lease.Epoch), nil
		}
	}})
	waitFor(t, 10*time.Second, "shard 1 claimed again after its runner exited", func() (bool, string) {
		n := 0
		for _, iv := range c.rec.intervals() {
			if iv.shard == 1 {
				n++
			}
		}
		return n == 2 && len(a.m.Held()) == 2, fmt.Sprintf("%d intervals of shard 1, held %v", n, a.m.Held())
	})
	require.Equal(t, 1.0, a.metric(t, "shardwarden_lease_releases_total", "reason", "runner_exit"))
	var gap time.Duration
	var second shardlease.ResumeState
	var ivs []interval
	for _, iv := range c.rec.intervals() {
		if iv.shard == 1 {
			ivs = append(ivs, iv)
		}
	}
	gap, second = ivs[1].from.Sub(ivs[0].to), ivs[1].resume
	require.GreaterOrEqual(t, gap, testInterval, "backs off at least one interval before claiming again")
	require.Equal(t, exitState, second, "the new lease resumes from the state the runner returned")
	require.Contains(t, a.logs.String(), "runner stopped with an error")
	c.rec.check(t)
}

func TestFatalRunnerErrorStopsTheReplica(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("a", replicaOpts{shards: 3, body: func(ctx context.Context, lease *shardlease.Lease) (shardlease.ResumeState, error) {
		if lease.ShardID == 0 {
			return shardlease.ResumeState{}, fmt.Errorf("discord closed 4004: %w", shardlease.ErrFatal)
		}
		select {
		case <-ctx.Done():
			return shardlease.ResumeState{}, nil
		case <-lease.Draining():
			return drainState(lease.ShardID, lease.Epoch), nil
		}
	}})
	select {
	case <-a.m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a fatal runner error did not stop the replica")
	}
	require.ErrorIs(t, a.m.Err(), shardlease.ErrFatal)
	require.ErrorIs(t, a.m.Ready(context.Background()), shardlease.ErrFatal)
	require.Empty(t, a.m.Held())
	for id, s := range dbOwners(t, a.pool) {
		require.Equal(t, "/free", s, "shard %d released", id)
	}
	var replicas int
	require.NoError(t, a.pool.QueryRow(context.Background(), `SELECT count(*) FROM discord_bot_replicas`).Scan(&replicas))
	require.Zero(t, replicas)
	a.m.Stop() // still fine after a fatal stop
	c.rec.check(t)
}

func TestStartContextCancelStopsGracefully(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.create("a", replicaOpts{shards: 2})
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, a.m.Start(ctx))
	waitFor(t, 10*time.Second, "a holds every shard", func() (bool, string) { return balanced(2, a) })
	cancel()
	select {
	case <-a.m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("cancelling Start's context did not stop the manager")
	}
	require.NoError(t, a.m.Err())
	require.Equal(t, 2.0, a.metric(t, "shardwarden_lease_releases_total", "reason", "shutdown"))
	c.rec.check(t)
}

func TestStuckRunnerIsCancelledAfterTheShutdownTimeout(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("a", replicaOpts{shards: 1, body: func(ctx context.Context, lease *shardlease.Lease) (shardlease.ResumeState, error) {
		<-ctx.Done() // ignores Draining
		return shardlease.ResumeState{SessionID: "ignored"}, nil
	}, config: func(cfg *shardlease.Config) { cfg.ShutdownTimeout = 300 * time.Millisecond }})
	waitFor(t, 10*time.Second, "a holds the shard", func() (bool, string) { return balanced(1, a) })
	start := time.Now()
	a.m.Stop()
	require.Less(t, time.Since(start), 3*time.Second)
	var session string
	var free bool
	require.NoError(t, a.pool.QueryRow(context.Background(), `SELECT owner_id IS NULL, coalesce(session_id, '') FROM discord_bot_shards WHERE shard_id = 0`).Scan(&free, &session))
	require.True(t, free)
	require.Equal(t, "live-0-1", session, "a cancelled runner's return is ignored; its last report is saved")
	require.Contains(t, a.logs.String(), "did not hand off in time")
}

// A replica that finds the claim lock taken retries after a short jittered delay:
// with an hour between its heartbeats it still claims soon after the lock frees.
func TestClaimLockLoserRetriesQuickly(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	holder := pgtest.Pool(t, c.db.URL)
	ctx := context.Background()
	tx, err := holder.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock('discord_bot_shards'::regclass::oid::int, -1)`)
	require.NoError(t, err)

	a := c.start("a", replicaOpts{shards: 4, config: func(cfg *shardlease.Config) {
		cfg.HeartbeatInterval, cfg.SelfFenceAfter = time.Hour, 2*time.Hour
		cfg.ClaimRetryDelay = 50 * time.Millisecond
	}})
	waitFor(t, 5*time.Second, "a registered", func() (bool, string) {
		err := a.m.Ready(ctx)
		return err == nil, fmt.Sprint(err)
	})
	time.Sleep(150 * time.Millisecond)
	require.Empty(t, a.m.Held(), "the lock is held elsewhere")
	released := time.Now()
	require.NoError(t, tx.Commit(ctx))
	waitFor(t, 2*time.Second, "a claims once the lock is free", func() (bool, string) { return balanced(4, a) })
	t.Logf("claimed %s after the lock was released", time.Since(released).Round(time.Millisecond))
	require.Zero(t, a.metric(t, "shardwarden_lease_heartbeat_duration_seconds"), "no heartbeat was involved")
}

// The metric names are a contract with the deployment's alert rules.
func TestMetricNames(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	_, err := shardlease.New(pgtest.Pool(t, pgtest.New(t).URL), shardlease.Config{
		ReplicaID: "r", ShardCount: 1, Registerer: reg,
		Runner: shardlease.RunnerFunc(func(context.Context, *shardlease.Lease) (shardlease.ResumeState, error) {
			return shardlease.ResumeState{}, nil
		}),
	})
	require.NoError(t, err)
	families, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]string{}
	for _, f := range families {
		got[f.GetName()] = f.GetType().String()
		if f.GetName() == "shardwarden_lease_releases_total" {
			var reasons []string
			for _, m := range f.GetMetric() {
				reasons = append(reasons, m.GetLabel()[0].GetName()+"="+m.GetLabel()[0].GetValue())
			}
			require.ElementsMatch(t, []string{"reason=shutdown", "reason=rebalance", "reason=runner_exit"}, reasons)
		}
	}
	require.Equal(t, map[string]string{
		"shardwarden_lease_held_shards":                "GAUGE",
		"shardwarden_lease_heartbeat_duration_seconds": "HISTOGRAM",
		"shardwarden_lease_heartbeat_failures_total":   "COUNTER",
		"shardwarden_lease_self_fences_total":          "COUNTER",
		"shardwarden_lease_lost_total":                 "COUNTER",
		"shardwarden_lease_claims_total":               "COUNTER",
		"shardwarden_lease_releases_total":             "COUNTER",
		"shardwarden_lease_stale_shards":               "GAUGE",
		"shardwarden_lease_live_replicas":              "GAUGE",
		"shardwarden_lease_duplicate_replica":          "GAUGE",
		"shardwarden_lease_heartbeat_statements_total": "COUNTER",
	}, got)
}

// A replica that handed shards to a newcomer takes them back as soon as that
// newcomer leaves, instead of leaving them unowned for the rest of its rebalance
// cooldown (in a rolling update the newcomer is often the next one stopped).
func TestRebalancedShardsTakenBackWhenTheNewcomerLeaves(t *testing.T) {
	t.Parallel()
	c, a, b := rebalancedPair(t)
	b.m.Stop() // releases its four with a NOTIFY
	start := time.Now()
	waitFor(t, 10*time.Second, "a holds every shard again", func() (bool, string) { return balanced(8, a) })
	require.Less(t, time.Since(start), testInterval, "a waited out its rebalance cooldown with b's shards unowned")
	c.rec.check(t)
}
