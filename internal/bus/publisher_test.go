package bus_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/natstest"
	"github.com/shardwarden/shardwarden/internal/promtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type pubBundle struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	reg *prometheus.Registry
}

func setupPublisher(t testing.TB, cfg bus.PublisherConfig, streams bool) (*bus.Publisher, pubBundle) {
	t.Helper()
	nc := natstest.Connect(t, natstest.InProcess(t))
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	if streams {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(t, bus.EnsureStreams(ctx, js, bus.StreamConfig{}))
	}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	p, err := bus.NewPublisher(nc, cfg)
	require.NoError(t, err)
	require.NoError(t, p.Start(context.Background()))
	t.Cleanup(p.Stop)
	return p, pubBundle{nc: nc, js: js, reg: reg}
}

type results struct {
	mu   sync.Mutex
	errs map[int64]error
	done chan struct{}
	want int
}

func newResults(want int) *results {
	return &results{errs: map[int64]error{}, done: make(chan struct{}), want: want}
}

func (r *results) complete(ev *bus.Event, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.errs[ev.Seq]; dup {
		panic(fmt.Sprintf("completion called twice for seq %d", ev.Seq))
	}
	r.errs[ev.Seq] = err
	if len(r.errs) == r.want {
		close(r.done)
	}
}

func (r *results) wait(t testing.TB) map[int64]error {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("only %d of %d completions arrived", len(r.errs), r.want)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errs
}

func event(seq int64) *bus.Event {
	return &bus.Event{
		Shard: 3, Session: "sess-a", Seq: seq, Epoch: 7, GuildID: "81384788765712384",
		Type: "MESSAGE_CREATE", ReceivedAt: time.Date(2026, 11, 22, 15, 0, 0, 123456789, time.UTC),
		Data: []byte(fmt.Sprintf(`{"id":"%d","content":"hi"}`, seq)),
	}
}

func TestPublisherStoresEveryEventOnceWithHeaders(t *testing.T) {
	p, b := setupPublisher(t, bus.PublisherConfig{MaxInFlight: 16}, true)
	ctx := context.Background()

	const n = 500
	res := newResults(n)
	for i := int64(1); i <= n; i++ {
		require.NoError(t, p.Publish(ctx, event(i), res.complete))
		require.LessOrEqual(t, p.InFlight(), 16, "window bounds the in-flight publishes")
	}
	for seq, err := range res.wait(t) {
		require.NoError(t, err, "seq %d", seq)
	}

	// The same events again: stored once (deduped by Nats-Msg-Id), still acked.
	again := newResults(n)
	for i := int64(1); i <= n; i++ {
		require.NoError(t, p.Publish(ctx, event(i), again.complete))
	}
	for seq, err := range again.wait(t) {
		require.NoError(t, err, "duplicate seq %d is a success", seq)
	}

	s, err := b.js.Stream(ctx, bus.EventsStream)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, n, info.State.Msgs)

	msg, err := s.GetMsg(ctx, 42)
	require.NoError(t, err)
	require.Equal(t, "discord.events.message_create", msg.Subject)
	require.Equal(t, `{"id":"42","content":"hi"}`, string(msg.Data))
	require.Equal(t, "3:sess-a:42", msg.Header.Get(nats.MsgIdHdr))
	require.Equal(t, "3", msg.Header.Get(bus.HeaderShard))
	require.Equal(t, "42", msg.Header.Get(bus.HeaderSeq))
	require.Equal(t, "sess-a", msg.Header.Get(bus.HeaderSession))
	require.Equal(t, "7", msg.Header.Get(bus.HeaderEpoch))
	require.Equal(t, "81384788765712384", msg.Header.Get(bus.HeaderGuild))
	require.Equal(t, "MESSAGE_CREATE", msg.Header.Get(bus.HeaderEventType))
	require.Equal(t, "2026-11-22T15:00:00.123456789Z", msg.Header.Get(bus.HeaderReceivedAt))

	require.Equal(t, 0, p.InFlight())
	for _, reason := range []string{"timeout", "disconnected", "rejected", "no_stream", "send"} {
		require.Zero(t, errorCount(t, b.reg, reason), reason)
	}
}

func TestPublisherReportsNoStream(t *testing.T) {
	p, b := setupPublisher(t, bus.PublisherConfig{}, false)
	res := newResults(1)
	require.NoError(t, p.Publish(context.Background(), event(1), res.complete))
	require.ErrorIs(t, res.wait(t)[1], bus.ErrNoStream)
	require.Equal(t, 1.0, errorCount(t, b.reg, "no_stream"))
}

