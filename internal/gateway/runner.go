package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/diamondburned/arikawa/v3/gateway"
	"github.com/diamondburned/arikawa/v3/utils/ws"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/shardlease"
)

// Publisher is what the gateway needs of bus.Publisher.
type Publisher interface {
	Publish(ctx context.Context, ev *bus.Event, done bus.Completion) error
}

// Config configures a Service. Zero values take the defaults.
type Config struct {
	Token      string // bot token, without "Bot "
	GatewayURL string // wss://gateway.discord.gg (from /gateway/bot), no query
	Intents    gateway.Intents

	Publisher Publisher        // required
	Identify  *IdentifyLimiter // required

	// BufferSize bounds each shard's events received and not yet acknowledged by
	// JetStream. Default 8192.
	BufferSize int
	// DrainTimeout bounds a handoff's wait for in-flight publishes. Default 5s.
	DrainTimeout time.Duration
	// DialTimeout bounds one websocket dial. Default 10s.
	DialTimeout time.Duration
	// HandshakeTimeout: a connection without READY or RESUMED this long after the
	// dial is a zombie and is closed (non-1000) and resumed. Default 30s.
	HandshakeTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the jittered exponential backoff between
	// failed dials. Defaults 1s and 60s.
	ReconnectMin, ReconnectMax time.Duration
	// InvalidSessionMin/Max: after op 9 d=false Discord wants a random 1–5 s
	// wait before the new IDENTIFY. Defaults 1s and 5s.
	InvalidSessionMin, InvalidSessionMax time.Duration
	// StatusInterval is how often the shard reports its status to the lease (the
	// manager writes it with its next heartbeat). Default 1s.
	StatusInterval time.Duration
	// MaxFrameBytes bounds one gateway frame. Default 16 MiB.
	MaxFrameBytes int64

	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Service runs the shards this replica holds: it is the shardlease.Runner.
type Service struct {
	cfg    Config
	logger *slog.Logger
	m      *metrics

	mu     sync.Mutex
	shards map[int]*shard
}

var _ shardlease.Runner = (*Service)(nil)

// New validates cfg and registers the gateway metrics.
func New(cfg Config) (*Service, error) {
	cfg.BufferSize = cmp.Or(cfg.BufferSize, 8192)
	cfg.DrainTimeout = cmp.Or(cfg.DrainTimeout, 5*time.Second)
	cfg.DialTimeout = cmp.Or(cfg.DialTimeout, 10*time.Second)
	cfg.HandshakeTimeout = cmp.Or(cfg.HandshakeTimeout, 30*time.Second)
	cfg.ReconnectMin = cmp.Or(cfg.ReconnectMin, time.Second)
	cfg.ReconnectMax = cmp.Or(cfg.ReconnectMax, time.Minute)
	cfg.InvalidSessionMin = cmp.Or(cfg.InvalidSessionMin, time.Second)
	cfg.InvalidSessionMax = cmp.Or(cfg.InvalidSessionMax, 5*time.Second)
	cfg.StatusInterval = cmp.Or(cfg.StatusInterval, time.Second)
	cfg.MaxFrameBytes = cmp.Or(cfg.MaxFrameBytes, 16<<20)
	var errs []error
	if cfg.Token == "" {
		errs = append(errs, errors.New("empty token"))
	}
	if cfg.GatewayURL == "" {
		errs = append(errs, errors.New("empty gateway URL"))
	}
	if cfg.Publisher == nil {
		errs = append(errs, errors.New("nil publisher"))
	}
	if cfg.Identify == nil {
		errs = append(errs, errors.New("nil identify limiter"))
	}
	if cfg.BufferSize < 2 {
		errs = append(errs, fmt.Errorf("buffer size %d < 2", cfg.BufferSize))
	}
	if cfg.ReconnectMin > cfg.ReconnectMax || cfg.InvalidSessionMin > cfg.InvalidSessionMax {
		errs = append(errs, errors.New("a minimum delay exceeds its maximum"))
	}
	for _, d := range []time.Duration{cfg.DrainTimeout, cfg.DialTimeout, cfg.HandshakeTimeout, cfg.ReconnectMin, cfg.InvalidSessionMin, cfg.StatusInterval} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("negative duration %s", d))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("gateway config: %w", err)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, logger: logger, m: newMetrics(), shards: map[int]*shard{}}
	for _, c := range append(s.m.collectors(), s) {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("gateway metrics: %w", err)
		}
	}
	return s, nil
}

