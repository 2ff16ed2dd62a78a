package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/shardwarden/shardwarden/internal/localcluster"
)

// failover: SIGKILL a replica; for each shard it held, the time from the moment its
// lease went stale (last heartbeat_at + lease_ttl, database clock) to the RESUME on
// a survivor, as the fake saw it.
func (b *bench) failover(ctx context.Context) error {
	kills := 3
	if b.quick {
		kills = 1
	}
	r, err := b.startRun(ctx, "failover", localcluster.Options{Replicas: 3, Shards: 12, NoWorker: true})
	if err != nil {
		return err
	}
	defer r.close()
	if err := r.waitReady(ctx, 60*time.Second); err != nil {
		return err
	}
	var over []time.Duration
	for k := 0; k < kills; k++ {
		victim := r.Bots()[k%3]
		killedAt := time.Now()
		victim.Proc.Kill()
		// The victim's rows keep their last heartbeat: that plus the TTL is when the
		// lease went stale.
		type stale struct {
			shard int
			at    time.Time
		}
		var held []stale
		rows, err := r.pool.Query(ctx, `
			SELECT shard_id, heartbeat_at + lease_ttl FROM discord_bot_shards WHERE owner_id = $1`, victim.ID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var s stale
			if err := rows.Scan(&s.shard, &s.at); err != nil {
				rows.Close()
				return err
			}
			held = append(held, s)
		}
		rows.Close()
		if len(held) == 0 {
			return fmt.Errorf("failover: %s held no shard", victim.ID)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			sessions, err := r.sessions(ctx)
			if err != nil {
				return err
			}
			resumedAt := map[int]time.Time{}
			for _, s := range sessions {
				if s.Start.After(killedAt) {
					if t, ok := resumedAt[s.Shard]; !ok || s.Start.Before(t) {
						resumedAt[s.Shard] = s.Start
					}
				}
			}
			done := 0
			for _, h := range held {
				if _, ok := resumedAt[h.shard]; ok {
					done++
				}
			}
			if done == len(held) {
				for _, h := range held {
					over = append(over, resumedAt[h.shard].Sub(h.at))
				}
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("failover: %d of %d shards taken over after 60s", done, len(held))
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := victim.Proc.Restart(); err != nil {
			return err
		}
		if err := r.waitReady(ctx, 60*time.Second); err != nil {
			return err
		}
	}
	b.note("failover: %d shards taken over after %d SIGKILLs", len(over), kills)
	b.add("failover_over_threshold_ms", ms(percentile(over, 0.50)), "ms")
	return nil
}

// scale: 8 replicas over 1,024 shards (256 with -quick) and 100k guilds: memory per
// connected shard, statements per replica heartbeat (counted by the database), and
// the cold start against the identify limit.
func (b *bench) scale(ctx context.Context) error {
	const replicas, maxConcurrency = 8, 16
	shards, guilds := 1024, 100_000
	if b.quick {
		shards, guilds = 256, 25_000
	}
	// Discord's 5 s window divided by ten, with a margin of 5% (production's is
	// 2.5%, 125 ms): under 1,024 connections on two cores the fake reads an
	// IDENTIFY up to ~15 ms after it was sent, and a thinner margin shows up as
	// identify-window violations.
	window, margin := 500*time.Millisecond, 25*time.Millisecond
	opts := func(shards, guilds int) localcluster.Options {
		t := localcluster.Scaled
		t.IdentifyWindow = window
		// Discord grants bots this large a bigger session_start_limit than the
		// default 1,000 a day, which 1,024 IDENTIFYs (less the cluster's reserve)
		// would exhaust: the budget guard would stop the cold start, as it should.
		return localcluster.Options{Replicas: replicas, Shards: shards, Guilds: guilds, NoWorker: true,
			MaxConcurrency: maxConcurrency, Timings: t, FakeArgs: []string{"-daily-budget", "5000"},
			BotEnv: []string{"IDENTIFY_MARGIN=" + margin.String()}}
	}

	// Baseline: one shard per replica, the same guilds per shard.
	base, err := b.startRun(ctx, "scale-base", opts(replicas, guilds/shards*replicas))
	if err != nil {
		return err
	}
	if err := base.waitReady(ctx, 60*time.Second); err != nil {
		base.close()
		return err
	}
	time.Sleep(3 * time.Second)
	baseRSS, err := sumRSS(base)
	base.close()
	if err != nil {
		return err
	}

	r, err := b.startRun(ctx, "scale", opts(shards, guilds))
	if err != nil {
		return err
	}
	defer r.close()
	if err := r.waitReady(ctx, 5*time.Minute); err != nil {
		return err
	}
	// Cold start: from launching the replicas to every shard READY, against the
	// least the identify limit allows.
	sessions, err := r.sessions(ctx)
	if err != nil {
		return err
	}
	// Each shard's first session (its IDENTIFY → READY); later ones are the
	// rebalancing RESUMEs as replicas join, which the identify limit does not govern.
	first := map[int]time.Time{}
	for _, s := range sessions {
		if t, ok := first[s.Shard]; !ok || s.Start.Before(t) {
			first[s.Shard] = s.Start
		}
	}
	var lastStart time.Time
	for _, t := range first {
		if t.After(lastStart) {
			lastStart = t
		}
	}
	if len(first) != shards {
		return fmt.Errorf("cold start: %d of %d shards have a session", len(first), shards)
	}
	minimum := time.Duration(shards/maxConcurrency) * window
	cold := lastStart.Sub(r.start)
	rep, err := r.Admin.Report(ctx)
	if err != nil {
		return err
	}
	violations := len(rep.Violations)
	for i, v := range rep.Violations {
		if i == 5 {
			break
		}
		b.note("violation: rule=%s shard=%d close=%d %s", v.Rule, v.Shard, v.CloseCode, v.Detail)
	}
	b.note("cold start: %d shards READY in %s; identify limit allows %s at best (%d buckets, %s window, %s margin)",
		shards, cold.Round(time.Millisecond), minimum, maxConcurrency, window, margin)
	b.note("cold start: %s; claim → IDENTIFY sent p50 %s (the bots' since_claim)",
		identifyPacing(first, maxConcurrency, window, r.start), sinceClaim(r).Round(10*time.Microsecond))
	b.add("cold_start_ratio_to_identify_limit", cold.Seconds()/minimum.Seconds(), "ratio")
	b.add("cold_start_identify_violations", float64(violations), "count")

	time.Sleep(3 * time.Second)
	if b.profileDir != "" {
		b.saveProfile(ctx, "http://"+r.Bots()[0].HealthAddr+"/debug/pprof/heap", "bot-scale-heap.pprof")
		b.saveProfile(ctx, "http://"+r.Bots()[0].HealthAddr+"/debug/pprof/goroutine?debug=1", "bot-scale-goroutines.txt")
	}
	rss, err := sumRSS(r)
	if err != nil {
		return err
	}
	b.note("memory: %d replicas hold %d shards in %d KiB RSS, %d KiB with one shard each", replicas, shards, rss, baseRSS)
	b.add("mem_per_shard_kib", float64(rss-baseRSS)/float64(shards-replicas), "KiB")

	// Statements per replica heartbeat, from pg_stat_statements at steady state.
	hb := localcluster.Scaled.LeaseHeartbeat
	if _, err := r.pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		return fmt.Errorf("pg_stat_statements (scripts/bench.sh preloads it): %w", err)
	}
	var dbid uint32
	if err := r.pool.QueryRow(ctx, `SELECT oid FROM pg_database WHERE datname = current_database()`).Scan(&dbid); err != nil {
		return err
	}
	if _, err := r.pool.Exec(ctx, `SELECT pg_stat_statements_reset()`); err != nil {
		return err
	}
	window10 := 10 * hb
	time.Sleep(window10)
	var calls int64
	// The measuring statements themselves run on this pool too: exclude them.
	if err := r.pool.QueryRow(ctx, `
		SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
		WHERE dbid = $1 AND query NOT ILIKE '%pg_stat_statements%'`, dbid).Scan(&calls); err != nil {
		return err
	}
	heartbeats := float64(replicas) * window10.Seconds() / hb.Seconds()
	b.note("statements: %d in %s from %d replicas (%s heartbeat)", calls, window10, replicas, hb)
	b.add("pg_statements_per_replica_heartbeat", float64(calls)/heartbeats, "statements")
	return nil
}

// identifyPacing says where a cold start's time went: until the first IDENTIFY,
// and how far apart consecutive IDENTIFYs of one bucket were beyond the window.
func identifyPacing(first map[int]time.Time, buckets int, window time.Duration, launched time.Time) string {
	byBucket := make([][]time.Time, buckets)
	earliest := time.Time{}
	for shard, t := range first {
		byBucket[shard%buckets] = append(byBucket[shard%buckets], t)
		if earliest.IsZero() || t.Before(earliest) {
			earliest = t
		}
	}
	var over []time.Duration
	for _, ts := range byBucket {
		slices.SortFunc(ts, time.Time.Compare)
		for i := 1; i < len(ts); i++ {
			over = append(over, ts[i].Sub(ts[i-1])-window)
		}
	}
	return fmt.Sprintf("first IDENTIFY %s after launch; gap beyond the window between a bucket's IDENTIFYs p10 %s p50 %s p90 %s max %s",
		earliest.Sub(launched).Round(time.Millisecond), percentile(over, 0.1).Round(time.Millisecond),
		percentile(over, 0.5).Round(time.Millisecond), percentile(over, 0.9).Round(time.Millisecond),
		percentile(over, 1).Round(time.Millisecond))
}

// sinceClaim is the median time from winning an identify slot to sending the
// IDENTIFY (dial, HELLO), from the since_claim field of the bots' "identify sent" logs.
func sinceClaim(r *benchRun) time.Duration {
	var d []time.Duration
	for _, bot := range r.Bots() {
		for line := range strings.Lines(bot.Proc.Log()) {
			if !strings.Contains(line, `"msg":"identify sent"`) {
				continue
			}
			var rec struct {
				SinceClaim string `json:"since_claim"`
			}
			if json.Unmarshal([]byte(line), &rec) != nil {
				continue
			}
			if v, err := time.ParseDuration(rec.SinceClaim); err == nil {
				d = append(d, v)
			}
		}
	}
	return percentile(d, 0.5)
}

func sumRSS(r *benchRun) (int64, error) {
	var sum int64
	for _, bot := range r.Bots() {
		kib, err := rssKiB(bot.Proc.PID())
		if err != nil {
			return 0, fmt.Errorf("rss of %s: %w", bot.ID, err)
		}
		sum += kib
	}
	return sum, nil
}
