// Command worker runs shardwarden's workers: JetStream consumers of the Discord
// events the bot replicas forward.
//
//	worker run <name>...                   run named workers, each with its own health port
//	worker dlq list|show|replay|purge      inspect and replay dead letters
//	worker healthcheck <name>              exit 0 when the worker is ready (container checks)
//	worker version
//
// Configuration comes from the environment (with _FILE variants for secrets) or
// flags; a bad value exits with status 2 naming the variable.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/shardwarden/shardwarden/internal/buildinfo"
	"github.com/shardwarden/shardwarden/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "worker:", err)
		}
		if config.IsConfigError(err) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

const usage = `usage: worker <command> [flags] [args]

commands:
  run <name>...            run the named workers (known: %s)
  dlq list [--worker W]    list dead letters
  dlq show <seq>           print one dead letter with its headers and data
  dlq replay <seq>...      send dead letters back to their worker (or --worker W --all)
  dlq purge --worker W     delete a worker's dead letters (or --all)
  healthcheck <name>       probe a running worker's /health/ready
  version                  print the version
`

// run is main without the process: args without the program name, getenv for the
// environment. Cancelling ctx (SIGTERM) drains and returns.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintf(stderr, usage, knownNames())
		return &config.Error{Var: "command", Reason: "missing"}
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "run":
		return runWorkers(ctx, rest, getenv, stderr)
	case "dlq":
		return dlq(ctx, rest, getenv, stdout, stderr)
	case "healthcheck":
		return healthcheck(ctx, rest, getenv, stderr)
	case "version":
		fmt.Fprintln(stdout, buildinfo.String())
		return nil
	case "help", "-h", "--help":
		fmt.Fprintf(stdout, usage, knownNames())
		return nil
	default:
		fmt.Fprintf(stderr, usage, knownNames())
		return &config.Error{Var: "command", Reason: fmt.Sprintf("unknown command %q", cmd)}
	}
}
