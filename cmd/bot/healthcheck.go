package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/shardwarden/shardwarden/internal/config"
	"github.com/shardwarden/shardwarden/internal/health"
)

// runHealthcheck asks the replica's /health/ready at HEALTH_ADDR: the container
// health check, so images need no curl. Not ready is exit status 1.
func runHealthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bot healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	l := config.NewLoader(fs, os.Getenv)
	var addr string
	bindHealthAddr(l, &addr)
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := parse(l, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := health.Probe(ctx, addr); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "ready")
	return nil
}
