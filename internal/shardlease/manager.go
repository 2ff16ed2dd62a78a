package shardlease

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	randv2 "math/rand/v2"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Tuning that follows from the configured interval; see doc.go.
const (
	// rebalanceTicks is the hysteresis: a replica hands shards back only after it
	// has been over its share at this many consecutive heartbeats.
	rebalanceTicks = 2
	// claimRetries bounds the quick retries after losing the claim lock; the next
	// heartbeat tries again anyway.
	claimRetries = 8
	// staleClaimMargin is how long after a peer's lease expires (by the database
	// clock, read at our heartbeat) the claim looks at it: the statement's own
	// latency and scheduling jitter.
	staleClaimMargin = 25 * time.Millisecond
	// logEvery rate-limits repeated failure logs inside retry loops.
	logEvery = 10 * time.Second
)

type runState int

const (
	runActive   runState = iota // driving the shard, renewed by heartbeats
	runDraining                 // Draining() closed, renewed until the runner returns
	runFenced                   // cancelled by the self-fence; row may still be ours
	runLost                     // cancelled: the row is someone else's
)

// shardRun is one runner goroutine and its lease.
type shardRun struct {
	lease     *Lease
	cancel    context.CancelFunc
	state     runState
	reason    string    // why it drains: reasonRebalance or reasonShutdown
	deadline  time.Time // when a draining runner's context is cancelled
	forced    bool      // cancelled after the drain deadline: its return value is ignored
	startedAt time.Time
}

type runnerExit struct {
	run   *shardRun
	state ResumeState
	err   error
}

// cooldown keeps this replica from re-claiming a shard it just gave up.
type cooldown struct {
	until    time.Time
	failures int // consecutive runner exits, for the backoff
}

// Manager holds this replica's shard leases: it registers the replica, renews
// every lease with one statement per interval, claims its fair share, hands
// shards to the Runner, and fences itself when the database is out of reach.
// See the package documentation for the state model.
type Manager struct {
	cfg        Config
	pool       *pgxpool.Pool
	log        *slog.Logger
	met        *metrics
	instanceID string
	ttl        time.Duration
	opTimeout  time.Duration

	lifecycle sync.Mutex // guards started and stopped
	started   bool
	stopped   bool
	stopOnce  sync.Once
	stopCh    chan struct{}
	abandonCh chan struct{}
	abandon   sync.Once
	done      chan struct{}
	wake      chan struct{} // a runner returned
	notified  chan struct{} // a peer released shards or left
	hbReq     chan chan error

	runners sync.WaitGroup

	mu         sync.Mutex // guards the fields below, shared with runners and the fence timer
	runs       map[int]*shardRun
	exits      []runnerExit
	registered bool
	regErr     error // why the replica is not registered
	lastOK     time.Time
	fenced     bool
	stopping   bool
	fatal      error
	fenceTimer *time.Timer

	// Owned by the loop goroutine.
	pending    map[int]releaseItem
	cooldowns  map[int]cooldown
	overTicks  int
	failures   int // consecutive failed heartbeats or registrations
	claimTries int
	nextTick   time.Time
	nextClaim  time.Time
	dbLog      throttle
	target     int
}

// New validates cfg and returns a Manager; nothing touches the database until
// Start.
func New(pool *pgxpool.Pool, cfg Config) (*Manager, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	instanceID := newInstanceID()
	m := &Manager{
		cfg:        cfg,
		pool:       pool,
		met:        met,
		instanceID: instanceID,
		ttl:        cfg.LeaseTTL(),
		opTimeout:  max(cfg.HeartbeatInterval, time.Second),
		log:        cfg.Logger.With(slog.String("component", "shardlease"), slog.String("replica_id", cfg.ReplicaID)),
		stopCh:     make(chan struct{}),
		abandonCh:  make(chan struct{}),
		done:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
		notified:   make(chan struct{}, 1),
		hbReq:      make(chan chan error),
		runs:       map[int]*shardRun{},
		regErr:     errors.New("not registered yet"),
		pending:    map[int]releaseItem{},
		cooldowns:  map[int]cooldown{},
		dbLog:      throttle{every: logEvery},
	}
	return m, nil
}

// ReplicaID is the configured replica id.
func (m *Manager) ReplicaID() string { return m.cfg.ReplicaID }

