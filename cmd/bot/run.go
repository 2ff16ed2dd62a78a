package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	dgateway "github.com/diamondburned/arikawa/v3/gateway"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/shardwarden/shardwarden/internal/buildinfo"
	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/config"
	"github.com/shardwarden/shardwarden/internal/gateway"
	"github.com/shardwarden/shardwarden/internal/health"
	"github.com/shardwarden/shardwarden/internal/migrate"
	"github.com/shardwarden/shardwarden/internal/shardlease"
)

// runSettings is everything `bot run` reads besides the database and logs.
type runSettings struct {
	Token       string
	NATSURL     string
	ShardCount  string        // a number, or "auto" (/gateway/bot's recommendation)
	Lease       leaseSettings // REPLICA_ID, HEARTBEAT_INTERVAL
	Intents     int
	HealthAddr  string
	APIURL      string
	GatewayURL  string // empty: /gateway/bot's url
	Shutdown    time.Duration
	IdentWindow time.Duration
	IdentRsv    int
	IdentMargin time.Duration
	BufferSize  int
	DrainTime   time.Duration
	Stream      bus.StreamConfig
}

// Discord's default intents for a bot that reads messages: GUILDS,
// GUILD_MESSAGES, DIRECT_MESSAGES (MESSAGE_CONTENT is privileged: opt in).
const defaultIntents = 1<<0 | 1<<9 | 1<<12

