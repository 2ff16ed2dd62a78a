package gateway

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/fakediscord"
	"github.com/shardwarden/shardwarden/internal/natstest"
	"github.com/shardwarden/shardwarden/internal/pgtest"
	"github.com/shardwarden/shardwarden/internal/shardlease"
)

func TestOneReplicaEndToEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{fake: fakediscord.Config{Shards: 2, MaxConcurrency: 1}})
	r := e.replica("r1", replicaOpts{})
	runs := []*run{r.start(0, 2, 1, shardlease.ResumeState{}), r.start(1, 2, 1, shardlease.ResumeState{})}
	for _, ru := range runs {
		ru.ready(t)
	}
	require.NoError(t, e.fake.StartTraffic(fakediscord.TrafficConfig{Rate: 2000, Count: 1500, PayloadSize: 1024}))
	require.NoError(t, e.fake.WaitTraffic(context.Background()))
	e.dispatch(t, 0, 3)
	_, err := e.fake.Dispatch(0, "SOME_UNKNOWN_FUTURE_EVENT", map[string]any{"x": 1})
	require.NoError(t, err)

	e.requireExactlyOnce(t)
	e.requireNoViolations(t)
	for shard, ru := range runs {
		st := ru.lease.Status()
		require.Equal(t, shardlease.StateReady, st.State)
		require.True(t, st.Resume.Resumable())
		require.Positive(t, st.Guilds)
		require.Equal(t, 1.0, r.metric(t, "shardwarden_gateway_identifies_total", "shard", itoa(shard)))
		require.Equal(t, 1.0, r.metric(t, "shardwarden_gateway_shard_state", "shard", itoa(shard), "state", "ready"))
	}
	require.Positive(t, r.metric(t, "shardwarden_gateway_events_by_type_total", "type", "other"))
	require.Positive(t, r.metric(t, "shardwarden_gateway_heartbeat_ack_latency_seconds", "shard", "0"))
	require.NoError(t, r.svc.Ready(context.Background()))
}

func TestResumeAfterFaults(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{fake: fakediscord.Config{Shards: 1}})
	r := e.replica("r1", replicaOpts{})
	ru := r.start(0, 1, 1, shardlease.ResumeState{})
	ru.ready(t)
	e.dispatch(t, 0, 20)

	resumes := func() float64 { return r.metric(t, "shardwarden_gateway_resumes_total", "shard", "0") }
	for _, fault := range []struct {
		name   string
		inject func() int
	}{
		{"op 7 reconnect", func() int { return e.fake.Reconnect(0) }},
		{"dropped connection", func() int { return e.fake.DropShard(0) }},
		{"zombie (no heartbeat ACKs)", func() int { return e.fake.StopAcks(0, true) }},
		{"op 9 resumable", func() int { return e.fake.InvalidSession(0, true) }},
		{"stalled server (writes nothing)", func() int { return e.fake.Stall(0, 0) }},
	} {
		t.Run(fault.name, func(t *testing.T) {
			conn := e.liveConn(t, 0, 0)
			before := resumes()
			require.Equal(t, 1, fault.inject())
			e.dispatch(t, 0, 20) // some land while disconnected: replayed on RESUME
			eventually(t, 20*time.Second, "a RESUME", func() bool { return resumes() > before })
			e.liveConn(t, 0, conn)
			e.dispatch(t, 0, 20)
		})
	}
	// A heartbeat the server asks for (op 1) is answered at once and is no reason
	// to reconnect.
	before := resumes()
	zombies := r.metric(t, "shardwarden_gateway_reconnects_total", "shard", "0", "reason", "zombie")
	for range 3 {
		require.Equal(t, 1, e.fake.RequestHeartbeat(0))
	}
	time.Sleep(1500 * time.Millisecond) // two heartbeat intervals: nothing may happen
	require.Equal(t, before, resumes(), "no reconnect")
	require.Equal(t, zombies, r.metric(t, "shardwarden_gateway_reconnects_total", "shard", "0", "reason", "zombie"))

	e.requireExactlyOnce(t)
	e.requireNoViolations(t)
	require.Equal(t, 1.0, r.metric(t, "shardwarden_gateway_identifies_total", "shard", "0"), "no IDENTIFY spent on a resumable fault")
	require.Zero(t, r.metric(t, "shardwarden_gateway_session_losses_total", "shard", "0"))
	require.Positive(t, r.metric(t, "shardwarden_gateway_reconnects_total", "shard", "0", "reason", "zombie"))
	st := e.fake.Stats(0)
	require.Equal(t, 1, st.Identifies)
	require.GreaterOrEqual(t, st.Resumes, 5)
}

