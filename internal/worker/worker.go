package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shardwarden/shardwarden/internal/bus"
)

// Message is one event as a handler sees it.
type Message struct {
	// ID is the event's stable identity (bus.EventID): the key for idempotency.
	ID      string
	Subject string
	// EventType is Discord's dispatch type ("MESSAGE_CREATE").
	EventType string
	// Data is the raw JSON `d` of the dispatch.
	Data   []byte
	Header nats.Header
	// StreamSeq orders events: the DISCORD_EVENTS sequence of the first copy (kept
	// across dead-letter replays).
	StreamSeq uint64
	// Delivery counts deliveries of this copy, from 1.
	Delivery int
	// ReceivedAt is the gateway's receive time; zero when the header is missing.
	ReceivedAt time.Time
	// StoredAt is when JetStream stored this copy (the server's clock).
	StoredAt time.Time
}

// Handler handles one event. It must be idempotent (see internal/idempotency): a
// message can be delivered again after a crash. Return Permanent(err) for an event
// that can never succeed.
type Handler interface {
	Handle(ctx context.Context, m *Message) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, m *Message) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, m *Message) error { return f(ctx, m) }

// Config of one worker. Zero durations and counts take the defaults.
type Config struct {
	Name           string   // [a-z0-9_-]+: durable consumer name and dead-letter subject token
	FilterSubjects []string // e.g. bus.EventSubject("GUILD_CREATE")
	Handler        Handler
	JetStream      jetstream.JetStream
	Logger         *slog.Logger          // default slog.Default()
	Registerer     prometheus.Registerer // default prometheus.NewRegistry() (metrics discarded)

	// DeliverPolicy for a new durable: DeliverAllPolicy (default: the whole
	// retained history) or DeliverNewPolicy (workers for which an old event is
	// useless, like command replies). Ignored once the durable exists.
	DeliverPolicy jetstream.DeliverPolicy

	Concurrency   int           // handlers running at once; default 4
	PullBatch     int           // messages buffered client side; default 2×Concurrency
	MaxAckPending int           // default 1000
	AckWait       time.Duration // redelivery after a crash; default 30s
	// HandlerTimeout is the handler's context deadline; default 4/5 of AckWait.
	HandlerTimeout time.Duration
	// InProgressInterval: how often a running handler's message is marked in
	// progress (resets AckWait); default AckWait/3.
	InProgressInterval time.Duration
	MaxDeliver         int             // deliveries before dead-lettering; default 5
	BackOff            []time.Duration // delay before retry n; default 1s, 5s, 30s, 2m
	// DrainTimeout is how long Stop lets handlers in flight finish; default 20s.
	DrainTimeout time.Duration
	// InfoInterval is how often consumer info feeds the gauges; default 5s.
	InfoInterval time.Duration
	// RetryInterval paces re-binding the consumer after an error; default 1s.
	RetryInterval time.Duration
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// DefaultBackOff is the retry schedule of failed deliveries.
var DefaultBackOff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, 2 * time.Minute}

func (c Config) withDefaults() (Config, error) {
	if !nameRE.MatchString(c.Name) {
		return c, fmt.Errorf("worker name %q: want lower-case letters, digits, - and _", c.Name)
	}
	if len(c.FilterSubjects) == 0 {
		return c, fmt.Errorf("worker %s: no filter subjects", c.Name)
	}
	if c.Handler == nil {
		return c, fmt.Errorf("worker %s: no handler", c.Name)
	}
	if c.JetStream == nil {
		return c, fmt.Errorf("worker %s: no JetStream", c.Name)
	}
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	c.Concurrency = cmp.Or(c.Concurrency, 4)
	c.PullBatch = cmp.Or(c.PullBatch, 2*c.Concurrency)
	c.MaxAckPending = cmp.Or(c.MaxAckPending, 1000)
	c.AckWait = cmp.Or(c.AckWait, 30*time.Second)
	c.HandlerTimeout = cmp.Or(c.HandlerTimeout, c.AckWait*4/5)
	c.InProgressInterval = cmp.Or(c.InProgressInterval, c.AckWait/3)
	c.MaxDeliver = cmp.Or(c.MaxDeliver, 5)
	if len(c.BackOff) == 0 {
		c.BackOff = DefaultBackOff
	}
	c.DrainTimeout = cmp.Or(c.DrainTimeout, 20*time.Second)
	c.InfoInterval = cmp.Or(c.InfoInterval, 5*time.Second)
	c.RetryInterval = cmp.Or(c.RetryInterval, time.Second)
	switch {
	case c.Concurrency < 1 || c.PullBatch < 1 || c.MaxAckPending < 1:
		return c, fmt.Errorf("worker %s: Concurrency, PullBatch and MaxAckPending must be positive", c.Name)
	case c.MaxDeliver < 1:
		return c, fmt.Errorf("worker %s: MaxDeliver %d must be at least 1", c.Name, c.MaxDeliver)
	case c.AckWait < 0 || c.HandlerTimeout < 0 || c.InProgressInterval < 0 || c.DrainTimeout < 0:
		return c, fmt.Errorf("worker %s: negative duration", c.Name)
	case c.InProgressInterval >= c.AckWait:
		return c, fmt.Errorf("worker %s: InProgressInterval %s must be shorter than AckWait %s", c.Name, c.InProgressInterval, c.AckWait)
	}
	for _, d := range c.BackOff {
		if d <= 0 {
			return c, fmt.Errorf("worker %s: BackOff steps must be positive", c.Name)
		}
	}
	return c, nil
}

