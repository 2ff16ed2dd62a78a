package fakediscord

import (
	"bytes"
	"compress/zlib"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"
)

// TestBadInputCloseCodes: each bad client input gets Discord's close code and
// one violation naming the rule.
func TestBadInputCloseCodes(t *testing.T) {
	ident := func(mut func(m map[string]any)) func(c *rawClient, s *Server) {
		return func(c *rawClient, s *Server) {
			m := identifyPayload(s.Token(), 0, 4)
			mut(m)
			c.send(OpIdentify, m)
		}
	}
	tests := []struct {
		name string
		cfg  func(*Config)
		act  func(c *rawClient, s *Server)
		code int
		rule string
	}{
		{"bad token", nil, ident(func(m map[string]any) { m["token"] = "nope" }), CloseAuthenticationFailed, RuleAuthenticationFailed},
		{"shard id too big", nil, ident(func(m map[string]any) { m["shard"] = []int{4, 4} }), CloseInvalidShard, RuleInvalidShard},
		{"shard count zero", nil, ident(func(m map[string]any) { m["shard"] = []int{0, 0} }), CloseInvalidShard, RuleInvalidShard},
		{"negative shard", nil, ident(func(m map[string]any) { m["shard"] = []int{-1, 4} }), CloseInvalidShard, RuleInvalidShard},
		{"missing intents", nil, ident(func(m map[string]any) { delete(m, "intents") }), CloseInvalidIntents, RuleInvalidIntents},
		{"unknown intent bit", nil, ident(func(m map[string]any) { m["intents"] = 1 << 30 }), CloseInvalidIntents, RuleInvalidIntents},
		{"privileged intent denied", func(c *Config) { c.DeniedPrivilegedIntents = IntentMessageContent },
			ident(func(m map[string]any) { m["intents"] = IntentGuilds | IntentMessageContent }), CloseDisallowedIntents, RuleDisallowedIntents},
		{"too many guilds", func(c *Config) { c.MaxGuildsPerShard = 3 },
			ident(func(m map[string]any) { m["shard"] = []int{0, 1} }), CloseShardingRequired, RuleShardingRequired},
		{"missing properties", nil, ident(func(m map[string]any) { delete(m, "properties") }), CloseDecodeError, RuleDecodeError},
		{"large_threshold out of range", nil, ident(func(m map[string]any) { m["large_threshold"] = 10 }), CloseDecodeError, RuleDecodeError},
		{"identify d not an object", nil, func(c *rawClient, _ *Server) { c.send(OpIdentify, "x") }, CloseDecodeError, RuleDecodeError},
		{"bad json", nil, func(c *rawClient, _ *Server) { c.sendRaw(websocket.TextMessage, []byte(`{"op":1,`)) }, CloseDecodeError, RuleDecodeError},
		{"no op", nil, func(c *rawClient, _ *Server) { c.sendRaw(websocket.TextMessage, []byte(`{"d":null}`)) }, CloseDecodeError, RuleDecodeError},
		{"binary frame", nil, func(c *rawClient, _ *Server) { c.sendRaw(websocket.BinaryMessage, []byte(`{"op":1,"d":null}`)) }, CloseDecodeError, RuleDecodeError},
		{"heartbeat d a string", nil, func(c *rawClient, _ *Server) { c.send(OpHeartbeat, "7") }, CloseDecodeError, RuleDecodeError},
		{"payload too large", nil, func(c *rawClient, s *Server) {
			m := identifyPayload(s.Token(), 0, 4)
			m["properties"] = map[string]string{"os": strings.Repeat("x", 4100), "browser": "b", "device": "d"}
			c.send(OpIdentify, m)
		}, CloseDecodeError, RulePayloadTooLarge},
		{"unknown opcode", nil, func(c *rawClient, _ *Server) { c.send(5, nil) }, CloseUnknownOpcode, RuleUnknownOpcode},
		{"server opcode from client", nil, func(c *rawClient, _ *Server) { c.send(OpHello, nil) }, CloseUnknownOpcode, RuleUnknownOpcode},
		{"presence before identify", nil, func(c *rawClient, _ *Server) {
			c.send(OpPresenceUpdate, map[string]any{"status": "online"})
		}, CloseNotAuthenticated, RuleNotAuthenticated},
		{"identify twice", nil, func(c *rawClient, s *Server) {
			c.identify(s, 0, 4)
			c.send(OpIdentify, identifyPayload(s.Token(), 0, 4))
		}, CloseAlreadyAuthenticated, RuleAlreadyAuthenticated},
		{"resume after identify", nil, func(c *rawClient, s *Server) {
			r, _ := c.identify(s, 0, 4)
			c.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID, "seq": 1})
		}, CloseAlreadyAuthenticated, RuleAlreadyAuthenticated},
		{"command rate limit", func(c *Config) { c.CommandLimit = 5; c.CommandWindow = time.Minute }, func(c *rawClient, _ *Server) {
			for range 6 {
				c.send(OpHeartbeat, nil)
			}
		}, CloseRateLimited, RuleCommandRateLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fastConfig()
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			s := startServer(t, cfg)
			c := dialGateway(t, s)
			tt.act(c, s)
			c.expectClose(tt.code)
			require.Equal(t, []string{tt.rule}, rules(s.Violations()))
			require.Equal(t, tt.code, s.Violations()[0].CloseCode)
		})
	}
}