func TestIdentifyAfterInvalidSession(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{fake: fakediscord.Config{Shards: 1}})
	r := e.replica("r1", replicaOpts{})
	ru := r.start(0, 1, 1, shardlease.ResumeState{})
	ru.ready(t)
	first := ru.lease.Status().Resume.SessionID
	e.dispatch(t, 0, 10)

	require.Equal(t, 1, e.fake.InvalidSession(0, false))
	eventually(t, 20*time.Second, "a new session", func() bool {
		st := ru.lease.Status()
		return st.State == shardlease.StateReady && st.Resume.SessionID != "" && st.Resume.SessionID != first
	})
	e.dispatch(t, 0, 10)
	e.requireExactlyOnce(t)
	require.Empty(t, e.fake.Violations())
	require.Equal(t, 2.0, r.metric(t, "shardwarden_gateway_identifies_total", "shard", "0"))
	require.Equal(t, 1.0, r.metric(t, "shardwarden_gateway_session_losses_total", "shard", "0"))
	require.Equal(t, 2, e.fake.Stats(0).Identifies)
}

func TestHandoffBetweenReplicas(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{fake: fakediscord.Config{Shards: 1}})
	a, b := e.replica("a", replicaOpts{}), e.replica("b", replicaOpts{})
	ra := a.start(0, 1, 1, shardlease.ResumeState{})
	ra.ready(t)
	require.NoError(t, e.fake.StartTraffic(fakediscord.TrafficConfig{Rate: 500, Count: 1000, PayloadSize: 512}))
	eventually(t, 10*time.Second, "traffic flowing", func() bool { return e.fake.TrafficStats().Dispatched > 200 })

	rs := ra.handoff(t)
	require.True(t, rs.Resumable(), "handoff returns a resumable state: %+v", rs)
	require.Positive(t, rs.Seq)
	require.Equal(t, e.fake.ResumeURL(), rs.ResumeURL)

	rb := b.start(0, 1, 2, rs)
	rb.ready(t)
	require.NoError(t, e.fake.WaitTraffic(context.Background()))

	e.requireExactlyOnce(t)
	e.requireNoViolations(t)
	st := e.fake.Stats(0)
	require.Equal(t, 1, st.Identifies, "the handoff spent no IDENTIFY")
	require.Equal(t, 1, st.Resumes)
	require.Zero(t, b.metric(t, "shardwarden_gateway_identifies_total", "shard", "0"))
	require.Equal(t, 1.0, b.metric(t, "shardwarden_gateway_resumes_total", "shard", "0"))
	require.Equal(t, rs.SessionID, rb.lease.Status().Resume.SessionID)

	// A lost lease stops the shard at once and returns without a state.
	rb.cancel()
	rb.wait(t, 5*time.Second)
	require.ErrorIs(t, rb.err, context.Canceled)
	require.Equal(t, shardlease.ResumeState{}, rb.rs)
}

func TestFatalCloseStopsTheReplica(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{fake: fakediscord.Config{Shards: 1}})
	r := e.replica("r1", replicaOpts{})
	ru := r.start(0, 1, 1, shardlease.ResumeState{})
	ru.ready(t)
	require.Equal(t, 1, e.fake.CloseShard(0, 4004))
	ru.wait(t, 10*time.Second)
	require.ErrorIs(t, ru.err, shardlease.ErrFatal)
	require.ErrorContains(t, ru.err, "4004")
}

func TestIdentifyLimitsAcrossThreeReplicas(t *testing.T) {
	const shards = 6
	e := newEnv(t, envOpts{fake: fakediscord.Config{Shards: shards, MaxConcurrency: 2, IdentifyWindow: 250 * time.Millisecond}})
	var runs []*run
	var reps []*replica
	for i := range 3 {
		reps = append(reps, e.replica(itoa(i), replicaOpts{}))
	}
	start := time.Now()
	for shard := range shards {
		runs = append(runs, reps[shard%3].start(shard, shards, 1, shardlease.ResumeState{}))
	}
	for _, ru := range runs {
		ru.ready(t)
	}
	elapsed := time.Since(start)
	require.Empty(t, e.fake.Violations(), "identify rate limits held")
	for shard := range shards {
		st := e.fake.Stats(shard)
		require.Equal(t, 1, st.Identifies, "shard %d", shard)
		require.Zero(t, st.IdentifyRejected, "shard %d", shard)
	}
	// 6 shards in 2 buckets: 3 windows per bucket, the first one immediate.
	require.GreaterOrEqual(t, elapsed, 2*250*time.Millisecond)
	t.Logf("cold start of %d shards, max_concurrency 2, window 250ms: %s", shards, elapsed)
}

