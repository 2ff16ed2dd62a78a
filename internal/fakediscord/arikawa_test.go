package fakediscord

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/diamondburned/arikawa/v3/gateway"
	"github.com/diamondburned/arikawa/v3/utils/ws"
	"github.com/stretchr/testify/require"
)

// ariClient runs a stock arikawa v3.6.0 gateway against the fake and keeps every
// op it emits.
type ariClient struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan struct{}
	g      *gateway.Gateway

	mu  sync.Mutex
	ops []ws.Op
}

// arikawaConfig: arikawa reconnects at most once per 5 s (its dial limiter, not
// configurable), so each arikawa subtest runs on its own server, in parallel.
// Heartbeats are slow so no ACK sits in arikawa's one-op buffer at a reconnect
// (that leaks its reader goroutine: notes/arikawa.md trap 11).
func arikawaConfig() Config {
	cfg := fastConfig()
	cfg.Shards = 1
	cfg.HeartbeatInterval = 30 * time.Second
	cfg.HeartbeatTimeout = time.Minute
	// Stock arikawa RESUMEs on the URL it was built with and ignores
	// resume_gateway_url (trap 4); the strict default is tested separately.
	cfg.AllowResumeOnGatewayURL = true
	return cfg
}

func startArikawa(t *testing.T, s *Server, token string) *ariClient {
	t.Helper()
	id := gateway.DefaultIdentifier("Bot " + token)
	id.IdentifyShortLimit, id.IdentifyGlobalLimit = nil, nil
	id.SetShard(0, 1)
	id.AddIntents(gateway.IntentGuilds | gateway.IntentGuildMessages | gateway.IntentGuildMembers | gateway.IntentGuildPresences)
	opts := gateway.DefaultGatewayOpts
	opts.FatalCloseCodes = slices.Clone(opts.FatalCloseCodes)
	opts.ReconnectDelay = func(int) time.Duration { return 10 * time.Millisecond }
	g := gateway.NewCustomWithIdentifier(gateway.AddGatewayParams(s.GatewayURL()), id, &opts)
	ctx, cancel := context.WithCancel(context.Background())
	a := &ariClient{t: t, cancel: cancel, done: make(chan struct{}), g: g}
	ch := g.Connect(ctx)
	go func() {
		defer close(a.done)
		for op := range ch {
			a.mu.Lock()
			a.ops = append(a.ops, op)
			a.mu.Unlock()
		}
	}()
	t.Cleanup(a.stop)
	return a
}

func (a *ariClient) stop() {
	a.cancel()
	<-a.done
}

// count returns how many ops satisfy fn.
func (a *ariClient) count(fn func(ws.Op) bool) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, op := range a.ops {
		if fn(op) {
			n++
		}
	}
	return n
}