func (s *runSettings) bind(l *config.Loader, hostname func() (string, error)) {
	l.Secret(&s.Token, "DISCORD_TOKEN", true)
	l.String(&s.NATSURL, "NATS_URL", nats.DefaultURL, "NATS server URL(s), comma separated")
	l.String(&s.ShardCount, "SHARD_COUNT", "", "the cluster's shard count, or auto (the count the cluster stored, else Discord's recommendation from /gateway/bot)")
	s.Lease.bind(l, hostname)
	l.Int(&s.Intents, "INTENTS", defaultIntents, "gateway intents bitfield")
	bindHealthAddr(l, &s.HealthAddr)
	l.String(&s.APIURL, "DISCORD_API_URL", "https://discord.com/api", "Discord REST base URL (a proxy or a fake)")
	l.String(&s.GatewayURL, "DISCORD_GATEWAY_URL", "", "gateway websocket URL (default: the url /gateway/bot returns)")
	l.Duration(&s.Shutdown, "SHUTDOWN_TIMEOUT", shardlease.DefaultShutdownTimeout, "how long a graceful stop waits for the shards to hand off")
	l.Duration(&s.IdentWindow, "IDENTIFY_WINDOW", 5*time.Second, "Discord's identify window per rate-limit bucket (shrink it only against a fake)")
	l.Int(&s.IdentRsv, "IDENTIFY_RESERVE", 50, "part of the daily identify budget the cluster never spends")
	l.Duration(&s.IdentMargin, "IDENTIFY_MARGIN", 0, "added to every identify window against network jitter (default: window/40, at least 10ms)")
	l.Int(&s.BufferSize, "GATEWAY_BUFFER_SIZE", 8192, "events per shard received and not yet stored in JetStream")
	l.Duration(&s.DrainTime, "GATEWAY_DRAIN_TIMEOUT", 5*time.Second, "how long a handoff waits for in-flight publishes (keep it below SHUTDOWN_TIMEOUT)")
	l.Duration(&s.Stream.MaxAge, "STREAM_MAX_AGE", 72*time.Hour, "DISCORD_EVENTS max age")
	var maxBytes int
	l.Int(&maxBytes, "STREAM_MAX_BYTES", 10<<30, "DISCORD_EVENTS max bytes (-1: unlimited)")
	l.Duration(&s.Stream.Duplicates, "STREAM_DUPLICATE_WINDOW", 10*time.Minute, "dedup window; must outlast Discord's resume window")

	l.Check(func() error {
		s.Stream.MaxBytes = int64(maxBytes)
		if s.Stream.MaxBytes == 0 || s.Stream.MaxBytes < -1 {
			return config.Invalid("STREAM_MAX_BYTES", "want a positive size or -1, got %d", maxBytes)
		}
		if s.Stream.Duplicates <= 0 || s.Stream.Duplicates > s.Stream.MaxAge {
			return config.Invalid("STREAM_DUPLICATE_WINDOW", "want a positive window no longer than STREAM_MAX_AGE (%s), got %s", s.Stream.MaxAge, s.Stream.Duplicates)
		}
		return nil
	})
	l.Check(func() error {
		if s.Token != "" && strings.ContainsAny(s.Token, " \t\r\n") {
			return config.Invalid("DISCORD_TOKEN", "contains spaces (give the token without the \"Bot \" prefix)")
		}
		return nil
	})
	l.Check(func() error {
		switch v := strings.TrimSpace(s.ShardCount); {
		case v == "":
			return config.Invalid("SHARD_COUNT", "required: a number or auto")
		case strings.EqualFold(v, "auto"):
		default:
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > shardlease.MaxShardCount {
				return config.Invalid("SHARD_COUNT", "want auto or 1 to %d, got %q", shardlease.MaxShardCount, v)
			}
		}
		return nil
	})
	l.Check(func() error {
		if s.Intents < 0 || s.Intents >= 1<<26 {
			return config.Invalid("INTENTS", "not a gateway intents bitfield: %d", s.Intents)
		}
		return nil
	})
	l.Check(func() error {
		for env, v := range map[string]string{"DISCORD_API_URL": s.APIURL, "DISCORD_GATEWAY_URL": s.GatewayURL} {
			if v == "" && env == "DISCORD_GATEWAY_URL" {
				continue
			}
			u, err := url.Parse(v)
			want := map[string]bool{"http": env == "DISCORD_API_URL", "https": env == "DISCORD_API_URL", "ws": env == "DISCORD_GATEWAY_URL", "wss": env == "DISCORD_GATEWAY_URL"}
			if err != nil || !want[u.Scheme] || u.Host == "" {
				return config.Invalid(env, "not an absolute %s URL: %q", map[bool]string{true: "http(s)", false: "ws(s)"}[env == "DISCORD_API_URL"], v)
			}
		}
		return nil
	})
	l.Check(func() error {
		switch {
		case s.Shutdown <= 0:
			return config.Invalid("SHUTDOWN_TIMEOUT", "must be positive, got %s", s.Shutdown)
		case s.IdentWindow <= 0:
			return config.Invalid("IDENTIFY_WINDOW", "must be positive, got %s", s.IdentWindow)
		case s.IdentMargin < 0:
			return config.Invalid("IDENTIFY_MARGIN", "must not be negative, got %s", s.IdentMargin)
		case s.IdentRsv < 0:
			return config.Invalid("IDENTIFY_RESERVE", "must not be negative, got %d", s.IdentRsv)
		case s.BufferSize < 2:
			return config.Invalid("GATEWAY_BUFFER_SIZE", "must be at least 2, got %d", s.BufferSize)
		case s.DrainTime <= 0 || s.DrainTime >= s.Shutdown:
			return config.Invalid("GATEWAY_DRAIN_TIMEOUT", "must be positive and below SHUTDOWN_TIMEOUT (%s), got %s", s.Shutdown, s.DrainTime)
		}
		return nil
	})
}

// resolveShardCount turns SHARD_COUNT into the count to run with. auto is the
// count the cluster already stored, else Discord's recommendation: a change in
// the recommendation is an operator's decision (runbook: raising the shard
// count), not something a restart should stumble into.
func resolveShardCount(ctx context.Context, pool *pgxpool.Pool, setting string, recommended int, logger *slog.Logger) (int, error) {
	if !strings.EqualFold(strings.TrimSpace(setting), "auto") {
		n, _ := strconv.Atoi(strings.TrimSpace(setting)) // validated by the loader
		return n, nil
	}
	stored, ok, err := shardlease.StoredShardCount(ctx, pool)
	if err != nil {
		return 0, err
	}
	if ok {
		if stored != recommended {
			logger.WarnContext(ctx, "SHARD_COUNT=auto keeps the cluster's stored shard count; Discord recommends another (see the runbook to change it)",
				slog.Int("shard_count", stored), slog.Int("recommended", recommended))
		}
		return stored, nil
	}
	if recommended < 1 {
		return 0, fmt.Errorf("/gateway/bot recommends %d shards: cannot use SHARD_COUNT=auto", recommended)
	}
	return recommended, nil
}

