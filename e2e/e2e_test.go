package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/localcluster"
)

// check fails the scenario unless it kept the promises: nothing lost, nothing
// twice, never two owners, no rule broken, and (for planned disruptions) no
// IDENTIFY spent on a handoff.
func check(t *testing.T, s summary, planned bool) {
	t.Helper()
	if s.Events == 0 {
		t.Errorf("no events dispatched: the scenario proved nothing")
	}
	if s.Lost != 0 {
		t.Errorf("lost %d of %d events", s.Lost, s.Events)
	}
	if s.Duplicates != 0 {
		t.Errorf("%d events processed twice", s.Duplicates)
	}
	if s.Overlap != 0 {
		t.Errorf("two sessions of one shard were live together for %s", s.Overlap)
	}
	if len(s.Violations) != 0 {
		t.Errorf("the fake saw %d rule violations, first: %+v", len(s.Violations), s.Violations[0])
	}
	if planned && s.HandoffIdentifies != 0 {
		t.Errorf("planned handoffs spent %d IDENTIFYs (want RESUME)", s.HandoffIdentifies)
	}
}

func TestE2E(t *testing.T) {
	t.Run("rolling_update", func(t *testing.T) {
		c := startCluster(t, localcluster.Options{Replicas: 3, Shards: 32})
		c.startTraffic(300)
		since := time.Now()
		for _, b := range c.Bots() {
			c.rollingRestart(b)
		}
		c.waitBalanced(30 * time.Second)
		s := c.finish("rolling_update", since)
		check(t, s, true)
		if s.Resumes == 0 {
			t.Error("no handoff resumed a session")
		}
	})

	t.Run("kill_replica", func(t *testing.T) {
		c := startCluster(t, localcluster.Options{Replicas: 3, Shards: 16})
		c.startTraffic(300)
		since := time.Now()
		victim := c.Bots()[1]
		held := c.owners()[victim.ID]
		if held == 0 {
			t.Fatalf("%s holds no shard: nothing to prove", victim.ID)
		}
		victim.Proc.Kill()
		// The survivors reclaim after the stale threshold and RESUME.
		c.waitFor(30*time.Second, "survivors hold every shard", func() bool {
			own := c.owners()
			return own[victim.ID] == 0 && own[c.Bots()[0].ID]+own[c.Bots()[2].ID] == 16 && c.liveSessions() == 16
		})
		s := c.finish("kill_replica", since)
		check(t, s, true)
		if s.Resumes < held {
			t.Errorf("%d shards of the killed replica, only %d resumes", held, s.Resumes)
		}
	})

	t.Run("db_partition", func(t *testing.T) {
		c := startCluster(t, localcluster.Options{Replicas: 3, Shards: 12, ProxyDB: true})
		c.startTraffic(200)
		since := time.Now()
		cut := c.Bots()[0]
		if held := c.owners()[cut.ID]; held == 0 {
			t.Fatalf("%s holds no shard before the partition: nothing to prove", cut.ID)
		}
		cut.DBProxy.Blackhole()
		// It self-fences (closing its sessions) before the stale threshold; the others
		// then reclaim and RESUME. The referee proves the order: no overlap.
		c.waitFor(30*time.Second, "peers hold every shard", func() bool {
			own := c.owners()
			return own[cut.ID] == 0 && own[c.Bots()[1].ID]+own[c.Bots()[2].ID] == 12 && c.liveSessions() == 12
		})
		if !cut.Proc.Running() {
			t.Fatalf("%s crashed during the partition: %v", cut.ID, cut.Proc.ExitErr())
		}
		if !strings.Contains(cut.Proc.Log(), "self-fenced") {
			t.Errorf("%s never logged its self-fence", cut.ID)
		}
		cut.DBProxy.Restore()
		c.waitBalanced(45 * time.Second) // it rejoins and takes its share back
		if !strings.Contains(cut.Proc.Log(), "rejoining") {
			t.Errorf("%s never logged its rejoin", cut.ID)
		}
		s := c.finish("db_partition", since)
		check(t, s, true)
	})

	t.Run("nats_restart", func(t *testing.T) {
		// 400 events/s over 8 shards is 50 per shard per second: a 200-event buffer
		// lasts 4 s, less than the outage.
		c := startCluster(t, localcluster.Options{Replicas: 2, Shards: 8, BotEnv: []string{"GATEWAY_BUFFER_SIZE=200"}})
		c.startTraffic(400)
		since := time.Now()
		time.Sleep(time.Second)
		// Down longer than the per-shard publish buffer lasts at this rate: shards fill
		// their buffers, disconnect with 4000 and wait for NATS.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.RestartNATS(ctx, 6*time.Second); err != nil {
			t.Fatal(err)
		}
		c.waitAllReady(60 * time.Second)
		time.Sleep(2 * time.Second)
		s := c.finish("nats_restart", since)
		check(t, s, true)
		if s.Resumes == 0 {
			t.Error("no shard disconnected and resumed: the outage never filled a buffer")
		}
	})

	t.Run("worker_crash", func(t *testing.T) {
		c := startCluster(t, localcluster.Options{Replicas: 2, Shards: 8})
		c.startTraffic(400)
		since := time.Now()
		time.Sleep(2 * time.Second)
		c.Worker.Kill()
		time.Sleep(time.Second)
		if err := c.Worker.Restart(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		s := c.finish("worker_crash", since)
		check(t, s, true)
	})

	t.Run("poison_event", func(t *testing.T) {
		c := startCluster(t, localcluster.Options{Replicas: 2, Shards: 4, Workers: []string{"eventlog", "guilds"},
			WorkerEnv: []string{"WORKER_MAX_DELIVER=3"}})
		c.startTraffic(200)
		since := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// A GUILD_CREATE whose guild id is not a snowflake: the guilds worker can never
		// apply it.
		if _, err := c.Admin.Dispatch(ctx, 1, "GUILD_CREATE", map[string]any{"id": "not-a-snowflake", "name": "poison"}); err != nil {
			t.Fatal(err)
		}
		c.waitFor(30*time.Second, "the poison event in DISCORD_DLQ", func() bool {
			return c.deadLetters("guilds") == 1
		})
		s := c.finish("poison_event", since)
		check(t, s, true)
		cmd := exec.Command(bins.Worker, "dlq", "list", "--worker", "guilds")
		cmd.Env = append(os.Environ(), "NATS_URL="+c.NATSURL)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("worker dlq list: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "not-a-snowflake") && !strings.Contains(string(out), "guild id") {
			t.Errorf("worker dlq list does not show the poison event's error:\n%s", out)
		}
	})

	t.Run("scale_up", func(t *testing.T) {
		c := startCluster(t, localcluster.Options{Replicas: 3, Shards: 32})
		c.startTraffic(300)
		since := time.Now()
		b := c.addBot()
		c.waitHealthy(b, 30*time.Second)
		c.waitBalanced(45 * time.Second)
		s := c.finish("scale_up", since)
		check(t, s, true)
		if got := c.owners()[b.ID]; got < 7 {
			t.Errorf("the new replica holds %d shards, want its share of 8", got)
		}
	})

	t.Run("mass_restart", func(t *testing.T) {
		c := startCluster(t, localcluster.Options{Replicas: 3, Shards: 16})
		c.startTraffic(300)
		since := time.Now()
		for _, b := range c.Bots() {
			if err := b.Proc.Signal(15); err != nil { // SIGTERM to all at once
				t.Fatal(err)
			}
		}
		for _, b := range c.Bots() {
			if err := b.Proc.Wait(30 * time.Second); err != nil {
				t.Fatal(err)
			}
		}
		for _, b := range c.Bots() {
			if err := b.Proc.Restart(); err != nil {
				t.Fatal(err)
			}
		}
		c.waitBalanced(60 * time.Second)
		s := c.finish("mass_restart", since)
		check(t, s, true)
	})

	t.Run("zombie_and_reconnect", func(t *testing.T) {
		c := startCluster(t, localcluster.Options{Replicas: 2, Shards: 4})
		c.startTraffic(200)
		since := time.Now()
		c.fault("stop_acks", 1)
		c.fault("reconnect", 2)
		c.waitFor(30*time.Second, "shards 1 and 2 resumed", func() bool {
			return c.resumedSince(1, since) && c.resumedSince(2, since) && c.liveSessions() == 4
		})
		s := c.finish("zombie_and_reconnect", since)
		check(t, s, true)
	})
}

// resumedSince reports whether shard has a session interval started by RESUME
// after t.
func (c *cluster) resumedSince(shard int, t time.Time) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sessions, err := c.Admin.Sessions(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, s := range sessions {
		if s.Shard == shard && s.Kind == "resume" && s.Start.After(t) {
			return true
		}
	}
	return false
}

// deadLetters counts the messages in DISCORD_DLQ for worker.
func (c *cluster) deadLetters(worker string) int {
	c.t.Helper()
	nc, err := nats.Connect(c.NATSURL)
	if err != nil {
		c.t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, bus.DeadLetterStream)
	if err != nil {
		return 0
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(bus.DeadLetterSubject(worker)))
	if err != nil {
		c.t.Fatal(err)
	}
	n := 0
	for _, v := range info.State.Subjects {
		n += int(v)
	}
	return n
}