// Worker runs one named handler on a durable pull consumer of DISCORD_EVENTS.
type Worker struct {
	cfg     Config
	log     *slog.Logger
	metrics workerMetrics

	startOnce, stopOnce sync.Once
	started, closed     bool          // under mu
	draining            chan struct{} // closed when Stop (or the Start ctx) asks to drain
	hardCtx             context.Context
	hardCancel          context.CancelFunc
	stopped             chan struct{} // closed by run when everything has returned
	bound               chan struct{} // closed once the consumer exists

	infoMu sync.Mutex // jetstream's Consumer.Info writes a cache without a lock

	mu       sync.Mutex
	consumer jetstream.Consumer
	iter     jetstream.MessagesContext
}

// New validates cfg and returns a worker; nothing runs before Start.
func New(cfg Config) (*Worker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("worker %s metrics: %w", cfg.Name, err)
	}
	w := &Worker{
		cfg:      cfg,
		log:      cfg.Logger.With(slog.String("worker", cfg.Name)),
		metrics:  m.forWorker(cfg.Name),
		draining: make(chan struct{}),
		stopped:  make(chan struct{}),
		bound:    make(chan struct{}),
	}
	w.hardCtx, w.hardCancel = context.WithCancel(context.Background())
	// forWorker created the series: they are exported at zero from the start, so
	// dashboards and alerts see the worker before its first event.
	return w, nil
}

// Name is the worker's name.
func (w *Worker) Name() string { return w.cfg.Name }

// Bound is closed once the durable consumer exists and messages are being pulled.
func (w *Worker) Bound() <-chan struct{} { return w.bound }

// Start binds the consumer and starts pulling in the background; it returns at once.
// Cancelling ctx drains like Stop.
func (w *Worker) Start(ctx context.Context) error {
	err := errors.New("worker already started")
	w.startOnce.Do(func() {
		w.mu.Lock()
		if w.closed {
			w.mu.Unlock()
			err = errors.New("worker stopped before it started")
			return
		}
		err = nil
		w.started = true
		w.mu.Unlock()
		go func() {
			select {
			case <-ctx.Done():
				w.beginDrain()
			case <-w.stopped:
			}
		}()
		go w.run()
	})
	return err
}

// Stop drains: no more pulls, buffered messages go back, handlers in flight get
// DrainTimeout to finish and be acked. It blocks until everything has returned and
// is safe to call more than once, or without Start.
func (w *Worker) Stop() {
	w.mu.Lock()
	started := w.started
	w.closed = true
	w.mu.Unlock()
	if !started {
		w.stopOnce.Do(func() { w.hardCancel() })
		return
	}
	w.beginDrain()
	<-w.stopped
}

func (w *Worker) beginDrain() {
	w.stopOnce.Do(func() {
		close(w.draining)
		w.mu.Lock()
		if w.iter != nil {
			w.iter.Drain()
		}
		w.mu.Unlock()
		// Handlers still running after the grace period are cancelled.
		go func() {
			t := time.NewTimer(w.cfg.DrainTimeout)
			defer t.Stop()
			select {
			case <-t.C:
				w.log.Warn("drain timeout: cancelling handlers in flight", slog.Duration("drain_timeout", w.cfg.DrainTimeout))
				w.hardCancel()
			case <-w.stopped:
			}
		}()
	})
}

func (w *Worker) isDraining() bool {
	select {
	case <-w.draining:
		return true
	default:
		return false
	}
}

