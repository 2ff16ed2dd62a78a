package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/diamondburned/arikawa/v3/discord"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/shardwarden/shardwarden/internal/buildinfo"
	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/config"
	"github.com/shardwarden/shardwarden/internal/discordrest"
	"github.com/shardwarden/shardwarden/internal/health"
	"github.com/shardwarden/shardwarden/internal/idempotency"
	"github.com/shardwarden/shardwarden/internal/logging"
	"github.com/shardwarden/shardwarden/internal/migrate"
	"github.com/shardwarden/shardwarden/internal/worker"
	"github.com/shardwarden/shardwarden/internal/workers/commands"
	"github.com/shardwarden/shardwarden/internal/workers/eventlog"
	"github.com/shardwarden/shardwarden/internal/workers/guilds"
)

// deps is what a worker builder may use. REST is built on first use (only workers
// that reply need DISCORD_TOKEN).
type deps struct {
	settings *settings
	js       jetstream.JetStream
	pool     *pgxpool.Pool
	logger   *slog.Logger
	reg      prometheus.Registerer // this worker's own registry
	rest     func(reg prometheus.Registerer) (*discordrest.Client, error)
}

// built is a worker ready to start: its runtime config and an optional hook run
// before consuming (command registration).
type built struct {
	cfg     worker.Config
	store   *idempotency.Store
	onStart func(ctx context.Context) error
}

type builtin struct {
	name      string
	needToken bool
	build     func(ctx context.Context, name string, d deps) (built, error)
}

// builtins are the workers this binary can run, in health-port order (9001, …).
// Adding a worker: write a worker.Handler in internal/workers/<name>, append it here.
var builtins = []builtin{
	{name: commands.Name, needToken: true, build: buildCommands},
	{name: guilds.Name, build: buildGuilds},
	{name: eventlog.Name, build: buildEventLog},
}

func knownNames() string {
	names := make([]string, len(builtins))
	for i, b := range builtins {
		names[i] = b.name
	}
	return strings.Join(names, ", ")
}

func findBuiltin(name string) (builtin, bool) {
	for _, b := range builtins {
		if b.name == name {
			return b, true
		}
	}
	return builtin{}, false
}

func (d deps) store(name string) (*idempotency.Store, error) {
	// A claim must expire before the redelivery of a crashed attempt: the handler
	// timeout (4/5 of the ack wait) is that bound.
	return idempotency.New(idempotency.Config{Pool: d.pool, Worker: name, ClaimTTL: d.settings.AckWait * 4 / 5})
}

func buildCommands(ctx context.Context, name string, d deps) (built, error) {
	rest, err := d.rest(d.reg)
	if err != nil {
		return built{}, err
	}
	store, err := d.store(name)
	if err != nil {
		return built{}, err
	}
	var appID discord.AppID
	if d.settings.AppID != "" {
		n, _ := strconv.ParseUint(d.settings.AppID, 10, 64) // validated at load
		appID = discord.AppID(n)
	}
	h, err := commands.New(commands.Config{Name: name, REST: rest, Store: store, AppID: appID,
		ReplyWindow: d.settings.ReplyWindow, Registerer: d.reg, Logger: d.logger})
	if err != nil {
		return built{}, err
	}
	return built{
		cfg: worker.Config{Name: name, FilterSubjects: commands.Subjects, Handler: h,
			// A reply to a days-old message is worse than none: a new durable
			// starts at the present.
			DeliverPolicy: jetstream.DeliverNewPolicy},
		store: store,
		onStart: func(ctx context.Context) error {
			if !appID.IsValid() {
				id, err := rest.ApplicationID(ctx)
				if err != nil {
					return fmt.Errorf("DISCORD_APPLICATION_ID not set and %w", err)
				}
				h2, err := commands.New(commands.Config{Name: name, REST: rest, Store: store, AppID: id,
					ReplyWindow: d.settings.ReplyWindow, Registerer: d.reg, Logger: d.logger})
				if err != nil {
					return err
				}
				return h2.RegisterCommands(ctx)
			}
			return h.RegisterCommands(ctx)
		},
	}, nil
}