func TestPublisherWindowBlocksUntilContextDone(t *testing.T) {
	// No stream and a server that never answers the reply subject would be slow to
	// set up; instead fill the window on a subject nobody acks: a plain core
	// subscriber swallows the requests.
	p, b := setupPublisher(t, bus.PublisherConfig{MaxInFlight: 2, AckTimeout: 300 * time.Millisecond}, false)
	sub, err := b.nc.Subscribe("discord.events.>", func(*nats.Msg) {}) // swallow, never reply
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(t, b.nc.Flush())

	res := newResults(2)
	ctx := context.Background()
	require.NoError(t, p.Publish(ctx, event(1), res.complete))
	require.NoError(t, p.Publish(ctx, event(2), res.complete))

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	err = p.Publish(short, event(3), func(*bus.Event, error) { t.Error("completion of an unsent event") })
	require.ErrorIs(t, err, context.DeadlineExceeded)

	for _, err := range res.wait(t) {
		require.ErrorIs(t, err, bus.ErrAckTimeout)
	}
	require.Equal(t, 0, p.InFlight())
	require.Equal(t, 2.0, errorCount(t, b.reg, "timeout"))
}

func TestPublisherStopFailsInFlight(t *testing.T) {
	p, b := setupPublisher(t, bus.PublisherConfig{AckTimeout: time.Hour}, false)
	sub, err := b.nc.Subscribe("discord.events.>", func(*nats.Msg) {})
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(t, b.nc.Flush())

	res := newResults(3)
	for i := int64(1); i <= 3; i++ {
		require.NoError(t, p.Publish(context.Background(), event(i), res.complete))
	}
	p.Stop()
	p.Stop()
	for _, err := range res.wait(t) {
		require.ErrorIs(t, err, bus.ErrPublisherStopped)
	}
	err = p.Publish(context.Background(), event(4), res.complete)
	require.ErrorIs(t, err, bus.ErrPublisherStopped)
}

func TestPublisherConfigValidation(t *testing.T) {
	nc := natstest.Connect(t, natstest.InProcess(t))
	for name, cfg := range map[string]bus.PublisherConfig{
		"window too big":   {MaxInFlight: 1<<20 + 1},
		"negative window":  {MaxInFlight: -1},
		"negative timeout": {AckTimeout: -time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := bus.NewPublisher(nc, cfg)
			require.Error(t, err)
		})
	}
	_, err := bus.NewPublisher(nil, bus.PublisherConfig{})
	require.Error(t, err)
}

// Every error reason is exported at zero from the start: increase() over a series
// that appears at 1 would not see the first failure.
func TestPublisherErrorSeriesStartAtZero(t *testing.T) {
	nc := natstest.Connect(t, natstest.InProcess(t))
	reg := prometheus.NewRegistry()
	_, err := bus.NewPublisher(nc, bus.PublisherConfig{Registerer: reg})
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"reason=timeout", "reason=disconnected", "reason=rejected", "reason=no_stream", "reason=stopped", "reason=send"},
		promtest.Series(t, reg, "shardwarden_bus_publish_errors_total"))
	require.Zero(t, promtest.Value(t, reg, "shardwarden_bus_publish_errors_total"))
}

func errorCount(t testing.TB, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	return promtest.Value(t, reg, "shardwarden_bus_publish_errors_total", "reason", reason)
}

// BenchmarkPublishOneShard measures the publish throughput of one shard's
// stream of 1 KiB events through the async window (file storage, dedup on).
func BenchmarkPublishOneShard(b *testing.B) {
	p, _ := setupPublisher(b, bus.PublisherConfig{}, true)
	data := make([]byte, 1024)
	for i := range data {
		data[i] = 'a'
	}
	evs := make([]bus.Event, 8192) // twice the window: a slot is never reused in flight
	var acked atomic.Int64
	var failed atomic.Int64
	done := func(_ *bus.Event, err error) {
		if err != nil {
			failed.Add(1)
		}
		acked.Add(1)
	}
	now := time.Now()
	ctx := context.Background()
	b.SetBytes(1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ev := &evs[i%len(evs)]
		*ev = bus.Event{Shard: 0, Session: "bench", Seq: int64(i + 1), Epoch: 1, Type: "MESSAGE_CREATE", ReceivedAt: now, Data: data}
		if err := p.Publish(ctx, ev, done); err != nil {
			b.Fatal(err)
		}
	}
	for acked.Load() < int64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	if failed.Load() > 0 {
		b.Fatalf("%d publishes failed", failed.Load())
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
