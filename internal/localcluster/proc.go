// Package localcluster starts and supervises shardwarden's processes on loopback —
// bot replicas, workers, nats-server and the fake Discord — for the end-to-end
// fault harness and the local demo. It starts, signals (SIGTERM, SIGKILL, SIGSTOP)
// and reaps real processes; every process it starts is killed when its owner stops,
// and with Pdeathsig even when the owner itself dies.
package localcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Proc is one child process. Start it with (*Supervisor).Start.
type Proc struct {
	Name    string
	LogPath string

	bin  string
	args []string
	env  []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
	logFile *os.File
}

// Supervisor owns a set of processes and a directory for their logs.
type Supervisor struct {
	Dir string

	mu    sync.Mutex
	procs []*Proc
}

// NewSupervisor keeps logs under dir (created if missing).
func NewSupervisor(dir string) (*Supervisor, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	return &Supervisor{Dir: dir}, nil
}

// Start launches bin with args and extra environment (added to this process's).
// Output goes to <Dir>/<name>.log, appended across restarts.
func (s *Supervisor) Start(name, bin string, args []string, env ...string) (*Proc, error) {
	p := &Proc{
		Name:    name,
		LogPath: filepath.Join(s.Dir, name+".log"),
		bin:     bin,
		args:    args,
		env:     env,
	}
	if err := p.start(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p, nil
}

// Procs returns every process started, running or not.
func (s *Supervisor) Procs() []*Proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Proc(nil), s.procs...)
}

// KillAll sends SIGKILL to every running process (resuming paused ones first is not
// needed: SIGKILL ends a stopped process too) and waits for them.
func (s *Supervisor) KillAll() {
	for _, p := range s.Procs() {
		p.Kill()
	}
}

func (p *Proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.exited:
		default:
			return fmt.Errorf("%s: already running (pid %d)", p.Name, p.cmd.Process.Pid)
		}
	}
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s: log file: %w", p.Name, err)
	}
	fmt.Fprintf(f, "\n=== localcluster: start %s %v at %s\n", p.bin, p.args, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Own process group (a terminal's Ctrl-C reaches only the supervisor, which then
	// stops children in order), and SIGKILL when the supervisor dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("%s: start %s: %w", p.Name, p.bin, err)
	}
	p.cmd, p.logFile = cmd, f
	p.exited = make(chan struct{})
	p.exitErr = nil
	exited := p.exited
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr = err
		fmt.Fprintf(f, "=== localcluster: %s exited: %v at %s\n", p.Name, err, time.Now().Format(time.RFC3339Nano))
		f.Close()
		p.mu.Unlock()
		close(exited)
	}()
	return nil
}

// Restart starts the process again with the same command line; it must have exited.
func (p *Proc) Restart() error { return p.start() }

// PID of the current incarnation (0 if never started).
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the current incarnation has not exited.
func (p *Proc) Running() bool {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// Exited is closed when the current incarnation exits.
func (p *Proc) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}

// ExitErr is the current incarnation's exit error (nil: exit 0 or still running).
func (p *Proc) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// Signal sends sig to the current incarnation; no-op if it has exited.
func (p *Proc) Signal(sig syscall.Signal) error {
	if !p.Running() {
		return nil
	}
	p.mu.Lock()
	proc := p.cmd.Process
	p.mu.Unlock()
	if err := proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: signal %v: %w", p.Name, sig, err)
	}
	return nil
}

// Wait waits for the current incarnation to exit, at most timeout.
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.Exited():
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s: still running after %s", p.Name, timeout)
	}
}

// Term sends SIGTERM and waits up to timeout for a clean exit.
func (p *Proc) Term(timeout time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	return p.Wait(timeout)
}

// Kill sends SIGKILL and waits for the exit.
func (p *Proc) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	_ = p.Wait(10 * time.Second)
}

// Pause stops the process with SIGSTOP (a GC pause or a frozen VM, as peers see it).
func (p *Proc) Pause() error { return p.Signal(syscall.SIGSTOP) }

// Continue resumes a paused process.
func (p *Proc) Continue() error { return p.Signal(syscall.SIGCONT) }

// Log returns the process's log so far (all incarnations).
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// WaitLog waits until the log contains needle.
func (p *Proc) WaitLog(ctx context.Context, needle string) error {
	for {
		b, _ := os.ReadFile(p.LogPath)
		if bytes.Contains(b, []byte(needle)) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %q not in log: %w", p.Name, needle, ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}