func TestInvalidAPIVersion(t *testing.T) {
	for _, q := range []string{"?v=8&encoding=json", "?encoding=json", "?v=10&encoding=etf"} {
		t.Run(q, func(t *testing.T) {
			s := startServer(t, fastConfig())
			c := dial(t, s.GatewayURL()+q)
			if strings.Contains(q, "etf") {
				c.expectClose(CloseDecodeError)
				return
			}
			c.expectClose(CloseInvalidAPIVersion)
			require.Equal(t, []string{RuleInvalidAPIVersion}, rules(s.Violations()))
		})
	}
}

func TestHeartbeatTimeoutClosesAndInvalidates(t *testing.T) {
	cfg := fastConfig()
	cfg.HeartbeatInterval = 50 * time.Millisecond
	cfg.HeartbeatTimeout = 150 * time.Millisecond
	s := startServer(t, cfg)
	c := dialGateway(t, s)
	r, last := c.identify(s, 0, 4)
	c.send(OpHeartbeat, last) // one beat, then silence
	c.expectClose(CloseSessionTimedOut)
	require.Equal(t, []string{RuleHeartbeatTimeout}, rules(s.Violations()))

	c2 := dial(t, s.ResumeURL()+"?v=10&encoding=json")
	c2.read()
	c2.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID, "seq": last})
	f := c2.read()
	require.Equal(t, OpInvalidSession, f.Op)
	require.Equal(t, "false", string(f.D))
}

func TestHeartbeatingKeepsConnection(t *testing.T) {
	cfg := fastConfig()
	cfg.HeartbeatInterval = 30 * time.Millisecond
	cfg.HeartbeatTimeout = time.Second
	s := startServer(t, cfg)
	c := dialGateway(t, s)
	_, last := c.identify(s, 0, 4)
	for range 10 {
		c.send(OpHeartbeat, last)
		require.Equal(t, OpHeartbeatAck, c.read().Op)
		time.Sleep(30 * time.Millisecond)
	}
	require.Empty(t, s.Violations())
	require.True(t, s.Sessions()[0].Live)
	require.Equal(t, last, s.Sessions()[0].ClientSeq)
}

func TestIdentifyRateLimitPerBucket(t *testing.T) {
	cfg := fastConfig()
	cfg.MaxConcurrency = 2
	cfg.IdentifyWindow = time.Hour // nothing leaves the window during the test
	s := startServer(t, cfg)
	a := dialGateway(t, s)
	a.identify(s, 0, 4) // bucket 0
	b := dialGateway(t, s)
	b.identify(s, 1, 4) // bucket 1: allowed at once
	c := dialGateway(t, s)
	c.send(OpIdentify, identifyPayload(s.Token(), 2, 4)) // bucket 0 again: too soon
	f := c.read()
	require.Equal(t, OpInvalidSession, f.Op)
	require.Equal(t, "false", string(f.D))
	require.Equal(t, []string{RuleIdentifyRateLimit}, rules(s.Violations()))
	require.Equal(t, 1, s.Stats(2).IdentifyRejected)
	require.Equal(t, 2, 1000-s.GatewayBot().SessionStartLimit.Remaining, "a rejected IDENTIFY spends no budget")
}

