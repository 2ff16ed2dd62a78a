// Command demo runs shardwarden locally: a throwaway Postgres, nats-server, the
// fake Discord with a few thousand guilds and steady chatter, three bot replicas and
// the workers, and a live view of leases, throughput and handoffs. Kill a replica
// (it prints the PIDs) and watch its shards move. Ctrl-C stops everything.
//
// With DISCORD_TOKEN set it runs the same local system against real Discord.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardwarden/shardwarden/internal/localcluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		if err == flag.ErrHelp {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type options struct {
	replicas int
	shards   int
	guilds   int
	rate     float64
	duration time.Duration
	refresh  time.Duration
	plain    bool
	dir      string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.IntVar(&o.replicas, "replicas", 3, "bot replicas")
	fs.IntVar(&o.shards, "shards", 8, "gateway shards (against the fake)")
	fs.IntVar(&o.guilds, "guilds", 3000, "simulated guilds (against the fake)")
	fs.Float64Var(&o.rate, "rate", 100, "simulated events per second (against the fake)")
	fs.DurationVar(&o.duration, "duration", 0, "stop after this long (0: until Ctrl-C)")
	fs.DurationVar(&o.refresh, "refresh", time.Second, "live view refresh interval")
	fs.BoolVar(&o.plain, "plain", false, "print the view as plain text blocks instead of redrawing the screen")
	fs.StringVar(&o.dir, "dir", ".cache/demo", "working directory for binaries, logs and the throwaway Postgres")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	root, err := localcluster.ModuleRoot()
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(filepath.Join(root, o.dir))
	if err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(dir, "logs")); err != nil {
		return err
	}

	fmt.Fprintln(stdout, "demo: building bot, worker, fakediscord and nats-server …")
	bins, err := localcluster.Build(ctx, root, filepath.Join(dir, "bin"), false)
	if err != nil {
		return err
	}

	dbURL := os.Getenv("DATABASE_URL")
	if dbURL == "" {
		fmt.Fprintln(stdout, "demo: starting a throwaway Postgres (scripts/pg.sh) …")
		pgDir := filepath.Join(dir, "pg")
		_ = exec.Command(filepath.Join(root, "scripts/pg.sh"), "stop", pgDir).Run() // a previous run killed hard
		out, err := exec.CommandContext(ctx, filepath.Join(root, "scripts/pg.sh"), "start", pgDir).Output()
		if err != nil {
			return fmt.Errorf("start postgres: %w", err)
		}
		dbURL = strings.TrimSpace(string(out))
		defer func() {
			_ = exec.Command(filepath.Join(root, "scripts/pg.sh"), "stop", pgDir).Run()
		}()
	}

	opts := localcluster.Options{
		Bins:        bins,
		Dir:         filepath.Join(dir, "logs"),
		DatabaseURL: dbURL,
		Replicas:    o.replicas,
		Shards:      o.shards,
		Guilds:      o.guilds,
		Workers:     []string{"commands", "guilds", "eventlog"},
		// Discord's own identify window; leases five times faster than production so a
		// killed replica's shards move within about six seconds instead of thirty.
		Timings: localcluster.Timings{
			LeaseHeartbeat:   2 * time.Second,
			DiscordHeartbeat: 10 * time.Second,
			IdentifyWindow:   5 * time.Second,
			ResumeWindow:     3 * time.Minute,
		},
		MaxConcurrency: 4,
	}
	if tok := os.Getenv("DISCORD_TOKEN"); tok != "" {
		opts.RealDiscordToken, opts.Shards = tok, 0
		fmt.Fprintln(stdout, "demo: DISCORD_TOKEN is set: running against real Discord (shard count from /gateway/bot)")
	}
	fmt.Fprintln(stdout, "demo: starting nats-server, fake Discord, workers and bots …")
	lc, err := localcluster.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(stdout, "\ndemo: stopping (bots hand their shards over and release their leases) …")
		lc.Close()
		fmt.Fprintln(stdout, "demo: stopped; logs in", opts.Dir)
	}()
	if lc.Admin != nil {
		if err := lc.Admin.StartTraffic(ctx, localcluster.Traffic{Rate: o.rate, PayloadSize: 512}); err != nil {
			return err
		}
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()

	v := &view{lc: lc, pool: pool, out: stdout, plain: o.plain, started: time.Now()}
	t := time.NewTicker(o.refresh)
	defer t.Stop()
	for {
		v.render(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

type view struct {
	lc      *localcluster.Cluster
	pool    *pgxpool.Pool
	out     io.Writer
	plain   bool
	started time.Time
	lastN   int64
	lastAt  time.Time
	rate    float64
}

func (v *view) render(ctx context.Context) {
	var b strings.Builder
	if !v.plain {
		b.WriteString("\033[H\033[2J")
	}
	fmt.Fprintf(&b, "shardwarden demo — up %s — Ctrl-C stops everything\n\n", time.Since(v.started).Round(time.Second))

	var n int64
	if err := v.pool.QueryRow(ctx, `SELECT count(*) FROM discord_event_log`).Scan(&n); err == nil {
		now := time.Now()
		if !v.lastAt.IsZero() {
			v.rate = float64(n-v.lastN) / now.Sub(v.lastAt).Seconds()
		}
		v.lastN, v.lastAt = n, now
	}
	fmt.Fprintf(&b, "events processed: %d (%.0f/s)\n\n", n, v.rate)

	b.WriteString("replicas (kill one and watch its shards move: kill -9 <pid>)\n")
	for _, bot := range v.lc.Bots() {
		state := "running"
		if !bot.Proc.Running() {
			state = "exited"
		}
		fmt.Fprintf(&b, "  %-8s pid %-7d %-8s health http://%s/health/ready\n", bot.ID, bot.Proc.PID(), state, bot.HealthAddr)
	}
	if v.lc.Worker != nil {
		fmt.Fprintf(&b, "  %-8s pid %-7d\n", "worker", v.lc.Worker.PID())
	}
	b.WriteString("\nleases (SELECT * FROM discord_bot_shards_status)\n")
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  shard\towner\tepoch\tstate\tstatus\theartbeat age\tresumable\tguilds\tlast event")
	rows, err := v.pool.Query(ctx, `
		SELECT shard_id, coalesce(owner_id, '-'), epoch, state, status, coalesce(heartbeat_age_s::text, '-'),
		       resumable, guilds, coalesce(last_event_age_s::text, '-')
		FROM discord_bot_shards_status`)
	if err == nil {
		for rows.Next() {
			var shard, guilds int
			var epoch int64
			var owner, state, status, hb, last string
			var resumable bool
			if rows.Scan(&shard, &owner, &epoch, &state, &status, &hb, &resumable, &guilds, &last) == nil {
				fmt.Fprintf(tw, "  %d\t%s\t%d\t%s\t%s\t%ss\t%v\t%d\t%ss ago\n", shard, owner, epoch, state, status, hb, resumable, guilds, last)
			}
		}
		rows.Close()
	} else {
		fmt.Fprintf(tw, "  (not yet: %v)\n", err)
	}
	tw.Flush()

	if v.lc.Admin != nil {
		if sessions, err := v.lc.Admin.Sessions(ctx); err == nil {
			sort.Slice(sessions, func(i, j int) bool { return sessions[i].Start.After(sessions[j].Start) })
			b.WriteString("\nlast session starts at the fake Discord (resume = handoff kept the session)\n")
			for i, s := range sessions {
				if i == 6 {
					break
				}
				fmt.Fprintf(&b, "  %s  shard %-3d %-8s session %s\n", s.Start.Format("15:04:05.000"), s.Shard, s.Kind, s.SessionID)
			}
		}
	}
	fmt.Fprint(v.out, b.String())
	if v.plain {
		fmt.Fprintln(v.out)
	}
}
