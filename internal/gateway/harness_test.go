package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/fakediscord"
	"github.com/shardwarden/shardwarden/internal/natstest"
	"github.com/shardwarden/shardwarden/internal/pgtest"
	"github.com/shardwarden/shardwarden/internal/shardlease"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// env is one test's world: a fake Discord, NATS with the streams, Postgres.
type env struct {
	t       testing.TB
	fake    *fakediscord.Server
	natsURL string
	db      pgtest.DB
	js      jetstream.JetStream
}

type envOpts struct {
	fake        fakediscord.Config
	natsProcess *natstest.Process // a killable nats-server; in-process when nil
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	cfg := o.fake
	// Not shorter: arikawa paces every command (heartbeats too) to 115 per minute.
	cfg.HeartbeatInterval = cmpOr(cfg.HeartbeatInterval, 700*time.Millisecond)
	// Discord's 1.5 intervals leave 350ms of slack, too little for a loaded -race
	// run where the fake's own reader is late.
	cfg.HeartbeatTimeout = cmpOr(cfg.HeartbeatTimeout, 3*cfg.HeartbeatInterval)
	cfg.IdentifyWindow = cmpOr(cfg.IdentifyWindow, 200*time.Millisecond)
	fake, err := fakediscord.New(cfg)
	require.NoError(t, err)
	require.NoError(t, fake.Start(context.Background()))
	t.Cleanup(fake.Stop)

	url := ""
	if o.natsProcess != nil {
		url = o.natsProcess.URL()
	} else {
		url = natstest.InProcess(t)
	}
	nc := natstest.Connect(t, url)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, bus.EnsureStreams(ctx, js, bus.StreamConfig{}))
	return &env{t: t, fake: fake, natsURL: url, db: pgtest.NewMigrated(t), js: js}
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// replica is one bot replica's gateway side: its own pool, NATS connection,
// publisher, identify limiter and Service.
type replica struct {
	name string
	svc  *Service
	reg  *prometheus.Registry
	pub  *bus.Publisher

	mu   sync.Mutex
	runs map[int]*run
}

type run struct {
	lease  *shardlease.Lease
	cancel context.CancelFunc
	done   chan struct{}
	rs     shardlease.ResumeState
	err    error
}

type replicaOpts struct {
	bufferSize int
}

func (e *env) replica(name string, o replicaOpts) *replica {
	t := e.t
	t.Helper()
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With(slog.String("replica_id", name))
	pool := pgtest.Pool(t, e.db.URL)
	lim, err := NewIdentifyLimiter(pool, IdentifyConfig{
		ReplicaID: name, Window: e.fake.Config().IdentifyWindow, Registerer: reg, Logger: logger,
		// Covers the fake's read delay on a loaded test machine: the fake times
		// IDENTIFYs when it reads them.
		Margin: 50 * time.Millisecond,
	})
	require.NoError(t, err)
	gb := e.fake.GatewayBot()
	require.NoError(t, lim.SetLimits(context.Background(), SessionStartLimit{
		Total: gb.SessionStartLimit.Total, Remaining: gb.SessionStartLimit.Remaining,
		ResetAfter:     time.Duration(gb.SessionStartLimit.ResetAfter) * time.Millisecond,
		MaxConcurrency: gb.SessionStartLimit.MaxConcurrency,
	}))

	nc := natstest.Connect(t, e.natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{AckTimeout: 2 * time.Second, Registerer: reg, Logger: logger})
	require.NoError(t, err)
	require.NoError(t, pub.Start(context.Background()))
	t.Cleanup(pub.Stop)

	svc, err := New(Config{
		Token:             e.fake.Token(),
		GatewayURL:        e.fake.GatewayURL(),
		Intents:           1<<0 | 1<<9 | 1<<12 | 1<<15, // guilds, guild messages, direct messages, message content
		Publisher:         pub,
		Identify:          lim,
		BufferSize:        cmpOr(o.bufferSize, 8192),
		DrainTimeout:      5 * time.Second,
		HandshakeTimeout:  10 * time.Second,
		ReconnectMin:      50 * time.Millisecond,
		ReconnectMax:      500 * time.Millisecond,
		InvalidSessionMin: 10 * time.Millisecond,
		InvalidSessionMax: 50 * time.Millisecond,
		StatusInterval:    50 * time.Millisecond,
		Registerer:        reg,
		Logger:            logger,
	})
	require.NoError(t, err)
	r := &replica{name: name, svc: svc, reg: reg, pub: pub, runs: map[int]*run{}}
	t.Cleanup(r.stopAll)
	return r
}

