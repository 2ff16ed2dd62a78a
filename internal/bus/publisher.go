package bus

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Publish outcomes a Completion may see.
var (
	// ErrAckTimeout: no JetStream acknowledgement arrived within AckTimeout. The
	// message may or may not be stored; publish it again (the msg id dedups it).
	ErrAckTimeout = errors.New("jetstream publish: ack timeout")
	// ErrPublisherStopped: the publisher stopped with the message still in flight.
	ErrPublisherStopped = errors.New("jetstream publish: publisher stopped")
	// ErrNoStream: nothing answered the publish (no stream bound, or JetStream not
	// ready yet after a restart).
	ErrNoStream = errors.New("jetstream publish: no stream responded")
)

// Reasons of shardwarden_bus_publish_errors_total.
const (
	reasonTimeout      = "timeout"
	reasonDisconnected = "disconnected"
	reasonRejected     = "rejected"
	reasonNoStream     = "no_stream"
	reasonStopped      = "stopped"
	reasonSend         = "send"
)

// publishErrorReasons are exported at zero from the start: increase() sees the
// first error of each kind.
var publishErrorReasons = []string{reasonTimeout, reasonDisconnected, reasonRejected, reasonNoStream, reasonStopped, reasonSend}

// Event is one Discord dispatch to store. Data is the raw `d` of the dispatch; the
// publisher does not keep Event or Data after the Completion for it returned.
type Event struct {
	Shard      int
	Session    string
	Seq        int64
	Epoch      int64
	GuildID    string // "" when the dispatch has none
	Type       string // Discord's t, e.g. MESSAGE_CREATE
	ReceivedAt time.Time
	Data       []byte
}

// Completion receives the outcome of one publish exactly once: nil when
// JetStream stored it (or recognised it as a duplicate). It runs on the
// publisher's acknowledgement goroutine and must not block.
type Completion func(ev *Event, err error)

// PublisherConfig tunes a Publisher. Zero values take the defaults.
type PublisherConfig struct {
	// MaxInFlight bounds the publishes awaiting an ack; Publish blocks when the
	// window is full. Default 4096, at most 1<<20.
	MaxInFlight int
	// AckTimeout fails a publish whose ack has not arrived. Default 5s.
	AckTimeout time.Duration
	Registerer prometheus.Registerer // default: a private registry (metrics dropped)
	Logger     *slog.Logger
}

// Publisher publishes events to JetStream asynchronously on core NATS with a
// reply subject per message, and reports each outcome to a Completion. It
// allocates no goroutine per message: acks are handled on one subscription, a
// sweeper fails the ones that time out.
type Publisher struct {
	nc     *nats.Conn
	cfg    PublisherConfig
	logger *slog.Logger

	prefix string // reply subject prefix, "_INBOX.<nuid>."
	sub    *nats.Subscription
	status chan nats.Status

	free chan uint32 // free slot indexes: the in-flight window

	mu       sync.Mutex
	slots    []slot
	subjects map[string]string
	stopped  bool

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}

	duration prometheus.Histogram
	inFlight prometheus.Gauge
	errs     *prometheus.CounterVec
}

const slotBits = 20

type slot struct {
	gen   uint64
	ev    *Event
	done  Completion
	start time.Time
	busy  bool
	msg   nats.Msg
	hdr   [hdrCount][]string
}

const (
	hdrMsgID = iota
	hdrShard
	hdrSeq
	hdrSession
	hdrEpoch
	hdrGuild
	hdrType
	hdrReceived
	hdrCount
)

var hdrNames = [hdrCount]string{
	hdrMsgID:    nats.MsgIdHdr,
	hdrShard:    HeaderShard,
	hdrSeq:      HeaderSeq,
	hdrSession:  HeaderSession,
	hdrEpoch:    HeaderEpoch,
	hdrGuild:    HeaderGuild,
	hdrType:     HeaderEventType,
	hdrReceived: HeaderReceivedAt,
}

