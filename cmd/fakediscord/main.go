// Command fakediscord runs the strict fake Discord (gateway, REST, admin API and
// referee of internal/fakediscord) as a process, for the demo, the end-to-end
// harness and benchmarks.
//
//	fakediscord [flags]
//
// Every flag can also be set with the environment variable FAKEDISCORD_<FLAG>
// (upper case, dashes as underscores), e.g. FAKEDISCORD_SHARDS=16; a flag on the
// command line wins. On start it prints its URLs as key=value lines on stdout;
// SIGINT/SIGTERM stops it cleanly.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/shardwarden/shardwarden/internal/config"
	"github.com/shardwarden/shardwarden/internal/fakediscord"
	"github.com/shardwarden/shardwarden/internal/logging"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "fakediscord:", err)
		}
		if config.IsConfigError(err) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type options struct {
	cfg       fakediscord.Config
	tokenFile string
	infoFile  string
	logFormat string
	logLevel  string

	traffic         bool
	trafficRate     float64
	trafficMix      string
	trafficSize     int
	trafficCount    int64
	trafficDuration time.Duration
}

func parse(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("fakediscord", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	c := &o.cfg
	d := fakediscord.Config{}.Defaults()
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:0", "listen address of the gateway and REST API (port 0: any free port)")
	fs.StringVar(&c.AdminAddr, "admin-addr", "", "listen address of the admin API (empty: served under /admin on -addr)")
	fs.StringVar(&c.Token, "token", d.Token, "bot token the fake accepts (a fake token; not a secret)")
	fs.StringVar(&o.tokenFile, "token-file", "", "read the token from this file instead")
	fs.Uint64Var(&c.ApplicationID, "app-id", d.ApplicationID, "application and bot user id")
	fs.IntVar(&c.Shards, "shards", d.Shards, "recommended shard count (/gateway/bot) and the traffic generator's routing")
	fs.IntVar(&c.MaxConcurrency, "max-concurrency", d.MaxConcurrency, "session_start_limit.max_concurrency: identify buckets shard_id % N")
	fs.DurationVar(&c.IdentifyWindow, "identify-window", d.IdentifyWindow, "one IDENTIFY per bucket per window (else op 9 d=false)")
	fs.IntVar(&c.DailyBudget, "daily-budget", d.DailyBudget, "IDENTIFYs per budget window (running out kills every session and the token)")
	fs.DurationVar(&c.BudgetWindow, "budget-window", d.BudgetWindow, "period of the daily budget")
	fs.DurationVar(&c.ResumeWindow, "resume-window", d.ResumeWindow, "how long a disconnected session stays resumable")
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", d.HeartbeatInterval, "heartbeat_interval sent in HELLO")
	fs.DurationVar(&c.HeartbeatTimeout, "heartbeat-timeout", 0, "close 4009 after this long without a heartbeat (default 1.5 × heartbeat interval)")
	fs.IntVar(&c.CommandLimit, "command-limit", d.CommandLimit, "gateway commands per command window per connection (more: close 4008)")
	fs.DurationVar(&c.CommandWindow, "command-window", d.CommandWindow, "window of the command limit")
	fs.IntVar(&c.MaxPayloadBytes, "max-payload", d.MaxPayloadBytes, "largest client frame in bytes (more: close 4002)")
	fs.IntVar(&c.MaxGuildsPerShard, "max-guilds-per-shard", d.MaxGuildsPerShard, "more guilds on one shard: close 4011")
	fs.IntVar(&c.Guilds, "guilds", 0, "guild population (default 10 × shards)")
	fs.Int64Var(&c.Seed, "seed", d.Seed, "seed of the guild population and traffic")
	fs.IntVar(&c.CompressMinBytes, "compress-min-bytes", d.CompressMinBytes, `with IDENTIFY "compress": true, zlib-compress dispatches at least this long (negative: all)`)
	fs.IntVar(&c.ReplayLimit, "replay-limit", d.ReplayLimit, "dispatches kept per session for RESUME")
	fs.IntVar(&c.MaxQueuedFrames, "max-queued-frames", d.MaxQueuedFrames, "unread frames per connection before it is dropped as a slow consumer")
	fs.DurationVar(&c.TakeoverGrace, "takeover-grace", d.TakeoverGrace, "wait for a just-closed connection of a shard before counting two owners")
	fs.DurationVar(&c.InteractionTimeout, "interaction-timeout", d.InteractionTimeout, "interaction callbacks later than this get 404 Unknown interaction")
	fs.IntVar(&c.GlobalRateLimit, "global-rate-limit", d.GlobalRateLimit, "REST requests per second per bot (more: global 429)")
	fs.Uint64Var(&c.DeniedPrivilegedIntents, "deny-privileged-intents", 0, "privileged intents bitmask the app is not approved for (IDENTIFY with one: close 4014)")
	fs.BoolVar(&c.AllowResumeOnGatewayURL, "allow-resume-on-gateway-url", false, "accept RESUME on the gateway URL, not only on resume_gateway_url")
	fs.BoolVar(&o.traffic, "traffic", false, "start the traffic generator at boot (else start it with POST /admin/traffic/start)")
	fs.Float64Var(&o.trafficRate, "traffic-rate", 1000, "generated events per second across all shards (0: as fast as possible)")
	fs.StringVar(&o.trafficMix, "traffic-mix", "", "event mix TYPE=WEIGHT,... (default: "+defaultMix()+")")
	fs.IntVar(&o.trafficSize, "traffic-size", 1024, "approximate bytes of each generated event's d")
	fs.Int64Var(&o.trafficCount, "traffic-count", 0, "stop after this many dispatched events (0: no limit)")
	fs.DurationVar(&o.trafficDuration, "traffic-duration", 0, "stop generating after this long (0: no limit)")
	fs.StringVar(&o.infoFile, "info-file", "", "write the URLs as JSON to this file once listening (for harnesses using port 0)")
	fs.StringVar(&o.logFormat, "log-format", "", "text or json (default: text on a terminal, else json)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: fakediscord [flags]\n\nA strict fake Discord gateway + REST API with a referee. Every flag may also be set\nas FAKEDISCORD_<FLAG> in the environment (FAKEDISCORD_SHARDS=16).\n\nflags:\n")
		fs.PrintDefaults()
	}

	// The environment first, then the command line over it.
	var envErrs []error
	fs.VisitAll(func(f *flag.Flag) {
		env := "FAKEDISCORD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(env); v != "" {
			if err := f.Value.Set(v); err != nil {
				envErrs = append(envErrs, config.Invalid(env, "%v", err))
			}
		}
	})
	if err := errors.Join(envErrs...); err != nil {
		return nil, err
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, config.Invalid("args", "unexpected arguments %q", fs.Args())
	}
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, config.Invalid("FAKEDISCORD_TOKEN_FILE", "read: %v", err)
		}
		c.Token = strings.TrimSpace(string(b))
	}
	return o, nil
}

