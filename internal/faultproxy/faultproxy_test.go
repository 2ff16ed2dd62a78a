package faultproxy_test

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/faultproxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer answers every line with itself until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// roundTrip sends a line and waits up to d for the echo.
func roundTrip(c net.Conn, msg string, d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return errors.New("echo mismatch: " + got)
	}
	return nil
}

func TestProxy(t *testing.T) {
	t.Parallel()
	setup := func(t *testing.T) *faultproxy.Proxy {
		return faultproxy.Start(t, echoServer(t))
	}

	t.Run("forwards", func(t *testing.T) {
		t.Parallel()
		p := setup(t)
		c := dial(t, p.Addr())
		require.NoError(t, roundTrip(c, "hello", 2*time.Second))
		require.Equal(t, faultproxy.Forward, p.Mode())
	})

	t.Run("cut drops existing connections and refuses new ones", func(t *testing.T) {
		t.Parallel()
		p := setup(t)
		c := dial(t, p.Addr())
		require.NoError(t, roundTrip(c, "before", 2*time.Second))

		p.Cut()
		start := time.Now()
		require.Error(t, roundTrip(c, "during", 2*time.Second), "existing connection must fail")
		require.Less(t, time.Since(start), time.Second, "a cut connection fails fast, not by timeout")
		require.Eventually(t, func() bool { return p.Conns() == 0 }, 2*time.Second, 10*time.Millisecond)

		c2 := dial(t, p.Addr()) // the kernel accepts; the proxy resets at once
		require.Error(t, roundTrip(c2, "new", time.Second))

		p.Restore()
		c3 := dial(t, p.Addr())
		require.NoError(t, roundTrip(c3, "after", 2*time.Second))
		require.Error(t, roundTrip(c, "old", time.Second), "a cut connection stays broken")
	})

	t.Run("blackhole swallows traffic until restore", func(t *testing.T) {
		t.Parallel()
		p := setup(t)
		c := dial(t, p.Addr())
		require.NoError(t, roundTrip(c, "before", 2*time.Second))

		p.Blackhole()
		err := roundTrip(c, "during", 300*time.Millisecond)
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		require.True(t, ne.Timeout(), "a black-holed connection hangs: %v", err)
		c2 := dial(t, p.Addr())
		err = roundTrip(c2, "new", 300*time.Millisecond)
		require.ErrorAs(t, err, &ne)
		require.True(t, ne.Timeout(), "a new connection hangs too: %v", err)

		p.Restore()
		require.Eventually(t, func() bool { return p.Conns() == 0 }, 2*time.Second, 10*time.Millisecond,
			"silenced connections are closed on restore")
		c3 := dial(t, p.Addr())
		require.NoError(t, roundTrip(c3, "after", 2*time.Second))
	})

	t.Run("close is idempotent and stops accepting", func(t *testing.T) {
		t.Parallel()
		p, err := faultproxy.New(echoServer(t))
		require.NoError(t, err)
		c := dial(t, p.Addr())
		require.NoError(t, roundTrip(c, "x", 2*time.Second))
		require.NoError(t, p.Close())
		require.NoError(t, p.Close())
		_, err = net.DialTimeout("tcp", p.Addr(), time.Second)
		require.Error(t, err)
	})

	t.Run("rewrites urls", func(t *testing.T) {
		t.Parallel()
		p := setup(t)
		got, err := p.RewriteURL("postgres://u:pw@db.example:5432/app?sslmode=disable")
		require.NoError(t, err)
		require.Equal(t, "postgres://u:pw@"+p.Addr()+"/app?sslmode=disable", got)
		up, err := faultproxy.UpstreamOf("nats://127.0.0.1:4222")
		require.NoError(t, err)
		require.Equal(t, "127.0.0.1:4222", up)
		_, err = faultproxy.UpstreamOf("postgres://host/db")
		require.Error(t, err)
	})
}

func TestMode(t *testing.T) {
	for m, want := range map[faultproxy.Mode]string{faultproxy.Forward: "forward", faultproxy.Cut: "cut", faultproxy.Blackhole: "blackhole"} {
		require.Equal(t, want, m.String())
	}
}
