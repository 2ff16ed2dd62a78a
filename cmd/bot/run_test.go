package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/fakediscord"
	"github.com/shardwarden/shardwarden/internal/health"
	"github.com/shardwarden/shardwarden/internal/logging/logtest"
	"github.com/shardwarden/shardwarden/internal/natstest"
	"github.com/shardwarden/shardwarden/internal/pgtest"
)

// clearRunEnv unsets every variable `bot run` reads.
func clearRunEnv(t *testing.T) {
	clearEnv(t)
	for _, v := range []string{"DISCORD_TOKEN", "DISCORD_TOKEN_FILE", "NATS_URL", "INTENTS", "DISCORD_API_URL",
		"DISCORD_GATEWAY_URL", "SHUTDOWN_TIMEOUT", "IDENTIFY_WINDOW", "IDENTIFY_RESERVE", "IDENTIFY_MARGIN", "GATEWAY_DRAIN_TIMEOUT", "GATEWAY_BUFFER_SIZE",
		"STREAM_MAX_AGE", "STREAM_MAX_BYTES", "STREAM_DUPLICATE_WINDOW"} {
		t.Setenv(v, "")
	}
}

func TestRunConfigErrorsNameTheVariable(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no token", map[string]string{}, "DISCORD_TOKEN"},
		{"token with Bot prefix", map[string]string{"DISCORD_TOKEN": "Bot abc.def"}, "DISCORD_TOKEN"},
		{"no shard count", map[string]string{"DISCORD_TOKEN": "t", "SHARD_COUNT": ""}, "SHARD_COUNT"},
		{"bad shard count", map[string]string{"DISCORD_TOKEN": "t", "SHARD_COUNT": "many"}, "SHARD_COUNT"},
		{"bad intents", map[string]string{"DISCORD_TOKEN": "t", "INTENTS": "-3"}, "INTENTS"},
		{"bad api url", map[string]string{"DISCORD_TOKEN": "t", "DISCORD_API_URL": "ftp://x"}, "DISCORD_API_URL"},
		{"bad gateway url", map[string]string{"DISCORD_TOKEN": "t", "DISCORD_GATEWAY_URL": "http://x"}, "DISCORD_GATEWAY_URL"},
		{"bad heartbeat", map[string]string{"DISCORD_TOKEN": "t", "HEARTBEAT_INTERVAL": "1ms"}, "HEARTBEAT_INTERVAL"},
		{"bad identify window", map[string]string{"DISCORD_TOKEN": "t", "IDENTIFY_WINDOW": "soon"}, "IDENTIFY_WINDOW"},
		{"dedup window over max age", map[string]string{"DISCORD_TOKEN": "t", "STREAM_MAX_AGE": "1m", "STREAM_DUPLICATE_WINDOW": "1h"}, "STREAM_DUPLICATE_WINDOW"},
		{"drain longer than shutdown", map[string]string{"DISCORD_TOKEN": "t", "GATEWAY_DRAIN_TIMEOUT": "30s", "SHUTDOWN_TIMEOUT": "20s"}, "GATEWAY_DRAIN_TIMEOUT"},
		{"token file missing", map[string]string{"DISCORD_TOKEN_FILE": "/nonexistent/token"}, "DISCORD_TOKEN_FILE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearRunEnv(t)
			t.Setenv("DATABASE_URL", "postgres://u@127.0.0.1:1/db")
			t.Setenv("SHARD_COUNT", "2")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, errOut, code := bot(t, "run")
			require.Equal(t, 2, code, errOut)
			require.Contains(t, errOut, tc.want)
		})
	}
}

func TestRunRejectedTokenIsAConfigError(t *testing.T) {
	clearRunEnv(t)
	fake, err := fakediscord.New(fakediscord.Config{Token: "the-right-token"})
	require.NoError(t, err)
	require.NoError(t, fake.Start(context.Background()))
	defer fake.Stop()
	t.Setenv("DATABASE_URL", pgtest.New(t).URL)
	t.Setenv("DISCORD_TOKEN", "a-wrong-token")
	t.Setenv("SHARD_COUNT", "1")
	t.Setenv("DISCORD_API_URL", fake.APIURL())
	t.Setenv("LOG_FORMAT", "json")
	_, errOut, code := bot(t, "run")
	require.Equal(t, 2, code, errOut)
	require.Contains(t, errOut, "DISCORD_TOKEN")
	require.NotContains(t, errOut, "a-wrong-token")
}

