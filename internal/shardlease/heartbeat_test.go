package shardlease_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/pgtest"
	"github.com/shardwarden/shardwarden/internal/shardlease"
)

// statementCounter counts every statement a pool's connections send except
// those of claim transactions (a LISTEN reconnect may trigger one at any time)
// and the LISTEN itself (the listener's connection copies the pool's config).
type statementCounter struct{ n atomic.Int64 }

func (s *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	sql := strings.ToLower(strings.TrimSpace(data.SQL))
	switch {
	case strings.HasPrefix(sql, "begin"), sql == "commit", sql == "rollback", strings.HasPrefix(sql, "listen "),
		data.SQL == shardlease.Statements["claim lock"], data.SQL == shardlease.Statements["claim"]:
	default:
		s.n.Add(1)
	}
	return ctx
}

func (s *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// heartbeatFixture is one replica holding every one of n shards, with a
// heartbeat interval so long that it heartbeats only when asked.
func heartbeatFixture(t testing.TB, n int) (*shardlease.Manager, *statementCounter, *pgxpool.Pool) {
	t.Helper()
	db := pgtest.NewMigrated(t)
	cfg, err := pgxpool.ParseConfig(db.URL)
	require.NoError(t, err)
	counter := &statementCounter{}
	cfg.ConnConfig.Tracer = counter
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	var running atomic.Int64
	m, err := shardlease.New(pool, shardlease.Config{
		ReplicaID: "solo", ShardCount: n,
		HeartbeatInterval: time.Hour, SelfFenceAfter: 2 * time.Hour,
		Runner: shardlease.RunnerFunc(func(ctx context.Context, lease *shardlease.Lease) (shardlease.ResumeState, error) {
			running.Add(1)
			defer running.Add(-1)
			lease.Report(shardlease.Status{State: shardlease.StateReady, Guilds: 3,
				Resume: shardlease.ResumeState{SessionID: fmt.Sprint("s", lease.ShardID), ResumeURL: "wss://r", Seq: int64(lease.ShardID)}})
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
	deadline := time.Now().Add(30 * time.Second)
	for len(m.Held()) != n || running.Load() != int64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("holds %d of %d shards", len(m.Held()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return m, counter, pool
}

// The heartbeat is one statement whatever the number of shards, and it really
// renews and writes the status of every one of them.
func TestHeartbeatIsOneStatementWhateverTheShardCount(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 64, 1024} {
		t.Run(fmt.Sprint(n, " shards"), func(t *testing.T) {
			t.Parallel()
			m, counter, pool := heartbeatFixture(t, n)
			ctx := context.Background()
			var before time.Time
			require.NoError(t, pool.QueryRow(ctx, `SELECT max(heartbeat_at) FROM discord_bot_shards`).Scan(&before))

			const beats = 5
			counter.n.Store(0)
			for range beats {
				require.NoError(t, m.HeartbeatNow(ctx))
			}
			require.Equal(t, int64(beats), counter.n.Load(), "statements sent for %d heartbeats", beats)

			var renewed, withStatus int
			require.NoError(t, pool.QueryRow(ctx, `
				SELECT count(*) FILTER (WHERE heartbeat_at > $1),
				       count(*) FILTER (WHERE state = 'ready' AND session_id = 's' || shard_id AND resume_seq = shard_id AND guilds = 3)
				  FROM discord_bot_shards WHERE owner_id = 'solo'`, before).Scan(&renewed, &withStatus))
			require.Equal(t, n, renewed, "every lease renewed")
			require.Equal(t, n, withStatus, "every status written")
		})
	}
}

// BenchmarkHeartbeat measures one heartbeat for 1,024 held shards and fails when
// it needs more than three statements.
func BenchmarkHeartbeat(b *testing.B) {
	for _, n := range []int{64, 1024} {
		b.Run(fmt.Sprint(n, " shards"), func(b *testing.B) {
			m, counter, _ := heartbeatFixture(b, n)
			ctx := context.Background()
			counter.n.Store(0)
			b.ResetTimer()
			for b.Loop() {
				if err := m.HeartbeatNow(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			perBeat := float64(counter.n.Load()) / float64(b.N)
			b.ReportMetric(perBeat, "statements/heartbeat")
			if perBeat > 3 {
				b.Fatalf("%.1f statements per heartbeat with %d shards, want <= 3", perBeat, n)
			}
		})
	}
}

// Every statement the manager sends prepares against the migrated schema: a
// renamed column or a changed type fails here, not in production.
func TestStatementsMatchTheSchema(t *testing.T) {
	t.Parallel()
	db := pgtest.NewMigrated(t)
	conn, err := pgx.Connect(context.Background(), db.URL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	for name, sql := range shardlease.Statements {
		_, err := conn.Prepare(context.Background(), strings.ReplaceAll(name, " ", "_"), sql)
		require.NoError(t, err, "statement %q", name)
	}
}
