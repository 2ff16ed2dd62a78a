package localcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shardwarden/shardwarden/internal/faultproxy"
	"github.com/shardwarden/shardwarden/internal/health"
)

// Timings are the knobs a scaled-down cluster turns; production values divided by
// the same factor keep the system's ratios (stale after 3 heartbeats, self-fence
// after 2, identify window and Discord heartbeat likewise).
type Timings struct {
	LeaseHeartbeat   time.Duration // bot HEARTBEAT_INTERVAL (production 10s)
	DiscordHeartbeat time.Duration // the fake's HELLO interval (production 41.25s)
	IdentifyWindow   time.Duration // the fake's identify window (Discord: 5s)
	ResumeWindow     time.Duration // how long the fake keeps a session resumable
}

// Scaled are production timings divided by ten, the resume window kept long.
var Scaled = Timings{
	LeaseHeartbeat:   time.Second,
	DiscordHeartbeat: time.Second,
	IdentifyWindow:   500 * time.Millisecond,
	ResumeWindow:     2 * time.Minute,
}

// Fake Discord credentials: obviously fake, accepted only by cmd/fakediscord.
const (
	FakeToken = "fake-bot-token"
	FakeAppID = "1100000000000000001"
)

// Options describe a local cluster. DatabaseURL is required: the caller owns the
// database (a test's own database, or the demo's throwaway server).
type Options struct {
	Bins           Binaries
	Dir            string // logs and NATS storage
	DatabaseURL    string
	Replicas       int
	Shards         int
	MaxConcurrency int      // identify buckets; default 16
	Guilds         int      // default 10 per shard
	Workers        []string // built-in workers in one worker process; default eventlog
	NoWorker       bool     // start no worker process (a benchmark consumes itself)
	WorkerEnv      []string
	BotEnv         []string
	Timings        Timings // default Scaled
	ProxyDB        bool    // each bot reaches Postgres through its own fault proxy
	ProxyNATS      bool    // each bot reaches NATS through its own fault proxy
	FakeArgs       []string
	NATSArgs       []string // extra nats-server flags (the benchmark's --profile)
	// RealDiscordToken runs the bots and workers against real Discord instead of the
	// fake (the demo with DISCORD_TOKEN set). Never logged.
	RealDiscordToken string
}

// Bot is one replica.
type Bot struct {
	ID         string
	Proc       *Proc
	HealthAddr string
	DBProxy    *faultproxy.Proxy // nil unless ProxyDB
	NATSProxy  *faultproxy.Proxy // nil unless ProxyNATS
}