// Describe implements prometheus.Collector (the scrape-time last-event age).
func (s *Service) Describe(ch chan<- *prometheus.Desc) { ch <- s.m.lastEventAge }

// Collect implements prometheus.Collector.
func (s *Service) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sh := range s.shards {
		ch <- prometheus.MustNewConstMetric(s.m.lastEventAge, prometheus.GaugeValue, ageSeconds(sh.lastEvent()), sh.m.label)
	}
}

// Ready is the readiness check: nil unless a held shard is waiting for JetStream
// (its buffer filled and it disconnected).
func (s *Service) Ready(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var stuck []int
	for id, sh := range s.shards {
		if sh.inBackpressure() {
			stuck = append(stuck, id)
		}
	}
	if len(stuck) > 0 {
		return fmt.Errorf("shards %v waiting for JetStream", stuck)
	}
	return nil
}

// Shards returns the ids of the shards running now.
func (s *Service) Shards() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]int, 0, len(s.shards))
	for id := range s.shards {
		ids = append(ids, id)
	}
	return ids
}

// RunShard implements shardlease.Runner: it drives one shard until the lease is
// lost (ctx), drained (handoff) or a fatal close.
func (s *Service) RunShard(ctx context.Context, lease *shardlease.Lease) (shardlease.ResumeState, error) {
	sh := newShard(s, lease)
	s.mu.Lock()
	if _, dup := s.shards[lease.ShardID]; dup {
		s.mu.Unlock()
		return shardlease.ResumeState{}, fmt.Errorf("shard %d already running in this replica", lease.ShardID)
	}
	s.shards[lease.ShardID] = sh
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.shards, lease.ShardID)
		s.mu.Unlock()
		sh.m.forget()
	}()
	return sh.run(ctx)
}

// shard is one held shard: its session mirror, outbox and metrics.
type shard struct {
	svc   *Service
	lease *shardlease.Lease
	id    int
	log   *slog.Logger
	m     *shardMetrics
	ob    *outbox

	mu           sync.Mutex
	sessionID    string
	resumeURL    string
	seq          int64 // last dispatch of the session handed to the outbox
	invalidated  bool  // op 9 d=false: wait 1–5 s before the IDENTIFY
	claim        *IdentifyClaim
	state        string
	backpressure bool
	guilds       map[string]struct{}
	// inherited counts guilds the previous owner knew that this owner has not seen:
	// a RESUME does not replay READY and its GUILD_CREATEs, so a resumed shard
	// starts from the count saved in its lease row. A READY replaces it with the
	// exact set.
	inherited   int
	lastEventAt time.Time
}

func newShard(s *Service, lease *shardlease.Lease) *shard {
	sh := &shard{
		svc:         s,
		lease:       lease,
		id:          lease.ShardID,
		log:         s.logger.With(slog.Int("shard_id", lease.ShardID), slog.Int64("epoch", lease.Epoch)),
		m:           s.m.forShard(lease.ShardID),
		sessionID:   lease.Resume.SessionID,
		resumeURL:   lease.Resume.ResumeURL,
		seq:         lease.Resume.Seq,
		state:       stateConnecting,
		guilds:      map[string]struct{}{},
		lastEventAt: time.Now(),
	}
	if lease.Resume.Resumable() {
		sh.inherited = lease.Status().Guilds
		sh.m.guilds.Set(float64(sh.inherited))
	}
	sh.ob = newOutbox(s.cfg.BufferSize, sh.sessionID, sh.seq)
	sh.m.setState(stateConnecting)
	return sh
}