// InstanceID is this process's nonce in discord_bot_replicas.instance_id.
func (m *Manager) InstanceID() string { return m.instanceID }

// LeaseTTL is how long after its last renewal a lease of this replica is stale.
func (m *Manager) LeaseTTL() time.Duration { return m.ttl }

// Start begins registering, renewing and claiming in the background and returns
// at once; the database may be unreachable (the manager retries with backoff).
// Runner contexts carry ctx's values; cancelling ctx starts the same graceful
// stop as Stop.
func (m *Manager) Start(ctx context.Context) error {
	m.lifecycle.Lock()
	defer m.lifecycle.Unlock()
	switch {
	case m.stopped:
		return errors.New("shardlease: Start after Stop")
	case m.started:
		return errors.New("shardlease: already started")
	}
	m.started = true
	m.log.InfoContext(ctx, "shard lease manager starting",
		slog.String("instance_id", m.instanceID), slog.Int("shard_count", m.cfg.ShardCount),
		slog.Duration("heartbeat_interval", m.cfg.HeartbeatInterval), slog.Duration("lease_ttl", m.ttl),
		slog.Duration("self_fence_after", m.cfg.SelfFenceAfter))
	go m.loop(ctx)
	return nil
}

// Stop hands every shard back gracefully and blocks until done: it marks the
// replica draining, closes each lease's Draining(), waits for the runners (up to
// ShutdownTimeout, then cancels their contexts), saves each returned
// ResumeState and releases each row (fenced), deletes the replica row and
// notifies peers. Safe to call more than once and from any goroutine.
func (m *Manager) Stop() {
	m.stopOnce.Do(func() { close(m.stopCh) })
	m.waitOrMarkStopped()
}

// Abandon stops at once as a crash would: it cancels every runner, waits for
// them, and returns without writing to the database. The rows go stale and peers
// take the shards after the lease TTL. For tests and last-resort exits.
func (m *Manager) Abandon() {
	m.abandon.Do(func() { close(m.abandonCh) })
	m.waitOrMarkStopped()
}

func (m *Manager) waitOrMarkStopped() {
	m.lifecycle.Lock()
	if !m.started && !m.stopped {
		m.stopped = true
		close(m.done)
	}
	m.stopped = true
	m.lifecycle.Unlock()
	<-m.done
}

// Done is closed when the manager has stopped: after Stop or Abandon, or by
// itself when a Runner returned an error wrapping ErrFatal (see Err).
func (m *Manager) Done() <-chan struct{} { return m.done }

// Err returns the fatal Runner error that stopped the manager, or nil.
func (m *Manager) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fatal
}