// NewPublisher validates cfg and prepares a publisher on nc; Start begins it.
func NewPublisher(nc *nats.Conn, cfg PublisherConfig) (*Publisher, error) {
	if nc == nil {
		return nil, errors.New("new publisher: nil nats connection")
	}
	cfg.MaxInFlight = cmp.Or(cfg.MaxInFlight, 4096)
	cfg.AckTimeout = cmp.Or(cfg.AckTimeout, 5*time.Second)
	if cfg.MaxInFlight < 1 || cfg.MaxInFlight > 1<<slotBits {
		return nil, fmt.Errorf("new publisher: max in flight %d outside 1..%d", cfg.MaxInFlight, 1<<slotBits)
	}
	if cfg.AckTimeout < 0 {
		return nil, fmt.Errorf("new publisher: negative ack timeout %s", cfg.AckTimeout)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &Publisher{
		nc:       nc,
		cfg:      cfg,
		logger:   logger,
		free:     make(chan uint32, cfg.MaxInFlight),
		slots:    make([]slot, cfg.MaxInFlight),
		subjects: map[string]string{},
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "shardwarden_bus_publish_duration_seconds",
			Help:    "Time from publishing an event to its JetStream acknowledgement.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shardwarden_bus_publish_in_flight",
			Help: "Events published and not yet acknowledged by JetStream.",
		}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shardwarden_bus_publish_errors_total",
			Help: "Event publishes that failed, by reason (timeout, disconnected, rejected, no_stream, stopped, send).",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{p.duration, p.inFlight, p.errs} {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("new publisher: register metrics: %w", err)
		}
	}
	for _, reason := range publishErrorReasons {
		p.errs.WithLabelValues(reason)
	}
	for i := range p.slots {
		s := &p.slots[i]
		s.msg.Header = make(nats.Header, hdrCount)
		for h := range s.hdr {
			s.hdr[h] = make([]string, 1)
			s.msg.Header[hdrNames[h]] = s.hdr[h]
		}
		p.free <- uint32(i)
	}
	return p, nil
}

// Start subscribes to the acknowledgements and starts the timeout sweeper.
func (p *Publisher) Start(context.Context) error {
	p.prefix = p.nc.NewRespInbox() + "."
	sub, err := p.nc.Subscribe(p.prefix+"*", p.onAck)
	if err != nil {
		return fmt.Errorf("publisher: subscribe to acks: %w", err)
	}
	// Acks must never be dropped as a slow consumer: the window bounds them.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("publisher: ack pending limits: %w", err)
	}
	p.sub = sub
	p.status = p.nc.StatusChanged(nats.RECONNECTING, nats.CLOSED)
	go p.sweep()
	return nil
}

// Stop fails every in-flight publish with ErrPublisherStopped and waits for the
// sweeper. Idempotent.
func (p *Publisher) Stop() {
	p.stopOnce.Do(func() {
		if p.sub == nil { // never started
			close(p.done)
			p.failAll(ErrPublisherStopped, reasonStopped, true)
			return
		}
		close(p.stop)
		<-p.done
		_ = p.sub.Unsubscribe()
		p.nc.RemoveStatusListener(p.status)
		p.failAll(ErrPublisherStopped, reasonStopped, true)
	})
}

// InFlight is the number of publishes awaiting an ack.
func (p *Publisher) InFlight() int { return p.cfg.MaxInFlight - len(p.free) }

