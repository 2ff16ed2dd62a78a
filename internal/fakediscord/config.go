package fakediscord

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config configures a Server. Zero values take the defaults noted on each field
// (Discord's production values where Discord has one); tests shrink the windows to
// tens of milliseconds.
type Config struct {
	// Addr is the listen address of the gateway and REST API. Default 127.0.0.1:0.
	Addr string
	// AdminAddr, when set, serves the admin API (faults, traffic, referee) on its own
	// listener. Empty: the admin API is served under /admin/ on Addr.
	AdminAddr string
	// Token is the bot token (without "Bot "). Default "fake-bot-token".
	Token string
	// ApplicationID is the application and bot user id. Default 1100000000000000001.
	ApplicationID uint64
	// Shards is the shard count /gateway/bot recommends and the traffic generator
	// routes by. Default 1. Clients may IDENTIFY with another count, as on Discord.
	Shards int
	// MaxConcurrency is session_start_limit.max_concurrency: the number of identify
	// buckets (shard_id % max_concurrency). Default 1.
	MaxConcurrency int
	// IdentifyWindow: one IDENTIFY per bucket per window. Default 5s.
	IdentifyWindow time.Duration
	// DailyBudget is session_start_limit.total, IDENTIFYs per BudgetWindow. Default 1000.
	DailyBudget int
	// BudgetWindow is the period of DailyBudget. Default 24h.
	BudgetWindow time.Duration
	// ResumeWindow is how long a session stays resumable after a disconnect that
	// did not invalidate it. Default 2m ("a few minutes").
	ResumeWindow time.Duration
	// HeartbeatInterval is sent in HELLO. Default 41.25s.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout: a connection that sends no heartbeat for this long (from
	// HELLO or its last heartbeat) is closed with 4009 and its session invalidated.
	// Default 1.5 × HeartbeatInterval.
	HeartbeatTimeout time.Duration
	// CommandLimit commands per CommandWindow per connection; more closes with 4008.
	// Defaults 120 and 60s.
	CommandLimit  int
	CommandWindow time.Duration
	// MaxPayloadBytes: a client frame larger than this closes with 4002. Default 4096.
	MaxPayloadBytes int
	// MaxGuildsPerShard: IDENTIFY on a shard holding more guilds closes with 4011.
	// Default 2500.
	MaxGuildsPerShard int
	// Guilds is the size of the guild population. Default 10 × Shards.
	Guilds int
	// Seed makes the guild population (and traffic choices) reproducible. Default 1.
	Seed int64
	// CompressMinBytes: when IDENTIFY says "compress": true, dispatch frames at least
	// this long are sent as per-message zlib binary frames (Discord compresses the
	// big payloads only, so a client must handle both kinds). Negative compresses
	// every frame. Default 2048.
	CompressMinBytes int
	// ReplayLimit is how many dispatches a session keeps for RESUME. A RESUME from
	// an older seq gets op 9 d=false. Default 65536.
	ReplayLimit int
	// MaxQueuedFrames per connection: a client that reads slower than events arrive
	// is disconnected (TCP drop, session resumable) and a "slow_consumer"
	// violation is recorded. Default 262144.
	MaxQueuedFrames int
	// TakeoverGrace: when a shard is IDENTIFYed or a session RESUMEd while another
	// connection of that shard is still open, the fake waits this long for the old
	// connection to go away before counting the two as overlapping. Default 250ms.
	TakeoverGrace time.Duration
	// InteractionTimeout: an interaction callback later than this after its
	// INTERACTION_CREATE gets 404 Unknown interaction. Default 3s.
	InteractionTimeout time.Duration
	// GlobalRateLimit is the REST requests per second per bot token. Default 50.
	GlobalRateLimit int
	// RouteLimits overrides per-route REST buckets, keyed by route
	// ("POST /channels/{id}/messages", "PUT /applications/{id}/commands").
	RouteLimits map[string]RouteLimit
	// DeniedPrivilegedIntents are privileged intents the application is not
	// approved for (IDENTIFY asking for one closes with 4014). Default none denied.
	DeniedPrivilegedIntents uint64
	// AllowResumeOnGatewayURL accepts RESUME on the main gateway URL. By default a
	// RESUME must arrive on resume_gateway_url; elsewhere it is answered op 9
	// d=false and recorded as a violation.
	AllowResumeOnGatewayURL bool
	// CloseTimeout bounds the wait for the client's close echo. Default 1s.
	CloseTimeout time.Duration
	// WriteTimeout bounds one write to a client. Default 10s.
	WriteTimeout time.Duration
	// Logger receives connection-level logs. Default: discard.
	Logger *slog.Logger
}

// RouteLimit is one REST bucket: Limit requests per Period.
type RouteLimit struct {
	Limit  int
	Period time.Duration
}