// Held returns the shards this replica drives (including those handing off),
// sorted.
func (m *Manager) Held() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []int
	for id, r := range m.runs {
		if r.state == runActive || r.state == runDraining {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// Ready reports whether the replica takes part in the cluster: registered, its
// last renewal within the self-fence deadline, not fenced, not refused and not
// stopping. The error says why not (wrapping ErrDuplicateReplica or
// ErrShardCountMismatch when that is the reason).
func (m *Manager) Ready(context.Context) error {
	m.lifecycle.Lock()
	started := m.started
	m.lifecycle.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.fatal != nil:
		return fmt.Errorf("stopped by a fatal shard error: %w", m.fatal)
	case m.stopping:
		return errors.New("shard leases: stopping")
	case !started:
		return errors.New("shard leases: not started")
	case !m.registered:
		return fmt.Errorf("shard leases: not registered: %w", m.regErr)
	case m.fenced:
		return fmt.Errorf("shard leases: self-fenced, no renewal for %s", time.Since(m.lastOK).Round(time.Millisecond))
	case time.Since(m.lastOK) >= m.cfg.SelfFenceAfter:
		return fmt.Errorf("shard leases: last renewal %s ago", time.Since(m.lastOK).Round(time.Millisecond))
	}
	return nil
}

// loop owns registration, heartbeats, claims, releases and shutdown.
func (m *Manager) loop(ctx context.Context) {
	defer close(m.done)
	base := context.WithoutCancel(ctx)

	listenCtx, stopListen := context.WithCancel(base)
	listenDone := make(chan struct{})
	go m.listen(listenCtx, listenDone)
	defer func() {
		stopListen()
		<-listenDone
		m.mu.Lock()
		if m.fenceTimer != nil {
			m.fenceTimer.Stop()
		}
		m.mu.Unlock()
		m.met.held.Set(0)
	}()

	var (
		ctxDone         = ctx.Done()
		stopCh          = m.stopCh
		shuttingDown    bool
		cleanupDeadline time.Time
		lastStuckLog    time.Time
	)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		m.processExits(base)
		if m.abandoned() {
			m.abandonAll()
			return
		}
		now := time.Now()
		if !shuttingDown && (m.stopRequested(stopCh, ctxDone) || m.fatalErr() != nil) {
			shuttingDown = true
			cleanupDeadline = now.Add(m.cfg.ShutdownTimeout + max(2*m.cfg.HeartbeatInterval, 2*time.Second))
			m.beginShutdown(now)
			stopCh, ctxDone = nil, nil
		}
		if shuttingDown {
			if m.runningCount() == 0 && (len(m.pending) == 0 || now.After(cleanupDeadline) || !m.isRegistered()) {
				m.finishShutdown(base, cleanupDeadline)
				return
			}
			if n := m.runningCount(); n > 0 && now.After(cleanupDeadline) && now.Sub(lastStuckLog) > 5*time.Second {
				lastStuckLog = now
				m.log.ErrorContext(base, "runners have not returned after their contexts were cancelled; waiting", slog.Int("runners", n))
			}
		}
		if !now.Before(m.nextTick) {
			m.tick(base, shuttingDown)
		}
		if !shuttingDown && !m.nextClaim.IsZero() && !time.Now().Before(m.nextClaim) {
			m.claimStep(base)
		}
		nextDrain := m.enforceDrainDeadlines(time.Now())

		wakeAt := m.nextTick
		if !shuttingDown && !m.nextClaim.IsZero() && m.nextClaim.Before(wakeAt) {
			wakeAt = m.nextClaim
		}
		if !nextDrain.IsZero() && nextDrain.Before(wakeAt) {
			wakeAt = nextDrain
		}
		if shuttingDown && cleanupDeadline.Before(wakeAt) && time.Now().Before(cleanupDeadline) {
			wakeAt = cleanupDeadline
		}
		if shuttingDown && !time.Now().Before(cleanupDeadline) {
			wakeAt = time.Now().Add(time.Second) // only waiting for stuck runners now
		}
		timer.Reset(max(time.Until(wakeAt), 0))
		select {
		case <-timer.C:
		case <-m.wake:
		case <-m.notified:
			if !shuttingDown {
				m.liftRebalanceCooldowns()
				m.scheduleClaim(time.Now().Add(m.cfg.Jitter(m.cfg.ClaimRetryDelay)))
			}
		case <-stopCh:
		case <-ctxDone:
		case <-m.abandonCh:
		case reply := <-m.hbReq:
			reply <- m.heartbeat(base, shuttingDown)
		}
	}
}

func (m *Manager) stopRequested(stopCh <-chan struct{}, ctxDone <-chan struct{}) bool {
	select {
	case <-stopCh:
		return true
	case <-ctxDone:
		return true
	default:
		return false
	}
}

func (m *Manager) abandoned() bool {
	select {
	case <-m.abandonCh:
		return true
	default:
		return false
	}
}

func (m *Manager) fatalErr() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fatal
}

func (m *Manager) isRegistered() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.registered
}

// runningCount is the number of runner goroutines not yet processed as returned.
func (m *Manager) runningCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.runs)
}

func (m *Manager) scheduleClaim(at time.Time) {
	if m.nextClaim.IsZero() || at.Before(m.nextClaim) {
		m.nextClaim = at
	}
}

// tick registers or heartbeats, then decides on rebalancing and claiming.
func (m *Manager) tick(ctx context.Context, shuttingDown bool) {
	m.nextTick = time.Now().Add(m.cfg.HeartbeatInterval)
	if !m.isRegistered() {
		if shuttingDown {
			return
		}
		m.tryRegister(ctx)
		return
	}
	if err := m.heartbeat(ctx, shuttingDown); err != nil {
		return
	}
	m.flushReleases(ctx)
	if shuttingDown || !m.isRegistered() {
		return
	}
	m.rebalance(ctx)
}

