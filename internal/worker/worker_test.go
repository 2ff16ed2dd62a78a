package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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
	"github.com/shardwarden/shardwarden/internal/worker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type bundle struct {
	js  jetstream.JetStream
	reg *prometheus.Registry
}

func setup(t *testing.T) bundle {
	t.Helper()
	nc := natstest.Connect(t, natstest.InProcess(t))
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, bus.EnsureStreams(ctx, js, bus.StreamConfig{}))
	return bundle{js: js, reg: prometheus.NewRegistry()}
}

// publish puts one dispatch into DISCORD_EVENTS the way the gateway does.
func publish(t testing.TB, js jetstream.JetStream, eventType string, seq int64, data string) string {
	t.Helper()
	m := nats.NewMsg(bus.EventSubject(eventType))
	m.Data = []byte(data)
	id := bus.MsgID(0, "sess", seq)
	m.Header.Set(nats.MsgIdHdr, id)
	m.Header.Set(bus.HeaderShard, "0")
	m.Header.Set(bus.HeaderSeq, strconv.FormatInt(seq, 10))
	m.Header.Set(bus.HeaderSession, "sess")
	m.Header.Set(bus.HeaderEpoch, "1")
	m.Header.Set(bus.HeaderEventType, eventType)
	m.Header.Set(bus.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := js.PublishMsg(ctx, m)
	require.NoError(t, err)
	return id
}

func start(t *testing.T, b bundle, cfg worker.Config) *worker.Worker {
	t.Helper()
	cfg.JetStream = b.js
	if cfg.Registerer == nil {
		cfg.Registerer = b.reg
	}
	if len(cfg.FilterSubjects) == 0 {
		cfg.FilterSubjects = []string{bus.EventSubject("MESSAGE_CREATE")}
	}
	if cfg.BackOff == nil {
		cfg.BackOff = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond}
	}
	cfg.AckWait = cmpOr(cfg.AckWait, 3*time.Second)
	cfg.InfoInterval = 100 * time.Millisecond
	cfg.DrainTimeout = cmpOr(cfg.DrainTimeout, 5*time.Second)
	w, err := worker.New(cfg)
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(w.Stop)
	select {
	case <-w.Bound():
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not bind its consumer")
	}
	return w
}

func cmpOr[T comparable](a, b T) T {
	var zero T
	if a != zero {
		return a
	}
	return b
}

