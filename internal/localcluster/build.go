package localcluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Binaries are the executables a local cluster runs.
type Binaries struct {
	Bot         string
	Worker      string
	FakeDiscord string
	NATSServer  string
}

// Build compiles cmd/bot, cmd/worker and cmd/fakediscord of the module rooted at
// moduleDir into outDir, in one `go build` so the packages are built once. The
// nats-server binary is $NATS_SERVER_BIN when set, otherwise built from the pinned
// module. race adds -race (slower processes, but data races in them are caught).
func Build(ctx context.Context, moduleDir, outDir string, race bool) (Binaries, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return Binaries{}, fmt.Errorf("bin dir: %w", err)
	}
	args := []string{"build", "-o", outDir + string(os.PathSeparator)}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/bot", "./cmd/worker", "./cmd/fakediscord")
	if err := goCmd(ctx, moduleDir, args...); err != nil {
		return Binaries{}, err
	}
	b := Binaries{
		Bot:         filepath.Join(outDir, "bot"),
		Worker:      filepath.Join(outDir, "worker"),
		FakeDiscord: filepath.Join(outDir, "fakediscord"),
		NATSServer:  os.Getenv("NATS_SERVER_BIN"),
	}
	if b.NATSServer == "" {
		b.NATSServer = filepath.Join(outDir, "nats-server")
		if err := goCmd(ctx, moduleDir, "build", "-o", b.NATSServer, "github.com/nats-io/nats-server/v2"); err != nil {
			return Binaries{}, err
		}
	}
	return b, nil
}

func goCmd(ctx context.Context, dir string, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// ModuleRoot finds the directory holding go.mod, walking up from the working
// directory (tests run in their package directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above the working directory")
		}
		dir = parent
	}
}