func buildGuilds(_ context.Context, name string, d deps) (built, error) {
	store, err := d.store(name)
	if err != nil {
		return built{}, err
	}
	h, err := guilds.New(store)
	if err != nil {
		return built{}, err
	}
	return built{cfg: worker.Config{Name: name, FilterSubjects: guilds.Subjects, Handler: h}, store: store}, nil
}

func buildEventLog(_ context.Context, name string, d deps) (built, error) {
	store, err := d.store(name)
	if err != nil {
		return built{}, err
	}
	h, err := eventlog.New(store)
	if err != nil {
		return built{}, err
	}
	return built{cfg: worker.Config{Name: name, FilterSubjects: eventlog.Subjects, Handler: h}, store: store}, nil
}

func newLogger(stderr io.Writer, s *settings) (*slog.Logger, error) {
	secrets := []string{s.Token, logging.URLPassword(s.DatabaseURL)}
	logger, err := logging.New(stderr, logging.Options{Format: s.LogFormat, Level: s.LogLevel, Secrets: secrets})
	if err != nil {
		if strings.Contains(err.Error(), "level") {
			return nil, config.Invalid("LOG_LEVEL", "%v", err)
		}
		return nil, config.Invalid("LOG_FORMAT", "%v", err)
	}
	return logger, nil
}

type running struct {
	name   string
	w      *worker.Worker
	health *health.Server
	store  *idempotency.Store
}

func runWorkers(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker run", flag.ContinueOnError)
	// The token is only required when a worker that replies is named; names are
	// positional, so look at them before binding.
	needToken := false
	for _, a := range args {
		if b, ok := findBuiltin(a); ok && b.needToken {
			needToken = true
		}
	}
	s, names, err := loadSettings(fs, args, getenv, stderr, loadOpts{needDB: true, needToken: needToken})
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return &config.Error{Var: "worker names", Reason: "name at least one worker to run (known: " + knownNames() + ")"}
	}
	seen := map[string]bool{}
	for _, n := range names {
		if _, ok := findBuiltin(n); !ok {
			return &config.Error{Var: "worker names", Reason: fmt.Sprintf("unknown worker %q (known: %s)", n, knownNames())}
		}
		if seen[n] {
			return &config.Error{Var: "worker names", Reason: fmt.Sprintf("worker %q named twice", n)}
		}
		seen[n] = true
	}
	logger, err := newLogger(stderr, s)
	if err != nil {
		return err
	}
	logger.InfoContext(ctx, "worker starting", slog.String("version", buildinfo.String()), slog.Any("workers", names))

	pool, err := pgxpool.New(ctx, s.DatabaseURL)
	if err != nil {
		return config.Invalid("DATABASE_URL", "%v", logging.RedactURL(err, s.DatabaseURL))
	}
	defer pool.Close()
	if s.MigrateOnBoot {
		if _, err := migrate.Up(ctx, pool, logger); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}

	nc, err := nats.Connect(s.NATSURL, nats.Name("shardwarden-worker"), nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true), nats.ReconnectWait(500*time.Millisecond))
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if err := ensureStreams(ctx, js, logger); err != nil {
		return err
	}

	var restOnce sync.Once
	var restClient *discordrest.Client
	var restErr error
	restFor := func(reg prometheus.Registerer) (*discordrest.Client, error) {
		restOnce.Do(func() {
			restClient, restErr = discordrest.New(discordrest.Config{Token: s.Token, APIURL: s.APIURL, Registerer: reg, Logger: logger})
		})
		return restClient, restErr
	}

	var workers []*running
	stopAll := func() {
		var wg sync.WaitGroup
		for _, r := range workers {
			wg.Add(1)
			go func() { defer wg.Done(); r.w.Stop() }()
		}
		wg.Wait()
		for _, r := range workers {
			r.health.Stop()
		}
		// Acks of the drained handlers must reach the server before we go.
		_ = nc.FlushTimeout(5 * time.Second)
	}
	defer stopAll()

	for _, name := range names {
		b, _ := findBuiltin(name)
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		wlog := logger.With(slog.String("worker", name))
		bw, err := b.build(ctx, name, deps{settings: s, js: js, pool: pool, logger: wlog, reg: reg, rest: restFor})
		if err != nil {
			return fmt.Errorf("worker %s: %w", name, err)
		}
		cfg := bw.cfg
		cfg.JetStream, cfg.Logger, cfg.Registerer = js, logger, reg
		cfg.Concurrency, cfg.AckWait, cfg.MaxDeliver, cfg.BackOff, cfg.DrainTimeout =
			s.Concurrency, s.AckWait, s.MaxDeliver, s.BackOff, s.DrainTimeout
		w, err := worker.New(cfg)
		if err != nil {
			return err
		}
		hs := health.New(s.HealthAddrs[name], reg, wlog)
		hs.AddReadiness("consumer", w.Check)
		hs.AddReadiness("database", func(ctx context.Context) error { return pool.Ping(ctx) })
		if err := hs.Start(ctx); err != nil {
			return config.Invalid(healthEnv(name), "%v", err)
		}
		if bw.onStart != nil {
			if err := startHook(ctx, bw.onStart, wlog); err != nil {
				hs.Stop()
				return fmt.Errorf("worker %s: %w", name, err)
			}
		}
		if err := w.Start(ctx); err != nil {
			hs.Stop()
			return err
		}
		workers = append(workers, &running{name: name, w: w, health: hs, store: bw.store})
		wlog.InfoContext(ctx, "worker started", slog.String("health_addr", hs.Addr()))
	}

	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	pruneAll := func() {
		for _, r := range workers {
			pctx, cancel := context.WithTimeout(ctx, time.Minute)
			n, err := r.store.Prune(pctx, s.PruneAfter)
			cancel()
			if err != nil && ctx.Err() == nil {
				logger.Warn("prune idempotency records", slog.String("worker", r.name), slog.Any("error", err))
			} else if n > 0 {
				logger.Info("pruned idempotency records", slog.String("worker", r.name), slog.Int64("records", n))
			}
		}
	}
	pruneAll()
	for {
		select {
		case <-ctx.Done():
			logger.Info("signal received: draining workers", slog.Duration("drain_timeout", s.DrainTimeout))
			stopAll()
			logger.Info("worker stopped")
			return nil
		case <-prune.C:
			pruneAll()
		}
	}
}

