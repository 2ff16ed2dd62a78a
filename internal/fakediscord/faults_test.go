package fakediscord

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"
)

// resumeOn dials the resume URL and RESUMEs; it returns the client and the first
// frame answered.
func resumeOn(t *testing.T, s *Server, sessionID string, seq int64) (*rawClient, frame) {
	t.Helper()
	c := dial(t, s.ResumeURL()+"?v=10&encoding=json")
	require.Equal(t, OpHello, c.read().Op)
	c.send(OpResume, map[string]any{"token": s.Token(), "session_id": sessionID, "seq": seq})
	return c, c.read()
}

func TestFaults(t *testing.T) {
	setup := func(t *testing.T) (*Server, *rawClient, readyData, int64) {
		s := startServer(t, fastConfig())
		c := dialGateway(t, s)
		r, last := c.identify(s, 2, 4)
		return s, c, r, last
	}

	t.Run("op 7 reconnect then resume gets events sent meanwhile", func(t *testing.T) {
		s, c, r, last := setup(t)
		require.Equal(t, 1, s.Reconnect(2))
		require.Equal(t, OpReconnect, c.read().Op)
		id, err := s.Dispatch(2, "MESSAGE_CREATE", json.RawMessage(`{}`))
		require.NoError(t, err)
		_ = c.ws.Close()
		_, f := resumeOn(t, s, r.SessionID, last)
		require.Equal(t, OpDispatch, f.Op)
		got, _ := EventID(f.D)
		require.Equal(t, id, got)
		require.Empty(t, s.Violations())
		require.Equal(t, "op7_reconnect", s.Sessions()[0].EndReason)
	})

	t.Run("op 9 resumable", func(t *testing.T) {
		s, c, r, last := setup(t)
		require.Equal(t, 1, s.InvalidSession(2, true))
		f := c.read()
		require.Equal(t, OpInvalidSession, f.Op)
		require.Equal(t, "true", string(f.D))
		_ = c.ws.Close()
		_, f = resumeOn(t, s, r.SessionID, last)
		require.Equal(t, "RESUMED", f.typ())
	})

	t.Run("op 9 not resumable", func(t *testing.T) {
		s, c, r, last := setup(t)
		s.InvalidSession(2, false)
		f := c.read()
		require.Equal(t, "false", string(f.D))
		_, f = resumeOn(t, s, r.SessionID, last)
		require.Equal(t, OpInvalidSession, f.Op)
		// The same connection may IDENTIFY again.
		time.Sleep(25 * time.Millisecond)
		r2, _ := c.identify(s, 2, 4)
		require.NotEqual(t, r.SessionID, r2.SessionID)
	})

	t.Run("close 4000 keeps the session", func(t *testing.T) {
		s, c, r, last := setup(t)
		require.Equal(t, 1, s.CloseShard(2, 4000))
		c.expectClose(4000)
		_, f := resumeOn(t, s, r.SessionID, last)
		require.Equal(t, "RESUMED", f.typ())
	})

	t.Run("close 4009 ends the session", func(t *testing.T) {
		s, c, r, last := setup(t)
		s.CloseShard(2, 4009)
		c.expectClose(4009)
		_, f := resumeOn(t, s, r.SessionID, last)
		require.Equal(t, OpInvalidSession, f.Op)
	})

	t.Run("stop acks", func(t *testing.T) {
		s, c, _, last := setup(t)
		s.StopAcks(2, true)
		c.send(OpHeartbeat, last)
		id, err := s.Dispatch(2, "PING", json.RawMessage(`{}`))
		require.NoError(t, err)
		f := c.read() // the dispatch arrives, the ACK never does
		got, _ := EventID(f.D)
		require.Equal(t, id, got)
		s.StopAcks(2, false)
		c.send(OpHeartbeat, last+1)
		require.Equal(t, OpHeartbeatAck, c.read().Op)
	})

	t.Run("drop tcp", func(t *testing.T) {
		s, c, r, last := setup(t)
		require.Equal(t, 1, s.DropShard(2))
		_, err := c.next()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			require.Equal(t, websocket.CloseAbnormalClosure, ce.Code)
		} else {
			require.Error(t, err)
		}
		_, f := resumeOn(t, s, r.SessionID, last)
		require.Equal(t, "RESUMED", f.typ())
	})

	t.Run("stall then unstall", func(t *testing.T) {
		s, c, _, _ := setup(t)
		require.Equal(t, 1, s.Stall(2, 0))
		id, err := s.Dispatch(2, "PING", json.RawMessage(`{}`))
		require.NoError(t, err)
		var cc *conn
		for x := range s.snapshotConns() {
			cc = x
		}
		sent := cc.sent.Load()
		time.Sleep(50 * time.Millisecond)
		require.Equal(t, sent, cc.sent.Load(), "nothing written while stalled")
		require.Equal(t, 1, cc.queueLen())
		s.Unstall(2)
		got, _ := EventID(c.readDispatch().D)
		require.Equal(t, id, got)
	})

	t.Run("stall for a duration", func(t *testing.T) {
		s, c, _, _ := setup(t)
		s.Stall(2, 30*time.Millisecond)
		id, err := s.Dispatch(2, "PING", json.RawMessage(`{}`))
		require.NoError(t, err)
		got, _ := EventID(c.readDispatch().D)
		require.Equal(t, id, got)
	})

	t.Run("expire session", func(t *testing.T) {
		s, c, r, last := setup(t)
		require.NoError(t, s.ExpireSession(r.SessionID))
		c.expectClose(CloseSessionTimedOut)
		_, f := resumeOn(t, s, r.SessionID, last)
		require.Equal(t, OpInvalidSession, f.Op)
		require.Error(t, s.ExpireSession(r.SessionID))
	})

	t.Run("request heartbeat", func(t *testing.T) {
		s, c, _, _ := setup(t)
		require.Equal(t, 1, s.RequestHeartbeat(2))
		require.Equal(t, OpHeartbeat, c.read().Op)
	})

	t.Run("unknown kind", func(t *testing.T) {
		s, _, _, _ := setup(t)
		_, err := s.Inject(Fault{Kind: "explode"})
		require.Error(t, err)
		_, err = s.Inject(Fault{Kind: FaultClose, Code: 99})
		require.Error(t, err)
	})
}

