package shardlease

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrInvalidConfig is wrapped by every error New returns for a bad Config.
var ErrInvalidConfig = errors.New("invalid shard lease config")

// Defaults for the zero values of Config.
const (
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultMissedHeartbeats  = 3
	DefaultShutdownTimeout   = 20 * time.Second

	// MaxShardCount bounds SHARD_COUNT to something Discord could hand out.
	MaxShardCount = 1 << 16
)

// Config configures a Manager. ReplicaID, ShardCount and Runner are required; the
// zero value of every other field means its default.
type Config struct {
	// ReplicaID names this replica in discord_bot_shards.owner_id. Two live
	// processes with one id are refused (ErrDuplicateReplica).
	ReplicaID string
	// ShardCount is the cluster's shard count. The first replica stores it; a
	// replica configured with another count never claims (ErrShardCountMismatch).
	ShardCount int

	// HeartbeatInterval is how often the one renewal statement runs (default 10s).
	HeartbeatInterval time.Duration
	// MissedHeartbeats is how many intervals without renewal make a lease stale,
	// by the database clock, so that peers may take it (default 3, at least 2).
	// The lease TTL is HeartbeatInterval × MissedHeartbeats.
	MissedHeartbeats int
	// SelfFenceAfter: with no successful renewal for this long, by this process's
	// monotonic clock, every runner is cancelled (default 2 intervals). It must be
	// longer than one interval and shorter than the lease TTL; the difference is
	// the margin for claim latency and clock-rate drift.
	SelfFenceAfter time.Duration
	// ShutdownTimeout bounds a graceful hand-off: how long a draining runner gets
	// to return its ResumeState before its context is cancelled (default 20s). It
	// applies to Stop and to rebalancing. Give the container a longer grace period.
	ShutdownTimeout time.Duration

	// Version is written to discord_bot_replicas.version for operators.
	Version string
	// Runner drives each held shard.
	Runner Runner
	// Logger receives the manager's logs (default: discarded).
	Logger *slog.Logger
	// Registerer receives the shardwarden_lease_* metrics (nil: not registered).
	Registerer prometheus.Registerer

	// ClaimRetryDelay is the base of the short jittered delay after losing the
	// claim lock to a peer (default HeartbeatInterval/10, at most 1s).
	ClaimRetryDelay time.Duration
	// Jitter returns a random duration in [0, d); tests may make it deterministic.
	// Default: math/rand/v2.
	Jitter func(d time.Duration) time.Duration
}

// LeaseTTL is how long after its last renewal a lease counts as stale.
func (c Config) LeaseTTL() time.Duration {
	return c.HeartbeatInterval * time.Duration(c.MissedHeartbeats)
}

func (c Config) withDefaults() Config {
	c.HeartbeatInterval = cmp.Or(c.HeartbeatInterval, DefaultHeartbeatInterval)
	c.MissedHeartbeats = cmp.Or(c.MissedHeartbeats, DefaultMissedHeartbeats)
	c.SelfFenceAfter = cmp.Or(c.SelfFenceAfter, 2*c.HeartbeatInterval)
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, DefaultShutdownTimeout)
	c.ClaimRetryDelay = cmp.Or(c.ClaimRetryDelay, min(c.HeartbeatInterval/10, time.Second))
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Jitter == nil {
		c.Jitter = randomJitter
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if strings.TrimSpace(c.ReplicaID) == "" {
		bad("ReplicaID is empty")
	} else if len(c.ReplicaID) > 200 {
		bad("ReplicaID is longer than 200 bytes")
	}
	if c.ShardCount <= 0 || c.ShardCount > MaxShardCount {
		bad("ShardCount must be between 1 and %d, got %d", MaxShardCount, c.ShardCount)
	}
	if c.Runner == nil {
		bad("Runner is nil")
	}
	if c.HeartbeatInterval < 0 {
		bad("HeartbeatInterval must be positive, got %s", c.HeartbeatInterval)
	}
	if c.MissedHeartbeats < 2 {
		bad("MissedHeartbeats must be at least 2, got %d", c.MissedHeartbeats)
	}
	if ttl := c.LeaseTTL(); c.SelfFenceAfter <= c.HeartbeatInterval || c.SelfFenceAfter >= ttl {
		bad("SelfFenceAfter (%s) must be longer than HeartbeatInterval (%s) and shorter than the lease TTL (%s)",
			c.SelfFenceAfter, c.HeartbeatInterval, ttl)
	}
	if c.ShutdownTimeout < 0 {
		bad("ShutdownTimeout must not be negative, got %s", c.ShutdownTimeout)
	}
	if c.ClaimRetryDelay < 0 {
		bad("ClaimRetryDelay must not be negative, got %s", c.ClaimRetryDelay)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}
