package fakediscord

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"
)

func TestIdentifyReady(t *testing.T) {
	s := startServer(t, fastConfig())
	c := dial(t, s.GatewayURL()+"?v=9&encoding=json")
	hello := c.read()
	require.Equal(t, OpHello, hello.Op)
	var h struct {
		HeartbeatInterval int64 `json:"heartbeat_interval"`
	}
	require.NoError(t, json.Unmarshal(hello.D, &h))
	require.EqualValues(t, 200, h.HeartbeatInterval)

	r, last := c.identify(s, 1, 4)
	require.Equal(t, [2]int{1, 4}, r.Shard)
	require.True(t, r.User.Bot)
	require.Equal(t, strconv.FormatUint(s.Config().ApplicationID, 10), r.Application.ID)
	require.NotEmpty(t, r.SessionID)
	require.Equal(t, s.ResumeURL(), r.ResumeGatewayURL)
	require.NotEqual(t, s.GatewayURL(), r.ResumeGatewayURL)
	want := s.GuildsOfShard(1, 4)
	require.Len(t, r.Guilds, len(want))
	for i, g := range r.Guilds {
		require.True(t, g.Unavailable)
		require.Equal(t, strconv.FormatUint(want[i].ID, 10), g.ID)
		require.Equal(t, 1, ShardFor(want[i].ID, 4))
	}
	require.EqualValues(t, 1+len(want), last)

	c.send(OpHeartbeat, last)
	require.Equal(t, OpHeartbeatAck, c.read().Op)

	// The ledger holds READY and the GUILD_CREATEs with seqs 1.. and unique ids.
	evs := s.Events()
	require.Len(t, evs, 1+len(want))
	seen := map[uint64]bool{}
	for i, e := range evs {
		require.EqualValues(t, i+1, e.Seq)
		require.Equal(t, r.SessionID, e.SessionID)
		require.Equal(t, 1, e.Shard)
		require.False(t, seen[e.ID])
		seen[e.ID] = true
	}
	require.Equal(t, 1, s.Stats(1).Identifies)
	require.Empty(t, s.Violations())
}

func TestDispatchCarriesEventID(t *testing.T) {
	s := startServer(t, fastConfig())
	c := dialGateway(t, s)
	_, last := c.identify(s, 0, 4)

	id1, err := s.Dispatch(0, "MESSAGE_CREATE", map[string]any{"id": "42", "content": "hi"})
	require.NoError(t, err)
	id2, err := s.Dispatch(0, UnknownEventType, json.RawMessage(`{}`))
	require.NoError(t, err)
	id3, err := s.Dispatch(0, "CUSTOM", json.RawMessage(`[1,2]`))
	require.NoError(t, err)
	_, err = s.Dispatch(3, "MESSAGE_CREATE", json.RawMessage(`{}`))
	require.ErrorIs(t, err, ErrNoSession)

	for i, want := range []uint64{id1, id2} {
		f := c.readDispatch()
		require.EqualValues(t, last+int64(i)+1, *f.S)
		got, ok := EventID(f.D)
		require.True(t, ok, "%s", f.D)
		require.Equal(t, want, got)
		require.True(t, strings.HasPrefix(string(f.D), `{"fake_event_id":"`))
		require.True(t, json.Valid(f.D))
	}
	f := c.readDispatch()
	require.Equal(t, "CUSTOM", f.typ())
	_, ok := EventID(f.D)
	require.False(t, ok, "non-object payloads carry no id")
	evs := s.Events()
	require.Equal(t, id3, evs[len(evs)-1].ID)

	// The slow path: the field not first.
	got, ok := EventID([]byte(`{"a":1,"fake_event_id":"77"}`))
	require.True(t, ok)
	require.EqualValues(t, 77, got)
}

func TestResumeReplaysEverythingAfterSeq(t *testing.T) {
	s := startServer(t, fastConfig())
	c := dialGateway(t, s)
	r, last := c.identify(s, 2, 4)

	var ids []uint64
	for i := range 5 {
		id, err := s.Dispatch(2, "MESSAGE_CREATE", map[string]int{"n": i})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	for range 2 { // the client gets two of them, then its connection dies
		c.readDispatch()
	}
	require.NoError(t, c.ws.UnderlyingConn().Close())
	eventually(t, "session detached", func() bool { return !s.Sessions()[0].Live })

	// Events keep arriving while the client is away; they wait in the session.
	idLate, err := s.Dispatch(2, "MESSAGE_CREATE", map[string]int{"n": 5})
	require.NoError(t, err)
	ids = append(ids, idLate)

	c2 := dial(t, r.ResumeGatewayURL+"?v=10&encoding=json")
	require.Equal(t, OpHello, c2.read().Op)
	c2.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID, "seq": last + 2})
	for i := 2; i < len(ids); i++ {
		f := c2.readDispatch()
		require.EqualValues(t, last+int64(i)+1, *f.S)
		got, _ := EventID(f.D)
		require.Equal(t, ids[i], got, "replay carries the original id")
	}
	f := c2.readDispatch()
	require.Equal(t, "RESUMED", f.typ())
	require.EqualValues(t, last+int64(len(ids))+1, *f.S)

	st := s.Stats(2)
	require.Equal(t, 1, st.Identifies)
	require.Equal(t, 1, st.Resumes)
	require.Empty(t, s.Overlaps(2))
	require.Empty(t, s.Violations())
	ivs := s.Sessions()
	require.Len(t, ivs, 2)
	require.Equal(t, "resume", ivs[1].Kind)
	require.True(t, ivs[1].Live)
}