func (a *ariClient) waitFor(what string, n int, fn func(ws.Op) bool) {
	a.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for a.count(fn) < n {
		if time.Now().After(deadline) {
			a.t.Fatalf("arikawa: timed out waiting for %d × %s", n, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isType[T any](op ws.Op) bool { _, ok := op.Data.(T); return ok }

func isUnknownEvent(op ws.Op) bool {
	be, ok := op.Data.(*ws.BackgroundErrorEvent)
	var ue ws.UnknownEventError
	return ok && errors.As(be.Err, &ue)
}

func TestArikawaRoundTrip(t *testing.T) {
	t.Run("identify and events", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, arikawaConfig())
		a := startArikawa(t, s, s.Token())
		a.waitFor("READY", 1, isType[*gateway.ReadyEvent])
		a.waitFor("GUILD_CREATE", len(s.Guilds()), isType[*gateway.GuildCreateEvent])

		mix := map[string]int{KindMessageCreate: 4, KindInteractionCreate: 2, KindGuildMemberAdd: 1,
			KindPresenceUpdate: 1, KindGuildUpdate: 1, KindGuildRoleCreate: 1, UnknownEventType: 1}
		require.NoError(t, s.StartTraffic(TrafficConfig{Count: 300, Mix: mix, PayloadSize: 700}))
		require.NoError(t, s.WaitTraffic(t.Context()))
		unknown := 0
		for _, e := range s.Events() {
			if e.Type == UnknownEventType {
				unknown++
			}
		}
		require.Positive(t, unknown)
		decoded := func(op ws.Op) bool {
			switch op.Data.(type) {
			case *gateway.MessageCreateEvent, *gateway.InteractionCreateEvent, *gateway.GuildMemberAddEvent,
				*gateway.PresenceUpdateEvent, *gateway.GuildUpdateEvent, *gateway.GuildRoleCreateEvent:
				return true
			}
			return false
		}
		a.waitFor("decoded events", 300-unknown, decoded)
		// Every generated payload decodes into arikawa's types; the unknown type
		// is the only thing it drops (trap 5), and it drops each one.
		a.waitFor("unknown events", unknown, isUnknownEvent)
		require.Zero(t, a.count(func(op ws.Op) bool {
			_, bg := op.Data.(*ws.BackgroundErrorEvent)
			return bg && !isUnknownEvent(op)
		}), "no decode errors")

		a.stop() // AlwaysCloseGracefully: close 1000, which ends the session
		eventually(t, "interval closed", func() bool { return !s.Sessions()[0].Live })
		iv := s.Sessions()[0]
		require.Equal(t, "client_close", iv.EndReason)
		require.Equal(t, 1000, iv.CloseCode)
		require.Empty(t, s.Violations())
	})

	t.Run("op 7 resumes", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, arikawaConfig())
		a := startArikawa(t, s, s.Token())
		a.waitFor("READY", 1, isType[*gateway.ReadyEvent])
		require.Equal(t, 1, s.Reconnect(0))
		id, err := s.Dispatch(0, "MESSAGE_CREATE", map[string]any{"id": "1", "channel_id": "2", "content": "while away"})
		require.NoError(t, err)
		a.waitFor("RESUMED", 1, isType[*gateway.ResumedEvent])
		a.waitFor("the buffered event", 1, isType[*gateway.MessageCreateEvent])
		require.Equal(t, ShardStats{Shard: 0, Identifies: 1, Resumes: 1, Events: int64(len(s.Guilds()) + 3)}, s.Stats(0))
		require.Empty(t, s.Violations())
		require.Empty(t, s.Overlaps(0))
		_ = id
	})

	t.Run("drop resumes", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, arikawaConfig())
		a := startArikawa(t, s, s.Token())
		a.waitFor("READY", 1, isType[*gateway.ReadyEvent])
		require.Equal(t, 1, s.DropShard(0))
		a.waitFor("RESUMED", 1, isType[*gateway.ResumedEvent])
		require.Equal(t, 1, s.Stats(0).Resumes)
		require.Empty(t, s.Violations())
	})

	t.Run("op 9 false identifies again", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, arikawaConfig())
		a := startArikawa(t, s, s.Token())
		a.waitFor("READY", 1, isType[*gateway.ReadyEvent])
		require.Equal(t, 1, s.InvalidSession(0, false))
		a.waitFor("second READY", 2, isType[*gateway.ReadyEvent])
		st := s.Stats(0)
		require.Equal(t, 2, st.Identifies)
		require.Zero(t, st.Resumes)
		require.Empty(t, s.Violations())
	})

	t.Run("4004 is fatal", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, arikawaConfig())
		a := startArikawa(t, s, "wrong-token")
		select {
		case <-a.done:
		case <-time.After(20 * time.Second):
			t.Fatal("arikawa did not stop on 4004")
		}
		var ce *ws.CloseEvent
		require.ErrorAs(t, a.g.LastError(), &ce)
		require.Equal(t, 4004, ce.Code)
		require.Equal(t, []string{RuleAuthenticationFailed}, rules(s.Violations()))
	})

	t.Run("strict resume url catches stock arikawa", func(t *testing.T) {
		t.Parallel()
		cfg := arikawaConfig()
		cfg.AllowResumeOnGatewayURL = false
		s := startServer(t, cfg)
		a := startArikawa(t, s, s.Token())
		a.waitFor("READY", 1, isType[*gateway.ReadyEvent])
		s.DropShard(0)
		eventually(t, "violation", func() bool { return len(s.Violations()) > 0 })
		require.Equal(t, RuleResumeWrongURL, s.Violations()[0].Rule)
	})
}
