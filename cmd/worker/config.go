package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/shardwarden/shardwarden/internal/config"
)

// settings is the worker process's configuration.
type settings struct {
	NATSURL     string
	DatabaseURL string
	Token       string
	APIURL      string
	AppID       string
	LogFormat   string
	LogLevel    string

	HealthAddrs   map[string]string // worker name → health address
	Concurrency   int
	AckWait       time.Duration
	MaxDeliver    int
	BackOff       []time.Duration
	DrainTimeout  time.Duration
	ReplyWindow   time.Duration
	PruneAfter    time.Duration
	MigrateOnBoot bool
}

type loadOpts struct {
	needDB, needToken bool
}

// loadSettings binds every variable to fs and parses args; positional arguments
// are returned.
func loadSettings(fs *flag.FlagSet, args []string, getenv func(string) string, stderr io.Writer, o loadOpts) (*settings, []string, error) {
	fs.SetOutput(stderr)
	l := config.NewLoader(fs, getenv)
	s := &settings{HealthAddrs: map[string]string{}}
	l.String(&s.NATSURL, "NATS_URL", "nats://127.0.0.1:4222", "NATS server URL(s), comma separated")
	l.Secret(&s.DatabaseURL, "DATABASE_URL", o.needDB)
	l.Secret(&s.Token, "DISCORD_TOKEN", o.needToken)
	l.String(&s.APIURL, "DISCORD_API_URL", "https://discord.com/api", "Discord REST API base (the fake's in tests)")
	l.String(&s.AppID, "DISCORD_APPLICATION_ID", "", "application id for command registration (fetched from Discord when empty)")
	l.String(&s.LogFormat, "LOG_FORMAT", "", "text or json (default: text on a terminal, else json)")
	l.String(&s.LogLevel, "LOG_LEVEL", "info", "debug, info, warn or error")
	l.Int(&s.Concurrency, "WORKER_CONCURRENCY", 4, "handlers running at once per worker")
	l.Duration(&s.AckWait, "WORKER_ACK_WAIT", 30*time.Second, "redelivery delay of an unacknowledged event (a crashed worker)")
	l.Int(&s.MaxDeliver, "WORKER_MAX_DELIVER", 5, "deliveries before an event is dead-lettered")
	var backoff string
	l.String(&backoff, "WORKER_BACKOFF", "1s,5s,30s,2m", "retry delays after failures, comma separated")
	l.Duration(&s.DrainTimeout, "WORKER_DRAIN_TIMEOUT", 20*time.Second, "how long SIGTERM waits for handlers in flight")
	l.Duration(&s.ReplyWindow, "COMMANDS_REPLY_WINDOW", 3*time.Second, "age after which an interaction is not answered (Discord's 3s)")
	l.Duration(&s.PruneAfter, "WORKER_IDEMPOTENCY_RETENTION", 7*24*time.Hour, "age after which idempotency records are deleted (>= the event stream's max age)")
	l.Bool(&s.MigrateOnBoot, "WORKER_MIGRATE", true, "apply database migrations at start")
	addrs := map[string]*string{}
	for i, b := range builtins {
		addrs[b.name] = new(string)
		l.String(addrs[b.name], healthEnv(b.name), fmt.Sprintf(":%d", 9001+i), "health, readiness and metrics address of worker "+b.name)
	}
	l.Check(func() error {
		for _, u := range strings.Split(s.NATSURL, ",") {
			if !strings.HasPrefix(strings.TrimSpace(u), "nats://") && !strings.HasPrefix(strings.TrimSpace(u), "tls://") {
				return config.Invalid("NATS_URL", "want nats://host:port, got %q", u)
			}
		}
		return nil
	})
	l.Check(func() error {
		if s.AppID == "" {
			return nil
		}
		if n, err := strconv.ParseUint(s.AppID, 10, 64); err != nil || n == 0 {
			return config.Invalid("DISCORD_APPLICATION_ID", "not a snowflake: %q", s.AppID)
		}
		return nil
	})
	l.Check(func() error {
		if !strings.HasPrefix(s.APIURL, "http://") && !strings.HasPrefix(s.APIURL, "https://") {
			return config.Invalid("DISCORD_API_URL", "want http(s)://host[/api], got %q", s.APIURL)
		}
		return nil
	})
	l.Check(func() error {
		if s.Concurrency < 1 {
			return config.Invalid("WORKER_CONCURRENCY", "must be at least 1")
		}
		if s.MaxDeliver < 1 {
			return config.Invalid("WORKER_MAX_DELIVER", "must be at least 1")
		}
		if s.AckWait < 100*time.Millisecond {
			return config.Invalid("WORKER_ACK_WAIT", "must be at least 100ms")
		}
		return nil
	})
	l.Check(func() error {
		s.BackOff = nil
		for _, p := range strings.Split(backoff, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(p))
			if err != nil || d <= 0 {
				return config.Invalid("WORKER_BACKOFF", "want positive durations like 1s,5s,30s, got %q", backoff)
			}
			s.BackOff = append(s.BackOff, d)
		}
		return nil
	})
	if err := l.Parse(args); err != nil {
		return nil, nil, err
	}
	for name, addr := range addrs {
		if _, _, err := net.SplitHostPort(*addr); err != nil {
			return nil, nil, config.Invalid(healthEnv(name), "not host:port: %q", *addr)
		}
		s.HealthAddrs[name] = *addr
	}
	return s, fs.Args(), nil
}

// healthEnv is WORKER_<NAME>_HEALTH_ADDR.
func healthEnv(name string) string {
	return "WORKER_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_HEALTH_ADDR"
}