func TestIdentifyWindowPasses(t *testing.T) {
	cfg := fastConfig()
	cfg.MaxConcurrency = 1
	cfg.IdentifyWindow = 40 * time.Millisecond
	s := startServer(t, cfg)
	a := dialGateway(t, s)
	a.identify(s, 0, 4)
	time.Sleep(50 * time.Millisecond)
	b := dialGateway(t, s)
	b.identify(s, 1, 4)
	require.Empty(t, s.Violations())
}

func TestDailyBudgetExhausted(t *testing.T) {
	cfg := fastConfig()
	cfg.DailyBudget = 2
	s := startServer(t, cfg)
	a := dialGateway(t, s)
	a.identify(s, 0, 4)
	b := dialGateway(t, s)
	b.identify(s, 1, 4)
	require.Equal(t, 0, s.GatewayBot().SessionStartLimit.Remaining)
	c := dialGateway(t, s)
	c.send(OpIdentify, identifyPayload(s.Token(), 2, 4))
	// Discord terminates every session and resets the token.
	for _, x := range []*rawClient{a, b, c} {
		x.expectClose(CloseAuthenticationFailed)
	}
	require.Contains(t, rules(s.Violations()), RuleDailyBudget)
	resp, _ := httpDo(t, "GET", s.APIURL()+"/v10/gateway/bot", "Bot "+s.Token(), "")
	require.Equal(t, 401, resp.StatusCode, "the token is dead")
}

func TestResumeRules(t *testing.T) {
	setup := func(t *testing.T) (*Server, readyData, int64) {
		s := startServer(t, fastConfig())
		c := dialGateway(t, s)
		r, last := c.identify(s, 0, 4)
		require.NoError(t, c.ws.UnderlyingConn().Close())
		eventually(t, "detached", func() bool { return !s.Sessions()[0].Live })
		return s, r, last
	}
	t.Run("seq ahead closes 4007", func(t *testing.T) {
		s, r, last := setup(t)
		c := dial(t, s.ResumeURL()+"?v=10&encoding=json")
		c.read()
		c.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID, "seq": last + 5})
		c.expectClose(CloseInvalidSeq)
		require.Equal(t, []string{RuleResumeSeqAhead}, rules(s.Violations()))
		_, err := s.Dispatch(0, "X", json.RawMessage(`{}`))
		require.ErrorIs(t, err, ErrNoSession, "4007 ends the session")
	})
	t.Run("unknown session op 9", func(t *testing.T) {
		s, _, _ := setup(t)
		c := dial(t, s.ResumeURL()+"?v=10&encoding=json")
		c.read()
		c.send(OpResume, map[string]any{"token": s.Token(), "session_id": "nope", "seq": 1})
		f := c.read()
		require.Equal(t, OpInvalidSession, f.Op)
		require.Equal(t, "false", string(f.D))
		// The connection may IDENTIFY afterwards.
		c.identify(s, 1, 4)
		require.Empty(t, s.Violations())
	})
	t.Run("wrong url", func(t *testing.T) {
		s, r, last := setup(t)
		c := dial(t, s.GatewayURL()+"?v=10&encoding=json")
		c.read()
		c.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID, "seq": last})
		f := c.read()
		require.Equal(t, OpInvalidSession, f.Op)
		require.Equal(t, []string{RuleResumeWrongURL}, rules(s.Violations()))
	})
	t.Run("wrong token", func(t *testing.T) {
		s, r, last := setup(t)
		c := dial(t, s.ResumeURL()+"?v=10&encoding=json")
		c.read()
		c.send(OpResume, map[string]any{"token": "bad", "session_id": r.SessionID, "seq": last})
		c.expectClose(CloseAuthenticationFailed)
	})
	t.Run("missing seq", func(t *testing.T) {
		s, r, _ := setup(t)
		c := dial(t, s.ResumeURL()+"?v=10&encoding=json")
		c.read()
		c.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID})
		c.expectClose(CloseDecodeError)
	})
	t.Run("replay buffer too old", func(t *testing.T) {
		cfg := fastConfig()
		cfg.ReplayLimit = 4
		s := startServer(t, cfg)
		c := dialGateway(t, s)
		r, _ := c.identify(s, 0, 4)
		for range 20 {
			_, err := s.Dispatch(0, "X", json.RawMessage(`{}`))
			require.NoError(t, err)
		}
		require.NoError(t, c.ws.UnderlyingConn().Close())
		eventually(t, "detached", func() bool { return !s.Sessions()[0].Live })
		c2 := dial(t, s.ResumeURL()+"?v=10&encoding=json")
		c2.read()
		c2.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID, "seq": 1})
		f := c2.read()
		require.Equal(t, OpInvalidSession, f.Op)
		require.Empty(t, s.Violations(), "not the client's fault")
	})
}