func (m *Manager) tryRegister(ctx context.Context) {
	start := time.Now()
	opCtx, cancel := context.WithTimeout(ctx, m.opTimeout)
	err := m.register(opCtx)
	cancel()
	if err != nil {
		m.failures++
		dup := errors.Is(err, ErrDuplicateReplica)
		m.mu.Lock()
		m.regErr = err
		m.mu.Unlock()
		if dup {
			m.met.duplicateReplica.Set(1)
		}
		switch {
		case dup || errors.Is(err, ErrShardCountMismatch):
			// Refused loudly on every retry; retried every interval because the
			// other process may be a crashed predecessor whose row will go stale.
			m.log.ErrorContext(ctx, "replica refused: not claiming any shard", slog.Any("error", err))
			m.nextTick = start.Add(m.cfg.HeartbeatInterval)
		default:
			if ok, suppressed := m.dbLog.allow(start); ok {
				m.log.WarnContext(ctx, "cannot register replica; retrying with backoff",
					slog.Any("error", err), slog.Int("attempt", m.failures), slog.Int("suppressed", suppressed))
			}
			m.nextTick = start.Add(m.backoff())
		}
		return
	}
	if m.failures > 0 {
		m.log.InfoContext(ctx, "database reachable again", slog.Int("failed_attempts", m.failures))
	}
	m.failures = 0
	m.dbLog.reset()
	m.met.duplicateReplica.Set(0)
	m.mu.Lock()
	m.registered, m.regErr = true, nil
	m.renewedAt(start)
	m.mu.Unlock()
	m.log.InfoContext(ctx, "replica registered", slog.String("instance_id", m.instanceID))
	m.scheduleClaim(time.Now())
}

// backoff is the retry delay after m.failures consecutive failures: from a tenth
// of an interval, doubling, up to one interval, with jitter.
func (m *Manager) backoff() time.Duration {
	d := m.cfg.HeartbeatInterval / 10
	for i := 1; i < m.failures && d < m.cfg.HeartbeatInterval; i++ {
		d *= 2
	}
	d = min(d, m.cfg.HeartbeatInterval)
	return d/2 + m.cfg.Jitter(d/2+1)
}

// heartbeat renews the replica row and every held lease in one statement and
// acts on what it learns: leases not renewed are lost at once.
func (m *Manager) heartbeat(ctx context.Context, draining bool) error {
	m.mu.Lock()
	sent := make([]*shardRun, 0, len(m.runs))
	leases := make([]renewal, 0, len(m.runs))
	for id, r := range m.runs {
		if r.state != runActive && r.state != runDraining {
			continue
		}
		st := r.lease.Status()
		st.State = sanitizeState(st.State)
		if r.state == runDraining {
			st.State = StateReleasing
		}
		sent = append(sent, r)
		leases = append(leases, renewal{shardID: id, epoch: r.lease.Epoch, status: st})
	}
	m.mu.Unlock()
	// Lock rows in shard order, as claims do, to keep deadlocks with a
	// concurrent claim of our stale rows unlikely.
	slices.SortFunc(leases, func(a, b renewal) int { return a.shardID - b.shardID })

	start := time.Now()
	opCtx, cancel := context.WithTimeout(ctx, m.opTimeout)
	res, err := m.sendHeartbeat(opCtx, draining, leases)
	cancel()
	m.met.heartbeatDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		m.failures++
		m.met.heartbeatFailures.Inc()
		if ok, suppressed := m.dbLog.allow(start); ok {
			m.log.WarnContext(ctx, "heartbeat failed; retrying", slog.Any("error", err),
				slog.Int("attempt", m.failures), slog.Int("suppressed", suppressed),
				slog.Duration("since_last_renewal", time.Since(m.lastRenewal())))
		}
		m.nextTick = start.Add(min(m.backoff(), m.cfg.HeartbeatInterval/2))
		return err
	}
	if m.failures > 0 {
		m.log.InfoContext(ctx, "heartbeat succeeded again", slog.Int("failed_attempts", m.failures))
	}
	m.failures = 0
	m.dbLog.reset()
	m.met.liveReplicas.Set(float64(res.live))
	m.met.staleShards.Set(float64(res.stale))

	m.mu.Lock()
	defer m.mu.Unlock()
	if !res.replicaOK {
		// Our replica row is gone (deleted as long stale) or taken by another
		// instance: none of our leases was renewed. Stop them all; the rows that
		// are still ours are released (fenced) once we are registered again.
		n := m.fenceAllLocked()
		m.registered = false
		m.regErr = errors.New("replica row lost (stale and removed, or taken by another instance)")
		m.log.ErrorContext(ctx, "replica registration lost; stopped every shard and registering again", slog.Int("shards", n))
		m.nextTick = time.Now()
		return nil
	}
	renewed := make(map[int]bool, len(res.renewed))
	for _, id := range res.renewed {
		renewed[int(id)] = true
	}
	for _, r := range sent {
		id := r.lease.ShardID
		if renewed[id] || m.runs[id] != r || (r.state != runActive && r.state != runDraining) {
			continue
		}
		r.state = runLost
		r.cancel()
		m.met.lost.Inc()
		m.log.WarnContext(ctx, "lease lost: renewal matched no row; shard stopped",
			slog.Int("shard_id", id), slog.Int64("epoch", r.lease.Epoch))
	}
	m.renewedAt(start)
	m.target = res.target(m.cfg.ShardCount)
	if !draining && m.heldLocked() < m.target && res.free+res.stale > 0 {
		m.scheduleClaim(time.Now())
	}
	// A peer whose leases expire before our next heartbeat has probably died (a
	// live one renews them first): look again just after they expire. A claim
	// that finds them renewed after all takes nothing.
	if !draining && res.nextStale > 0 && res.nextStale < m.cfg.HeartbeatInterval {
		m.scheduleClaim(start.Add(res.nextStale + staleClaimMargin))
	}
	m.setHeldGaugeLocked()
	return nil
}