func (sh *shard) run(ctx context.Context) (shardlease.ResumeState, error) {
	cfg := sh.svc.cfg
	id := gateway.NewIdentifier(gateway.DefaultIdentifyCommand(cfg.Token))
	// Trap 7: arikawa's limiters wait inside the event loop and are per process.
	// Identifies are gated across replicas in conn.Dial instead.
	id.IdentifyShortLimit, id.IdentifyGlobalLimit = nil, nil
	id.Compress = false // plain text frames: no per-message zlib to undo
	id.SetShard(sh.id, sh.lease.ShardCount)
	id.AddIntents(cfg.Intents)

	if sh.sessionID != "" {
		sh.log.InfoContext(ctx, "shard acquired: resuming", slog.String("session_id", sh.sessionID), slog.Int64("seq", sh.seq))
	} else {
		sh.log.InfoContext(ctx, "shard acquired: identifying")
	}

	// The publisher loop outlives the gateway connection during a handoff (it
	// drains the outbox), so its context does not derive from the gateway's.
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		sh.publishLoop(ctx, pubCtx)
	}()
	defer func() { stopPub(); <-pubDone }()

	backoff := jitteredBackoff(cfg.ReconnectMin, cfg.ReconnectMax)
	draining := sh.lease.Draining()
	for try := 0; ; {
		if try > 0 {
			t := time.NewTimer(backoff(try - 1))
			select {
			case <-ctx.Done():
			case <-draining:
			case <-t.C:
			}
			t.Stop()
		}
		if ctx.Err() != nil {
			// Lease lost: stop at once, write nothing.
			sh.log.WarnContext(ctx, "lease lost: shard stopped")
			return shardlease.ResumeState{}, ctx.Err()
		}
		if isClosed(draining) {
			break
		}
		res := sh.connectOnce(ctx, id, draining)
		if ctx.Err() != nil {
			sh.log.WarnContext(ctx, "lease lost: shard stopped")
			return shardlease.ResumeState{}, ctx.Err()
		}
		if res.fatal != nil {
			sh.log.ErrorContext(ctx, "discord closed the shard with a fatal code", slog.Int("code", res.fatal.Code), slog.Any("error", res.fatal.Err))
			return sh.resumeState(), fmt.Errorf("shard %d: %w: discord close %d: %v", sh.id, shardlease.ErrFatal, res.fatal.Code, res.fatal.Err)
		}
		if res.drained {
			break
		}
		// A connection that got as far as READY or RESUMED reconnects at once
		// (op 7, a drop, a zombie: Discord wants an immediate RESUME); failed dials
		// and connections that die before their session is up back off.
		if res.established && res.lasted >= time.Second {
			try = 0
		} else {
			try++
		}
	}

	// Handoff: wait (bounded) for the buffered events to be acknowledged, then
	// hand the session over at the highest contiguously stored sequence.
	drainCtx, cancel := context.WithTimeout(ctx, cfg.DrainTimeout)
	defer cancel()
	if err := sh.ob.waitEmpty(drainCtx); err != nil {
		sh.log.WarnContext(ctx, "handoff: events still unacknowledged; the next owner's RESUME replays them",
			slog.Int("buffered", sh.ob.len()))
	}
	rs := sh.resumeState()
	sh.lease.Report(shardlease.Status{State: shardlease.StateReleasing, Resume: rs, Guilds: sh.guildCount(), LastEventAt: sh.lastEvent()})
	sh.log.InfoContext(ctx, "shard handed off", slog.String("session_id", rs.SessionID), slog.Int64("seq", rs.Seq))
	return rs, nil
}

type connResult struct {
	established bool          // READY or RESUMED was received
	lasted      time.Duration // from the dial to the end
	drained     bool          // the lease asked for the shard back
	fatal       *ws.CloseEvent
}