func TestSessionTakeoverIsViolation(t *testing.T) {
	s := startServer(t, fastConfig())
	a := dialGateway(t, s)
	r, last := a.identify(s, 0, 4)
	// A second process resumes the session while A is alive and heartbeating.
	b := dial(t, s.ResumeURL()+"?v=10&encoding=json")
	b.read()
	b.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID, "seq": last})
	require.Equal(t, "RESUMED", b.readDispatch().typ())
	a.expectClose(CloseUnknownError)
	require.Equal(t, []string{RuleSessionTakeover}, rules(s.Violations()))
	ov := s.Overlaps(0)
	require.Len(t, ov, 1)
	require.Positive(t, ov[0].Duration)
}

func TestCompressPerMessageZlib(t *testing.T) {
	cfg := fastConfig()
	cfg.CompressMinBytes = 600
	s := startServer(t, cfg)
	c := dialGateway(t, s)
	m := identifyPayload(s.Token(), 0, 4)
	m["compress"] = true
	c.send(OpIdentify, m)
	require.Equal(t, "READY", c.readDispatch().typ())
	for range s.GuildsOfShard(0, 4) {
		c.readDispatch()
	}
	_, err := s.Dispatch(0, "BIG", map[string]string{"x": strings.Repeat("y", 1000)})
	require.NoError(t, err)
	_, err = s.Dispatch(0, "SMALL", map[string]string{"x": "y"})
	require.NoError(t, err)
	big := c.readDispatch()
	require.True(t, big.Binary, "big dispatch is a zlib binary frame")
	require.Equal(t, "BIG", big.typ())
	small := c.readDispatch()
	require.False(t, small.Binary)
	c.send(OpHeartbeat, nil)
	ack := c.read()
	require.Equal(t, OpHeartbeatAck, ack.Op)
	require.False(t, ack.Binary, "control payloads stay text")

	// Without compress: never binary.
	c2 := dialGateway(t, s)
	time.Sleep(25 * time.Millisecond) // identify window
	c2.identify(s, 1, 4)
	_, err = s.Dispatch(1, "BIG", map[string]string{"x": strings.Repeat("y", 1000)})
	require.NoError(t, err)
	require.False(t, c2.readDispatch().Binary)
}

func TestIntentsFilterGeneratedEvents(t *testing.T) {
	s := startServer(t, fastConfig())
	c := dialGateway(t, s)
	m := identifyPayload(s.Token(), 0, 1)
	m["intents"] = IntentGuilds // no GUILD_MESSAGES
	c.send(OpIdentify, m)
	require.Equal(t, "READY", c.readDispatch().typ())
	require.NoError(t, s.StartTraffic(TrafficConfig{Count: 50, Mix: map[string]int{KindMessageCreate: 1, KindGuildUpdate: 1}}))
	require.NoError(t, s.WaitTraffic(t.Context()))
	for _, e := range s.Events() {
		require.NotEqual(t, "MESSAGE_CREATE", e.Type)
	}
	require.Positive(t, s.Undelivered())
}

