// Command bot is a shardwarden bot replica and its operator tools.
//
//	bot run            drive the Discord shards this replica leases (the default)
//	bot migrate        apply the database migrations, print the schema version
//	bot shards         print the shard lease table (--json for scripts)
//	bot healthcheck    exit 0 when the replica at HEALTH_ADDR is ready (container checks)
//	bot version        print the version
//
// Configuration comes from the environment (DATABASE_URL or DATABASE_URL_FILE,
// ...) or flags; a bad or missing value exits with status 2 naming the variable,
// any other failure with status 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/shardwarden/shardwarden/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode reports err on stderr and maps it to the process status: 0 for
// success, 2 for configuration and usage errors, 1 for anything else.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if !errors.Is(err, flag.ErrHelp) { // the flag package already printed the usage
		fmt.Fprintln(stderr, "bot:", err)
	}
	if config.IsConfigError(err) {
		return 2
	}
	return 1
}

// defaultCommand runs when the first argument is not a command (`bot`, `bot -flag`).
const defaultCommand = "run"

const usage = `usage: bot [command] [flags]

commands:
  run            drive the shards this replica leases (default)
  migrate        apply database migrations and print the schema version
  shards         print the shard lease table (--json for scripts)
  healthcheck    probe the replica's /health/ready at HEALTH_ADDR (exit 0 or 1)
  version        print the version

Every command takes -h for its flags; each flag has an environment variable.
`

// run is main without the process: args without the program name. Cancelling
// ctx (SIGINT, SIGTERM) stops the command gracefully.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd, rest := defaultCommand, args
	if len(args) > 0 && (!strings.HasPrefix(args[0], "-") || args[0] == "-h" || args[0] == "--help") {
		cmd, rest = args[0], args[1:]
	}
	switch cmd {
	case "migrate":
		return runMigrate(ctx, rest, stdout, stderr)
	case "shards":
		return runShards(ctx, rest, stdout, stderr)
	case "healthcheck":
		return runHealthcheck(ctx, rest, stdout, stderr)
	case "version":
		return runVersion(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil

	case "run":
		return runBot(ctx, rest, stdout, stderr)

	default:
		fmt.Fprint(stderr, usage)
		return &config.Error{Var: "command", Reason: fmt.Sprintf("unknown command %q", cmd)}
	}
}