// startHook runs a worker's start hook (command registration), retrying transient
// failures for up to a minute: REST may be briefly unavailable or rate limited.
func startHook(ctx context.Context, hook func(context.Context) error, log *slog.Logger) error {
	deadline := time.Now().Add(time.Minute)
	for attempt := 1; ; attempt++ {
		hctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := hook(hctx)
		cancel()
		if err == nil {
			return nil
		}
		if s := discordrest.StatusOf(err); (s >= 400 && s < 500 && s != 429) || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		log.WarnContext(ctx, "start hook failed; retrying", slog.Any("error", err), slog.Int("attempt", attempt))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(min(attempt, 5)) * time.Second):
		}
	}
}

func ensureStreams(ctx context.Context, js jetstream.JetStream, log *slog.Logger) error {
	for attempt := 1; ; attempt++ {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := bus.EnsureStreams(sctx, js, bus.StreamConfig{})
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || attempt >= 30 {
			return fmt.Errorf("ensure streams: %w", err)
		}
		if attempt == 1 || attempt%10 == 0 {
			log.WarnContext(ctx, "NATS not ready; retrying", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func healthcheck(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker healthcheck", flag.ContinueOnError)
	s, names, err := loadSettings(fs, args, getenv, stderr, loadOpts{})
	if err != nil {
		return err
	}
	if len(names) != 1 {
		return &config.Error{Var: "worker name", Reason: "healthcheck takes one worker name"}
	}
	addr, ok := s.HealthAddrs[names[0]]
	if !ok {
		return &config.Error{Var: "worker name", Reason: fmt.Sprintf("unknown worker %q (known: %s)", names[0], knownNames())}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return health.Probe(ctx, addr)
}