func TestMessageContentIntent(t *testing.T) {
	s := startServer(t, fastConfig())
	with := dialGateway(t, s)
	with.identify(s, 0, 1)
	time.Sleep(25 * time.Millisecond) // identify window
	without := dialGateway(t, s)
	m := identifyPayload(s.Token(), 0, 1)
	m["intents"] = IntentGuilds | IntentGuildMessages | IntentDirectMessages
	without.send(OpIdentify, m)
	require.Equal(t, "READY", without.readDispatch().typ())
	for range s.Guilds() {
		without.readDispatch()
	}
	app := strconv.FormatUint(s.Config().ApplicationID, 10)
	type msg struct {
		Content string            `json:"content"`
		Embeds  []json.RawMessage `json:"embeds"`
	}
	read := func(c *rawClient) msg {
		var out msg
		f := c.readDispatch()
		require.NoError(t, json.Unmarshal(f.D, &out))
		_, ok := EventID(f.D)
		require.True(t, ok, "id stays first: %s", f.D)
		return out
	}
	for _, tc := range []struct {
		name  string
		d     string
		blank bool
	}{
		{"guild message", `{"guild_id":"1","content":"!ping","embeds":[{"title":"x"}],"author":{"id":"8"}}`, true},
		{"dm", `{"content":"!ping","author":{"id":"8"}}`, false},
		{"mentions the app", `{"guild_id":"1","content":"hi <@` + app + `>","mentions":[{"id":"` + app + `"}],"author":{"id":"8"}}`, false},
		{"own message", `{"guild_id":"1","content":"Pong!","author":{"id":"` + app + `"}}`, false},
	} {
		_, err := s.Dispatch(0, "MESSAGE_CREATE", json.RawMessage(tc.d))
		require.NoError(t, err)
		require.NotEmpty(t, read(with).Content, tc.name)
		got := read(without)
		if tc.blank {
			require.Empty(t, got.Content, tc.name)
			require.Empty(t, got.Embeds, tc.name)
		} else {
			require.NotEmpty(t, got.Content, tc.name)
		}
	}
	// Generated guild messages are blanked the same way.
	require.NoError(t, s.StartTraffic(TrafficConfig{Count: 5, Mix: map[string]int{KindMessageCreate: 1}}))
	require.NoError(t, s.WaitTraffic(t.Context()))
	for range 5 {
		require.NotEmpty(t, read(with).Content)
		require.Empty(t, read(without).Content)
	}
}

func TestTransportCompression(t *testing.T) {
	s := startServer(t, fastConfig())
	ws, _, err := wsDialer.Dial(s.GatewayURL()+"?v=10&encoding=json&compress=zlib-stream", nil)
	require.NoError(t, err)
	defer ws.Close()
	// Every frame is binary; together they are one zlib stream of JSON payloads.
	pr, pw := io.Pipe()
	go func() {
		for {
			mt, b, err := ws.ReadMessage()
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			if mt != websocket.BinaryMessage {
				pw.CloseWithError(fmt.Errorf("text frame %q", b))
				return
			}
			if !bytes.HasSuffix(b, []byte{0, 0, 0xff, 0xff}) {
				pw.CloseWithError(fmt.Errorf("frame without sync flush"))
				return
			}
			if _, err := pw.Write(b); err != nil {
				return
			}
		}
	}()
	zr, err := zlib.NewReader(pr)
	require.NoError(t, err)
	dec := json.NewDecoder(zr)
	next := func() frame {
		var f frame
		require.NoError(t, dec.Decode(&f))
		return f
	}
	require.Equal(t, OpHello, next().Op)
	b, _ := json.Marshal(map[string]any{"op": OpIdentify, "d": identifyPayload(s.Token(), 0, 4)})
	require.NoError(t, ws.WriteMessage(websocket.TextMessage, b))
	f := next()
	require.Equal(t, "READY", f.typ())
	for range s.GuildsOfShard(0, 4) {
		require.Equal(t, "GUILD_CREATE", next().typ())
	}
	id, err := s.Dispatch(0, "MESSAGE_CREATE", json.RawMessage(`{"content":"z"}`))
	require.NoError(t, err)
	f = next()
	got, _ := EventID(f.D)
	require.Equal(t, id, got)
	_ = ws.Close()
	_ = pr.Close()
}