func (s *Server) snapshotConns() map[*conn]struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[*conn]struct{}, len(s.conns))
	for c := range s.conns {
		out[c] = struct{}{}
	}
	return out
}

func (c *conn) queueLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

func TestCloseNormalAfterReconnectEndsSession(t *testing.T) {
	s := startServer(t, fastConfig())
	c := dialGateway(t, s)
	r, last := c.identify(s, 0, 4)
	s.Reconnect(0)
	require.Equal(t, OpReconnect, c.read().Op)
	// A client that obeys op 7 with a 1000 close throws its session away.
	require.NoError(t, c.ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "")))
	eventually(t, "connection gone", func() bool { return len(s.snapshotConns()) == 0 })
	_, f := resumeOn(t, s, r.SessionID, last)
	require.Equal(t, OpInvalidSession, f.Op)
}

func TestSlowConsumerIsDropped(t *testing.T) {
	cfg := fastConfig()
	cfg.MaxQueuedFrames = 64
	cfg.ReplayLimit = 128
	s := startServer(t, cfg)
	c := dialGateway(t, s)
	c.identify(s, 0, 4)
	// The client stops reading; events pile up in the kernel buffers, then in the
	// connection's queue.
	payload := json.RawMessage(`{"x":"` + strings.Repeat("y", 4096) + `"}`)
	for i := 0; i < 50000 && len(s.Violations()) == 0; i++ {
		if _, err := s.Dispatch(0, "MESSAGE_CREATE", payload); err != nil {
			break
		}
	}
	eventually(t, "slow consumer dropped", func() bool { return len(s.Violations()) > 0 })
	require.Equal(t, RuleSlowConsumer, s.Violations()[0].Rule)
	eventually(t, "interval ended", func() bool { return !s.Sessions()[0].Live })
	_, err := s.Dispatch(0, "MESSAGE_CREATE", payload)
	require.NoError(t, err, "the session stays resumable and keeps buffering")
}