// Cluster is a running local system: nats-server, the fake Discord, workers and
// bots. Close stops everything it started.
type Cluster struct {
	Opts    Options
	Sup     *Supervisor
	NATS    *Proc
	NATSURL string
	Fake    *Proc // nil against real Discord
	Admin   *FakeClient
	APIURL  string
	Gateway string
	Worker  *Proc

	mu      sync.Mutex
	bots    []*Bot
	proxies []*faultproxy.Proxy
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Start launches nats-server, the fake Discord (unless RealDiscordToken), the
// workers and the bots; it returns once every process is up (not once every shard
// is ready: see WaitAllReady).
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.DatabaseURL == "" {
		return nil, errors.New("localcluster: DatabaseURL is required")
	}
	if o.Shards <= 0 && o.RealDiscordToken == "" {
		return nil, errors.New("localcluster: Shards must be positive")
	}
	if o.MaxConcurrency == 0 {
		o.MaxConcurrency = 16
	}
	if o.Guilds == 0 {
		o.Guilds = 10 * o.Shards
	}
	if len(o.Workers) == 0 {
		o.Workers = []string{"eventlog"}
	}
	if o.Timings == (Timings{}) {
		o.Timings = Scaled
	}
	sup, err := NewSupervisor(o.Dir)
	if err != nil {
		return nil, err
	}
	c = &Cluster{Opts: o, Sup: sup}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()

	natsAddr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(natsAddr)
	c.NATSURL = "nats://" + natsAddr
	storeDir := filepath.Join(o.Dir, "nats")
	if c.NATS, err = sup.Start("nats-server", o.Bins.NATSServer, append([]string{"-a", host, "-p", port, "-js", "-sd", storeDir}, o.NATSArgs...)); err != nil {
		return nil, err
	}
	if err := waitTCP(ctx, natsAddr); err != nil {
		return nil, fmt.Errorf("nats-server: %w", err)
	}

	if o.RealDiscordToken == "" {
		fakeAddr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		args := append([]string{
			"-addr", fakeAddr,
			"-token", FakeToken,
			"-shards", strconv.Itoa(o.Shards),
			"-max-concurrency", strconv.Itoa(o.MaxConcurrency),
			"-identify-window", o.Timings.IdentifyWindow.String(),
			"-heartbeat-interval", o.Timings.DiscordHeartbeat.String(),
			"-resume-window", o.Timings.ResumeWindow.String(),
			"-guilds", strconv.Itoa(o.Guilds),
			"-log-format", "json",
		}, o.FakeArgs...)
		if c.Fake, err = sup.Start("fakediscord", o.Bins.FakeDiscord, args); err != nil {
			return nil, err
		}
		c.APIURL = "http://" + fakeAddr + "/api"
		c.Gateway = "ws://" + fakeAddr + "/gateway"
		c.Admin = &FakeClient{AdminURL: "http://" + fakeAddr + "/admin"}
		if err := c.Admin.WaitReady(ctx); err != nil {
			return nil, err
		}
	}

	if !o.NoWorker {
		if err := c.StartWorker(); err != nil {
			return nil, err
		}
	}
	for i := 0; i < o.Replicas; i++ {
		if _, err := c.AddBot(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) token() string {
	if c.Opts.RealDiscordToken != "" {
		return c.Opts.RealDiscordToken
	}
	return FakeToken
}

// discordEnv points a process at the fake (or at real Discord's defaults).
func (c *Cluster) discordEnv() []string {
	env := []string{"DISCORD_TOKEN=" + c.token()}
	if c.Fake != nil {
		env = append(env, "DISCORD_API_URL="+c.APIURL, "DISCORD_GATEWAY_URL="+c.Gateway)
	}
	return env
}

// botDiscordEnv adds what only bots read: the identify window they pace IDENTIFYs
// by must be the fake's (real Discord's is 5 s, the bot's default).
func (c *Cluster) botDiscordEnv() []string {
	env := c.discordEnv()
	if c.Fake != nil {
		env = append(env, "IDENTIFY_WINDOW="+c.Opts.Timings.IdentifyWindow.String())
	}
	return env
}

// StartWorker starts the worker process running Opts.Workers, each with its own
// health port.
func (c *Cluster) StartWorker() error {
	env := append(c.discordEnv(),
		"NATS_URL="+c.NATSURL,
		"DATABASE_URL="+c.Opts.DatabaseURL,
		"LOG_FORMAT=json",
		"WORKER_ACK_WAIT=2s",
		"WORKER_BACKOFF=100ms,200ms,400ms,800ms",
		"WORKER_DRAIN_TIMEOUT=5s",
	)
	if c.Fake != nil {
		env = append(env, "DISCORD_APPLICATION_ID="+FakeAppID)
	}
	for _, w := range c.Opts.Workers {
		addr, err := FreeAddr()
		if err != nil {
			return err
		}
		env = append(env, "WORKER_"+strings.ToUpper(strings.ReplaceAll(w, "-", "_"))+"_HEALTH_ADDR="+addr)
	}
	env = append(env, c.Opts.WorkerEnv...)
	p, err := c.Sup.Start("worker", c.Opts.Bins.Worker, append([]string{"run"}, c.Opts.Workers...), env...)
	if err != nil {
		return err
	}
	c.Worker = p
	return nil
}

// AddBot starts one more replica, bot-<n>.
func (c *Cluster) AddBot() (*Bot, error) {
	c.mu.Lock()
	n := len(c.bots) + 1
	c.mu.Unlock()
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	b := &Bot{ID: fmt.Sprintf("bot-%d", n), HealthAddr: addr}
	dbURL, natsURL := c.Opts.DatabaseURL, c.NATSURL
	if c.Opts.ProxyDB {
		if b.DBProxy, dbURL, err = c.proxy(dbURL); err != nil {
			return nil, err
		}
	}
	if c.Opts.ProxyNATS {
		if b.NATSProxy, natsURL, err = c.proxy(natsURL); err != nil {
			return nil, err
		}
	}
	shardCount := strconv.Itoa(c.Opts.Shards)
	if c.Opts.Shards <= 0 {
		shardCount = "auto" // real Discord recommends the count
	}
	env := append(c.botDiscordEnv(),
		"DATABASE_URL="+dbURL,
		"NATS_URL="+natsURL,
		"SHARD_COUNT="+shardCount,
		"REPLICA_ID="+b.ID,
		"HEARTBEAT_INTERVAL="+c.Opts.Timings.LeaseHeartbeat.String(),
		"HEALTH_ADDR="+b.HealthAddr,
		"LOG_FORMAT=json",
		"LOG_LEVEL=debug",
	)
	env = append(env, c.Opts.BotEnv...)
	if b.Proc, err = c.Sup.Start(b.ID, c.Opts.Bins.Bot, []string{"run"}, env...); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.bots = append(c.bots, b)
	c.mu.Unlock()
	return b, nil
}

func (c *Cluster) proxy(rawURL string) (*faultproxy.Proxy, string, error) {
	up, err := faultproxy.UpstreamOf(rawURL)
	if err != nil {
		return nil, "", err
	}
	p, err := faultproxy.New(up)
	if err != nil {
		return nil, "", err
	}
	c.mu.Lock()
	c.proxies = append(c.proxies, p)
	c.mu.Unlock()
	u, err := p.RewriteURL(rawURL)
	return p, u, err
}

// Bots returns the replicas started so far (running or not).
func (c *Cluster) Bots() []*Bot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Bot(nil), c.bots...)
}

// WaitHealthy waits until b's /health/ready answers 200.
func (c *Cluster) WaitHealthy(ctx context.Context, b *Bot) error {
	var err error
	for {
		if !b.Proc.Running() {
			return fmt.Errorf("%s exited: %v", b.ID, b.Proc.ExitErr())
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err = health.Probe(pctx, b.HealthAddr)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy: %v", b.ID, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close stops every process (SIGTERM to bots first so leases are released, then
// SIGKILL to whatever is left) and the proxies.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for _, b := range c.Bots() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.Proc.Term(15 * time.Second); err != nil {
				b.Proc.Kill()
			}
		}()
	}
	wg.Wait()
	c.Sup.KillAll()
	c.mu.Lock()
	proxies := c.proxies
	c.proxies = nil
	c.mu.Unlock()
	for _, p := range proxies {
		_ = p.Close()
	}
}

// RestartNATS kills nats-server and starts it again after down (same port and store).
func (c *Cluster) RestartNATS(ctx context.Context, down time.Duration) error {
	c.NATS.Kill()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(down):
	}
	if err := c.NATS.Restart(); err != nil {
		return err
	}
	return waitTCP(ctx, strings.TrimPrefix(c.NATSURL, "nats://"))
}

func waitTCP(ctx context.Context, addr string) error {
	for {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not listening: %w", addr, ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}