func TestConfigValidation(t *testing.T) {
	for name, cfg := range map[string]Config{
		"empty":               {},
		"negative drain":      {Token: "x", GatewayURL: "ws://x", Publisher: nopPublisher{}, Identify: &IdentifyLimiter{}, DrainTimeout: -1},
		"min above max":       {Token: "x", GatewayURL: "ws://x", Publisher: nopPublisher{}, Identify: &IdentifyLimiter{}, ReconnectMin: time.Minute, ReconnectMax: time.Second},
		"buffer of one event": {Token: "x", GatewayURL: "ws://x", Publisher: nopPublisher{}, Identify: &IdentifyLimiter{}, BufferSize: 1},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(cfg)
			require.ErrorContains(t, err, "gateway config")
		})
	}
}

func TestJitteredBackoff(t *testing.T) {
	f := jitteredBackoff(100*time.Millisecond, time.Second)
	for try := range 20 {
		d := f(try)
		require.Positive(t, d)
		require.LessOrEqual(t, d, time.Second)
	}
	require.LessOrEqual(t, f(0), 100*time.Millisecond)
	require.GreaterOrEqual(t, f(10), 500*time.Millisecond, "capped and jittered within [max/2, max]")
}

func TestNATSRestartLosesNothing(t *testing.T) {
	t.Parallel()
	proc := natstest.StartProcess(t)
	e := newEnv(t, envOpts{fake: fakediscord.Config{Shards: 1}, natsProcess: proc})
	r := e.replica("r1", replicaOpts{bufferSize: 256})
	ru := r.start(0, 1, 1, shardlease.ResumeState{})
	ru.ready(t)
	require.NoError(t, e.fake.StartTraffic(fakediscord.TrafficConfig{Rate: 300, Count: 800, PayloadSize: 512}))
	eventually(t, 10*time.Second, "traffic flowing", func() bool { return e.fake.TrafficStats().Dispatched > 200 })

	proc.Kill()
	// The buffer fills; the shard disconnects (4000), keeps its session and is
	// not ready meanwhile.
	eventually(t, 20*time.Second, "backpressure", func() bool { return r.svc.Ready(context.Background()) != nil })
	require.Positive(t, r.metric(t, "shardwarden_gateway_buffer_full_total", "shard", "0"))
	require.Equal(t, 1.0, r.metric(t, "shardwarden_gateway_shard_state", "shard", "0", "state", "backpressure"))

	// Discord keeps the rest for the RESUME.
	require.NoError(t, e.fake.WaitTraffic(context.Background()))
	proc.Start()
	eventually(t, 30*time.Second, "ready again", func() bool { return r.svc.Ready(context.Background()) == nil })
	require.NoError(t, e.fake.WaitTraffic(context.Background()))
	e.requireExactlyOnce(t)
	e.requireNoViolations(t)
	require.Equal(t, 1, e.fake.Stats(0).Identifies, "the outage cost no IDENTIFY")
	require.Positive(t, e.fake.Stats(0).Resumes)
}

