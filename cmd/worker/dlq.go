package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/config"
	"github.com/shardwarden/shardwarden/internal/worker"
)

func dlq(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &config.Error{Var: "dlq command", Reason: "want list, show, replay or purge"}
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "list", "show", "replay", "purge":
	case "help", "-h", "--help":
		fmt.Fprint(stdout, dlqUsage)
		return nil
	default: // before any connection: a typo should not wait for NATS
		fmt.Fprint(stderr, dlqUsage)
		return &config.Error{Var: "dlq command", Reason: fmt.Sprintf("unknown %q: want list, show, replay or purge", sub)}
	}
	fs := flag.NewFlagSet("worker dlq "+sub, flag.ContinueOnError)
	workerName := fs.String("worker", "", "only this worker's dead letters")
	all := fs.Bool("all", false, "replay or purge every dead letter (of --worker when given)")
	limit := fs.Int("limit", 100, "list at most this many")
	s, rest, err := loadSettings(fs, args, getenv, stderr, loadOpts{})
	if err != nil {
		return err
	}
	nc, err := nats.Connect(s.NATSURL, nats.Name("shardwarden-worker-dlq"), nats.Timeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	switch sub {
	case "list":
		dls, err := worker.ListDeadLetters(ctx, js, *workerName, *limit)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tWORKER\tSUBJECT\tEVENT ID\tDELIVERED\tDEAD AT\tERROR")
		for _, d := range dls {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", d.Seq, d.Worker, d.Subject, d.EventID, d.Delivered,
				d.DeadAt.Format(time.RFC3339), truncate(d.Error, 80))
		}
		return tw.Flush()
	case "show":
		seqs, err := parseSeqs(rest)
		if err != nil {
			return err
		}
		for _, seq := range seqs {
			d, err := worker.GetDeadLetter(ctx, js, seq)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "seq: %d\nworker: %s\nsubject: %s\nevent_id: %s\ndelivered: %d\ndead_at: %s\nerror: %s\nheaders:\n",
				d.Seq, d.Worker, d.Subject, d.EventID, d.Delivered, d.DeadAt.Format(time.RFC3339Nano), d.Error)
			keys := make([]string, 0, len(d.Header))
			for k := range d.Header {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(stdout, "  %s: %s\n", k, strings.Join(d.Header[k], ", "))
			}
			fmt.Fprintf(stdout, "data: %s\n\n", d.Data)
		}
		return nil
	case "replay":
		seqs, err := parseSeqs(rest)
		if *all {
			if len(rest) > 0 {
				return &config.Error{Var: "dlq replay", Reason: "give sequences or --all, not both"}
			}
			dls, lerr := worker.ListDeadLetters(ctx, js, *workerName, 0)
			if lerr != nil {
				return lerr
			}
			seqs, err = nil, nil
			for _, d := range dls {
				seqs = append(seqs, d.Seq)
			}
		}
		if err != nil {
			return err
		}
		for _, seq := range seqs {
			d, err := worker.ReplayDeadLetter(ctx, js, seq)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "replayed %d (%s, %s) to %s\n", seq, d.EventID, d.Subject, d.Worker)
		}
		return nil
	default: // purge: the command was checked before connecting
		if !*all && *workerName == "" {
			return &config.Error{Var: "dlq purge", Reason: "name --worker W, or --all for every worker"}
		}
		if err := worker.PurgeDeadLetters(ctx, js, *workerName); err != nil {
			return err
		}
		target := "every worker"
		if *workerName != "" {
			target = bus.DeadLetterSubject(*workerName)
		}
		fmt.Fprintf(stdout, "purged dead letters of %s\n", target)
		return nil
	}
}

const dlqUsage = `usage: worker dlq <command> [flags] [args]

  list [--worker W] [--limit N]   list dead letters
  show <seq>...                   print dead letters with their headers and data
  replay <seq>...                 send dead letters back to their worker
  replay --worker W --all         ... every dead letter of a worker (--all alone: of every worker)
  purge --worker W | --all        delete dead letters

Run ` + "`worker dlq <command> --help`" + ` for the connection flags.
`

func parseSeqs(args []string) ([]uint64, error) {
	if len(args) == 0 {
		return nil, &config.Error{Var: "sequence", Reason: "give at least one dead letter sequence (see `worker dlq list`)"}
	}
	out := make([]uint64, 0, len(args))
	for _, a := range args {
		n, err := strconv.ParseUint(a, 10, 64)
		if err != nil || n == 0 {
			return nil, &config.Error{Var: "sequence", Reason: fmt.Sprintf("not a sequence number: %q", a)}
		}
		out = append(out, n)
	}
	return out, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
