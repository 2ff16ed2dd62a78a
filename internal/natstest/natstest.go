// Package natstest runs real NATS servers with JetStream for tests: in-process for
// speed, or as a nats-server process that a test can kill and restart.
package natstest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// InProcess starts a JetStream-enabled server inside the test binary and returns its
// client URL. It shuts down when t ends.
func InProcess(t testing.TB) string {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		t.Fatal("natstest: server not ready after 10s")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s.ClientURL()
}

// Connect opens a client connection to url, closed when t ends.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("natstest: connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Process is a nats-server child process on a fixed loopback port and store
// directory, so a restart keeps its address and its JetStream data.
type Process struct {
	t        testing.TB
	bin      string
	port     int
	storeDir string
	logPath  string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Binary returns the nats-server binary: $NATS_SERVER_BIN (scripts/test.sh builds
// it from the pinned module) or one built now into the test's cache.
func Binary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("NATS_SERVER_BIN"); bin != "" {
		return bin
	}
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "natstest-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "nats-server")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build nats-server: %v: %s", err, out)
		}
	})
	if binErr != nil {
		t.Fatalf("natstest: %v", binErr)
	}
	return binPath
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// StartProcess starts a nats-server process with JetStream; it is killed when t ends.
func StartProcess(t testing.TB) *Process {
	t.Helper()
	p := &Process{
		t:        t,
		bin:      Binary(t),
		port:     FreePort(t),
		storeDir: t.TempDir(),
	}
	p.logPath = filepath.Join(p.storeDir, "nats-server.log")
	p.Start()
	t.Cleanup(p.Kill)
	return p
}

// URL is the client URL; it stays the same across restarts.
func (p *Process) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", p.port) }

// Start (re)starts the process and waits until it accepts connections with
// JetStream ready.
func (p *Process) Start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		p.t.Fatal("natstest: process already running")
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatalf("natstest: log file: %v", err)
	}
	cmd := exec.Command(p.bin, "-a", "127.0.0.1", "-p", strconv.Itoa(p.port), "-js", "-sd", p.storeDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		p.t.Fatalf("natstest: start nats-server: %v", err)
	}
	p.cmd = cmd
	go func() { _ = cmd.Wait(); logf.Close() }()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		nc, err := nats.Connect(p.URL(), nats.Timeout(time.Second))
		if err == nil {
			_, jsErr := nc.JetStream()
			if jsErr == nil {
				if _, jsErr = nc.Request("$JS.API.INFO", nil, time.Second); jsErr == nil {
					nc.Close()
					return
				}
			}
			nc.Close()
		}
		select {
		case <-ctx.Done():
			p.t.Fatalf("natstest: nats-server on %d not ready: %v\n%s", p.port, err, tail(p.logPath))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Kill stops the process with SIGKILL (no graceful shutdown) and waits for it.
func (p *Process) Kill() { p.signalAndWait(syscall.SIGKILL) }

// Stop stops the process with SIGTERM and waits for it.
func (p *Process) Stop() { p.signalAndWait(syscall.SIGTERM) }

// Restart kills the process and starts it again on the same port and store.
func (p *Process) Restart() {
	p.Kill()
	p.Start()
}

func (p *Process) signalAndWait(sig syscall.Signal) {
	p.mu.Lock()
	cmd := p.cmd
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	// Wait until the port is free: the next Start binds it again.
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.port), 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(20 * time.Millisecond)
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		lines = append(lines, s.Text())
		if len(lines) > 20 {
			lines = lines[1:]
		}
	}
	out := ""
	for _, l := range lines {
		out += l + "\n"
	}
	return out
}