func defaultMix() string {
	var parts []string
	for _, k := range sortedKeys(fakediscord.DefaultMix) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, fakediscord.DefaultMix[k]))
	}
	return strings.Join(parts, ",")
}

// run is main without the process. It serves until ctx ends.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parse(args, getenv, stderr)
	if err != nil {
		return err
	}
	logger, err := logging.New(stderr, logging.Options{Format: o.logFormat, Level: o.logLevel})
	if err != nil {
		return &config.Error{Var: "FAKEDISCORD_LOG_LEVEL", Reason: err.Error()}
	}
	o.cfg.Logger = logger
	srv, err := fakediscord.New(o.cfg)
	if err != nil {
		return &config.Error{Var: "flags", Reason: err.Error()}
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	defer srv.Stop()

	info := map[string]string{
		"api_url":     srv.APIURL(),
		"gateway_url": srv.GatewayURL(),
		"resume_url":  srv.ResumeURL(),
		"admin_url":   srv.AdminURL(),
	}
	for _, k := range sortedKeys(info) {
		fmt.Fprintf(stdout, "%s=%s\n", k, info[k])
	}
	if o.infoFile != "" {
		b, _ := json.MarshalIndent(info, "", "  ")
		tmp := o.infoFile + ".tmp"
		if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write info file: %w", err)
		}
		if err := os.Rename(tmp, o.infoFile); err != nil {
			return fmt.Errorf("write info file: %w", err)
		}
	}

	if o.traffic {
		tc := fakediscord.TrafficConfig{Rate: o.trafficRate, PayloadSize: o.trafficSize, Count: o.trafficCount, Duration: o.trafficDuration}
		if o.trafficMix != "" {
			mix, err := fakediscord.ParseMix(o.trafficMix)
			if err != nil {
				return &config.Error{Var: "FAKEDISCORD_TRAFFIC_MIX", Reason: err.Error()}
			}
			tc.Mix = mix
		}
		if err := srv.StartTraffic(tc); err != nil {
			return &config.Error{Var: "FAKEDISCORD_TRAFFIC", Reason: err.Error()}
		}
	}

	<-ctx.Done()
	logger.InfoContext(context.WithoutCancel(ctx), "fakediscord stopping")
	srv.Stop()
	d, u := srv.EventsDispatched()
	logger.InfoContext(context.WithoutCancel(ctx), "fakediscord stopped", "events_dispatched", d, "unique_events", u,
		"violations", len(srv.Violations()), "overlaps", len(srv.Overlaps(-1)))
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