// Check is the readiness check: the consumer is bound and its info answers.
func (w *Worker) Check(ctx context.Context) error {
	w.mu.Lock()
	c := w.consumer
	w.mu.Unlock()
	if c == nil {
		return errors.New("consumer not bound")
	}
	if w.isDraining() {
		return errors.New("draining")
	}
	if _, err := w.info(ctx, c); err != nil {
		return fmt.Errorf("consumer info: %w", err)
	}
	return nil
}

func (w *Worker) info(ctx context.Context, c jetstream.Consumer) (*jetstream.ConsumerInfo, error) {
	w.infoMu.Lock()
	defer w.infoMu.Unlock()
	info, err := c.Info(ctx)
	if err != nil {
		return nil, err
	}
	w.observeInfo(info)
	return info, nil
}

func (w *Worker) observeInfo(info *jetstream.ConsumerInfo) {
	w.metrics.pending.Set(float64(info.NumPending))
	w.metrics.ackPending.Set(float64(info.NumAckPending))
	w.metrics.redelivered.Set(float64(info.NumRedelivered))
}

// ConsumerConfig is the durable consumer a worker binds.
func (w *Worker) ConsumerConfig() jetstream.ConsumerConfig {
	cc := jetstream.ConsumerConfig{
		Durable:       w.cfg.Name,
		Description:   "shardwarden worker " + w.cfg.Name,
		DeliverPolicy: w.cfg.DeliverPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       w.cfg.AckWait,
		MaxDeliver:    -1, // enforced by the runtime: see doc.go
		MaxAckPending: w.cfg.MaxAckPending,
	}
	if len(w.cfg.FilterSubjects) == 1 {
		cc.FilterSubject = w.cfg.FilterSubjects[0]
	} else {
		cc.FilterSubjects = w.cfg.FilterSubjects
	}
	return cc
}

func (w *Worker) run() {
	defer close(w.stopped)
	defer w.hardCancel()

	work := make(chan jetstream.Msg)
	var handlers sync.WaitGroup
	for range w.cfg.Concurrency {
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			for msg := range work {
				w.handle(msg)
			}
		}()
	}
	var poller sync.WaitGroup
	defer poller.Wait()
	defer handlers.Wait()
	defer close(work)

	boundOnce := sync.Once{}
	for attempt := 0; !w.isDraining(); attempt++ {
		if attempt > 0 {
			select {
			case <-w.draining:
				return
			case <-time.After(w.cfg.RetryInterval):
			}
		}
		iter, err := w.bind()
		if err != nil {
			if attempt%30 == 0 { // one line per ~30 tries is enough
				w.log.Error("bind consumer", slog.Any("error", err), slog.Int("attempt", attempt+1))
			}
			continue
		}
		boundOnce.Do(func() {
			close(w.bound)
			poller.Add(1)
			go func() { defer poller.Done(); w.pollInfo() }()
			w.log.Info("worker consuming", slog.Any("filter_subjects", w.cfg.FilterSubjects))
		})
		w.read(iter, work)
	}
}