func TestNormalCloseInvalidatesSession(t *testing.T) {
	for _, code := range []int{websocket.CloseNormalClosure, websocket.CloseGoingAway} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			s := startServer(t, fastConfig())
			c := dialGateway(t, s)
			r, last := c.identify(s, 0, 4)
			require.NoError(t, c.ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(code, "")))
			eventually(t, "session closed", func() bool { return !s.Sessions()[0].Live })

			c2 := dial(t, s.ResumeURL()+"?v=10&encoding=json")
			c2.read()
			c2.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID, "seq": last})
			f := c2.read()
			require.Equal(t, OpInvalidSession, f.Op)
			require.Equal(t, "false", string(f.D))
			require.Equal(t, 1, s.Stats(0).ResumeRejected)
		})
	}
}

func TestResumeWindowExpires(t *testing.T) {
	cfg := fastConfig()
	cfg.ResumeWindow = 50 * time.Millisecond
	s := startServer(t, cfg)
	c := dialGateway(t, s)
	r, last := c.identify(s, 0, 4)
	require.NoError(t, c.ws.UnderlyingConn().Close())
	eventually(t, "session detached", func() bool { return !s.Sessions()[0].Live })
	time.Sleep(60 * time.Millisecond) // outlive the resume window

	c2 := dial(t, s.ResumeURL()+"?v=10&encoding=json")
	c2.read()
	c2.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID, "seq": last})
	f := c2.read()
	require.Equal(t, OpInvalidSession, f.Op)
	require.Equal(t, "false", string(f.D))
	_, err := s.Dispatch(0, "MESSAGE_CREATE", json.RawMessage(`{}`))
	require.ErrorIs(t, err, ErrNoSession, "an expired session takes no events")
}

func TestTwoOwnersOverlap(t *testing.T) {
	s := startServer(t, fastConfig())
	a := dialGateway(t, s)
	a.identify(s, 3, 4)
	time.Sleep(30 * time.Millisecond) // past the identify window
	b := dialGateway(t, s)
	b.identify(s, 3, 4)

	id, err := s.Dispatch(3, "MESSAGE_CREATE", json.RawMessage(`{}`))
	require.NoError(t, err)
	for _, c := range []*rawClient{a, b} {
		got, _ := EventID(c.readDispatch().D)
		require.Equal(t, id, got, "both sessions get the event, as on Discord")
	}
	ov := s.Overlaps(3)
	require.Len(t, ov, 1)
	require.Positive(t, ov[0].Duration)
	require.NotEqual(t, ov[0].A.SessionID, ov[0].B.SessionID)
	d, u := s.EventsDispatched()
	require.Equal(t, u+1, d, "one event, two dispatches")
}

func TestHandoverWithoutOverlap(t *testing.T) {
	s := startServer(t, fastConfig())
	a := dialGateway(t, s)
	r, last := a.identify(s, 1, 4)
	// Owner A goes away (as a released lease does: close 4000 keeps the session).
	require.NoError(t, a.ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "handover")))
	_ = a.ws.Close()
	b := dial(t, s.ResumeURL()+"?v=10&encoding=json")
	b.read()
	b.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID, "seq": last})
	require.Equal(t, "RESUMED", b.readDispatch().typ())
	require.Empty(t, s.Overlaps(1))
	require.Empty(t, s.Violations())
}

func TestReplayRing(t *testing.T) {
	var r replayRing
	for seq := int64(1); seq <= 10; seq++ {
		r.push(seq, []byte(strconv.FormatInt(seq, 10)), 4)
	}
	got, ok := r.after(6) // keeps 7..10
	require.True(t, ok)
	require.Equal(t, [][]byte{[]byte("7"), []byte("8"), []byte("9"), []byte("10")}, got)
	got, ok = r.after(8)
	require.True(t, ok)
	require.Equal(t, [][]byte{[]byte("9"), []byte("10")}, got)
	_, ok = r.after(5)
	require.False(t, ok, "seq 6 is gone")
	r.release()
	_, ok = r.after(9)
	require.False(t, ok)
}