// TestTwoReplicasWithLeaseManagers runs the real shardlease Manager over two
// replicas: a rebalance and then a shutdown hand the shards over; every handoff
// RESUMEs on the other replica, the referee sees no overlap, no IDENTIFY beyond
// the first two is spent and nothing is lost.
func TestTwoReplicasWithLeaseManagers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{fake: fakediscord.Config{Shards: 2, MaxConcurrency: 2}})
	manager := func(r *replica) *shardlease.Manager {
		m, err := shardlease.New(pgtest.Pool(t, e.db.URL), shardlease.Config{
			ReplicaID: r.name, ShardCount: 2, HeartbeatInterval: 200 * time.Millisecond,
			ShutdownTimeout: 10 * time.Second, Runner: r.svc, Registerer: r.reg,
		})
		require.NoError(t, err)
		require.NoError(t, m.Start(context.Background()))
		t.Cleanup(m.Stop)
		return m
	}
	a, b := e.replica("a", replicaOpts{}), e.replica("b", replicaOpts{})
	ma := manager(a)
	eventually(t, 20*time.Second, "replica a drives both shards", func() bool {
		return len(ma.Held()) == 2 && a.metric(t, "shardwarden_gateway_shard_state", "shard", "0", "state", "ready") == 1 &&
			a.metric(t, "shardwarden_gateway_shard_state", "shard", "1", "state", "ready") == 1
	})
	require.NoError(t, e.fake.StartTraffic(fakediscord.TrafficConfig{Rate: 400, Count: 2400, PayloadSize: 512}))

	mb := manager(b)
	eventually(t, 30*time.Second, "a rebalance hands one shard to b", func() bool {
		return len(ma.Held()) == 1 && len(mb.Held()) == 1 && len(b.svc.Shards()) == 1
	})
	moved := b.svc.Shards()[0]
	eventually(t, 20*time.Second, "b resumed the moved shard", func() bool {
		return b.metric(t, "shardwarden_gateway_shard_state", "shard", itoa(moved), "state", "ready") == 1
	})

	ma.Stop() // SIGTERM on a: its last shard goes to b
	eventually(t, 30*time.Second, "b drives both shards", func() bool {
		return len(mb.Held()) == 2 && b.metric(t, "shardwarden_gateway_shard_state", "shard", "0", "state", "ready") == 1 &&
			b.metric(t, "shardwarden_gateway_shard_state", "shard", "1", "state", "ready") == 1
	})
	require.NoError(t, e.fake.WaitTraffic(context.Background()))

	e.requireExactlyOnce(t)
	e.requireNoViolations(t)
	for shard := range 2 {
		st := e.fake.Stats(shard)
		require.Equal(t, 1, st.Identifies, "shard %d: handoffs spent no IDENTIFY", shard)
		require.Equal(t, 1, st.Resumes, "shard %d: one handoff, one RESUME", shard)
	}
	require.Zero(t, b.metric(t, "shardwarden_gateway_identifies_total", "shard", "0"))
	require.Zero(t, b.metric(t, "shardwarden_gateway_identifies_total", "shard", "1"))

	// A RESUME replays no READY: the new owner carries the guild count over from
	// the lease row instead of reporting zero.
	for shard := range 2 {
		want := float64(len(e.fake.GuildsOfShard(shard, 2)))
		require.Positive(t, want)
		require.Equal(t, want, b.metric(t, "shardwarden_gateway_guilds", "shard", itoa(shard)), "shard %d", shard)
	}
}

// BenchmarkOneShardPipeline measures one shard end to end: the fake sends 1 KiB
// MESSAGE_CREATEs, the gateway decodes, buffers and publishes them, and the
// clock stops when JetStream has acknowledged all of them.
//
// By default the fake sends as fast as it can and the shard buffer holds all
// b.N events, so the result is the pipeline's capacity. With
// PIPELINE_BENCH_RATE=n the fake sends n/s into the default buffer: a rate above
// the capacity fills it, and the shard then disconnects and resumes (arikawa
// redials after 5 s), which shows as a collapse of events/s.
func BenchmarkOneShardPipeline(b *testing.B) {
	rate, _ := strconv.ParseFloat(os.Getenv("PIPELINE_BENCH_RATE"), 64)
	buffer := 0
	if rate == 0 {
		buffer = b.N + 1024
	}
	e := newEnv(b, envOpts{fake: fakediscord.Config{Shards: 1}})
	r := e.replica("bench", replicaOpts{bufferSize: buffer})
	ru := r.start(0, 1, 1, shardlease.ResumeState{})
	ru.ready(b)
	published := func() float64 { return r.metric(b, "shardwarden_gateway_events_published_total", "shard", "0") }
	eventually(b, 10*time.Second, "READY and GUILD_CREATEs stored", func() bool {
		return published() > 0 && published() == r.metric(b, "shardwarden_gateway_events_received_total", "shard", "0")
	})
	base := published()
	b.SetBytes(1024)
	b.ResetTimer()
	require.NoError(b, e.fake.StartTraffic(fakediscord.TrafficConfig{
		Rate: rate, Count: int64(b.N), PayloadSize: 1024, Mix: map[string]int{"MESSAGE_CREATE": 1},
	}))
	eventually(b, time.Minute, "every event published", func() bool { return published()-base >= float64(b.N) })
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
