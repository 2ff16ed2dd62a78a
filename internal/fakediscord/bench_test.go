package fakediscord

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkTraffic measures events per second the fake generates and writes to
// 16 connected shards, 1 KiB events (the clients discard the bytes unparsed, so
// this is the fake's own ceiling). Run:
//
//	go test -run '^$' -bench Traffic -benchtime 500000x ./internal/fakediscord/
func BenchmarkTraffic(b *testing.B) {
	const shards = 16
	cfg := Config{
		Shards:            shards,
		Guilds:            shards * 50,
		MaxConcurrency:    shards,
		IdentifyWindow:    time.Millisecond,
		HeartbeatInterval: time.Hour,
		ReplayLimit:       4096,
		MaxQueuedFrames:   1 << 22,
	}
	s, err := New(cfg)
	require.NoError(b, err)
	require.NoError(b, s.Start(b.Context()))
	b.Cleanup(s.Stop)

	done := make(chan struct{}, shards)
	for i := range shards {
		c := dialGateway(b, s)
		c.identify(s, i, shards)
		go func() {
			_, _ = io.Copy(io.Discard, c.ws.UnderlyingConn())
			done <- struct{}{}
		}()
	}
	base, _ := s.EventsDispatched()
	written := func() int64 {
		var n int64
		for c := range s.snapshotConns() {
			n += c.sent.Load()
		}
		return n
	}
	baseWritten := written()
	mix := map[string]int{KindMessageCreate: 6, KindInteractionCreate: 1, KindPresenceUpdate: 2, UnknownEventType: 1}

	b.SetBytes(1024)
	b.ResetTimer()
	start := time.Now()
	require.NoError(b, s.StartTraffic(TrafficConfig{Count: int64(b.N), PayloadSize: 1024, Mix: mix}))
	require.NoError(b, s.WaitTraffic(b.Context()))
	total, _ := s.EventsDispatched()
	want := baseWritten + (total - base)
	for written() < want {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	s.Stop()
	for range shards {
		<-done
	}
}

func BenchmarkRender(b *testing.B) {
	s, err := New(Config{Shards: 16, Guilds: 800})
	require.NoError(b, err)
	g, err := s.newGenerator(TrafficConfig{PayloadSize: 1024})
	require.NoError(b, err)
	b.ReportAllocs()
	b.SetBytes(1024)
	now := time.Now()
	for i := range b.N {
		t := &g.kinds[i%len(g.kinds)]
		g.render(t, uint64(i), 1<<40, 1<<40|1, 1<<40|8, -1, now)
	}
}
