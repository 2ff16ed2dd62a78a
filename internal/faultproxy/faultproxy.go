// Package faultproxy is a TCP proxy for tests that cuts a client off from a
// server (Postgres, NATS) on demand, as a network partition would.
//
// Cut drops every proxied connection and refuses new ones (accepted, then reset
// at once: clients fail fast). Blackhole leaves connections open but delivers
// nothing either way, and new connections hang: clients fail only by their own
// timeouts, the harder case. Restore forwards again; connections broken by Cut or
// Blackhole stay broken (their streams lost bytes), so clients reconnect.
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"
)

// Mode is what the proxy does with traffic.
type Mode int

// Modes.
const (
	Forward   Mode = iota // pass traffic through
	Cut                   // reset every connection, refuse new ones
	Blackhole             // swallow all traffic, hang new connections
)

func (m Mode) String() string {
	switch m {
	case Forward:
		return "forward"
	case Cut:
		return "cut"
	case Blackhole:
		return "blackhole"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Proxy listens on a loopback port and forwards to one upstream address.
type Proxy struct {
	ln       net.Listener
	upstream string

	mu     sync.Mutex
	mode   Mode
	conns  map[*link]struct{}
	closed bool
	wg     sync.WaitGroup
}

// link is one client connection and, once dialled, its upstream connection.
type link struct {
	client, server net.Conn
	// silent: the link lived through a Blackhole; it forwards nothing ever again.
	silent bool
}

// New listens on 127.0.0.1 (a free port) and forwards to upstream ("host:port").
func New(upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{ln: ln, upstream: upstream, conns: map[*link]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Start is New for tests: it fails t on error and closes the proxy when t ends.
func Start(t testing.TB, upstream string) *Proxy {
	t.Helper()
	p, err := New(upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// Addr is the proxy's "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Upstream is the address traffic goes to.
func (p *Proxy) Upstream() string { return p.upstream }

// Mode is the current mode.
func (p *Proxy) Mode() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// Cut drops every connection (reset) and refuses new ones until Restore.
func (p *Proxy) Cut() { p.set(Cut) }

// Blackhole stops delivering bytes on every connection, existing and new, until
// Restore; nothing is closed, so clients notice only through their timeouts.
func (p *Proxy) Blackhole() { p.set(Blackhole) }

// Restore forwards new connections again and closes those a Blackhole silenced.
func (p *Proxy) Restore() { p.set(Forward) }

func (p *Proxy) set(mode Mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = mode
	for l := range p.conns {
		switch mode {
		case Cut:
			l.closeLocked(p)
		case Blackhole:
			l.silent = true
		case Forward:
			if l.silent {
				l.closeLocked(p)
			}
		}
	}
}

// Conns is the number of open proxied connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops listening, closes every connection and waits for the proxy's
// goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	err := p.ln.Close()
	for l := range p.conns {
		l.closeLocked(p)
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// RewriteURL returns rawURL (postgres://, nats://, ...) with its host:port
// replaced by the proxy's address.
func (p *Proxy) RewriteURL(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("faultproxy: parse url: %w", err)
	}
	u.Host = p.Addr()
	return u.String(), nil
}

// UpstreamOf returns the host:port of a URL, for New.
func UpstreamOf(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("faultproxy: parse url: %w", err)
	}
	if u.Port() == "" {
		return "", fmt.Errorf("faultproxy: url %q has no port", u.Redacted())
	}
	return u.Host, nil
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // transient (EMFILE); the listener stays
			continue
		}
		l := &link{client: c}
		p.mu.Lock()
		switch {
		case p.closed || p.mode == Cut:
			p.mu.Unlock()
			reset(c)
			continue
		case p.mode == Blackhole:
			l.silent = true
		}
		p.conns[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(l)
	}
}

func (p *Proxy) serve(l *link) {
	defer p.wg.Done()
	p.mu.Lock()
	silent := l.silent
	p.mu.Unlock()
	if silent {
		// Hold the connection without dialling, swallowing what the client sends,
		// until Restore or Cut closes it.
		_, _ = io.Copy(io.Discard, l.client)
		p.drop(l)
		return
	}
	server, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		p.drop(l)
		return
	}
	p.mu.Lock()
	if _, open := p.conns[l]; !open || l.silent {
		p.mu.Unlock()
		_ = server.Close()
		p.drop(l)
		return
	}
	l.server = server
	p.mu.Unlock()

	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() { defer pipes.Done(); p.pipe(l, server, l.client) }()
	go func() { defer pipes.Done(); p.pipe(l, l.client, server) }()
	pipes.Wait()
	p.drop(l)
}

// pipe copies src to dst until either side fails, dropping bytes while the link
// is silent.
func (p *Proxy) pipe(l *link, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			silent := l.silent
			p.mu.Unlock()
			if !silent {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
		}
		if err != nil {
			break
		}
	}
	// Closing both ends stops the other direction too.
	p.mu.Lock()
	l.closeLocked(p)
	p.mu.Unlock()
}

func (p *Proxy) drop(l *link) {
	p.mu.Lock()
	l.closeLocked(p)
	p.mu.Unlock()
}

func (l *link) closeLocked(p *Proxy) {
	delete(p.conns, l)
	reset(l.client)
	if l.server != nil {
		reset(l.server)
	}
}

// reset closes c with an RST rather than a FIN, as a dropped route or a refused
// connection looks to the client.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
