package deploy_test

import (
	"context"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/localcluster"
)

func TestMain(m *testing.M) {
	code := func() int {
		defer func() {
			if buildDir != "" {
				_ = os.RemoveAll(buildDir)
			}
		}()
		return m.Run()
	}()
	http.DefaultClient.CloseIdleConnections() // health.Probe's keep-alive connections
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildDir  string
	built     localcluster.Binaries
	buildErr  error
)

// buildBinaries builds cmd/bot, cmd/worker and cmd/fakediscord once per test
// binary (without -race: they are the subjects here, not the code under race
// detection), into a directory TestMain removes.
func buildBinaries(t *testing.T) localcluster.Binaries {
	t.Helper()
	buildOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		buildDir, buildErr = os.MkdirTemp("", "shardwarden-deploy-bins")
		if buildErr == nil {
			built, buildErr = localcluster.Build(ctx, repoRoot(t), buildDir, false)
		}
	})
	if buildErr != nil {
		t.Fatalf("build the binaries: %v", buildErr)
	}
	return built
}
