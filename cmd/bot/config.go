package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardwarden/shardwarden/internal/config"
	"github.com/shardwarden/shardwarden/internal/logging"
	"github.com/shardwarden/shardwarden/internal/shardlease"
)

// The bot's configuration, in pieces that each subcommand binds as it needs them.
// Every piece binds its environment variables (and flags) to a config.Loader;
// problems surface from parse as *config.Error naming the variable, which main
// turns into exit status 2. Subcommands read the process environment
// (os.Getenv). A subcommand such as `bot run` composes them:
//
//	fs := flag.NewFlagSet("bot run", flag.ContinueOnError)
//	fs.SetOutput(stderr)
//	l := config.NewLoader(fs, os.Getenv)
//	var (
//		db         dbSettings
//		logs       logSettings
//		lease      leaseSettings
//		healthAddr string
//	)
//	db.bind(l)
//	logs.bind(l)
//	lease.bind(l, nil) // REPLICA_ID defaults to os.Hostname
//	bindHealthAddr(l, &healthAddr)
//	if err := parse(l, args); err != nil {
//		return err
//	}
//	logger, err := logs.logger(stderr, db.secrets()...)
//	...
//	pool, err := db.openPool(ctx, "shardwarden-bot")
//	...
//	cfg := lease.leaseConfig(shardCount) // then set Runner, Logger, Registerer, Version

// dbSettings is DATABASE_URL, or DATABASE_URL_FILE naming a file that holds it
// (a Docker secret). No flag: the URL carries the password.
type dbSettings struct {
	URL string
}

func (d *dbSettings) bind(l *config.Loader) {
	l.Secret(&d.URL, "DATABASE_URL", true)
	l.Check(func() error {
		if d.URL == "" {
			return nil // reported as missing by Secret
		}
		if _, err := pgxpool.ParseConfig(d.URL); err != nil {
			return config.Invalid("DATABASE_URL", "not a Postgres connection string: %v", logging.RedactURL(err, d.URL))
		}
		return nil
	})
}

// secrets are the parts of the URL a log line must never show.
func (d dbSettings) secrets() []string {
	if p := logging.URLPassword(d.URL); p != "" {
		return []string{p}
	}
	return nil
}

// openPool connects to the database and checks it answers within 10 s, so that
// a command fails with a clear error instead of at its first query.
func (d dbSettings) openPool(ctx context.Context, appName string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		return nil, config.Invalid("DATABASE_URL", "not a Postgres connection string: %v", logging.RedactURL(err, d.URL))
	}
	if _, set := cfg.ConnConfig.RuntimeParams["application_name"]; !set {
		cfg.ConnConfig.RuntimeParams["application_name"] = appName
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database: %w", logging.RedactURL(err, d.URL))
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database %s: %w", hostOf(d.URL), logging.RedactURL(err, d.URL))
	}
	return pool, nil
}

// logSettings is LOG_FORMAT (text, json; default text on a terminal, else json)
// and LOG_LEVEL (debug, info, warn, error).
type logSettings struct {
	Format, Level string
}

func (s *logSettings) bind(l *config.Loader) {
	l.String(&s.Format, "LOG_FORMAT", "", "text or json (default: text on a terminal, else json)")
	l.String(&s.Level, "LOG_LEVEL", "info", "debug, info, warn or error")
	l.Check(func() error {
		switch strings.ToLower(s.Format) {
		case "", "text", "json":
		default:
			return config.Invalid("LOG_FORMAT", "want text or json, got %q", s.Format)
		}
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(s.Level)); err != nil {
			return config.Invalid("LOG_LEVEL", "want debug, info, warn or error, got %q", s.Level)
		}
		return nil
	})
}

// logger builds the process's logger on w, redacting secrets.
func (s logSettings) logger(w io.Writer, secrets ...string) (*slog.Logger, error) {
	logger, err := logging.New(w, logging.Options{Format: s.Format, Level: s.Level, Secrets: secrets})
	if err != nil {
		return nil, config.Invalid("LOG_FORMAT", "%v", err)
	}
	return logger, nil
}

// leaseSettings is this replica's part in shard leasing: REPLICA_ID (default: the
// hostname, unique per container) and HEARTBEAT_INTERVAL (default 10s). The shard
// count is `bot run`'s (a number or auto, resolved against Discord).
type leaseSettings struct {
	ReplicaID         string
	HeartbeatInterval time.Duration
}

// bind binds the variables; hostname is os.Hostname unless a test says otherwise.
func (s *leaseSettings) bind(l *config.Loader, hostname func() (string, error)) {
	if hostname == nil {
		hostname = os.Hostname
	}
	host, _ := hostname()
	l.String(&s.ReplicaID, "REPLICA_ID", host, "this replica's id in the lease tables (default: the hostname)")
	l.Duration(&s.HeartbeatInterval, "HEARTBEAT_INTERVAL", shardlease.DefaultHeartbeatInterval, "lease renewal interval; leases go stale after 3")
	l.Check(func() error {
		switch id := strings.TrimSpace(s.ReplicaID); {
		case id == "":
			return config.Invalid("REPLICA_ID", "required, and no hostname to default to")
		case len(id) > 200:
			return config.Invalid("REPLICA_ID", "longer than 200 bytes")
		}
		return nil
	})
	l.Check(func() error {
		if s.HeartbeatInterval < 100*time.Millisecond {
			return config.Invalid("HEARTBEAT_INTERVAL", "must be at least 100ms, got %s", s.HeartbeatInterval)
		}
		return nil
	})
}

// leaseConfig is the shardlease.Config these settings fill for shardCount; the
// caller adds Runner, Logger, Registerer and Version.
func (s leaseSettings) leaseConfig(shardCount int) shardlease.Config {
	return shardlease.Config{
		ReplicaID:         strings.TrimSpace(s.ReplicaID),
		ShardCount:        shardCount,
		HeartbeatInterval: s.HeartbeatInterval,
	}
}

// defaultHealthAddr is where `bot run` serves /health and /metrics.
const defaultHealthAddr = ":8080"

// bindHealthAddr binds HEALTH_ADDR (host:port, default :8080).
func bindHealthAddr(l *config.Loader, p *string) {
	l.String(p, "HEALTH_ADDR", defaultHealthAddr, "health, readiness and metrics listen address")
	l.Check(func() error {
		if _, _, err := net.SplitHostPort(*p); err != nil {
			return config.Invalid("HEALTH_ADDR", "not host:port: %q", *p)
		}
		return nil
	})
}

// parse parses args with l; a bad flag is a usage error (exit status 2) like a
// bad variable.
func parse(l *config.Loader, args []string) error {
	err := l.Parse(args)
	if err != nil && !config.IsConfigError(err) {
		return &config.Error{Var: "flags", Reason: err.Error()}
	}
	return err
}

// hostOf is the host:port of a connection URL, for error messages.
func hostOf(dbURL string) string {
	if u, err := url.Parse(dbURL); err == nil && u.Host != "" {
		return u.Host
	}
	return "(from DATABASE_URL)"
}