// runBot is `bot run`: it applies the migrations, leases shards, connects each
// held shard to Discord and forwards every event to JetStream until SIGTERM, then
// hands every shard over (RESUMEable by the next owner) and exits.
func runBot(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bot run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	l := config.NewLoader(fs, os.Getenv)
	var db dbSettings
	var logs logSettings
	var s runSettings
	db.bind(l)
	logs.bind(l)
	s.bind(l, nil)
	if err := parse(l, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &config.Error{Var: "arguments", Reason: fmt.Sprintf("run takes no arguments, got %q", fs.Args())}
	}
	logger, err := logs.logger(stderr, append(db.secrets(), s.Token)...)
	if err != nil {
		return err
	}
	replicaID := strings.TrimSpace(s.Lease.ReplicaID)
	base := logger // shardlease adds replica_id itself
	logger = logger.With(slog.String("replica_id", replicaID))

	pool, err := db.openPool(ctx, "shardwarden-bot")
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrate.Up(ctx, pool, logger); err != nil {
		return err
	}

	bot, err := fetchGatewayBot(ctx, s.APIURL, s.Token)
	if err != nil {
		return err
	}
	shardCount, err := resolveShardCount(ctx, pool, s.ShardCount, bot.Shards, logger)
	if err != nil {
		return err
	}
	gatewayURL := s.GatewayURL
	if gatewayURL == "" {
		gatewayURL = bot.URL
	}
	logger.InfoContext(ctx, "starting bot replica", slog.String("version", buildinfo.String()),
		slog.Int("shard_count", shardCount), slog.String("gateway_url", gatewayURL),
		slog.Int("max_concurrency", bot.SessionStartLimit.MaxConcurrency),
		slog.Int("identify_budget_remaining", bot.SessionStartLimit.Remaining))

	nc, err := nats.Connect(s.NATSURL, nats.Name("shardwarden-bot "+replicaID),
		nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close
				logger.Warn("nats disconnected", slog.Any("error", err))
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { logger.Info("nats reconnected") }))
	if err != nil {
		return fmt.Errorf("connect to nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if err := ensureStreams(ctx, js, s.Stream, logger); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{Registerer: reg, Logger: logger})
	if err != nil {
		return err
	}
	if err := pub.Start(ctx); err != nil {
		return err
	}
	defer pub.Stop()

	lim, err := gateway.NewIdentifyLimiter(pool, gateway.IdentifyConfig{
		ReplicaID: replicaID, Window: s.IdentWindow, Margin: s.IdentMargin, Reserve: s.IdentRsv, Registerer: reg, Logger: logger,
	})
	if err != nil {
		return err
	}
	if err := lim.SetLimits(ctx, gateway.SessionStartLimit{
		Total: bot.SessionStartLimit.Total, Remaining: bot.SessionStartLimit.Remaining,
		ResetAfter:     time.Duration(bot.SessionStartLimit.ResetAfter) * time.Millisecond,
		MaxConcurrency: bot.SessionStartLimit.MaxConcurrency,
	}); err != nil {
		return err
	}
	gw, err := gateway.New(gateway.Config{
		Token: s.Token, GatewayURL: gatewayURL, Intents: dgateway.Intents(s.Intents),
		Publisher: pub, Identify: lim, BufferSize: s.BufferSize, DrainTimeout: s.DrainTime,
		Registerer: reg, Logger: logger.With(slog.String("component", "gateway")),
	})
	if err != nil {
		return err
	}
	lc := s.Lease.leaseConfig(shardCount)
	lc.ShutdownTimeout, lc.Version, lc.Runner = s.Shutdown, buildinfo.String(), gw
	lc.Logger, lc.Registerer = base, reg
	mgr, err := shardlease.New(pool, lc)
	if err != nil {
		return err
	}

	hs := health.New(s.HealthAddr, reg, logger)
	hs.AddReadiness("database", func(ctx context.Context) error { return pool.Ping(ctx) })
	hs.AddReadiness("nats", func(context.Context) error {
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("nats %s", st)
		}
		return nil
	})
	hs.AddReadiness("leases", mgr.Ready)
	hs.AddReadiness("gateway", gw.Ready)
	if err := hs.Start(ctx); err != nil {
		return err
	}
	defer hs.Stop()

	// The manager's own context must not end with ctx: on SIGTERM we call Stop,
	// which hands every shard over before returning.
	if err := mgr.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	logger.InfoContext(ctx, "bot replica running", slog.String("health_addr", hs.Addr()))
	select {
	case <-ctx.Done():
		logger.Info("stopping: handing the shards over")
		mgr.Stop()
		logger.Info("stopped")
		return nil
	case <-mgr.Done():
		if err := mgr.Err(); err != nil {
			return fmt.Errorf("shard leases stopped: %w", err)
		}
		return errors.New("shard leases stopped")
	}
}