// renewedAt records a successful renewal that started at start and re-arms the
// self-fence deadline. Callers hold m.mu.
func (m *Manager) renewedAt(start time.Time) {
	if start.Before(m.lastOK) {
		return
	}
	m.lastOK = start
	remaining := m.cfg.SelfFenceAfter - time.Since(start)
	if remaining > 0 && m.fenced {
		m.fenced = false
		m.log.Info("lease renewal succeeded again after the self-fence; rejoining")
	}
	if m.fenceTimer == nil {
		m.fenceTimer = time.AfterFunc(max(remaining, 0), m.selfFence)
	} else {
		m.fenceTimer.Reset(max(remaining, 0))
	}
}

func (m *Manager) lastRenewal() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastOK
}

// selfFence runs on its own timer, independent of a heartbeat that may hang: with
// no renewal for SelfFenceAfter it cancels every runner, before the lease TTL
// lets a peer take over.
func (m *Manager) selfFence() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.registered || m.fenced {
		return
	}
	if remaining := m.cfg.SelfFenceAfter - time.Since(m.lastOK); remaining > 0 {
		m.fenceTimer.Reset(remaining)
		return
	}
	m.fenced = true
	n := m.fenceAllLocked()
	m.met.selfFences.Inc()
	m.log.Error("self-fenced: no lease renewal within the deadline; stopped every shard before a peer may take it",
		slog.Int("shards", n), slog.Duration("since_last_renewal", time.Since(m.lastOK).Round(time.Millisecond)),
		slog.Duration("self_fence_after", m.cfg.SelfFenceAfter), slog.Duration("lease_ttl", m.ttl))
}

// fenceAllLocked cancels every active or draining runner; their rows are
// released (fenced by epoch) once they return and the database answers.
func (m *Manager) fenceAllLocked() int {
	n := 0
	for _, r := range m.runs {
		if r.state == runActive || r.state == runDraining {
			r.state = runFenced
			r.cancel()
			n++
		}
	}
	m.setHeldGaugeLocked()
	return n
}

func (m *Manager) heldLocked() int {
	n := 0
	for _, r := range m.runs {
		if r.state == runActive || r.state == runDraining {
			n++
		}
	}
	return n
}

func (m *Manager) setHeldGaugeLocked() { m.met.held.Set(float64(m.heldLocked())) }

