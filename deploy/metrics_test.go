package deploy_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shardwarden/shardwarden/internal/health"
	"github.com/shardwarden/shardwarden/internal/localcluster"
	"github.com/shardwarden/shardwarden/internal/pgtest"
)

// TestRulesAndDashboardNameExportedMetrics runs a real bot and a real worker (the
// binaries, built from this tree) against Postgres, NATS and the fake Discord,
// drives traffic and a gateway reconnect through them, scrapes their /metrics, and
// fails for every metric an alert rule or a dashboard panel names that neither
// exports (the external names in externalMetrics excepted).
//
// A labelled metric only appears once one of its series exists, so the test waits
// until every name has appeared or the deadline passes; the failure lists what is
// missing and where it is used.
func TestRulesAndDashboardNameExportedMetrics(t *testing.T) {
	root := repoRoot(t)
	used := usedMetrics(t, root)
	if t.Failed() {
		t.FailNow()
	}
	var want []string
	for name := range used {
		if _, external := externalMetrics[name]; !external {
			want = append(want, name)
		}
	}
	slices.Sort(want)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bins := buildBinaries(t)

	commandsAddr, guildsAddr := freeAddr(t), freeAddr(t)
	c, err := localcluster.Start(ctx, localcluster.Options{
		Bins:        bins,
		Dir:         t.TempDir(),
		DatabaseURL: pgtest.New(t).URL, // the bot applies the migrations itself
		Replicas:    1,
		Shards:      2,
		Workers:     []string{"commands", "guilds"},
		WorkerEnv: []string{
			"WORKER_COMMANDS_HEALTH_ADDR=" + commandsAddr,
			"WORKER_GUILDS_HEALTH_ADDR=" + guildsAddr,
		},
	})
	if err != nil {
		t.Fatalf("start the local cluster: %v", err)
	}
	t.Cleanup(c.Close)
	bot := c.Bots()[0]
	procs := []*localcluster.Proc{bot.Proc, c.Worker}
	dumpLogs := func() {
		for _, p := range append(procs, c.Fake) {
			t.Logf("--- %s log (tail)\n%s", p.Name, tailLines(p.Log(), 40))
		}
	}
	if err := c.WaitHealthy(ctx, bot); err != nil {
		dumpLogs()
		t.Fatal(err)
	}
	for _, addr := range []string{commandsAddr, guildsAddr} {
		if err := waitReady(ctx, addr, 60*time.Second, procs); err != nil {
			dumpLogs()
			t.Fatal(err)
		}
	}

	// Traffic through every worker and shard, including slash commands (REST
	// replies, some rate limited), then a gateway reconnect (op 7).
	if err := c.Admin.StartTraffic(ctx, localcluster.Traffic{
		Rate: 40,
		Mix: map[string]int{
			"MESSAGE_CREATE":     4,
			"INTERACTION_CREATE": 3,
			"GUILD_UPDATE":       2,
			"TYPING_START":       1,
		},
		PayloadSize: 256,
	}); err != nil {
		t.Fatalf("fake traffic: %v", err)
	}
	trafficStart := time.Now()
	reconnected, natsRestarted := false, false

	scraped := map[string]bool{}
	var missing []string
	deadline := time.Now().Add(90 * time.Second)
	for {
		for _, addr := range []string{bot.HealthAddr, commandsAddr, guildsAddr} {
			names, err := scrapeNames(ctx, addr)
			if err != nil {
				t.Logf("scrape %s: %v", addr, err)
				continue
			}
			for _, n := range names {
				scraped[n] = true
			}
		}
		if !reconnected && scraped["shardwarden_gateway_events_published_total"] {
			// Discord's op 7: a reconnect and a RESUME.
			n, err := c.Admin.Fault(ctx, "reconnect", 0)
			if err != nil {
				t.Fatalf("fake fault: %v", err)
			}
			reconnected = n > 0
			// /ping for the commands worker: its REST replies meet two 429s the fake
			// forces (short Retry-After, so the replies still go out in time).
			if err := forceRateLimits(ctx, c.Admin, 2); err != nil {
				t.Fatalf("fake rate limit: %v", err)
			}
			for i := range 3 {
				if err := dispatchPing(ctx, c.Admin, i%2, i); err != nil {
					t.Fatalf("fake dispatch: %v", err)
				}
			}
		}
		missing = missing[:0]
		for _, n := range want {
			if !scraped[n] {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		// Publish errors only exist once JetStream has failed a publish: take NATS
		// away for longer than the publisher's ack timeout (5 s), once everything
		// else has been seen (or has had 20 s to appear).
		if !natsRestarted && slices.Contains(missing, "shardwarden_bus_publish_errors_total") &&
			(len(missing) == 1 || time.Since(trafficStart) > 20*time.Second) {
			natsRestarted = true
			if err := c.RestartNATS(ctx, 7*time.Second); err != nil {
				t.Fatalf("restart nats: %v", err)
			}
		}
		for _, p := range procs {
			if !p.Running() {
				dumpLogs()
				t.Fatalf("%s exited: %v", p.Name, p.ExitErr())
			}
		}
		time.Sleep(250 * time.Millisecond)
	}

	if len(scraped) < 20 {
		t.Errorf("scraped only %d metric names from the binaries", len(scraped))
	}
	for _, n := range missing {
		t.Errorf("%s is named by %s, but neither the bot nor the worker exports it", n, strings.Join(used[n], "; "))
	}
	if len(missing) > 0 {
		dumpLogs()
	}
	_ = c.Admin.StopTraffic(ctx)
}

// dispatchPing sends one /ping interaction to shard.
func dispatchPing(ctx context.Context, fake *localcluster.FakeClient, shard, i int) error {
	id := fmt.Sprintf("12000000000000%05d", i)
	user := map[string]any{"id": "1300000000000000001", "username": "pinger", "discriminator": "0", "bot": false}
	_, err := fake.Dispatch(ctx, shard, "INTERACTION_CREATE", map[string]any{
		"id": id, "application_id": localcluster.FakeAppID, "type": 2, "version": 1,
		"token":      "aW50ZXJhY3Rpb246" + id, // the fake's interaction-token form, allow-listed in .gitleaks.toml
		"guild_id":   "1400000000000000001",
		"channel_id": "1500000000000000001",
		"member":     map[string]any{"user": user, "roles": []string{}},
		"data":       map[string]any{"id": "1100000000000000100", "name": "ping", "type": 1},
	})
	return err
}

// forceRateLimits makes the fake answer the next n REST requests with 429.
func forceRateLimits(ctx context.Context, fake *localcluster.FakeClient, n int) error {
	body := fmt.Sprintf(`{"route":"","retry_after":"100ms","count":%d}`, n)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fake.AdminURL+"/rest/ratelimit", strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /admin/rest/ratelimit: %s", resp.Status)
	}
	return nil
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := localcluster.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func waitReady(ctx context.Context, addr string, timeout time.Duration, procs []*localcluster.Proc) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		err = health.Probe(pctx, addr)
		pcancel()
		if err == nil {
			return nil
		}
		for _, p := range procs {
			if !p.Running() {
				return fmt.Errorf("%s exited before %s was ready: %v", p.Name, addr, p.ExitErr())
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %v", addr, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var scrapeClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// scrapeNames returns the sample names of addr's /metrics (histograms as their
// _bucket, _sum and _count series).
func scrapeNames(ctx context.Context, addr string) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	var names []string
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names = append(names, line[:i])
		}
	}
	return names, s.Err()
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