func (w *Worker) bind() (jetstream.MessagesContext, error) {
	ctx, cancel := context.WithTimeout(w.hardCtx, 10*time.Second)
	defer cancel()
	cons, err := w.cfg.JetStream.CreateOrUpdateConsumer(ctx, bus.EventsStream, w.ConsumerConfig())
	if err != nil {
		return nil, fmt.Errorf("create consumer %s: %w", w.cfg.Name, err)
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(w.cfg.PullBatch))
	if err != nil {
		return nil, fmt.Errorf("pull from consumer %s: %w", w.cfg.Name, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.consumer, w.iter = cons, iter
	if w.isDraining() { // Stop raced the bind
		iter.Drain()
	}
	return iter, nil
}

// read hands messages to the handlers until the iterator ends. Messages that come
// out after the drain began go back at once for another replica.
func (w *Worker) read(iter jetstream.MessagesContext, work chan<- jetstream.Msg) {
	for {
		msg, err := iter.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				if !w.isDraining() {
					w.log.Warn("message iterator closed; re-binding", slog.Any("error", err))
				}
				return
			}
			w.log.Warn("pull", slog.Any("error", err))
			select { // never spin on a repeating error
			case <-w.draining:
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case <-w.draining:
			_ = msg.Nak()
			continue
		default:
		}
		select {
		case work <- msg:
		case <-w.draining:
			_ = msg.Nak()
		}
	}
}

func (w *Worker) pollInfo() {
	t := time.NewTicker(w.cfg.InfoInterval)
	defer t.Stop()
	for {
		select {
		case <-w.draining:
			return
		case <-w.hardCtx.Done():
			return
		case <-t.C:
			w.mu.Lock()
			c := w.consumer
			w.mu.Unlock()
			ctx, cancel := context.WithTimeout(w.hardCtx, w.cfg.InfoInterval)
			_, _ = w.info(ctx, c)
			cancel()
		}
	}
}

func (w *Worker) handle(msg jetstream.Msg) {
	name := w.cfg.Name
	w.metrics.deliveries.Inc()
	meta, err := msg.Metadata()
	if err != nil {
		w.log.Error("message without JetStream metadata; terminating it", slog.Any("error", err), slog.String("subject", msg.Subject()))
		_ = msg.Term()
		return
	}
	if meta.NumDelivered > 1 {
		w.metrics.redeliveries.Inc()
	}
	h := msg.Headers()
	if h == nil {
		h = nats.Header{}
	}
	if target := h.Get(bus.HeaderReplayFor); target != "" && target != name {
		_ = msg.Ack() // a replay for another worker
		return
	}
	m := &Message{
		ID:        bus.EventID(h),
		Subject:   msg.Subject(),
		EventType: h.Get(bus.HeaderEventType),
		Data:      msg.Data(),
		Header:    h,
		StreamSeq: bus.OriginalStreamSeq(h, meta.Sequence.Stream),
		Delivery:  int(meta.NumDelivered),
		StoredAt:  meta.Timestamp,
	}
	if m.ID == "" {
		// Without an id idempotency has nothing to key on; the stream position is
		// unique and stable for this copy.
		m.ID = fmt.Sprintf("%s:%d", meta.Stream, meta.Sequence.Stream)
	}
	if m.EventType == "" {
		m.EventType = strings.ToUpper(strings.TrimPrefix(m.Subject, "discord.events."))
	}
	m.ReceivedAt, _ = bus.ReceivedAt(h)
	logger := func() *slog.Logger { // built only when something goes wrong
		return w.log.With(slog.String("event_id", m.ID), slog.String("subject", m.Subject), slog.Int("delivery", m.Delivery))
	}

	if m.Delivery > w.cfg.MaxDeliver {
		w.deadLetter(msg, meta, m, errors.New("delivery budget used up without a recorded failure: the process handling it stopped or lost it"), logger())
		return
	}

	start := time.Now()
	err = w.runHandler(msg, m)
	w.metrics.duration.Observe(time.Since(start).Seconds())
	if err == nil {
		if aerr := msg.Ack(); aerr != nil {
			logger().Warn("ack", slog.Any("error", aerr)) // redelivered; idempotency skips it
		}
		w.metrics.processed.Inc()
		return
	}
	w.metrics.failed.Inc()
	if w.hardCtx.Err() != nil {
		// Cancelled by the drain timeout: not the event's fault.
		_ = msg.Nak()
		logger().Warn("handler cancelled by shutdown; message returned", slog.Any("error", err))
		return
	}
	if IsPermanent(err) || m.Delivery >= w.cfg.MaxDeliver {
		w.deadLetter(msg, meta, m, err, logger())
		return
	}
	delay := w.cfg.BackOff[min(m.Delivery-1, len(w.cfg.BackOff)-1)]
	if nerr := msg.NakWithDelay(delay); nerr != nil {
		logger().Warn("nak", slog.Any("error", nerr)) // redelivered after AckWait instead
	}
	w.metrics.retried.Inc()
	logger().Warn("handler failed; will retry", slog.Any("error", err), slog.Duration("retry_in", delay))
}

// runHandler runs the handler with its deadline, keeps the message in progress and
// turns a panic into an error.
func (w *Worker) runHandler(msg jetstream.Msg, m *Message) (err error) {
	ctx, cancel := context.WithTimeout(w.hardCtx, w.cfg.HandlerTimeout)
	defer cancel()
	// A timer, not a goroutine per message: it only costs when a handler runs long.
	var (
		ipMu      sync.Mutex
		ipTimer   *time.Timer
		ipStopped bool
	)
	ipMu.Lock()
	ipTimer = time.AfterFunc(w.cfg.InProgressInterval, func() {
		_ = msg.InProgress()
		ipMu.Lock()
		defer ipMu.Unlock()
		if !ipStopped {
			ipTimer.Reset(w.cfg.InProgressInterval)
		}
	})
	ipMu.Unlock()
	defer func() {
		ipMu.Lock()
		defer ipMu.Unlock()
		ipStopped = true
		ipTimer.Stop()
	}()
	defer func() {
		if r := recover(); r != nil {
			w.log.Error("handler panicked", slog.String("event_id", m.ID), slog.Any("panic", r), slog.String("stack", string(debug.Stack())))
			err = fmt.Errorf("handler panic: %v", r)
		}
	}()
	return w.cfg.Handler.Handle(ctx, m)
}
