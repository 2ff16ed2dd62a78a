package health_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/health"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestReadinessAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "shardwarden_test_things_total", Help: "things"})
	reg.MustRegister(c)
	c.Inc()

	s := health.New("127.0.0.1:0", reg, nil)
	var dbErr error = errors.New("database: connection refused")
	s.AddReadiness("database", func(context.Context) error { return dbErr })
	s.AddReadiness("nats", func(context.Context) error { return nil })
	require.NoError(t, s.Start(context.Background()))
	defer s.Stop()
	defer s.Stop() // idempotent

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + s.Addr() + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, _ := get("/health/live")
	require.Equal(t, http.StatusOK, code, "live does not depend on dependencies")
	code, body := get("/health/ready")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "connection refused")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.ErrorContains(t, health.Probe(ctx, s.Addr()), "not ready")

	dbErr = nil
	code, _ = get("/health/ready")
	require.Equal(t, http.StatusOK, code)
	require.NoError(t, health.Probe(ctx, strings.Replace(s.Addr(), "127.0.0.1", "0.0.0.0", 1)), "wildcard hosts probe loopback")

	code, body = get("/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "shardwarden_test_things_total 1")

	code, body = get("/debug/pprof/goroutine?debug=1")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "goroutine profile")
}

func TestProbeUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	require.Error(t, health.Probe(ctx, "127.0.0.1:1"))
	require.Error(t, health.Probe(ctx, "not-an-address"))
}