func metric(t testing.TB, reg *prometheus.Registry, name, workerName string) float64 {
	t.Helper()
	return promtest.Value(t, reg, name, "worker", workerName)
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConfigValidation(t *testing.T) {
	h := worker.HandlerFunc(func(context.Context, *worker.Message) error { return nil })
	js := jetstream.JetStream(nil)
	for name, tc := range map[string]struct {
		cfg  worker.Config
		want string
	}{
		"bad name":        {worker.Config{Name: "Bad Name", FilterSubjects: []string{"x"}, Handler: h}, "worker name"},
		"no subjects":     {worker.Config{Name: "w", Handler: h}, "no filter subjects"},
		"no handler":      {worker.Config{Name: "w", FilterSubjects: []string{"x"}}, "no handler"},
		"no jetstream":    {worker.Config{Name: "w", FilterSubjects: []string{"x"}, Handler: h, JetStream: js}, "no JetStream"},
		"negative budget": {worker.Config{Name: "w", FilterSubjects: []string{"x"}, Handler: h, MaxDeliver: -1, JetStream: fakeJS{}}, "MaxDeliver"},
		"in progress":     {worker.Config{Name: "w", FilterSubjects: []string{"x"}, Handler: h, AckWait: time.Second, InProgressInterval: 2 * time.Second, JetStream: fakeJS{}}, "InProgressInterval"},
		"backoff":         {worker.Config{Name: "w", FilterSubjects: []string{"x"}, Handler: h, BackOff: []time.Duration{0}, JetStream: fakeJS{}}, "BackOff"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := worker.New(tc.cfg)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// fakeJS only satisfies the type for validation tests; it is never called.
type fakeJS struct{ jetstream.JetStream }

func TestHandlesAndAcks(t *testing.T) {
	b := setup(t)
	got := make(chan *worker.Message, 10)
	w := start(t, b, worker.Config{Name: "echo", Handler: worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
		got <- m
		return nil
	})})
	id := publish(t, b.js, "MESSAGE_CREATE", 1, `{"content":"hi"}`)
	publish(t, b.js, "GUILD_CREATE", 2, `{}`) // not in the filter

	m := <-got
	require.Equal(t, id, m.ID)
	require.Equal(t, "MESSAGE_CREATE", m.EventType)
	require.Equal(t, `{"content":"hi"}`, string(m.Data))
	require.Equal(t, 1, m.Delivery)
	require.EqualValues(t, 1, m.StreamSeq)
	require.WithinDuration(t, time.Now(), m.ReceivedAt, 10*time.Second)

	waitFor(t, "processed", func() bool { return metric(t, b.reg, "shardwarden_worker_processed_total", "echo") == 1 })
	waitFor(t, "ack pending 0", func() bool {
		return w.Check(context.Background()) == nil && metric(t, b.reg, "shardwarden_worker_consumer_ack_pending", "echo") == 0
	})
	require.Equal(t, float64(1), metric(t, b.reg, "shardwarden_worker_deliveries_total", "echo"))
	require.Equal(t, float64(1), metric(t, b.reg, "shardwarden_worker_handler_duration_seconds", "echo"))
	select {
	case m := <-got:
		t.Fatalf("unexpected message %s", m.Subject)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestRetriesWithBackoffThenSucceeds(t *testing.T) {
	b := setup(t)
	var mu sync.Mutex
	var deliveries []time.Time
	effects := 0
	start(t, b, worker.Config{
		Name:    "flaky",
		BackOff: []time.Duration{150 * time.Millisecond, 300 * time.Millisecond},
		Handler: worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
			mu.Lock()
			defer mu.Unlock()
			deliveries = append(deliveries, time.Now())
			if len(deliveries) <= 2 {
				return fmt.Errorf("transient failure %d", len(deliveries))
			}
			effects++
			return nil
		}),
	})
	publish(t, b.js, "MESSAGE_CREATE", 1, `{}`)
	waitFor(t, "processed", func() bool { return metric(t, b.reg, "shardwarden_worker_processed_total", "flaky") == 1 })

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, deliveries, 3)
	require.Equal(t, 1, effects)
	require.GreaterOrEqual(t, deliveries[1].Sub(deliveries[0]), 150*time.Millisecond, "first retry waits BackOff[0]")
	require.GreaterOrEqual(t, deliveries[2].Sub(deliveries[1]), 300*time.Millisecond, "second retry waits BackOff[1]")
	require.Equal(t, float64(2), metric(t, b.reg, "shardwarden_worker_failed_total", "flaky"))
	require.Equal(t, float64(2), metric(t, b.reg, "shardwarden_worker_retried_total", "flaky"))
	require.Equal(t, float64(3), metric(t, b.reg, "shardwarden_worker_deliveries_total", "flaky"))
	require.Equal(t, float64(2), metric(t, b.reg, "shardwarden_worker_redeliveries_total", "flaky"))
	require.Equal(t, float64(0), metric(t, b.reg, "shardwarden_worker_dead_lettered_total", "flaky"))
}

func TestPanicIsAFailure(t *testing.T) {
	b := setup(t)
	var calls atomic.Int32
	start(t, b, worker.Config{Name: "panicky", Handler: worker.HandlerFunc(func(context.Context, *worker.Message) error {
		if calls.Add(1) == 1 {
			panic("boom")
		}
		return nil
	})})
	publish(t, b.js, "MESSAGE_CREATE", 1, `{}`)
	waitFor(t, "processed", func() bool { return metric(t, b.reg, "shardwarden_worker_processed_total", "panicky") == 1 })
	require.Equal(t, float64(1), metric(t, b.reg, "shardwarden_worker_failed_total", "panicky"))
	require.EqualValues(t, 2, calls.Load())
}

func TestHandlerDeadlineBeforeAckWait(t *testing.T) {
	b := setup(t)
	deadlines := make(chan time.Duration, 1)
	start(t, b, worker.Config{Name: "deadline", AckWait: 2 * time.Second, Handler: worker.HandlerFunc(func(ctx context.Context, _ *worker.Message) error {
		d, ok := ctx.Deadline()
		require.True(t, ok)
		deadlines <- time.Until(d)
		return nil
	})})
	publish(t, b.js, "MESSAGE_CREATE", 1, `{}`)
	d := <-deadlines
	require.Less(t, d, 2*time.Second)
	require.Greater(t, d, time.Second)
}

func TestLongHandlerKeptInProgress(t *testing.T) {
	b := setup(t)
	var calls atomic.Int32
	start(t, b, worker.Config{
		Name: "slow", AckWait: time.Second, HandlerTimeout: 4 * time.Second,
		Handler: worker.HandlerFunc(func(ctx context.Context, _ *worker.Message) error {
			calls.Add(1)
			select { // three ack waits long: only InProgress prevents a redelivery
			case <-time.After(2500 * time.Millisecond):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}),
	})
	publish(t, b.js, "MESSAGE_CREATE", 1, `{}`)
	waitFor(t, "processed", func() bool { return metric(t, b.reg, "shardwarden_worker_processed_total", "slow") == 1 })
	time.Sleep(1200 * time.Millisecond) // longer than AckWait: a lost ack would show
	require.EqualValues(t, 1, calls.Load())
	require.Equal(t, float64(1), metric(t, b.reg, "shardwarden_worker_deliveries_total", "slow"))
}

func TestPoisonEventDeadLetteredAndReplayed(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	var healed atomic.Bool
	var handled sync.Map // event id → times succeeded
	start(t, b, worker.Config{Name: "picky", MaxDeliver: 3, Handler: worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
		if string(m.Data) == `"poison"` && !healed.Load() {
			return errors.New("cannot digest poison")
		}
		n, _ := handled.LoadOrStore(m.ID, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		return nil
	})})
	// A second worker on the same subjects: a replay addressed to "picky" is not its.
	var otherSaw atomic.Int32
	start(t, b, worker.Config{Name: "bystander", Handler: worker.HandlerFunc(func(context.Context, *worker.Message) error {
		otherSaw.Add(1)
		return nil
	})})

	poisonID := publish(t, b.js, "MESSAGE_CREATE", 1, `"poison"`)
	for i := int64(2); i <= 11; i++ {
		publish(t, b.js, "MESSAGE_CREATE", i, `"fine"`)
	}
	waitFor(t, "dead letter", func() bool { return metric(t, b.reg, "shardwarden_worker_dead_lettered_total", "picky") == 1 })
	waitFor(t, "others flowed", func() bool { return metric(t, b.reg, "shardwarden_worker_processed_total", "picky") == 10 })
	require.Equal(t, float64(3), metric(t, b.reg, "shardwarden_worker_failed_total", "picky"))

	dls, err := worker.ListDeadLetters(ctx, b.js, "picky", 0)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	d := dls[0]
	require.Equal(t, "picky", d.Worker)
	require.Equal(t, poisonID, d.EventID)
	require.Equal(t, bus.EventSubject("MESSAGE_CREATE"), d.Subject)
	require.Equal(t, "cannot digest poison", d.Error)
	require.Equal(t, 3, d.Delivered)
	require.Equal(t, `"poison"`, string(d.Data))
	require.Equal(t, "sess", d.Header.Get(bus.HeaderSession), "original headers kept")
	require.Equal(t, "1", d.Header.Get(bus.HeaderDeadStreamSeq))
	require.WithinDuration(t, time.Now(), d.DeadAt, time.Minute)
	other, err := worker.ListDeadLetters(ctx, b.js, "bystander", 0)
	require.NoError(t, err)
	require.Empty(t, other)

	healed.Store(true)
	require.Equal(t, int32(11), otherSaw.Load())
	_, err = worker.ReplayDeadLetter(ctx, b.js, d.Seq)
	require.NoError(t, err)
	waitFor(t, "replay handled", func() bool { _, ok := handled.Load(poisonID); return ok })
	waitFor(t, "bystander acked the replay", func() bool {
		return metric(t, b.reg, "shardwarden_worker_deliveries_total", "bystander") == 12
	})
	require.Equal(t, int32(11), otherSaw.Load(), "a replay for picky is not handled by bystander")
	dls, err = worker.ListDeadLetters(ctx, b.js, "", 0)
	require.NoError(t, err)
	require.Empty(t, dls, "replayed dead letter removed")

	// Replaying the same seq again is refused: it is gone.
	_, err = worker.ReplayDeadLetter(ctx, b.js, d.Seq)
	require.Error(t, err)
}

func TestPermanentErrorDeadLettersAtOnce(t *testing.T) {
	b := setup(t)
	start(t, b, worker.Config{Name: "strict", Handler: worker.HandlerFunc(func(context.Context, *worker.Message) error {
		return worker.Permanent(errors.New("malformed event\nsecond line"))
	})})
	publish(t, b.js, "MESSAGE_CREATE", 1, `{`)
	waitFor(t, "dead letter", func() bool { return metric(t, b.reg, "shardwarden_worker_dead_lettered_total", "strict") == 1 })
	dls, err := worker.ListDeadLetters(context.Background(), b.js, "strict", 0)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, 1, dls[0].Delivered)
	require.Equal(t, "permanent: malformed event second line", dls[0].Error)

	require.NoError(t, worker.PurgeDeadLetters(context.Background(), b.js, "strict"))
	dls, err = worker.ListDeadLetters(context.Background(), b.js, "strict", 0)
	require.NoError(t, err)
	require.Empty(t, dls)
}

