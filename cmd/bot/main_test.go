package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/config"
	"github.com/shardwarden/shardwarden/internal/health"
	"github.com/shardwarden/shardwarden/internal/pgtest"
	"github.com/shardwarden/shardwarden/internal/shardlease"
)

// These tests set environment variables, so none runs in parallel.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// bot runs the command line as main would and returns stdout, stderr and the
// exit status.
func bot(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := exitCode(run(ctx, args, &stdout, &stderr), &stderr)
	return stdout.String(), stderr.String(), code
}

// clearEnv unsets every variable the bot reads, for the duration of the test.
func clearEnv(t *testing.T) {
	for _, v := range []string{"DATABASE_URL", "DATABASE_URL_FILE", "LOG_FORMAT", "LOG_LEVEL", "REPLICA_ID",
		"SHARD_COUNT", "HEARTBEAT_INTERVAL", "HEALTH_ADDR"} {
		t.Setenv(v, "")
	}
}

func TestMigrateAndShardsOnAnEmptyDatabase(t *testing.T) {
	clearEnv(t)
	db := pgtest.New(t)
	t.Setenv("DATABASE_URL", db.URL)
	t.Setenv("LOG_FORMAT", "json")

	// Before any migration: nothing to show, and a hint.
	out, errOut, code := bot(t, "shards")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, errOut, "bot migrate")
	require.Contains(t, out, "SHARD  OWNER")
	out, _, code = bot(t, "shards", "--json")
	require.Equal(t, 0, code)
	require.JSONEq(t, "[]", out)

	out, errOut, code = bot(t, "migrate")
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `applied \d+ migration\(s\): \[1 .*\]\nschema at version \d+\n`, out)
	out, errOut, code = bot(t, "migrate")
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `^schema up to date at version \d+\n$`, out)

	out, errOut, code = bot(t, "shards")
	require.Equal(t, 0, code, errOut)
	require.Empty(t, errOut)
	require.Equal(t, "SHARD  OWNER  EPOCH  STATE  STATUS  HEARTBEAT  RESUMABLE  GUILDS\n\n"+
		"0 shards: 0 held, 0 stale, 0 free; cluster shard count not set yet (no replica has started); 0 live replica(s)\n", out)
	out, _, code = bot(t, "shards", "--json")
	require.Equal(t, 0, code)
	require.JSONEq(t, "[]", out)
}

func TestShardsShowsLiveLeases(t *testing.T) {
	clearEnv(t)
	db := pgtest.NewMigrated(t)
	pool := pgtest.Pool(t, db.URL)
	m, err := shardlease.New(pool, shardlease.Config{
		ReplicaID: "replica-with-a-long-name", ShardCount: 3,
		HeartbeatInterval: 200 * time.Millisecond, SelfFenceAfter: 400 * time.Millisecond,
		Registerer: prometheus.NewRegistry(),
		Runner: shardlease.RunnerFunc(func(ctx context.Context, lease *shardlease.Lease) (shardlease.ResumeState, error) {
			st := shardlease.Status{State: shardlease.StateReady, Guilds: 100 + lease.ShardID}
			if lease.ShardID != 1 {
				st.Resume = shardlease.ResumeState{SessionID: "s", ResumeURL: "wss://r", Seq: 5}
			}
			lease.Report(st)
			select {
			case <-ctx.Done():
			case <-lease.Draining():
			}
			return shardlease.ResumeState{}, nil
		}),
	})
	require.NoError(t, err)
	require.NoError(t, m.Start(context.Background()))
	t.Cleanup(m.Stop)
	require.Eventually(t, func() bool {
		var n int
		err := pool.QueryRow(context.Background(), `SELECT count(*) FROM discord_bot_shards WHERE state = 'ready'`).Scan(&n)
		return err == nil && n == 3
	}, 10*time.Second, 20*time.Millisecond)

	t.Setenv("DATABASE_URL", db.URL)
	out, errOut, code := bot(t, "shards")
	require.Equal(t, 0, code, errOut)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	require.Len(t, lines, 6, out)
	require.Equal(t, "SHARD  OWNER                     EPOCH  STATE  STATUS  HEARTBEAT  RESUMABLE  GUILDS", lines[0])
	row := regexp.MustCompile(`^(\d)      replica-with-a-long-name  1      ready  held    \d+\.\ds ago   (yes|no) +(\d+)$`)
	for i, want := range []string{"yes", "no", "yes"} {
		got := row.FindStringSubmatch(lines[1+i])
		require.NotNil(t, got, "line %q", lines[1+i])
		require.Equal(t, want, got[2], "resumable of shard %s", got[1])
		require.Equal(t, "10"+got[1], got[3], "guilds")
	}
	require.Equal(t, "3 shards: 3 held, 0 stale, 0 free; cluster shard count 3; 1 live replica(s)", lines[5])

	out, errOut, code = bot(t, "shards", "--json")
	require.Equal(t, 0, code, errOut)
	var rows []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &rows))
	require.Len(t, rows, 3)
	require.Equal(t, "replica-with-a-long-name", rows[0]["owner_id"])
	require.Equal(t, "held", rows[0]["status"])
	require.Equal(t, true, rows[0]["resumable"])
	require.Equal(t, false, rows[1]["resumable"])
	require.EqualValues(t, 5, rows[0]["resume_seq"])
	require.Nil(t, rows[1]["resume_seq"])
	require.EqualValues(t, 102, rows[2]["guilds"])
	require.IsType(t, float64(0), rows[0]["heartbeat_age_s"])

	m.Stop()
	out, _, code = bot(t, "shards")
	require.Equal(t, 0, code)
	require.Contains(t, out, "3 shards: 0 held, 0 stale, 3 free; cluster shard count 3; 0 live replica(s)")
}