// Publish sends ev and returns once it is on the wire (or buffered by the NATS
// client while it reconnects); done gets the outcome later. It blocks while
// MaxInFlight publishes await their acks. A non-nil error means ev was not sent
// and done will not be called.
func (p *Publisher) Publish(ctx context.Context, ev *Event, done Completion) error {
	var idx uint32
	select {
	case idx = <-p.free:
	default:
		select {
		case idx = <-p.free:
		case <-ctx.Done():
			return ctx.Err()
		case <-p.stop:
			return ErrPublisherStopped
		}
	}

	// The slot's message is filled and sent under mu: a reconnect may fail and
	// free the slot at any moment, and its next user must not race our write.
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		p.free <- idx
		return ErrPublisherStopped
	}
	s := &p.slots[idx]
	s.gen++
	gen := s.gen
	s.ev, s.done, s.busy = ev, done, true
	s.start = time.Now()
	subject, ok := p.subjects[ev.Type]
	if !ok {
		subject = EventSubject(ev.Type)
		if len(p.subjects) < 512 { // bounded: types come from the network
			p.subjects[ev.Type] = subject
		}
	}
	var buf [64]byte
	s.msg.Subject = subject
	s.msg.Reply = p.prefix + string(strconv.AppendUint(buf[:0], gen<<slotBits|uint64(idx), 36))
	s.msg.Data = ev.Data
	s.hdr[hdrMsgID][0] = MsgID(ev.Shard, ev.Session, ev.Seq)
	s.hdr[hdrShard][0] = strconv.Itoa(ev.Shard)
	s.hdr[hdrSeq][0] = strconv.FormatInt(ev.Seq, 10)
	s.hdr[hdrSession][0] = ev.Session
	s.hdr[hdrEpoch][0] = strconv.FormatInt(ev.Epoch, 10)
	s.hdr[hdrGuild][0] = ev.GuildID
	s.hdr[hdrType][0] = ev.Type
	s.hdr[hdrReceived][0] = string(ev.ReceivedAt.UTC().AppendFormat(buf[:0], time.RFC3339Nano))
	p.inFlight.Inc()
	err := p.nc.PublishMsg(&s.msg)
	p.mu.Unlock()
	if err != nil {
		// Not sent: take the slot back, unless a reconnect already failed it
		// and reported that through done.
		if p.take(idx, gen) == nil {
			return nil
		}
		p.errs.WithLabelValues(reasonSend).Inc()
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// take frees slot idx when it still holds generation gen and returns what it
// held, or nil when someone else completed it.
func (p *Publisher) take(idx uint32, gen uint64) *slot {
	p.mu.Lock()
	s := &p.slots[idx]
	if !s.busy || s.gen != gen {
		p.mu.Unlock()
		return nil
	}
	out := *s // copy of the fields the completion needs
	s.ev, s.done, s.busy = nil, nil, false
	p.mu.Unlock()
	p.inFlight.Dec()
	p.free <- idx
	return &out
}

var (
	errKey = []byte(`"error"`)
)

type ackError struct {
	Error *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

func (p *Publisher) onAck(m *nats.Msg) {
	token := m.Subject[len(p.prefix):]
	id, err := strconv.ParseUint(token, 36, 64)
	if err != nil {
		return
	}
	idx, gen := uint32(id&(1<<slotBits-1)), id>>slotBits
	if int(idx) >= len(p.slots) {
		return
	}
	s := p.take(idx, gen)
	if s == nil {
		return // timed out earlier, or failed on a reconnect
	}
	var perr error
	reason := ""
	switch {
	case len(m.Data) == 0 && m.Header.Get("Status") == "503":
		perr, reason = ErrNoStream, reasonNoStream
	case bytes.Contains(m.Data, errKey):
		var ae ackError
		if json.Unmarshal(m.Data, &ae) == nil && ae.Error != nil {
			perr = fmt.Errorf("jetstream publish rejected: %s (code %d, err_code %d)", ae.Error.Description, ae.Error.Code, ae.Error.ErrCode)
		} else {
			perr = fmt.Errorf("jetstream publish: malformed ack %q", m.Data)
		}
		reason = reasonRejected
	case len(m.Data) == 0:
		perr, reason = fmt.Errorf("jetstream publish: empty ack"), reasonRejected
	}
	if perr != nil {
		p.errs.WithLabelValues(reason).Inc()
	} else {
		p.duration.Observe(time.Since(s.start).Seconds())
	}
	s.done(s.ev, perr)
}

// sweep fails publishes whose ack is overdue, and every in-flight publish when
// the connection drops (their acks will never come on the new connection).
func (p *Publisher) sweep() {
	defer close(p.done)
	tick := time.NewTicker(max(p.cfg.AckTimeout/8, 5*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case st := <-p.status:
			if st == nats.RECONNECTING || st == nats.CLOSED {
				p.failAll(nats.ErrDisconnected, reasonDisconnected, false)
			}
		case now := <-tick.C:
			p.failOlder(now.Add(-p.cfg.AckTimeout))
		}
	}
}

type failed struct {
	ev   *Event
	done Completion
}

func (p *Publisher) failOlder(cutoff time.Time) {
	var out []failed
	p.mu.Lock()
	for i := range p.slots {
		s := &p.slots[i]
		if s.busy && s.start.Before(cutoff) {
			out = append(out, failed{s.ev, s.done})
			s.ev, s.done, s.busy = nil, nil, false
			p.inFlight.Dec()
			p.free <- uint32(i)
		}
	}
	p.mu.Unlock()
	p.complete(out, ErrAckTimeout, reasonTimeout)
}

func (p *Publisher) failAll(err error, reason string, stop bool) {
	var out []failed
	p.mu.Lock()
	if stop {
		p.stopped = true
	}
	for i := range p.slots {
		s := &p.slots[i]
		if s.busy {
			out = append(out, failed{s.ev, s.done})
			s.ev, s.done, s.busy = nil, nil, false
			p.inFlight.Dec()
			p.free <- uint32(i)
		}
	}
	p.mu.Unlock()
	p.complete(out, err, reason)
}

func (p *Publisher) complete(out []failed, err error, reason string) {
	if len(out) == 0 {
		return
	}
	p.errs.WithLabelValues(reason).Add(float64(len(out)))
	p.logger.Warn("event publishes failed", slog.Int("count", len(out)), slog.String("reason", reason))
	for _, f := range out {
		f.done(f.ev, err)
	}
}