func TestStopDrainsInFlight(t *testing.T) {
	b := setup(t)
	entered := make(chan struct{}, 10)
	release := make(chan struct{})
	var finished atomic.Int32
	w := start(t, b, worker.Config{Name: "drainer", Concurrency: 2, PullBatch: 8, AckWait: 20 * time.Second, Handler: worker.HandlerFunc(func(context.Context, *worker.Message) error {
		entered <- struct{}{}
		<-release
		finished.Add(1)
		return nil
	})})
	for i := int64(1); i <= 6; i++ {
		publish(t, b.js, "MESSAGE_CREATE", i, `{}`)
	}
	<-entered
	<-entered // both handler slots busy, the rest buffered or pending

	stopped := make(chan struct{})
	go func() { w.Stop(); close(stopped) }()
	require.Eventually(t, func() bool { return w.Check(context.Background()) != nil }, 5*time.Second, 10*time.Millisecond, "not ready while draining")
	select {
	case <-stopped:
		t.Fatal("Stop returned before in-flight handlers finished")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	<-stopped
	require.EqualValues(t, 2, finished.Load(), "only the in-flight handlers ran")
	require.Equal(t, float64(2), metric(t, b.reg, "shardwarden_worker_processed_total", "drainer"))

	// The two in-flight ones were acked; the other four went back and a new
	// replica gets them right away (Nak'ed, not left to the ack wait).
	got := make(chan struct{}, 10)
	reg := prometheus.NewRegistry()
	start(t, bundle{js: b.js, reg: reg}, worker.Config{Name: "drainer", AckWait: 20 * time.Second, Handler: worker.HandlerFunc(func(context.Context, *worker.Message) error {
		got <- struct{}{}
		return nil
	})})
	for range 4 {
		select {
		case <-got:
		case <-time.After(10 * time.Second): // AckWait is 20s: only a Nak is this fast
			t.Fatal("buffered messages were not returned on drain")
		}
	}
	select {
	case <-got:
		t.Fatal("an acked in-flight message was redelivered")
	case <-time.After(300 * time.Millisecond):
	}
}

func TestDrainTimeoutCancelsHandlers(t *testing.T) {
	b := setup(t)
	entered := make(chan struct{})
	w := start(t, b, worker.Config{Name: "stuck", Concurrency: 1, DrainTimeout: 200 * time.Millisecond, Handler: worker.HandlerFunc(func(ctx context.Context, _ *worker.Message) error {
		close(entered)
		<-ctx.Done()
		return ctx.Err()
	})})
	publish(t, b.js, "MESSAGE_CREATE", 1, `{}`)
	<-entered
	t0 := time.Now()
	w.Stop()
	require.Less(t, time.Since(t0), 3*time.Second)
	require.Equal(t, float64(0), metric(t, b.reg, "shardwarden_worker_dead_lettered_total", "stuck"))
	w.Stop() // idempotent
}

func TestStopWithoutStart(t *testing.T) {
	w, err := worker.New(worker.Config{Name: "idle", FilterSubjects: []string{"x"}, JetStream: fakeJS{},
		Handler: worker.HandlerFunc(func(context.Context, *worker.Message) error { return nil })})
	require.NoError(t, err)
	w.Stop()
	w.Stop()
	require.Error(t, w.Start(context.Background()), "a stopped worker does not start")
}

// A message whose handler never reported a failure but was delivered more than
// MaxDeliver times (the process died with it, every time) is dead-lettered without
// running the handler again: a poison event cannot crash-loop a worker.
func TestCrashLoopingEventIsDeadLettered(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	var ran atomic.Int32
	cfg := worker.Config{Name: "crashy", MaxDeliver: 2, FilterSubjects: []string{bus.EventSubject("MESSAGE_CREATE")},
		JetStream: b.js, Handler: worker.HandlerFunc(func(context.Context, *worker.Message) error {
			ran.Add(1)
			return nil
		})}
	probe, err := worker.New(cfg)
	require.NoError(t, err)
	cons, err := b.js.CreateOrUpdateConsumer(ctx, bus.EventsStream, probe.ConsumerConfig())
	require.NoError(t, err)
	publish(t, b.js, "MESSAGE_CREATE", 1, `{}`)
	for range 2 { // two deliveries that "died" with the process
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		require.NoError(t, err)
		m := <-batch.Messages()
		require.NotNil(t, m)
		require.NoError(t, m.Nak())
	}

	start(t, b, cfg)
	waitFor(t, "dead letter", func() bool { return metric(t, b.reg, "shardwarden_worker_dead_lettered_total", "crashy") == 1 })
	require.Zero(t, ran.Load())
	// Redeliveries that no failed handler asked for show, retries do not.
	require.Equal(t, float64(1), metric(t, b.reg, "shardwarden_worker_redeliveries_total", "crashy"))
	require.Zero(t, metric(t, b.reg, "shardwarden_worker_retried_total", "crashy"))
	dls, err := worker.ListDeadLetters(ctx, b.js, "crashy", 0)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, 3, dls[0].Delivered)
	require.Contains(t, dls[0].Error, "delivery budget used up")
}