func TestMissingDatabaseURLIsAConfigError(t *testing.T) {
	for _, cmd := range []string{"migrate", "shards"} {
		t.Run(cmd, func(t *testing.T) {
			clearEnv(t)
			out, errOut, code := bot(t, cmd)
			require.Equal(t, 2, code)
			require.Empty(t, out)
			require.Contains(t, errOut, "DATABASE_URL: required")
		})
	}
	t.Run("both url and file", func(t *testing.T) {
		clearEnv(t)
		t.Setenv("DATABASE_URL", "postgres://x@127.0.0.1:1/db")
		t.Setenv("DATABASE_URL_FILE", "/nonexistent")
		_, errOut, code := bot(t, "shards")
		require.Equal(t, 2, code)
		require.Contains(t, errOut, "DATABASE_URL_FILE, not both")
	})
	t.Run("garbage url, password not shown", func(t *testing.T) {
		clearEnv(t)
		t.Setenv("DATABASE_URL", "postgres://u:hunter2secret@127.0.0.1:notaport/db")
		_, errOut, code := bot(t, "migrate")
		require.Equal(t, 2, code)
		require.Contains(t, errOut, "DATABASE_URL")
		require.NotContains(t, errOut, "hunter2secret")
	})
}

func TestDatabaseURLFile(t *testing.T) {
	clearEnv(t)
	db := pgtest.New(t)
	file := filepath.Join(t.TempDir(), "database_url")
	require.NoError(t, os.WriteFile(file, []byte(db.URL+"\n"), 0o600))
	t.Setenv("DATABASE_URL_FILE", file)
	out, errOut, code := bot(t, "migrate")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "schema at version")
}

func TestUnreachableDatabaseFailsWithStatusOne(t *testing.T) {
	clearEnv(t)
	t.Setenv("DATABASE_URL", "postgres://u:s3cretpass@127.0.0.1:1/db?connect_timeout=2")
	_, errOut, code := bot(t, "shards")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "connect to database 127.0.0.1:1")
	require.NotContains(t, errOut, "s3cretpass")
}

func TestUsage(t *testing.T) {
	clearEnv(t)
	out, _, code := bot(t, "help")
	require.Equal(t, 0, code)
	for _, cmd := range []string{"run", "migrate", "shards", "healthcheck", "version"} {
		require.Contains(t, out, "\n  "+cmd+" ")
	}
	_, errOut, code := bot(t, "frobnicate")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, `unknown command "frobnicate"`)
	_, _, code = bot(t, "shards", "--no-such-flag")
	require.Equal(t, 2, code)
	t.Setenv("DATABASE_URL", "postgres://x@127.0.0.1:1/db")
	_, errOut, code = bot(t, "shards", "extra")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "takes no arguments")

	out, _, code = bot(t, "version")
	require.Equal(t, 0, code)
	require.Regexp(t, `^\S+ \(schema \d+\)\n$`, out)
}

