package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/fakediscord"
	"github.com/shardwarden/shardwarden/internal/localcluster"
	"github.com/shardwarden/shardwarden/internal/worker"
)

// natsBench is the ceiling: `nats bench js pub async --dedup`, 1 KiB messages, file
// storage, R1, against a nats-server of the same version on this machine.
func (b *bench) natsBench(ctx context.Context) error {
	msgs := 200_000
	if b.quick {
		msgs = 100_000
	}
	sup, err := localcluster.NewSupervisor(filepath.Join(b.dir, "natsbench"))
	if err != nil {
		return err
	}
	defer sup.KillAll()
	addr, err := localcluster.FreeAddr()
	if err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(addr)
	if _, err := sup.Start("nats-server", b.bins.NATSServer, []string{"-a", host, "-p", port, "-js", "-sd", filepath.Join(sup.Dir, "store")}); err != nil {
		return err
	}
	url := "nats://" + addr
	if err := waitNATS(ctx, url); err != nil {
		return err
	}
	cli := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, b.natsCLI, append([]string{"-s", url}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return out, fmt.Errorf("nats %v: %w\n%s", args, err, out)
		}
		return out, nil
	}
	// Each round gets its own stream: nats bench numbers its message ids from 1, and
	// a second round into the same stream would be answered as duplicates.
	var rates, consumeRates []float64
	for round := range rounds {
		stream, subject := fmt.Sprintf("bench%d", round), fmt.Sprintf("bench%d.x", round)
		// natscli v0.5.1's --create fails against server 2.12 (API level): create first.
		if _, err := cli("stream", "add", stream, "--subjects", subject, "--storage", "file",
			"--replicas", "1", "--dupe-window", "2m", "--defaults"); err != nil {
			return err
		}
		csvPath := filepath.Join(sup.Dir, stream+".csv")
		if _, err := cli("bench", "js", "pub", "async", subject, "--stream", stream, "--size", "1KiB",
			"--msgs", strconv.Itoa(msgs), "--dedup", "--no-progress", "--csv", csvPath); err != nil {
			return err
		}
		rate, err := csvMsgsPerSec(csvPath)
		if err != nil {
			return err
		}
		// The other half of a pipeline, on the messages just stored: a durable
		// consumer acknowledging each message.
		consumeCSV := filepath.Join(sup.Dir, stream+"-consume.csv")
		if _, err := cli("bench", "js", "consume", "--stream", stream, "--msgs", strconv.Itoa(msgs),
			"--acks", "explicit", "--batch", "1000", "--no-progress", "--csv", consumeCSV); err != nil {
			return err
		}
		consumeRate, err := csvMsgsPerSec(consumeCSV)
		if err != nil {
			return err
		}
		b.note("nats bench js pub async --dedup: round %d: %d msgs of 1 KiB at %.0f msgs/s; js consume (explicit acks) %.0f msgs/s",
			round+1, msgs, rate, consumeRate)
		rates, consumeRates = append(rates, rate), append(consumeRates, consumeRate)
		if _, err := cli("stream", "rm", "-f", stream); err != nil {
			return err
		}
	}
	b.add("nats_bench_pub_per_s", median(rates), "msgs/s")
	b.add("nats_bench_consume_per_s", median(consumeRates), "msgs/s")
	return nil
}

