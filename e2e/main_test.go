// Package e2e proves shardwarden's promises on real processes: several `bot`
// replicas, workers, a real nats-server, a real Postgres and cmd/fakediscord, all on
// loopback, started, stopped, killed, paused and cut off the way Docker Swarm and
// failures would. Each scenario is a subtest of TestE2E and ends with one summary
// line (see summary_test.go).
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shardwarden/shardwarden/internal/localcluster"
)

var bins localcluster.Binaries

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	root, err := localcluster.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "shardwarden-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// E2E_RACE=1 builds the processes with -race too (slower, catches races in them).
	bins, err = localcluster.Build(ctx, root, filepath.Join(dir, "bin"), os.Getenv("E2E_RACE") == "1")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build:", err)
		return 1
	}
	return m.Run()
}