func TestHealthcheck(t *testing.T) {
	clearEnv(t)
	var ready error = errors.New("not registered")
	srv := health.New("127.0.0.1:0", prometheus.NewRegistry(), nil)
	srv.AddReadiness("shard_leases", func(context.Context) error { return ready })
	require.NoError(t, srv.Start(context.Background()))
	t.Cleanup(srv.Stop)
	t.Setenv("HEALTH_ADDR", srv.Addr())

	_, errOut, code := bot(t, "healthcheck")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "not registered")

	ready = nil
	out, errOut, code := bot(t, "healthcheck")
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "ready\n", out)

	t.Setenv("HEALTH_ADDR", "nonsense")
	_, errOut, code = bot(t, "healthcheck")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "HEALTH_ADDR")

	// Nothing listening: not ready, status 1.
	t.Setenv("HEALTH_ADDR", "127.0.0.1:1")
	_, _, code = bot(t, "healthcheck", "--timeout", "1s")
	require.Equal(t, 1, code)
}

func TestLeaseSettings(t *testing.T) {
	parse := func(t *testing.T, env map[string]string, args ...string) (leaseSettings, error) {
		t.Helper()
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(&bytes.Buffer{})
		l := config.NewLoader(fs, func(k string) string { return env[k] })
		var s leaseSettings
		s.bind(l, func() (string, error) { return "host-1", nil })
		return s, l.Parse(args)
	}
	t.Run("defaults", func(t *testing.T) {
		s, err := parse(t, map[string]string{})
		require.NoError(t, err)
		require.Equal(t, leaseSettings{ReplicaID: "host-1", HeartbeatInterval: 10 * time.Second}, s)
		cfg := s.leaseConfig(16)
		require.Equal(t, "host-1", cfg.ReplicaID)
		require.Equal(t, 16, cfg.ShardCount)
		require.Equal(t, 10*time.Second, cfg.HeartbeatInterval)
	})
	t.Run("environment and flags", func(t *testing.T) {
		s, err := parse(t, map[string]string{"REPLICA_ID": "bot-a", "HEARTBEAT_INTERVAL": "2s"}, "--heartbeat-interval", "3s")
		require.NoError(t, err)
		require.Equal(t, leaseSettings{ReplicaID: "bot-a", HeartbeatInterval: 3 * time.Second}, s)
	})
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"interval not a duration", map[string]string{"HEARTBEAT_INTERVAL": "10"}, "HEARTBEAT_INTERVAL"},
		{"interval too short", map[string]string{"HEARTBEAT_INTERVAL": "1ms"}, "HEARTBEAT_INTERVAL"},
		{"blank replica id", map[string]string{"REPLICA_ID": " "}, "REPLICA_ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.env)
			require.True(t, config.IsConfigError(err), "%v", err)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestLogSettings(t *testing.T) {
	parse := func(env map[string]string) (logSettings, error) {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(&bytes.Buffer{})
		l := config.NewLoader(fs, func(k string) string { return env[k] })
		var s logSettings
		s.bind(l)
		return s, l.Parse(nil)
	}
	s, err := parse(map[string]string{"LOG_FORMAT": "json", "LOG_LEVEL": "debug"})
	require.NoError(t, err)
	var buf bytes.Buffer
	logger, err := s.logger(&buf, "topsecretpw")
	require.NoError(t, err)
	logger.Debug("connecting", "url", "postgres://u:topsecretpw@h/db")
	require.Contains(t, buf.String(), `"level":"DEBUG"`)
	require.NotContains(t, buf.String(), "topsecretpw")

	_, err = parse(map[string]string{"LOG_LEVEL": "loud"})
	require.ErrorContains(t, err, "LOG_LEVEL")
	_, err = parse(map[string]string{"LOG_FORMAT": "xml"})
	require.ErrorContains(t, err, "LOG_FORMAT")

	require.Equal(t, []string{"pw"}, dbSettings{URL: "postgres://u:pw@h/db"}.secrets())
	require.Nil(t, dbSettings{URL: "postgres://u@h/db"}.secrets())
}
