package migrate_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/migrate"
	"github.com/shardwarden/shardwarden/internal/pgtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Ten replicas start at once, each with its own pool: exactly one applies each
// migration, every one ends at the latest version, and none fails.
func TestConcurrentMigrations(t *testing.T) {
	t.Parallel()
	const replicas = 10
	db := pgtest.New(t)
	latest, err := migrate.Latest()
	require.NoError(t, err)
	require.Positive(t, latest)

	pools := make([]*migratePool, replicas)
	for i := range pools {
		pools[i] = &migratePool{pool: pgtest.Pool(t, db.URL)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range pools {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			p.res, p.err = migrate.Up(ctx, p.pool, nil)
		}()
	}
	close(start)
	wg.Wait()

	applied := map[int64]int{}
	for i, p := range pools {
		require.NoError(t, p.err, "replica %d", i)
		require.Equal(t, latest, p.res.Current, "replica %d", i)
		for _, v := range p.res.Applied {
			applied[v]++
		}
	}
	for v := int64(1); v <= latest; v++ {
		require.Equal(t, 1, applied[v], "migration %d applied once in all", v)
	}

	// Running again is a no-op.
	res, err := migrate.Up(ctx, pools[0].pool, nil)
	require.NoError(t, err)
	require.Empty(t, res.Applied)
	require.Equal(t, latest, res.Current)
}

type migratePool struct {
	pool *pgxpool.Pool
	res  migrate.Result
	err  error
}

// column is one row of information_schema.columns.
type column struct {
	Name, Type string
	Nullable   bool
}

// The lease tables and the operators' view as the code (internal/shardlease,
// `bot shards`) expects them. A migration that renames, drops or retypes one of
// these columns must change this list and the code together.
var wantSchema = map[string][]column{
	"discord_bot_cluster": {
		{"singleton", "boolean", false},
		{"shard_count", "integer", false},
		{"created_at", "timestamp with time zone", false},
	},
	"discord_bot_replicas": {
		{"replica_id", "text", false},
		{"instance_id", "uuid", false},
		{"version", "text", false},
		{"started_at", "timestamp with time zone", false},
		{"heartbeat_at", "timestamp with time zone", false},
		{"lease_ttl", "interval", false},
		{"draining", "boolean", false},
	},
	"discord_bot_shards": {
		{"shard_id", "integer", false},
		{"owner_id", "text", true},
		{"epoch", "bigint", false},
		{"state", "text", false},
		{"claimed_at", "timestamp with time zone", true},
		{"heartbeat_at", "timestamp with time zone", true},
		{"lease_ttl", "interval", true},
		{"released_at", "timestamp with time zone", true},
		{"session_id", "text", true},
		{"resume_url", "text", true},
		{"resume_seq", "bigint", true},
		{"guilds", "integer", false},
		{"last_event_at", "timestamp with time zone", true},
	},
	"discord_bot_shards_status": {
		{"shard_id", "integer", true},
		{"owner_id", "text", true},
		{"epoch", "bigint", true},
		{"state", "text", true},
		{"status", "text", true},
		{"heartbeat_age_s", "numeric", true},
		{"resumable", "boolean", true},
		{"resume_seq", "bigint", true},
		{"guilds", "integer", true},
		{"last_event_age_s", "numeric", true},
		{"claimed_at", "timestamp with time zone", true},
		{"released_at", "timestamp with time zone", true},
	},
}

func TestSchemaMatchesTheCode(t *testing.T) {
	t.Parallel()
	db := pgtest.NewMigrated(t)
	conn, err := pgx.Connect(context.Background(), db.URL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	ctx := context.Background()

	for table, want := range wantSchema {
		rows, err := conn.Query(ctx, `
			SELECT column_name, data_type, is_nullable = 'YES'
			  FROM information_schema.columns
			 WHERE table_schema = current_schema() AND table_name = $1
			 ORDER BY ordinal_position`, table)
		require.NoError(t, err)
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[column])
		require.NoError(t, err)
		require.Equal(t, want, got, "columns of %s", table)
	}

	// The states the code writes are exactly those the CHECK constraint allows.
	var check string
	require.NoError(t, conn.QueryRow(ctx, `
		SELECT pg_get_constraintdef(oid) FROM pg_constraint
		 WHERE conrelid = 'discord_bot_shards'::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%state%free%'`).Scan(&check))
	for _, s := range []string{"free", "connecting", "ready", "resuming", "releasing"} {
		require.Contains(t, check, fmt.Sprintf("'%s'", s))
	}

	// The view tells the truth: a fresh lease is held, an old one stale, no owner free.
	_, err = conn.Exec(ctx, `
		INSERT INTO discord_bot_shards (shard_id, owner_id, epoch, state, heartbeat_at, lease_ttl, session_id, resume_url) VALUES
		  (0, NULL, 0, 'free', NULL, NULL, NULL, NULL),
		  (1, 'a', 1, 'ready', now(), interval '30 seconds', 's', 'wss://r'),
		  (2, 'b', 4, 'ready', now() - interval '1 minute', interval '30 seconds', NULL, NULL)`)
	require.NoError(t, err)
	rows, err := conn.Query(ctx, `SELECT shard_id, status, resumable FROM discord_bot_shards_status`)
	require.NoError(t, err)
	var got []string
	for rows.Next() {
		var id int
		var status string
		var resumable bool
		require.NoError(t, rows.Scan(&id, &status, &resumable))
		got = append(got, fmt.Sprintf("%d:%s:%t", id, status, resumable))
	}
	require.NoError(t, rows.Err())
	require.Equal(t, "0:free:false 1:held:true 2:stale:false", strings.Join(got, " "))
}

func TestLatestMatchesTheEmbeddedFiles(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	res, err := migrate.Up(context.Background(), pgtest.Pool(t, db.URL), nil)
	require.NoError(t, err)
	latest, err := migrate.Latest()
	require.NoError(t, err)
	require.Equal(t, latest, res.Current)
	require.Equal(t, latest, res.Applied[len(res.Applied)-1])
}