// rebalance hands back shards above this replica's share once it has been over
// for rebalanceTicks heartbeats in a row, through the graceful drain path.
func (m *Manager) rebalance(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fenced || m.fatal != nil {
		m.overTicks = 0
		return
	}
	var active []*shardRun
	for _, r := range m.runs {
		if r.state == runActive {
			active = append(active, r)
		}
	}
	excess := len(active) - m.target
	if excess <= 0 {
		m.overTicks = 0
		return
	}
	m.overTicks++
	if m.overTicks < rebalanceTicks {
		return
	}
	m.overTicks = 0
	// Hand back the most recently claimed shards: the longest-running sessions stay.
	slices.SortFunc(active, func(a, b *shardRun) int {
		if c := b.startedAt.Compare(a.startedAt); c != 0 {
			return c
		}
		return b.lease.ShardID - a.lease.ShardID
	})
	ids := make([]int, 0, excess)
	for _, r := range active[:excess] {
		m.drainLocked(r, reasonRebalance, time.Now())
		ids = append(ids, r.lease.ShardID)
	}
	m.log.InfoContext(ctx, "over fair share: handing shards back", slog.Int("held", len(active)),
		slog.Int("target", m.target), slog.Any("shard_ids", ids))
}

func (m *Manager) drainLocked(r *shardRun, reason string, now time.Time) {
	r.state, r.reason, r.deadline = runDraining, reason, now.Add(m.cfg.ShutdownTimeout)
	r.lease.drain()
}

// enforceDrainDeadlines cancels draining runners past their deadline and
// returns the next deadline (zero when none).
func (m *Manager) enforceDrainDeadlines(now time.Time) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	var next time.Time
	for id, r := range m.runs {
		if r.state != runDraining || r.forced {
			continue
		}
		if !now.Before(r.deadline) {
			r.forced = true
			r.cancel()
			m.log.Warn("runner did not hand off in time; cancelled", slog.Int("shard_id", id),
				slog.Int64("epoch", r.lease.Epoch), slog.Duration("timeout", m.cfg.ShutdownTimeout))
			continue
		}
		if next.IsZero() || r.deadline.Before(next) {
			next = r.deadline
		}
	}
	return next
}

// liftRebalanceCooldowns ends the cooldowns of shards handed off in a rebalance,
// when a peer released shards or left: the assignment they made room for has
// changed (in a rolling update the replica that took them is often the next one
// stopped), and waiting out the cooldown would leave them unowned. The fair share
// still decides whether this replica claims them. Cooldowns after a runner exit
// keep their backoff.
func (m *Manager) liftRebalanceCooldowns() {
	for id, c := range m.cooldowns {
		if c.failures == 0 {
			delete(m.cooldowns, id)
		}
	}
}

// claimStep claims up to this replica's share and starts a runner per claimed
// shard. A lost lock race is retried after a short jittered delay.
func (m *Manager) claimStep(ctx context.Context) {
	m.nextClaim = time.Time{}
	m.mu.Lock()
	ok := m.registered && !m.fenced && !m.stopping && m.fatal == nil && time.Since(m.lastOK) < m.cfg.HeartbeatInterval
	held := len(m.runs) // every live runner counts: a lost one still holds its slot until it returns
	exclude := make([]int32, 0, len(m.runs)+len(m.pending)+len(m.cooldowns))
	for id := range m.runs {
		exclude = append(exclude, int32(id))
	}
	m.mu.Unlock()
	if !ok {
		return
	}
	now := time.Now()
	for id := range m.pending {
		exclude = append(exclude, int32(id))
	}
	for id, c := range m.cooldowns {
		if now.Before(c.until) {
			exclude = append(exclude, int32(id))
		} else if c.failures == 0 {
			delete(m.cooldowns, id)
		}
	}

	opCtx, cancel := context.WithTimeout(ctx, m.opTimeout)
	got, err := m.claim(opCtx, held, exclude)
	cancel()
	switch {
	case errors.Is(err, errClaimBusy):
		if m.claimTries++; m.claimTries <= claimRetries {
			d := m.cfg.ClaimRetryDelay
			m.scheduleClaim(time.Now().Add(d/2 + m.cfg.Jitter(d)))
		}
		return
	case err != nil:
		m.claimTries = 0
		if ok, suppressed := m.dbLog.allow(now); ok {
			m.log.WarnContext(ctx, "claim failed; the next heartbeat retries", slog.Any("error", err), slog.Int("suppressed", suppressed))
		}
		return
	}
	m.claimTries = 0
	if len(got) == 0 {
		return
	}
	m.met.claims.Add(float64(len(got)))
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range got {
		m.startRunnerLocked(ctx, c)
	}
	m.setHeldGaugeLocked()
}