// Default route buckets (Discord's real values for these routes).
var defaultRouteLimits = map[string]RouteLimit{
	routeChannelMessages: {Limit: 5, Period: 5 * time.Second},
	routeCommands:        {Limit: 2, Period: 20 * time.Second},
}

func (c Config) withDefaults() Config {
	c.Addr = cmp.Or(c.Addr, "127.0.0.1:0")
	c.Token = cmp.Or(c.Token, "fake-bot-token")
	c.ApplicationID = cmp.Or(c.ApplicationID, 1100000000000000001)
	c.Shards = cmp.Or(c.Shards, 1)
	c.MaxConcurrency = cmp.Or(c.MaxConcurrency, 1)
	c.IdentifyWindow = cmp.Or(c.IdentifyWindow, 5*time.Second)
	c.DailyBudget = cmp.Or(c.DailyBudget, 1000)
	c.BudgetWindow = cmp.Or(c.BudgetWindow, 24*time.Hour)
	c.ResumeWindow = cmp.Or(c.ResumeWindow, 2*time.Minute)
	c.HeartbeatInterval = cmp.Or(c.HeartbeatInterval, 41250*time.Millisecond)
	c.HeartbeatTimeout = cmp.Or(c.HeartbeatTimeout, c.HeartbeatInterval*3/2)
	c.CommandLimit = cmp.Or(c.CommandLimit, 120)
	c.CommandWindow = cmp.Or(c.CommandWindow, 60*time.Second)
	c.MaxPayloadBytes = cmp.Or(c.MaxPayloadBytes, 4096)
	c.MaxGuildsPerShard = cmp.Or(c.MaxGuildsPerShard, 2500)
	c.Guilds = cmp.Or(c.Guilds, 10*c.Shards)
	c.Seed = cmp.Or(c.Seed, 1)
	c.CompressMinBytes = cmp.Or(c.CompressMinBytes, 2048)
	c.ReplayLimit = cmp.Or(c.ReplayLimit, 65536)
	c.MaxQueuedFrames = cmp.Or(c.MaxQueuedFrames, 262144)
	c.TakeoverGrace = cmp.Or(c.TakeoverGrace, 250*time.Millisecond)
	c.InteractionTimeout = cmp.Or(c.InteractionTimeout, 3*time.Second)
	c.GlobalRateLimit = cmp.Or(c.GlobalRateLimit, 50)
	c.CloseTimeout = cmp.Or(c.CloseTimeout, time.Second)
	c.WriteTimeout = cmp.Or(c.WriteTimeout, 10*time.Second)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	limits := make(map[string]RouteLimit, len(defaultRouteLimits))
	for k, v := range defaultRouteLimits {
		limits[k] = v
	}
	for k, v := range c.RouteLimits {
		limits[k] = v
	}
	c.RouteLimits = limits
	return c
}

func (c Config) validate() error {
	var errs []error
	positive := func(name string, v int64) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", name, v))
		}
	}
	positive("Shards", int64(c.Shards))
	positive("MaxConcurrency", int64(c.MaxConcurrency))
	positive("IdentifyWindow", int64(c.IdentifyWindow))
	positive("DailyBudget", int64(c.DailyBudget))
	positive("BudgetWindow", int64(c.BudgetWindow))
	positive("ResumeWindow", int64(c.ResumeWindow))
	positive("HeartbeatInterval", int64(c.HeartbeatInterval))
	positive("HeartbeatTimeout", int64(c.HeartbeatTimeout))
	positive("CommandLimit", int64(c.CommandLimit))
	positive("CommandWindow", int64(c.CommandWindow))
	positive("MaxPayloadBytes", int64(c.MaxPayloadBytes))
	positive("MaxGuildsPerShard", int64(c.MaxGuildsPerShard))
	positive("Guilds", int64(c.Guilds))
	positive("ReplayLimit", int64(c.ReplayLimit))
	positive("MaxQueuedFrames", int64(c.MaxQueuedFrames))
	positive("TakeoverGrace", int64(c.TakeoverGrace))
	positive("InteractionTimeout", int64(c.InteractionTimeout))
	positive("GlobalRateLimit", int64(c.GlobalRateLimit))
	if c.HeartbeatTimeout < c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("HeartbeatTimeout %v is shorter than HeartbeatInterval %v", c.HeartbeatTimeout, c.HeartbeatInterval))
	}
	if c.Token == "" || len(c.Token) > 200 {
		errs = append(errs, errors.New("Token must be 1-200 characters"))
	}
	for route, l := range c.RouteLimits {
		if l.Limit <= 0 || l.Period <= 0 {
			errs = append(errs, fmt.Errorf("RouteLimits[%q]: Limit and Period must be positive", route))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("fakediscord config: %w", err)
	}
	return nil
}

// Defaults returns c with every zero field set to its default.
func (c Config) Defaults() Config { return c.withDefaults() }