// rounds is how often the throughput figures are measured; the median is reported.
const rounds = 3

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func csvMsgsPerSec(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("nats bench csv: %w", err)
	}
	col := -1
	for i, h := range recs[0] {
		if h == "MsgsPerSec" {
			col = i
		}
	}
	if col < 0 || len(recs) < 2 {
		return 0, fmt.Errorf("nats bench csv: no MsgsPerSec in %v", recs[0])
	}
	var sum float64
	for _, r := range recs[1:] {
		v, err := strconv.ParseFloat(r[col], 64)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

func waitNATS(ctx context.Context, url string) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		nc, err := nats.Connect(url)
		if err == nil {
			js, _ := jetstream.New(nc)
			_, err = js.AccountInfo(ctx)
			nc.Close()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nats at %s not ready: %w", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// consumer is the "worker that acks": the worker runtime with a handler that
// counts, and records when each event arrived while the latency is measured.
type consumer struct {
	w          *worker.Worker
	nc         *nats.Conn
	handled    atomic.Int64
	record     atomic.Bool // the latency phase: keep each event's times
	mu         sync.Mutex
	arrived    map[uint64]time.Time
	received   map[uint64]time.Time // the gateway's receive time (header)
	stored     map[uint64]time.Time // JetStream's store time (metadata)
	last       atomic.Int64         // unix nanos of the latest handled event
	lastStored atomic.Int64         // unix nanos of the latest JetStream store time seen
}

func startConsumer(ctx context.Context, natsURL, name string, deliver jetstream.DeliverPolicy) (*consumer, error) {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if err := bus.EnsureStreams(ctx, js, bus.StreamConfig{}); err != nil {
		nc.Close()
		return nil, err
	}
	c := &consumer{nc: nc, arrived: map[uint64]time.Time{}, received: map[uint64]time.Time{}, stored: map[uint64]time.Time{}}
	c.w, err = worker.New(worker.Config{
		Name:           name,
		FilterSubjects: []string{bus.EventsSubjects},
		JetStream:      js,
		DeliverPolicy:  deliver,
		Concurrency:    4,
		PullBatch:      1000,
		MaxAckPending:  20_000,
		Handler: worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
			now := time.Now()
			if c.record.Load() { // not during throughput: a real worker keeps no such map
				c.recordArrival(m, now)
			}
			c.handled.Add(1)
			storeMax(&c.last, now.UnixNano())
			storeMax(&c.lastStored, m.StoredAt.UnixNano())
			return nil
		}),
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	if err := c.w.Start(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// storeMax raises a to v unless it already holds more (handlers run concurrently).
func storeMax(a *atomic.Int64, v int64) {
	for old := a.Load(); v > old && !a.CompareAndSwap(old, v); old = a.Load() {
	}
}

// waitCount polls n every 10 ms until it reaches want, for five minutes at most.
func waitCount(what string, want int64, n func() (int64, error)) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		got, err := n()
		if err != nil {
			return err
		}
		if got >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d of %d after 5 minutes", what, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *consumer) recordArrival(m *worker.Message, now time.Time) {
	id, ok := fakediscord.EventID(m.Data)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, seen := c.arrived[id]; !seen {
		c.arrived[id] = now
		c.received[id] = m.ReceivedAt
		c.stored[id] = m.StoredAt
	}
}

func (c *consumer) stop() {
	c.w.Stop()
	c.nc.Close()
}

// pipeline: the fake at full rate over 16 shards → one bot → JetStream (dedup ids),
// alone; the worker runtime draining and acking those events, alone; the latency
// at 1,000 events/s through both; then both at full rate, three rounds.
func (b *bench) pipeline(ctx context.Context) error {
	events := int64(200_000)
	latencyFor := 20 * time.Second
	if b.quick {
		events, latencyFor = 60_000, 8*time.Second
	}
	r, err := b.startRun(ctx, "pipeline", localcluster.Options{Replicas: 1, Shards: 16, NoWorker: true})
	if err != nil {
		return err
	}
	defer r.close()
	if err := r.waitReady(ctx, 60*time.Second); err != nil {
		return err
	}
	// Ingest alone first (no consumer yet): fake → bot → stored in JetStream. It
	// separates what storing costs from what delivering and acknowledging add.
	stored, err := b.ingestRound(ctx, r, events)
	if err != nil {
		return err
	}
	if err := b.consumeRound(ctx, r, stored); err != nil {
		return err
	}
	// The pipeline's consumer starts at the end of the stream: not the events above.
	c, err := startConsumer(ctx, r.NATSURL, "bench", jetstream.DeliverNewPolicy)
	if err != nil {
		return err
	}
	defer c.stop()
	// Latency at a steady 1,000 events/s first, on a quiet stream: the fake's
	// dispatch time (ledger) to the handler's arrival time, same machine clock.
	// Let READY and GUILD_CREATEs drain first.
	time.Sleep(2 * time.Second)
	latMeter := newCPUMeter(map[string]int{"fakediscord": r.Fake.PID(), "bot": r.Bots()[0].Proc.PID(),
		"nats-server": r.NATS.PID(), "consumer": os.Getpid()})
	c.record.Store(true)
	phase := time.Now()
	if err := r.Admin.StartTraffic(ctx, localcluster.Traffic{Rate: 1000, PayloadSize: 1024, Duration: latencyFor.String()}); err != nil {
		return err
	}
	if b.profileDir != "" {
		go b.cpuProfile(ctx, "http://"+r.natsProfileAddr, "nats-server-latency.pprof", latencyFor/2)
	}
	time.Sleep(latencyFor)
	b.note("latency phase CPU: %s", latMeter)
	// Every event of the phase must have arrived: leaving out the slow ones would
	// flatter the tail.
	var lat, toBot, toStore, toWorker []time.Duration
	deadline := time.Now().Add(60 * time.Second)
	for {
		var sent []fakediscord.Event
		if err := r.Admin.Events(ctx, func(e fakediscord.Event) {
			if !e.At.Before(phase) {
				sent = append(sent, e)
			}
		}); err != nil {
			return err
		}
		lat, toBot, toStore, toWorker = lat[:0], toBot[:0], toStore[:0], toWorker[:0]
		c.mu.Lock()
		for _, e := range sent {
			if at, ok := c.arrived[e.ID]; ok {
				lat = append(lat, at.Sub(e.At))
				if rcv, st := c.received[e.ID], c.stored[e.ID]; !rcv.IsZero() && !st.IsZero() {
					toBot, toStore, toWorker = append(toBot, rcv.Sub(e.At)), append(toStore, st.Sub(rcv)), append(toWorker, at.Sub(st))
				}
			}
		}
		c.mu.Unlock()
		if len(lat) == len(sent) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("latency: %d of %d events arrived", len(lat), len(sent))
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.record.Store(false)
	if len(lat) < 100 {
		return fmt.Errorf("latency: only %d events matched", len(lat))
	}
	b.note("latency: %d events at 1,000/s; p50/p99 fake→bot %s/%s, bot→stored %s/%s, stored→handler %s/%s", len(lat),
		percentile(toBot, 0.5), percentile(toBot, 0.99), percentile(toStore, 0.5), percentile(toStore, 0.99),
		percentile(toWorker, 0.5), percentile(toWorker, 0.99))
	b.add("e2e_latency_p50_ms", ms(percentile(lat, 0.50)), "ms")
	b.add("e2e_latency_p99_ms", ms(percentile(lat, 0.99)), "ms")
	// Then throughput: the fake at full rate, a few rounds on the same cluster.
	var rates []float64
	for round := range rounds {
		rate, err := b.pipelineRound(ctx, r, c, events, round == 0 && b.profileDir != "")
		if err != nil {
			return err
		}
		rates = append(rates, rate)
	}
	b.add("pipeline_events_per_s", median(rates), "events/s")
	return nil
}

// ingestRound sends events at full rate with nobody consuming and reports the rate
// at which JetStream stored them; it returns how many messages the stream holds.
func (b *bench) ingestRound(ctx context.Context, r *benchRun, events int64) (uint64, error) {
	nc, err := nats.Connect(r.NATSURL)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	time.Sleep(2 * time.Second) // READY and GUILD_CREATEs stored
	stream, err := js.Stream(ctx, bus.EventsStream)
	if err != nil {
		return 0, err
	}
	stored := func() (uint64, error) {
		info, err := stream.Info(ctx)
		if err != nil {
			return 0, err
		}
		return info.State.Msgs, nil
	}
	base, err := stored()
	if err != nil {
		return 0, err
	}
	meter := newCPUMeter(map[string]int{"fakediscord": r.Fake.PID(), "bot": r.Bots()[0].Proc.PID(), "nats-server": r.NATS.PID()})
	start := time.Now()
	if err := r.Admin.StartTraffic(ctx, localcluster.Traffic{Rate: 0, PayloadSize: 1024, Count: events}); err != nil {
		return 0, err
	}
	var n uint64
	if err := waitCount("ingest: events stored", events, func() (int64, error) {
		n, err = stored()
		return int64(n - base), err
	}); err != nil {
		return 0, err
	}
	elapsed := time.Since(start)
	b.note("ingest alone: %d events stored in %s; CPU: %s", events, elapsed.Round(time.Millisecond), meter)
	b.add("pipeline_ingest_events_per_s", float64(events)/elapsed.Seconds(), "events/s")
	return n, nil
}

// consumeRound drains what the stream holds (the ingest round's events) with the
// worker runtime alone, nothing else running: the consumer's half of the pipeline.
func (b *bench) consumeRound(ctx context.Context, r *benchRun, msgs uint64) error {
	meter := newCPUMeter(map[string]int{"nats-server": r.NATS.PID(), "consumer": os.Getpid()})
	start := time.Now()
	c, err := startConsumer(ctx, r.NATSURL, "bench-drain", jetstream.DeliverAllPolicy)
	if err != nil {
		return err
	}
	defer c.stop()
	if b.profileDir != "" {
		go b.selfProfile("consumer-alone.pprof", time.Second)
	}
	if err := waitCount("consume: events handled", int64(msgs), func() (int64, error) { return c.handled.Load(), nil }); err != nil {
		return err
	}
	elapsed := time.Unix(0, c.last.Load()).Sub(start)
	b.note("consume alone: %d events handled and acknowledged in %s; CPU: %s", msgs, elapsed.Round(time.Millisecond), meter)
	b.add("pipeline_consume_events_per_s", float64(msgs)/elapsed.Seconds(), "events/s")
	return nil
}

// pipelineRound sends events at full rate and returns events/s from the traffic's
// start to the last handled event.
func (b *bench) pipelineRound(ctx context.Context, r *benchRun, c *consumer, events int64, profile bool) (float64, error) {
	time.Sleep(time.Second)
	base := c.handled.Load()
	meter := newCPUMeter(map[string]int{"fakediscord": r.Fake.PID(), "bot": r.Bots()[0].Proc.PID(),
		"nats-server": r.NATS.PID(), "consumer": os.Getpid()})
	start := time.Now()
	if err := r.Admin.StartTraffic(ctx, localcluster.Traffic{Rate: 0, PayloadSize: 1024, Count: events}); err != nil {
		return 0, err
	}
	if profile {
		go b.cpuProfile(ctx, "http://"+r.Bots()[0].HealthAddr, "bot-pipeline.pprof", 2*time.Second)
		go b.cpuProfile(ctx, "http://"+r.natsProfileAddr, "nats-server-pipeline.pprof", 2*time.Second)
		go b.selfProfile("consumer-pipeline.pprof", 2*time.Second) // the consumer runs in this process
		go b.saveProfile(ctx, r.Admin.AdminURL+"/debug/pprof/profile?seconds=2", "fakediscord-pipeline.pprof")
	}
	if err := waitCount("pipeline: events handled", events, func() (int64, error) { return c.handled.Load() - base, nil }); err != nil {
		return 0, err
	}
	last, stored := time.Unix(0, c.last.Load()), time.Unix(0, c.lastStored.Load())
	elapsed := last.Sub(start)
	rate := float64(events) / elapsed.Seconds()
	b.note("pipeline: %d events of 1 KiB through 16 shards in %s (%.0f/s), the last stored after %s; CPU: %s",
		events, elapsed.Round(time.Millisecond), rate, stored.Sub(start).Round(time.Millisecond), meter)
	return rate, nil
}

// handoff: planned handoffs (rolling restarts of two replicas over 16 shards), from
// the old owner's close to the RESUME on the new owner, as the fake saw them.
func (b *bench) handoff(ctx context.Context) error {
	restarts := 8
	if b.quick {
		restarts = 4
	}
	r, err := b.startRun(ctx, "handoff", localcluster.Options{Replicas: 2, Shards: 16, NoWorker: true})
	if err != nil {
		return err
	}
	defer r.close()
	if err := r.waitReady(ctx, 60*time.Second); err != nil {
		return err
	}
	if err := r.Admin.StartTraffic(ctx, localcluster.Traffic{Rate: 200, PayloadSize: 512}); err != nil {
		return err
	}
	since := time.Now()
	bots := r.Bots()
	for i := 0; i < restarts; i++ {
		bot := bots[i%len(bots)]
		if err := bot.Proc.Term(30 * time.Second); err != nil {
			return err
		}
		if err := bot.Proc.Restart(); err != nil {
			return err
		}
		if err := r.waitReady(ctx, 60*time.Second); err != nil {
			return err
		}
	}
	sessions, err := r.sessions(ctx)
	if err != nil {
		return err
	}
	gaps, identifies := takeovers(sessions, since)
	if len(gaps) < 50 && !b.quick {
		return fmt.Errorf("handoff: only %d handoffs measured", len(gaps))
	}
	b.note("handoff: %d planned handoffs over %d rolling restarts, %d of them by IDENTIFY", len(gaps), restarts, identifies)
	b.add("handoff_p50_ms", ms(percentile(gaps, 0.50)), "ms")
	b.add("handoff_p99_ms", ms(percentile(gaps, 0.99)), "ms")
	b.add("handoff_identifies", float64(identifies), "count")
	return nil
}

// takeovers returns, for every session interval that began after since and
// followed another of its shard, the gap from the previous one's end when it was a
// RESUME, and counts those that were an IDENTIFY.
func takeovers(sessions []fakediscord.SessionInterval, since time.Time) (gaps []time.Duration, identifies int) {
	byShard := map[int][]fakediscord.SessionInterval{}
	for _, s := range sessions {
		byShard[s.Shard] = append(byShard[s.Shard], s)
	}
	for _, list := range byShard {
		sortByStart(list)
		for i := 1; i < len(list); i++ {
			prev, cur := list[i-1], list[i]
			if cur.Start.Before(since) {
				continue
			}
			if cur.Kind == "identify" {
				identifies++
				continue
			}
			if !prev.End.IsZero() && !cur.Start.Before(prev.End) {
				gaps = append(gaps, cur.Start.Sub(prev.End))
			}
		}
	}
	return gaps, identifies
}

func sortByStart(list []fakediscord.SessionInterval) {
	slices.SortFunc(list, func(a, b fakediscord.SessionInterval) int { return a.Start.Compare(b.Start) })
}

// cpuProfile saves a CPU profile of a process serving /debug/pprof at base.
func (b *bench) cpuProfile(ctx context.Context, base, name string, d time.Duration) {
	b.saveProfile(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, int(d.Seconds())), name)
}

// selfProfile saves a CPU profile of this process (the benchmark's consumer).
func (b *bench) selfProfile(name string, d time.Duration) {
	if err := os.MkdirAll(b.profileDir, 0o755); err != nil {
		b.note("profile: %v", err)
		return
	}
	f, err := os.Create(filepath.Join(b.profileDir, name))
	if err != nil {
		b.note("profile: %v", err)
		return
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		b.note("profile %s: %v", name, err)
		return
	}
	time.Sleep(d)
	pprof.StopCPUProfile()
	b.note("profile: wrote %s", filepath.Join(b.profileDir, name))
}

// saveProfile saves what url (a /debug/pprof endpoint) answers into profileDir.
func (b *bench) saveProfile(ctx context.Context, url, name string) {
	if err := os.MkdirAll(b.profileDir, 0o755); err != nil {
		b.note("profile: %v", err)
		return
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.note("profile %s: %v", name, err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(filepath.Join(b.profileDir, name))
	if err != nil {
		b.note("profile: %v", err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		b.note("profile %s: %v", name, err)
		return
	}
	b.note("profile: wrote %s", filepath.Join(b.profileDir, name))
}