// startRunnerLocked hands a new lease to the Runner in its own goroutine, with a
// context cancelled when the lease is lost.
func (m *Manager) startRunnerLocked(ctx context.Context, c claimed) {
	lease := newLease(c.shardID, m.cfg.ShardCount, c.epoch, c.resume)
	lease.status.Guilds, lease.status.LastEventAt = c.guilds, c.lastEventAt
	runCtx, cancel := context.WithCancel(ctx)
	r := &shardRun{lease: lease, cancel: cancel, state: runActive, startedAt: time.Now()}
	m.runs[c.shardID] = r
	attrs := []any{slog.Int("shard_id", c.shardID), slog.Int64("epoch", c.epoch), slog.Bool("resumable", c.resume.Resumable())}
	if c.prevOwner != "" {
		attrs = append(attrs, slog.String("previous_owner", c.prevOwner))
	}
	m.log.InfoContext(ctx, "shard claimed", attrs...)

	m.runners.Add(1)
	go func() {
		defer m.runners.Done()
		defer cancel()
		st, err := m.runShard(runCtx, lease)
		m.mu.Lock()
		m.exits = append(m.exits, runnerExit{run: r, state: st, err: err})
		m.mu.Unlock()
		select {
		case m.wake <- struct{}{}:
		default:
		}
	}()
}

