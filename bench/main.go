// Command bench measures shardwarden's performance figures on this machine, side by
// side with `nats bench`, and prints one line per figure:
//
//	bench <name> <value> <unit>
//
// Run it through scripts/bench.sh (`make bench`, `make bench-quick`), which starts a
// throwaway PostgreSQL with pg_stat_statements and installs the pinned nats CLI.
// Every figure comes from real processes on loopback: cmd/fakediscord, cmd/bot
// replicas, nats-server, PostgreSQL.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/shardwarden/shardwarden/internal/localcluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// figure is one result line.
type figure struct {
	name  string
	value float64
	unit  string
}

type bench struct {
	quick    bool
	bins     localcluster.Binaries
	adminURL string // server admin connection (database postgres)
	natsCLI  string
	dir      string
	log      io.Writer
	figures  []figure
	// profileDir, when set, receives CPU profiles taken during the pipeline run.
	profileDir string
}

func (b *bench) add(name string, value float64, unit string) {
	b.figures = append(b.figures, figure{name, value, unit})
	fmt.Fprintf(b.log, "bench: %s = %.4g %s\n", name, value, unit)
}

func (b *bench) note(format string, args ...any) {
	fmt.Fprintf(b.log, "bench: "+format+"\n", args...)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := fs.Bool("quick", false, "smaller runs (under 5 minutes)")
	only := fs.String("only", "", "run only this part: nats, pipeline, handoff, failover, scale")
	keep := fs.Bool("keep", false, "keep the processes' logs (the working directory is printed)")
	profile := fs.String("profile", "", "write CPU profiles of the bot and nats-server during the pipeline, and heap profiles at scale, to this directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	adminURL := os.Getenv("BENCH_DATABASE_URL")
	natsCLI := os.Getenv("NATS_CLI_BIN")
	if adminURL == "" || natsCLI == "" {
		return fmt.Errorf("BENCH_DATABASE_URL and NATS_CLI_BIN must be set: run scripts/bench.sh")
	}
	root, err := localcluster.ModuleRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "shardwarden-bench")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Fprintln(stderr, "bench: logs kept in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	b := &bench{quick: *quick, adminURL: adminURL, natsCLI: natsCLI, dir: dir, log: stderr, profileDir: *profile}
	b.note("building binaries …")
	if b.bins, err = localcluster.Build(ctx, root, filepath.Join(dir, "bin"), false); err != nil {
		return err
	}

	parts := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"nats", b.natsBench},
		{"pipeline", b.pipeline},
		{"handoff", b.handoff},
		{"failover", b.failover},
		{"scale", b.scale},
	}
	start := time.Now()
	for _, p := range parts {
		if *only != "" && *only != p.name {
			continue
		}
		b.note("---- %s ----", p.name)
		if err := p.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	b.derive()
	b.note("done in %s", time.Since(start).Round(time.Second))
	for _, f := range b.figures {
		fmt.Fprintf(stdout, "bench %s %s %s\n", f.name, formatValue(f.value), f.unit)
	}
	return nil
}

// derive adds the figures computed from others.
func (b *bench) derive() {
	get := func(name string) (float64, bool) {
		for _, f := range b.figures {
			if f.name == name {
				return f.value, true
			}
		}
		return 0, false
	}
	p, ok1 := get("pipeline_events_per_s")
	n, ok2 := get("nats_bench_pub_per_s")
	if ok1 && ok2 && n > 0 {
		b.add("pipeline_ratio_vs_nats", p/n, "ratio")
	}
	// What nats bench's own publisher and consumer reach for a message that is
	// stored, then delivered and acknowledged, one after the other on this machine.
	if c, ok := get("nats_bench_consume_per_s"); ok && ok1 && ok2 && n > 0 && c > 0 {
		both := 1 / (1/n + 1/c)
		b.add("nats_bench_pub_then_consume_per_s", both, "msgs/s")
		b.add("pipeline_ratio_vs_nats_pub_then_consume", p/both, "ratio")
	}
}

func formatValue(v float64) string {
	switch {
	case v == float64(int64(v)) && (v >= 100 || v <= -100):
		return fmt.Sprintf("%d", int64(v))
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}
