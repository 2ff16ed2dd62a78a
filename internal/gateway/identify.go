package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// SessionStartLimit is /gateway/bot's session_start_limit.
type SessionStartLimit struct {
	Total          int
	Remaining      int
	ResetAfter     time.Duration
	MaxConcurrency int
}

// ErrBudgetUnknown: no replica has stored the session start limit yet.
var ErrBudgetUnknown = errors.New("identify budget unknown: SetLimits was never called")

// IdentifyConfig tunes an IdentifyLimiter.
type IdentifyConfig struct {
	ReplicaID string
	// Window is Discord's identify window per bucket. Default 5s.
	Window time.Duration
	// Margin is added to every window so that network jitter between the send and
	// Discord's receipt never makes two IDENTIFYs of a bucket look closer than
	// the window. Default Window/40, at least 10ms.
	Margin time.Duration
	// Reserve is the part of the daily budget the cluster never spends: at or
	// below it nobody identifies and the budget_low alert is raised. Default 50.
	Reserve    int
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// IdentifyLimiter coordinates IDENTIFYs of all replicas through Postgres (see
// migration 00002): one per bucket shard_id % max_concurrency per window, and
// never below the daily budget's reserve.
type IdentifyLimiter struct {
	pool   *pgxpool.Pool
	cfg    IdentifyConfig
	logger *slog.Logger

	wait      prometheus.Histogram
	remaining prometheus.Gauge
	low       prometheus.Gauge

	// Shards of one bucket on this replica take turns at the database: only one of
	// them polls for the bucket's next slot, instead of every waiting shard waking
	// at the same instant and queueing on the bucket row's lock.
	mu          sync.Mutex
	bucketTurns map[int]chan struct{} // a token per bucket, taken while polling
	mc          int                   // max_concurrency as last read
}

// NewIdentifyLimiter validates cfg.
func NewIdentifyLimiter(pool *pgxpool.Pool, cfg IdentifyConfig) (*IdentifyLimiter, error) {
	if pool == nil {
		return nil, errors.New("identify limiter: nil pool")
	}
	cfg.Window = cmp.Or(cfg.Window, 5*time.Second)
	cfg.Margin = cmp.Or(cfg.Margin, max(cfg.Window/40, 10*time.Millisecond))
	if cfg.Reserve == 0 {
		cfg.Reserve = 50
	}
	switch {
	case cfg.Window < 0 || cfg.Margin < 0:
		return nil, fmt.Errorf("identify limiter: negative window %s or margin %s", cfg.Window, cfg.Margin)
	case cfg.Reserve < 0:
		return nil, fmt.Errorf("identify limiter: negative reserve %d", cfg.Reserve)
	case cfg.ReplicaID == "":
		return nil, errors.New("identify limiter: empty replica id")
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &IdentifyLimiter{
		pool:        pool,
		cfg:         cfg,
		logger:      logger,
		bucketTurns: map[int]chan struct{}{},
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "shardwarden_gateway_identify_wait_seconds",
			Help:    "Time a shard waited for its identify slot (bucket window and daily budget) before dialing.",
			Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		remaining: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shardwarden_gateway_identify_budget_remaining",
			Help: "IDENTIFYs left in Discord's daily session start budget, as last seen by this replica.",
		}),
		low: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shardwarden_gateway_identify_budget_low",
			Help: "1 while the daily identify budget is at or below the reserve and the cluster has stopped identifying.",
		}),
	}
	for _, c := range []prometheus.Collector{l.wait, l.remaining, l.low} {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("identify limiter: register metrics: %w", err)
		}
	}
	return l, nil
}