func (m *Manager) runShard(ctx context.Context, lease *Lease) (st ResumeState, err error) {
	defer func() {
		if p := recover(); p != nil {
			m.log.ErrorContext(ctx, "runner panicked", slog.Int("shard_id", lease.ShardID),
				slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
			st, err = ResumeState{}, fmt.Errorf("runner panicked: %v", p)
		}
	}()
	return m.cfg.Runner.RunShard(ctx, lease)
}

// processExits turns returned runners into releases (graceful hand-off or a
// runner that stopped by itself), pending releases (fenced) or nothing (lost).
func (m *Manager) processExits(ctx context.Context) {
	m.mu.Lock()
	exits := m.exits
	m.exits = nil
	now := time.Now()
	var fresh bool
	for _, e := range exits {
		r, id := e.run, e.run.lease.ShardID
		if m.runs[id] == r {
			delete(m.runs, id)
		}
		final := r.lease.Status()
		if !r.forced && e.state != (ResumeState{}) {
			final.Resume = e.state
		}
		item := releaseItem{shardID: id, epoch: r.lease.Epoch, status: final}
		log := m.log.With(slog.Int("shard_id", id), slog.Int64("epoch", r.lease.Epoch))
		switch r.state {
		case runActive:
			item.reason = reasonRunnerExit
			c := m.cooldowns[id]
			if now.Sub(r.startedAt) > 10*m.cfg.HeartbeatInterval {
				c.failures = 0
			}
			c.failures++
			delay := m.cfg.HeartbeatInterval << min(c.failures-1, 5)
			c.until = now.Add(delay)
			m.cooldowns[id] = c
			switch {
			case errors.Is(e.err, ErrFatal):
				if m.fatal == nil {
					m.fatal = e.err
				}
				log.ErrorContext(ctx, "runner failed fatally; stopping the replica", slog.Any("error", e.err))
			case e.err != nil:
				log.WarnContext(ctx, "runner stopped with an error; releasing the shard", slog.Any("error", e.err), slog.Duration("retry_after", delay))
			default:
				log.InfoContext(ctx, "runner stopped; releasing the shard", slog.Duration("retry_after", delay))
			}
		case runDraining:
			item.reason = r.reason
			if r.reason == reasonRebalance {
				m.cooldowns[id] = cooldown{until: now.Add(m.ttl)}
			}
			if e.err != nil && !r.forced {
				log.WarnContext(ctx, "runner returned an error while handing off", slog.Any("error", e.err))
			}
		case runFenced:
			// Released when the database answers again, unless a peer took it.
		case runLost:
			continue
		}
		m.pending[id] = item
		fresh = true
	}
	m.setHeldGaugeLocked()
	canRelease := m.registered && !m.fenced
	m.mu.Unlock()
	if fresh && canRelease {
		m.flushReleases(ctx)
	}
}

// flushReleases saves and releases every pending lease in one statement; on
// failure they stay pending and the next heartbeat retries.
func (m *Manager) flushReleases(ctx context.Context) {
	if len(m.pending) == 0 {
		return
	}
	items := make([]releaseItem, 0, len(m.pending))
	for _, it := range m.pending {
		items = append(items, it)
	}
	slices.SortFunc(items, func(a, b releaseItem) int { return a.shardID - b.shardID })
	opCtx, cancel := context.WithTimeout(ctx, m.opTimeout)
	released, err := m.release(opCtx, items)
	cancel()
	if err != nil {
		if ok, suppressed := m.dbLog.allow(time.Now()); ok {
			m.log.WarnContext(ctx, "release failed; retrying", slog.Any("error", err), slog.Int("suppressed", suppressed))
		}
		return
	}
	done := make(map[int]bool, len(released))
	for _, id := range released {
		done[int(id)] = true
	}
	for _, it := range items {
		delete(m.pending, it.shardID)
		if !done[it.shardID] {
			continue // lost meanwhile: the row is a peer's now
		}
		if it.reason != "" {
			m.met.releases.WithLabelValues(it.reason).Inc()
		}
		m.log.InfoContext(ctx, "shard released", slog.Int("shard_id", it.shardID), slog.Int64("epoch", it.epoch),
			slog.String("reason", cmp.Or(it.reason, "fenced")), slog.Bool("resumable", it.status.Resume.Resumable()))
	}
}

func (m *Manager) beginShutdown(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopping = true
	for _, r := range m.runs {
		if r.state == runActive {
			m.drainLocked(r, reasonShutdown, now)
		}
	}
	if m.registered {
		m.nextTick = now // mark the replica draining at once
	}
	m.nextClaim = time.Time{}
	reason := "stop requested"
	if m.fatal != nil {
		reason = "fatal runner error"
	}
	m.log.Info("shard lease manager stopping: handing every shard off", slog.String("reason", reason), slog.Int("shards", len(m.runs)))
}

// finishShutdown releases what is still pending and removes the replica row.
func (m *Manager) finishShutdown(ctx context.Context, deadline time.Time) {
	if !m.isRegistered() {
		m.log.Info("shard lease manager stopped")
		return
	}
	opCtx, cancel := context.WithDeadline(ctx, later(deadline, time.Now().Add(m.opTimeout)))
	defer cancel()
	m.flushReleases(opCtx)
	if len(m.pending) > 0 {
		m.log.Warn("could not release every shard; peers take them after the lease TTL", slog.Int("shards", len(m.pending)))
	}
	if err := m.leave(opCtx); err != nil {
		m.log.Warn("could not delete the replica row; peers ignore it after the lease TTL", slog.Any("error", err))
	}
	m.mu.Lock()
	m.registered = false
	m.mu.Unlock()
	m.log.Info("shard lease manager stopped")
}

// abandonAll cancels every runner and waits for them, writing nothing.
func (m *Manager) abandonAll() {
	m.mu.Lock()
	m.stopping = true
	for _, r := range m.runs {
		r.state = runLost
		r.cancel()
	}
	m.mu.Unlock()
	m.runners.Wait()
	m.mu.Lock()
	m.runs = map[int]*shardRun{}
	m.exits = nil
	m.registered = false
	m.mu.Unlock()
	m.log.Warn("shard lease manager abandoned without releasing its leases")
}

// sanitizeState keeps a runner's report within the states the row accepts: one
// bad value must not fail the heartbeat of every shard.
func sanitizeState(s ShardState) ShardState {
	switch s {
	case StateConnecting, StateReady, StateResuming, StateReleasing:
		return s
	}
	return StateConnecting
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// newInstanceID returns a random (version 4) UUID.
func newInstanceID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func randomJitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return randv2.N(d)
}

// throttle rate-limits a repeated log line.
type throttle struct {
	every      time.Duration
	last       time.Time
	suppressed int
}

func (t *throttle) allow(now time.Time) (bool, int) {
	if !t.last.IsZero() && now.Sub(t.last) < t.every {
		t.suppressed++
		return false, 0
	}
	n := t.suppressed
	t.last, t.suppressed = now, 0
	return true, n
}

func (t *throttle) reset() { t.last, t.suppressed = time.Time{}, 0 }
