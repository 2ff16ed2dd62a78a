package localcluster

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// childEnv makes the test binary act as a child process that exits 0 on SIGTERM.
const childEnv = "LOCALCLUSTER_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		fmt.Println("started")
		<-sig
		fmt.Println("got-term")
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

func TestProcLifecycle(t *testing.T) {
	s, err := NewSupervisor(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(s.KillAll)

	self, err := os.Executable()
	require.NoError(t, err)
	p, err := s.Start("child", self, nil, childEnv+"=1")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, p.WaitLog(ctx, "started"))
	require.True(t, p.Running())
	first := p.PID()

	require.NoError(t, p.Pause())
	require.NoError(t, p.Continue())
	require.NoError(t, p.Term(10*time.Second))
	require.False(t, p.Running())
	require.NoError(t, p.ExitErr())
	require.Contains(t, p.Log(), "got-term")

	require.NoError(t, p.Restart())
	require.NotEqual(t, first, p.PID())
	require.Error(t, p.Restart(), "a running process cannot be started twice")
	p.Kill()
	require.False(t, p.Running())
	require.Error(t, p.ExitErr(), "SIGKILL is not a clean exit")
	require.Equal(t, 2, strings.Count(p.Log(), "=== localcluster: start"))
}