// SetLimits stores Discord's current session start limit (every replica calls it
// at start with /gateway/bot's answer) and creates the bucket rows.
func (l *IdentifyLimiter) SetLimits(ctx context.Context, lim SessionStartLimit) error {
	if lim.MaxConcurrency < 1 {
		return fmt.Errorf("set identify limits: max_concurrency %d < 1", lim.MaxConcurrency)
	}
	if lim.Total < 0 || lim.Remaining < 0 || lim.ResetAfter < 0 {
		return fmt.Errorf("set identify limits: negative value in %+v", lim)
	}
	tx, err := l.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("set identify limits: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `
		INSERT INTO discord_identify_budget AS b (total, remaining, reset_at, max_concurrency)
		VALUES ($1, $2, now() + make_interval(secs => $3), $4)
		ON CONFLICT (singleton) DO UPDATE SET
		    total = excluded.total, remaining = excluded.remaining,
		    reset_at = excluded.reset_at, max_concurrency = excluded.max_concurrency,
		    updated_at = now()`,
		lim.Total, lim.Remaining, lim.ResetAfter.Seconds(), lim.MaxConcurrency); err != nil {
		return fmt.Errorf("set identify limits: budget: %w", err)
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO discord_identify_buckets (bucket)
		SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING`, lim.MaxConcurrency); err != nil {
		return fmt.Errorf("set identify limits: buckets: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("set identify limits: commit: %w", err)
	}
	l.remaining.Set(float64(lim.Remaining))
	l.low.Set(b2f(lim.Remaining <= l.cfg.Reserve))
	return nil
}

// IdentifyClaim is the right to send one IDENTIFY for a shard.
//
// A claim reserves its bucket for validity + window + margin: the IDENTIFY must
// go out within validity of the claim (Valid), so any later claim of the bucket
// sends at least window + margin after it, whatever the database latency. Sent
// then gives back what the reservation did not need (send time + window +
// margin), as long as the bucket is still this claim's.
type IdentifyClaim struct {
	// ClaimedAt is the database's clock when the bucket was claimed; with the
	// bucket, shard and replica it identifies the claim in its row.
	ClaimedAt time.Time

	l         *IdentifyLimiter
	bucket    int
	shardID   int
	claimedAt time.Time // monotonic, this process
}

// Valid reports whether the claim may still be used: an IDENTIFY sent later than
// its validity could land next to the bucket's next claim.
func (c *IdentifyClaim) Valid() bool {
	return c != nil && time.Since(c.claimedAt) < c.l.validity()
}

// validity is how long after its claim an IDENTIFY may be sent: long enough for a
// dial and HELLO, short enough that an expired claim costs at most half a window.
func (l *IdentifyLimiter) validity() time.Duration { return l.cfg.Window / 2 }

// Sent records that the IDENTIFY went out: it spends one from the daily budget
// (only sent IDENTIFYs count, so dials that fail burn nothing) and, while the
// bucket is still this claim's, moves its next slot to (now + window + margin) by
// the database clock, which is after the send: earlier than the reservation,
// never earlier than the window allows.
func (c *IdentifyClaim) Sent(ctx context.Context) error {
	var remaining int
	err := c.l.pool.QueryRow(ctx, `
		WITH bucket AS (
		    UPDATE discord_identify_buckets
		    SET next_allowed_at = least(next_allowed_at, clock_timestamp() + make_interval(secs => $2)),
		        last_sent_at = clock_timestamp()
		    WHERE bucket = $1 AND last_claimed_at = $3 AND last_shard_id = $4 AND last_replica_id = $5)
		UPDATE discord_identify_budget
		SET remaining = CASE WHEN reset_at <= clock_timestamp() THEN total ELSE remaining END - 1,
		    reset_at = CASE WHEN reset_at <= clock_timestamp() THEN clock_timestamp() + interval '24 hours' ELSE reset_at END,
		    updated_at = clock_timestamp()
		WHERE singleton
		RETURNING remaining`, c.bucket, (c.l.cfg.Window + c.l.cfg.Margin).Seconds(),
		c.ClaimedAt, c.shardID, c.l.cfg.ReplicaID).Scan(&remaining)
	if err != nil {
		return fmt.Errorf("identify sent, bucket %d: %w", c.bucket, err)
	}
	c.l.remaining.Set(float64(remaining))
	c.l.low.Set(b2f(remaining <= c.l.cfg.Reserve))
	return nil
}

// Acquire waits until shardID may IDENTIFY (its bucket's window is free and the
// daily budget is above the reserve) and returns the claim; IdentifyClaim.Sent
// spends the budget. It sleeps exactly until the database says the slot opens.
func (l *IdentifyLimiter) Acquire(ctx context.Context, shardID int) (*IdentifyClaim, error) {
	start := time.Now()
	if turn := l.turn(shardID); turn != nil {
		select {
		case <-turn:
			defer func() { turn <- struct{}{} }()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	lowLogged := false
	for {
		c, wait, low, err := l.try(ctx, shardID)
		if err != nil {
			return nil, err
		}
		if c != nil {
			l.wait.Observe(time.Since(start).Seconds())
			return c, nil
		}
		if low && !lowLogged {
			lowLogged = true
			l.logger.ErrorContext(ctx, "identify budget at reserve: not identifying until it resets",
				slog.Int("shard_id", shardID), slog.Int("reserve", l.cfg.Reserve), slog.Duration("reset_in", wait))
		}
		if low {
			wait = min(wait, time.Minute) // re-read: a replica may refresh the limits
		}
		t := time.NewTimer(max(wait, time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// turn is the token for shardID's bucket on this replica (nil until the bucket
// count is known: the first claim reads it).
func (l *IdentifyLimiter) turn(shardID int) chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mc <= 0 {
		return nil
	}
	b := shardID % l.mc
	t, ok := l.bucketTurns[b]
	if !ok {
		t = make(chan struct{}, 1)
		t <- struct{}{}
		l.bucketTurns[b] = t
	}
	return t
}

// try claims shardID's bucket if its slot is open and the budget is above the
// reserve, in one statement: the UPDATE's row lock on the bucket serialises the
// replicas racing for it, and nothing cluster-wide is locked, so the sixteen
// buckets' rounds never queue behind each other.
//
// The budget is read, not locked: a claim does not spend it (Sent does), so a
// lock would not make the check stricter. What the check allows beyond the
// reserve is bounded by the claims not yet sent, at most one per bucket.
func (l *IdentifyLimiter) try(ctx context.Context, shardID int) (claim *IdentifyClaim, wait time.Duration, low bool, err error) {
	var (
		remaining, mc      *int
		resetIn            float64
		claimed, unsent    bool
		nextIn, earliestIn float64
		at                 time.Time
	)
	err = l.pool.QueryRow(ctx, `
		WITH budget AS (
		    SELECT CASE WHEN reset_at <= clock_timestamp() THEN total ELSE remaining END AS remaining,
		           max_concurrency AS mc,
		           extract(epoch FROM reset_at - clock_timestamp())::float8 AS reset_in
		    FROM discord_identify_budget WHERE singleton),
		claim AS (
		    UPDATE discord_identify_buckets b
		    SET next_allowed_at = clock_timestamp() + make_interval(secs => $2),
		        last_shard_id = $1, last_replica_id = $3, last_claimed_at = clock_timestamp()
		    FROM budget
		    WHERE b.bucket = $1 % budget.mc AND budget.remaining > $4 AND b.next_allowed_at <= clock_timestamp()
		    RETURNING b.last_claimed_at),
		cur AS (
		    SELECT extract(epoch FROM next_allowed_at - clock_timestamp())::float8 AS next_in,
		           last_sent_at IS NULL OR last_sent_at < last_claimed_at AS unsent,
		           extract(epoch FROM last_claimed_at + make_interval(secs => $5) - clock_timestamp())::float8 AS earliest_in
		    FROM discord_identify_buckets, budget WHERE bucket = $1 % budget.mc)
		SELECT (SELECT remaining FROM budget), (SELECT mc FROM budget), coalesce((SELECT reset_in FROM budget), 0),
		       EXISTS (SELECT 1 FROM claim), coalesce((SELECT last_claimed_at FROM claim), clock_timestamp()),
		       coalesce((SELECT next_in FROM cur), 0), coalesce((SELECT unsent FROM cur), false),
		       coalesce((SELECT earliest_in FROM cur), 0)`,
		shardID, (l.validity()+l.cfg.Window+l.cfg.Margin).Seconds(), l.cfg.ReplicaID, l.cfg.Reserve,
		(l.cfg.Window+l.cfg.Margin).Seconds()).Scan(&remaining, &mc, &resetIn, &claimed, &at, &nextIn, &unsent, &earliestIn)
	if err != nil {
		return nil, 0, false, fmt.Errorf("identify claim, shard %d: %w", shardID, err)
	}
	if remaining == nil || mc == nil {
		return nil, 0, false, ErrBudgetUnknown
	}
	l.remaining.Set(float64(*remaining))
	if *remaining <= l.cfg.Reserve {
		l.low.Set(1)
		return nil, secs(resetIn), true, nil
	}
	l.low.Set(0)
	l.mu.Lock()
	if l.mc != *mc { // Discord changed max_concurrency: new buckets, new turns
		l.mc, l.bucketTurns = *mc, map[int]chan struct{}{}
	}
	l.mu.Unlock()
	bucket := shardID % *mc
	if !claimed {
		// The statement's snapshot shows the row before a concurrent claim; a
		// missing row (limits stored before this bucket existed) waits briefly.
		return nil, l.retryIn(secs(nextIn), unsent, secs(earliestIn)), false, nil
	}
	return &IdentifyClaim{ClaimedAt: at, l: l, bucket: bucket, shardID: shardID, claimedAt: time.Now()}, 0, false, nil
}

// retryIn is how long a shard that lost the bucket sleeps before trying again.
// While the last claim has not sent its IDENTIFY, next (its reservation) includes
// the whole validity, which Sent gives back the moment the IDENTIFY is out: the
// shard wakes when the window since the claim could end (earliest), then polls
// every margin until the send is recorded or the reservation runs out.
func (l *IdentifyLimiter) retryIn(next time.Duration, unsent bool, earliest time.Duration) time.Duration {
	if unsent && next > earliest {
		next = min(next, max(earliest, l.cfg.Margin))
	}
	return max(next, time.Millisecond)
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