// ensureStreams provisions the streams, retrying while NATS comes up.
func ensureStreams(ctx context.Context, js jetstream.JetStream, cfg bus.StreamConfig, logger *slog.Logger) error {
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := bus.EnsureStreams(sctx, js, cfg)
		cancel()
		if err == nil {
			return nil
		}
		if attempt >= 20 || ctx.Err() != nil {
			return err
		}
		logger.Warn("jetstream not ready, retrying", slog.Int("attempt", attempt), slog.Any("error", err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// gatewayBot is GET /gateway/bot's answer.
type gatewayBot struct {
	URL               string `json:"url"`
	Shards            int    `json:"shards"`
	SessionStartLimit struct {
		Total          int   `json:"total"`
		Remaining      int   `json:"remaining"`
		ResetAfter     int64 `json:"reset_after"` // ms
		MaxConcurrency int   `json:"max_concurrency"`
	} `json:"session_start_limit"`
}

// fetchGatewayBot asks Discord for the gateway URL, the recommended shard count
// and the identify budget, retrying transient failures. A 401 is a configuration
// error naming DISCORD_TOKEN.
func fetchGatewayBot(ctx context.Context, apiURL, token string) (gatewayBot, error) {
	endpoint := strings.TrimRight(apiURL, "/") + "/v10/gateway/bot"
	client := &http.Client{Timeout: 10 * time.Second}
	delay := 500 * time.Millisecond
	var last error
	for attempt := 1; attempt <= 6; attempt++ {
		gb, retry, err := getGatewayBot(ctx, client, endpoint, token)
		if err == nil {
			return gb, nil
		}
		if !retry {
			return gatewayBot{}, err
		}
		last = err
		select {
		case <-ctx.Done():
			return gatewayBot{}, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 8*time.Second)
	}
	return gatewayBot{}, fmt.Errorf("GET %s: giving up: %w", endpoint, last)
}

func getGatewayBot(ctx context.Context, client *http.Client, endpoint, token string) (gb gatewayBot, retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return gb, false, config.Invalid("DISCORD_API_URL", "%v", err)
	}
	req.Header.Set("Authorization", "Bot "+token)
	req.Header.Set("User-Agent", "DiscordBot (https://github.com/shardwarden/shardwarden, "+buildinfo.String()+")")
	resp, err := client.Do(req)
	if err != nil {
		return gb, true, fmt.Errorf("GET %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return gb, false, config.Invalid("DISCORD_TOKEN", "rejected by Discord (401 from /gateway/bot)")
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return gb, true, fmt.Errorf("GET %s: %s", endpoint, resp.Status)
	case resp.StatusCode != http.StatusOK:
		return gb, false, fmt.Errorf("GET %s: %s", endpoint, resp.Status)
	}
	if err := json.Unmarshal(body, &gb); err != nil {
		return gb, false, fmt.Errorf("GET %s: decode: %w", endpoint, err)
	}
	if gb.SessionStartLimit.MaxConcurrency < 1 {
		return gb, false, fmt.Errorf("GET %s: session_start_limit.max_concurrency %d < 1", endpoint, gb.SessionStartLimit.MaxConcurrency)
	}
	if gb.URL == "" {
		return gb, false, fmt.Errorf("GET %s: no gateway url", endpoint)
	}
	return gb, false, nil
}
