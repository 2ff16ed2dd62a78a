package fakediscord

import (
	"encoding/json"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestTrafficRoutesByGuild(t *testing.T) {
	cfg := fastConfig()
	cfg.Guilds = 40
	s := startServer(t, cfg)
	clients := make([]*rawClient, 4)
	lasts := make([]int64, 4)
	for i := range clients {
		clients[i] = dialGateway(t, s)
		_, lasts[i] = clients[i].identify(s, i, 4)
	}
	const n = 3000
	require.NoError(t, s.StartTraffic(TrafficConfig{Count: n, PayloadSize: 512}))
	require.NoError(t, s.WaitTraffic(t.Context()))
	st := s.TrafficStats()
	require.False(t, st.Running)
	require.EqualValues(t, n, st.Dispatched)

	type got struct {
		ids   map[uint64]bool
		types map[string]int
	}
	results := make([]got, 4)
	byShard := map[int]int{}
	for _, e := range s.Events() {
		if e.Seq > lasts[e.Shard] {
			byShard[e.Shard]++
		}
	}
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			r := got{ids: map[uint64]bool{}, types: map[string]int{}}
			seq := lasts[i]
			for range byShard[i] {
				f, err := c.next()
				if err != nil {
					t.Errorf("shard %d: %v", i, err)
					return
				}
				if f.Op != OpDispatch {
					continue
				}
				seq++
				if *f.S != seq {
					t.Errorf("shard %d: seq %d, want %d", i, *f.S, seq)
				}
				id, ok := EventID(f.D)
				if !ok || r.ids[id] {
					t.Errorf("shard %d: bad or duplicate id in %s", i, f.D)
				}
				r.ids[id] = true
				var d struct {
					GuildID string `json:"guild_id"`
				}
				if err := json.Unmarshal(f.D, &d); err != nil {
					t.Errorf("shard %d: %v", i, err)
				}
				if d.GuildID == "" {
					r.types["DM"]++
					if i != 0 {
						t.Errorf("DM on shard %d", i)
					}
				} else {
					g, _ := strconv.ParseUint(d.GuildID, 10, 64)
					if ShardFor(g, 4) != i {
						t.Errorf("guild %d on shard %d", g, i)
					}
				}
				r.types[f.typ()]++
			}
			results[i] = r
		})
	}
	wg.Wait()
	total := 0
	types := map[string]int{}
	for _, r := range results {
		total += len(r.ids)
		for k, v := range r.types {
			types[k] += v
		}
	}
	require.Equal(t, n, total)
	for _, k := range []string{"MESSAGE_CREATE", "INTERACTION_CREATE", "PRESENCE_UPDATE", "GUILD_MEMBER_ADD", UnknownEventType, "DM"} {
		require.Positive(t, types[k], "type %s missing from %v", k, types)
	}
	require.Empty(t, s.Violations())
}

func TestTrafficRateAndSize(t *testing.T) {
	s := startServer(t, fastConfig())
	c := dialGateway(t, s)
	_, last := c.identify(s, 0, 1)
	t0 := time.Now()
	require.NoError(t, s.StartTraffic(TrafficConfig{Rate: 2000, PayloadSize: 1024, Duration: 200 * time.Millisecond,
		Mix: map[string]int{KindMessageCreate: 1}}))
	require.NoError(t, s.WaitTraffic(t.Context()))
	elapsed := time.Since(t0)
	st := s.TrafficStats()
	// Bounded above by rate × elapsed; the lower bound is loose because a loaded
	// machine may schedule the generator late.
	require.LessOrEqual(t, st.Dispatched, int64(2000*elapsed.Seconds())+1)
	require.Positive(t, st.Dispatched)
	for range st.Dispatched {
		f := c.readDispatch()
		require.Equal(t, "MESSAGE_CREATE", f.typ())
		require.InDelta(t, 1024, len(f.D), 64)
	}
	require.Equal(t, last+st.Dispatched, s.Sessions()[0].LastSeq)
}

func TestTrafficMaxRateWaitsForSlowClients(t *testing.T) {
	cfg := fastConfig()
	cfg.MaxQueuedFrames = 1000 // backpressure at 250 queued frames
	cfg.ReplayLimit = 1000
	cfg.HeartbeatTimeout = time.Minute // the test client does not heartbeat
	s := startServer(t, cfg)
	c := dialGateway(t, s)
	_, last := c.identify(s, 0, 1)
	const n = 5000 // 40 MB: more than the kernel buffers hold
	require.NoError(t, s.StartTraffic(TrafficConfig{Count: n, PayloadSize: 8192, Mix: map[string]int{KindMessageCreate: 1}}))
	time.Sleep(300 * time.Millisecond) // the client reads nothing meanwhile
	require.True(t, s.TrafficStats().Running, "the generator waits for the client")
	require.Empty(t, s.Violations(), "and does not drop it as a slow consumer")
	for range n { // read without decoding: only the count matters here
		_, r, err := c.ws.NextReader()
		require.NoError(t, err)
		_, err = io.Copy(io.Discard, r)
		require.NoError(t, err)
	}
	require.NoError(t, s.WaitTraffic(t.Context()))
	require.Empty(t, s.Violations())
	require.Equal(t, last+n, s.Sessions()[0].LastSeq)
}