// start runs a shard as the manager would after claiming it.
func (r *replica) start(shardID, shardCount int, epoch int64, resume shardlease.ResumeState) *run {
	lease := shardlease.NewLeaseForTest(shardID, shardCount, epoch, resume)
	ctx, cancel := context.WithCancel(context.Background())
	ru := &run{lease: lease, cancel: cancel, done: make(chan struct{})}
	r.mu.Lock()
	r.runs[shardID] = ru
	r.mu.Unlock()
	go func() {
		defer close(ru.done)
		ru.rs, ru.err = r.svc.RunShard(ctx, lease)
	}()
	return ru
}

// handoff drains the shard and returns what the manager would save.
func (ru *run) handoff(t testing.TB) shardlease.ResumeState {
	t.Helper()
	ru.lease.DrainForTest()
	select {
	case <-ru.done:
	case <-time.After(15 * time.Second):
		t.Fatal("runner did not return after drain")
	}
	require.NoError(t, ru.err)
	ru.cancel()
	return ru.rs
}

func (ru *run) wait(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case <-ru.done:
	case <-time.After(d):
		t.Fatal("runner did not return")
	}
}

func (r *replica) stopAll() {
	r.mu.Lock()
	runs := r.runs
	r.runs = map[int]*run{}
	r.mu.Unlock()
	for _, ru := range runs {
		ru.cancel()
		<-ru.done
	}
}

func (r *replica) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return gaugeValue(t, r.reg, name, labels...)
}

func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ready waits until the shard's lease reports it ready.
func (ru *run) ready(t testing.TB) {
	t.Helper()
	eventually(t, 20*time.Second, "shard ready", func() bool { return ru.lease.Status().State == shardlease.StateReady })
}

// streamIDs reads the whole events stream and counts each fake event id.
func (e *env) streamIDs(ctx context.Context) (map[uint64]int, error) {
	s, err := e.js.Stream(ctx, bus.EventsStream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	ids := map[uint64]int{}
	if info.State.Msgs == 0 {
		return ids, nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	for got := uint64(0); got < info.State.Msgs; {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			id, ok := fakediscord.EventID(m.Data())
			if !ok {
				return nil, fmt.Errorf("stream message %s without a fake event id: %.80s", m.Subject(), m.Data())
			}
			ids[id]++
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, err
		}
		if n == 0 {
			return nil, fmt.Errorf("stream read stalled at %d of %d", got, info.State.Msgs)
		}
		got += uint64(n)
	}
	return ids, nil
}

// requireExactlyOnce waits until every event in the fake's ledger is in the
// stream, then checks none is there twice and nothing else is.
func (e *env) requireExactlyOnce(t testing.TB) {
	t.Helper()
	want := map[uint64]bool{}
	var ids map[uint64]int
	var missing []uint64
	eventually(t, 30*time.Second, "every dispatched event in the stream", func() bool {
		for _, ev := range e.fake.Events() {
			want[ev.ID] = true
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		ids, err = e.streamIDs(ctx)
		if err != nil {
			t.Logf("read stream: %v", err)
			return false
		}
		missing = missing[:0]
		for id := range want {
			if ids[id] == 0 {
				missing = append(missing, id)
			}
		}
		return len(missing) == 0
	})
	for _, ev := range e.fake.Events() { // events dispatched since the last look
		want[ev.ID] = true
	}
	for id, n := range ids {
		require.Equal(t, 1, n, "event %d stored %d times", id, n)
		require.True(t, want[id], "event %d in the stream was never dispatched", id)
	}
	require.NotEmpty(t, want)
}

func (e *env) requireNoViolations(t testing.TB) {
	t.Helper()
	require.Empty(t, e.fake.Violations(), "referee violations")
	for shard := range e.fake.Config().Shards {
		require.Empty(t, e.fake.Overlaps(shard), "overlapping sessions on shard %d", shard)
	}
}

// dispatch injects n MESSAGE_CREATEs on shard.
func (e *env) dispatch(t testing.TB, shard, n int) {
	t.Helper()
	for i := range n {
		_, err := e.fake.Dispatch(shard, "MESSAGE_CREATE", map[string]any{"content": fmt.Sprintf("m%d", i), "channel_id": "1"})
		require.NoError(t, err)
	}
}

func itoa(i int) string { return fmt.Sprint(i) }

type nopPublisher struct{}

func (nopPublisher) Publish(context.Context, *bus.Event, bus.Completion) error { return nil }

// liveConn waits until the fake holds a live session on shard over a connection
// other than notConn, and returns that connection's id.
func (e *env) liveConn(t testing.TB, shard int, notConn uint64) uint64 {
	t.Helper()
	var id uint64
	eventually(t, 20*time.Second, "a live session", func() bool {
		for _, si := range e.fake.Sessions() {
			if si.Shard == shard && si.Live && si.ConnID != notConn {
				id = si.ConnID
				return true
			}
		}
		return false
	})
	return id
}