func TestRunHoldsShardsFillsTheStreamAndHandsOverOnStop(t *testing.T) {
	clearRunEnv(t)
	const token = "Mz-very-secret-bot-token.ABCDEF.do-not-log"
	fake, err := fakediscord.New(fakediscord.Config{
		Token: token, Shards: 2, HeartbeatInterval: 700 * time.Millisecond, HeartbeatTimeout: 2100 * time.Millisecond,
		IdentifyWindow: 100 * time.Millisecond,
	})
	require.NoError(t, err)
	require.NoError(t, fake.Start(context.Background()))
	defer fake.Stop()
	natsURL := natstest.InProcess(t)
	db := pgtest.New(t)
	healthAddr := fmt.Sprintf("127.0.0.1:%d", natstest.FreePort(t))

	t.Setenv("DISCORD_TOKEN", token)
	t.Setenv("DATABASE_URL", db.URL)
	t.Setenv("NATS_URL", natsURL)
	t.Setenv("SHARD_COUNT", "auto")
	t.Setenv("REPLICA_ID", "bot-test-1")
	t.Setenv("HEARTBEAT_INTERVAL", "300ms")
	t.Setenv("HEALTH_ADDR", healthAddr)
	t.Setenv("DISCORD_API_URL", fake.APIURL())
	t.Setenv("IDENTIFY_WINDOW", "100ms")
	t.Setenv("SHUTDOWN_TIMEOUT", "10s")
	t.Setenv("LOG_FORMAT", "json")
	t.Setenv("LOG_LEVEL", "debug")

	var stdout, stderr logtest.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runBot(ctx, nil, &stdout, &stderr) }()

	pool := pgtest.Pool(t, db.URL)
	waitFor(t, 30*time.Second, "both shards ready and the replica ready", func() bool {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM discord_bot_shards WHERE state = 'ready' AND owner_id = 'bot-test-1'`).Scan(&n); err != nil {
			return false
		}
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		defer pcancel()
		return n == 2 && health.Probe(pctx, healthAddr) == nil
	}, done)

	for shard := range 2 {
		for i := range 5 {
			_, err := fake.Dispatch(shard, "MESSAGE_CREATE", map[string]any{"content": fmt.Sprint("hello ", i)})
			require.NoError(t, err)
		}
	}
	nc := natstest.Connect(t, natsURL)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	want := map[uint64]bool{}
	waitFor(t, 20*time.Second, "every dispatched event stored", func() bool {
		for _, ev := range fake.Events() {
			want[ev.ID] = true
		}
		s, err := js.Stream(ctx, bus.EventsStream)
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs == uint64(len(want))
	}, done)

	cancel() // SIGTERM
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("bot run did not stop")
	}
	var held, resumable int
	require.NoError(t, pool.QueryRow(context.Background(), `
		SELECT count(*) FILTER (WHERE owner_id IS NOT NULL),
		       count(*) FILTER (WHERE session_id IS NOT NULL AND resume_url IS NOT NULL AND resume_seq > 0)
		FROM discord_bot_shards`).Scan(&held, &resumable))
	require.Zero(t, held, "every shard released")
	require.Equal(t, 2, resumable, "every shard handed over with its resume state")
	require.Empty(t, fake.Violations())

	logs := stdout.String() + stderr.String()
	require.Contains(t, logs, "bot replica running")
	require.NotContains(t, logs, token, "the token never reaches a log line")
	require.False(t, strings.Contains(logs, token[:20]), "not even a prefix of it")
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		select {
		case err := <-done:
			t.Fatalf("bot run returned while waiting for %s: %v", what, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SHARD_COUNT=auto follows Discord only until the cluster has a count: then it
// keeps it, so that a changed recommendation does not lock restarted replicas
// out (they would refuse to claim with another count).
func TestAutoShardCountKeepsTheStoredCount(t *testing.T) {
	ctx := context.Background()
	db := pgtest.NewMigrated(t)
	pool := pgtest.Pool(t, db.URL)
	var logs logtest.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))

	n, err := resolveShardCount(ctx, pool, "auto", 4, logger)
	require.NoError(t, err)
	require.Equal(t, 4, n, "a new cluster takes Discord's recommendation")
	_, err = resolveShardCount(ctx, pool, "auto", 0, logger)
	require.ErrorContains(t, err, "recommends 0 shards")

	_, err = pool.Exec(ctx, `INSERT INTO discord_bot_cluster (shard_count) VALUES (4)`)
	require.NoError(t, err)
	n, err = resolveShardCount(ctx, pool, "AUTO", 6, logger)
	require.NoError(t, err)
	require.Equal(t, 4, n, "the stored count wins over a new recommendation")
	require.Contains(t, logs.String(), "recommended=6")

	n, err = resolveShardCount(ctx, pool, "8", 6, logger)
	require.NoError(t, err)
	require.Equal(t, 8, n, "an explicit count is taken as given (a mismatch is refused later, loudly)")
}
