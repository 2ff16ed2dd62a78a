package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardwarden/shardwarden/internal/localcluster"
	"github.com/shardwarden/shardwarden/internal/pgtest"
)

// The stack's update_config.delay scaled like localcluster.Scaled: the time Swarm
// waits after a restarted replica is healthy before stopping the next one.
const updateDelay = 2 * time.Second

// cluster is a localcluster.Cluster bound to a test: failures are test failures,
// and every process's log is printed when the test fails.
type cluster struct {
	*localcluster.Cluster
	t    *testing.T
	pool *pgxpool.Pool
}

// startCluster starts a fresh database, nats-server, the fake Discord, the workers
// and opts.Replicas bots, and waits until every shard is READY and the replicas
// hold their fair shares (the start-up rebalance is over).
func startCluster(t *testing.T, opts localcluster.Options) *cluster {
	t.Helper()
	db := pgtest.New(t)
	opts.Bins, opts.Dir, opts.DatabaseURL = bins, t.TempDir(), db.URL
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lc, err := localcluster.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	c := &cluster{Cluster: lc, t: t, pool: pgtest.Pool(t, db.URL)}
	t.Cleanup(func() {
		lc.Sup.KillAll()
		if t.Failed() {
			for _, p := range lc.Sup.Procs() {
				t.Logf("---- log of %s (last 60 lines) ----\n%s", p.Name, lastLines(p.Log(), 60))
			}
		}
		lc.Close()
	})
	c.waitBalanced(60 * time.Second)
	return c
}

func (c *cluster) addBot() *localcluster.Bot {
	c.t.Helper()
	b, err := c.AddBot()
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

func (c *cluster) waitHealthy(b *localcluster.Bot, timeout time.Duration) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := c.WaitHealthy(ctx, b); err != nil {
		c.t.Fatal(err)
	}
}

// shardRow is one row of discord_bot_shards.
type shardRow struct {
	ID    int
	Owner string
	Epoch int64
	State string
}

// shards reads the lease table; nil before the bots have migrated the schema.
func (c *cluster) shards() []shardRow {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rows, err := c.pool.Query(ctx, `SELECT shard_id, coalesce(owner_id, ''), epoch, state FROM discord_bot_shards ORDER BY shard_id`)
	if err != nil {
		return nil
	}
	defer rows.Close()
	var out []shardRow
	for rows.Next() {
		var r shardRow
		if err := rows.Scan(&r.ID, &r.Owner, &r.Epoch, &r.State); err != nil {
			c.t.Fatalf("read shards: %v", err)
		}
		out = append(out, r)
	}
	return out
}

// owners counts READY shards per owner.
func (c *cluster) owners() map[string]int {
	out := map[string]int{}
	for _, r := range c.shards() {
		if r.State == "ready" && r.Owner != "" {
			out[r.Owner]++
		}
	}
	return out
}

// waitAllReady waits until every shard has an owner in state ready and a live
// session at the fake.
func (c *cluster) waitAllReady(timeout time.Duration) {
	c.t.Helper()
	c.waitFor(timeout, "every shard ready", func() bool {
		rows := c.shards()
		if len(rows) != c.Opts.Shards {
			return false
		}
		for _, r := range rows {
			if r.State != "ready" || r.Owner == "" {
				return false
			}
		}
		return c.liveSessions() == c.Opts.Shards
	})
}

// waitBalanced waits until the running replicas hold every shard, READY, with
// max - min <= 1.
func (c *cluster) waitBalanced(timeout time.Duration) {
	c.t.Helper()
	c.waitFor(timeout, "balanced assignment", func() bool {
		own := c.owners()
		total, lo, hi := 0, 1<<30, 0
		for _, b := range c.Bots() {
			if !b.Proc.Running() {
				continue
			}
			n := own[b.ID]
			total += n
			lo, hi = min(lo, n), max(hi, n)
		}
		return total == c.Opts.Shards && hi-lo <= 1 && c.liveSessions() == c.Opts.Shards
	})
}

func (c *cluster) liveSessions() int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sessions, err := c.Admin.Sessions(ctx)
	if err != nil {
		c.t.Fatalf("referee sessions: %v", err)
	}
	live := map[int]bool{}
	for _, s := range sessions {
		if s.Live {
			live[s.Shard] = true
		}
	}
	return len(live)
}

func (c *cluster) waitFor(timeout time.Duration, what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %s waiting for %s; shards: %+v", timeout, what, c.shards())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *cluster) startTraffic(rate float64) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Admin.StartTraffic(ctx, localcluster.Traffic{Rate: rate, PayloadSize: 512}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) stopTraffic() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Admin.StopTraffic(ctx); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) fault(kind string, shard int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := c.Admin.Fault(ctx, kind, shard)
	if err != nil {
		c.t.Fatal(err)
	}
	if n == 0 {
		c.t.Fatalf("fault %s on shard %d affected no connection", kind, shard)
	}
}

// rollingRestart does what `docker service update` does with order stop-first:
// SIGTERM, wait for the exit, start again, wait until healthy, then wait the update
// delay before the next replica.
func (c *cluster) rollingRestart(b *localcluster.Bot) {
	c.t.Helper()
	if err := b.Proc.Term(30 * time.Second); err != nil {
		c.t.Fatalf("%s did not stop on SIGTERM: %v", b.ID, err)
	}
	if err := b.Proc.ExitErr(); err != nil {
		c.t.Fatalf("%s exited uncleanly after SIGTERM: %v", b.ID, err)
	}
	if err := b.Proc.Restart(); err != nil {
		c.t.Fatal(err)
	}
	c.waitHealthy(b, 30*time.Second)
	time.Sleep(updateDelay)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