// connectOnce runs one gateway connection on a fresh arikawa gateway built from
// the shard's session state, and returns when it ended, the lease drained or ctx
// ended. The socket is closed (4000) and arikawa's loop is gone on return.
func (sh *shard) connectOnce(ctx context.Context, id gateway.Identifier, draining <-chan struct{}) connResult {
	opts := ws.GatewayOpts{
		// arikawa never reconnects on its own: conn dials once (see conn).
		ReconnectDelay:        func(int) time.Duration { return time.Minute },
		FatalCloseCodes:       []int{4004, 4010, 4011, 4012, 4013, 4014},
		AlwaysCloseGracefully: false, // our Close sends 4000 either way
	}
	session, seq := sh.sessionSeq()
	c := newConn(sh)
	g := gateway.FromWebsocketGateway(
		ws.NewGateway(ws.NewCustomWebsocket(c, sh.svc.cfg.GatewayURL), &opts),
		gateway.State{Identifier: id, SessionID: session, Sequence: seq},
	)
	start := time.Now()
	gctx, stop := context.WithCancel(ctx)
	defer stop()
	ops := g.Connect(gctx)
	var res connResult
	ended := c.ended
	for {
		select {
		case op, ok := <-ops:
			if !ok {
				_ = g.LastError()
				res.established = c.established.Load()
				res.lasted = time.Since(start)
				return res
			}
			switch data := op.Data.(type) {
			case *ws.CloseEvent:
				if opts.ErrorIsFatalClose(data) && !res.drained {
					res.fatal = data
				}
			case *ws.BackgroundErrorEvent:
				if data.Err != nil && data.Err.Error() == "heartbeat timed out" {
					// arikawa's own zombie check won the race against ours.
					sh.m.reconnect(reconnectZombie)
				}
				sh.log.DebugContext(ctx, "gateway event loop", slog.Any("error", data.Err))
			}
		case <-ended:
			// The connection is over: stop this gateway (it would redial).
			ended = nil
			stop()
		case <-draining:
			// Stop reading: arikawa closes the socket through conn.Close (4000),
			// then closes ops.
			res.drained, draining = true, nil
			stop()
		}
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// publishLoop publishes the outbox in order, retries failures with backoff, and
// reports the status to the lease every StatusInterval. It stops when pubCtx ends.
func (sh *shard) publishLoop(leaseCtx, pubCtx context.Context) {
	tick := time.NewTicker(sh.svc.cfg.StatusInterval)
	defer tick.Stop()
	backoff := time.Duration(0)
	for {
		if sh.ob.backingOff() {
			backoff = min(max(2*backoff, 50*time.Millisecond), 2*time.Second)
			t := time.NewTimer(backoff)
			select {
			case <-pubCtx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		for {
			ev := sh.ob.take()
			if ev == nil {
				break
			}
			if err := sh.svc.cfg.Publisher.Publish(pubCtx, ev, sh.onPublished); err != nil {
				if pubCtx.Err() != nil {
					return
				}
				sh.ob.done(ev, err) // back in the queue
				break
			}
		}
		select {
		case <-pubCtx.Done():
			return
		case <-sh.ob.wake:
		case <-tick.C:
			if leaseCtx.Err() == nil {
				sh.report()
			}
		}
		// Reset only after a round without failure; the flag itself is left for
		// the next round's check, so a failure is always followed by its backoff.
		if backoff > 0 && !sh.ob.failingNow() {
			backoff = 0
		}
	}
}

func (sh *shard) onPublished(ev *bus.Event, err error) {
	if err != nil {
		sh.m.retries.Inc()
	} else {
		sh.m.published.Inc()
	}
	sh.ob.done(ev, err)
}

func (sh *shard) report() {
	sh.mu.Lock()
	st := sh.state
	sh.mu.Unlock()
	var ls shardlease.ShardState
	switch st {
	case stateReady:
		ls = shardlease.StateReady
	case stateResuming:
		ls = shardlease.StateResuming
	default:
		ls = shardlease.StateConnecting
	}
	sh.lease.Report(shardlease.Status{State: ls, Resume: sh.resumeState(), Guilds: sh.guildCount(), LastEventAt: sh.lastEvent()})
}

// resumeState is what a new owner needs: the session, its resume URL and the
// highest sequence contiguously stored in JetStream.
func (sh *shard) resumeState() shardlease.ResumeState {
	sh.mu.Lock()
	session, url := sh.sessionID, sh.resumeURL
	sh.mu.Unlock()
	if session == "" {
		return shardlease.ResumeState{}
	}
	return shardlease.ResumeState{SessionID: session, ResumeURL: url, Seq: sh.ob.acked(session)}
}

func (sh *shard) setState(st string) {
	sh.mu.Lock()
	changed := sh.state != st
	sh.state = st
	bp := sh.backpressure
	sh.mu.Unlock()
	if changed && !bp {
		sh.m.setState(st)
	}
}

func (sh *shard) setBackpressure(on bool) {
	sh.mu.Lock()
	changed := sh.backpressure != on
	sh.backpressure = on
	st := sh.state
	sh.mu.Unlock()
	if !changed {
		return
	}
	if on {
		sh.m.setState(stateBackpressure)
	} else {
		sh.m.setState(st)
	}
}

func (sh *shard) inBackpressure() bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.backpressure
}

// nextHandshake is arikawa's choice on HELLO for the state the runner built the
// gateway from (IDENTIFY when there is no session or no sequence) and the URL to
// dial for it.
func (sh *shard) nextHandshake() (url string, identify bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	identify = sh.sessionID == "" || sh.seq == 0
	if identify || sh.resumeURL == "" {
		return sh.svc.cfg.GatewayURL, identify
	}
	return sh.resumeURL, false
}

// acquireIdentify waits (before dialing, never in the event loop) for the right
// to IDENTIFY: Discord's 1–5 s after an invalid session, then the cluster-wide
// bucket and budget.
func (sh *shard) acquireIdentify(ctx context.Context) error {
	sh.mu.Lock()
	inv := sh.invalidated
	sh.invalidated = false
	if sh.claim.Valid() {
		sh.mu.Unlock()
		return nil // a claim from a dial that failed is still good
	}
	sh.mu.Unlock()
	if inv {
		lo, hi := sh.svc.cfg.InvalidSessionMin, sh.svc.cfg.InvalidSessionMax
		d := lo + rand.N(hi-lo+1)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	claim, err := sh.svc.cfg.Identify.Acquire(ctx, sh.id)
	if err != nil {
		return fmt.Errorf("wait for identify slot: %w", err)
	}
	sh.mu.Lock()
	sh.claim = claim
	sh.mu.Unlock()
	return nil
}

func (sh *shard) takeClaim() *IdentifyClaim {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := sh.claim
	sh.claim = nil
	return c
}

func (sh *shard) markInvalidated() {
	sh.mu.Lock()
	sh.invalidated = true
	sh.mu.Unlock()
}

// invalidateSession forgets the session Discord refused: the next handshake is an
// IDENTIFY, counted as a session loss.
func (sh *shard) invalidateSession(why string) {
	sh.mu.Lock()
	had := sh.sessionID
	sh.sessionID, sh.resumeURL, sh.seq = "", "", 0
	sh.mu.Unlock()
	if had != "" {
		sh.m.sessionLosses.Inc()
		sh.log.Error("session lost: identifying again; events Discord had not delivered are gone",
			slog.String("session_id", had), slog.String("reason", why))
	}
}

func (sh *shard) onReady(session, resumeURL string, guilds []string) {
	sh.mu.Lock()
	sh.sessionID, sh.resumeURL, sh.seq = session, resumeURL, 0
	clear(sh.guilds)
	sh.inherited = 0
	for _, g := range guilds {
		sh.guilds[g] = struct{}{}
	}
	n := len(sh.guilds)
	sh.mu.Unlock()
	sh.m.guilds.Set(float64(n))
	sh.setState(stateReady)
	sh.log.Info("ready", slog.String("session_id", session), slog.Int("guilds", n))
}

func (sh *shard) onResumed() {
	sh.setState(stateReady)
	sh.log.Info("resumed", slog.String("session_id", sh.currentSession()), slog.Int64("seq", sh.currentSeq()))
}

func (sh *shard) sessionSeq() (string, int64) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.sessionID, sh.seq
}

func (sh *shard) currentSeq() int64 { _, s := sh.sessionSeq(); return s }

func (sh *shard) currentSession() string { s, _ := sh.sessionSeq(); return s }

// onEvent records a dispatch handed to the outbox.
func (sh *shard) onEvent(t string, seq int64, guild string, d []byte, now time.Time) {
	sh.mu.Lock()
	sh.seq = seq
	sh.lastEventAt = now
	changed := false
	switch t {
	case "GUILD_CREATE":
		if _, ok := sh.guilds[guild]; !ok && guild != "" {
			sh.guilds[guild] = struct{}{}
			changed = true
		}
	case "GUILD_DELETE":
		// unavailable=true is an outage, not a departure.
		if guild != "" && topLevelRaw(d, "unavailable") != "true" {
			if _, ok := sh.guilds[guild]; ok {
				delete(sh.guilds, guild)
			} else if sh.inherited > 0 {
				sh.inherited--
			}
			changed = true
		}
	}
	n := len(sh.guilds) + sh.inherited
	sh.mu.Unlock()
	if changed {
		sh.m.guilds.Set(float64(n))
	}
	sh.m.received.Inc()
	sh.m.countType(t)
}

func (sh *shard) guildCount() int {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return len(sh.guilds) + sh.inherited
}

func (sh *shard) lastEvent() time.Time {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.lastEventAt
}
