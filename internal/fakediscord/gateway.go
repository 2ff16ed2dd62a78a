package fakediscord

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// Gateway opcodes.
const (
	OpDispatch            = 0
	OpHeartbeat           = 1
	OpIdentify            = 2
	OpPresenceUpdate      = 3
	OpVoiceStateUpdate    = 4
	OpResume              = 6
	OpReconnect           = 7
	OpRequestGuildMembers = 8
	OpInvalidSession      = 9
	OpHello               = 10
	OpHeartbeatAck        = 11
)

// Close codes the fake sends (Discord's).
const (
	CloseUnknownError         = 4000
	CloseUnknownOpcode        = 4001
	CloseDecodeError          = 4002
	CloseNotAuthenticated     = 4003
	CloseAuthenticationFailed = 4004
	CloseAlreadyAuthenticated = 4005
	CloseInvalidSeq           = 4007
	CloseRateLimited          = 4008
	CloseSessionTimedOut      = 4009
	CloseInvalidShard         = 4010
	CloseShardingRequired     = 4011
	CloseInvalidAPIVersion    = 4012
	CloseInvalidIntents       = 4013
	CloseDisallowedIntents    = 4014
)

// Intents.
const (
	IntentGuilds         = 1 << 0
	IntentGuildMembers   = 1 << 1
	IntentGuildPresences = 1 << 8
	IntentGuildMessages  = 1 << 9
	IntentDirectMessages = 1 << 12
	IntentMessageContent = 1 << 15

	privilegedIntents = IntentGuildMembers | IntentGuildPresences | IntentMessageContent
	// knownIntents are the bits Discord defines; any other bit closes with 4013.
	knownIntents = (1<<17 - 1) | 1<<20 | 1<<21 | 1<<24 | 1<<25
)

// closeInvalidates reports whether a close with code (sent by the server) ends
// the session for good: Discord's table says "new session" or "don't reconnect".
func closeInvalidates(code int) bool {
	switch code {
	case CloseAuthenticationFailed, CloseInvalidSeq, CloseSessionTimedOut,
		CloseInvalidShard, CloseShardingRequired, CloseInvalidAPIVersion,
		CloseInvalidIntents, CloseDisallowedIntents:
		return true
	}
	return false
}

var (
	frameAck       = []byte(`{"op":11,"d":null,"s":null,"t":null}`)
	frameReconnect = []byte(`{"op":7,"d":null,"s":null,"t":null}`)
	frameInvalidT  = []byte(`{"op":9,"d":true,"s":null,"t":null}`)
	frameInvalidF  = []byte(`{"op":9,"d":false,"s":null,"t":null}`)
	frameHBRequest = []byte(`{"op":1,"d":null,"s":null,"t":null}`)
)

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request, resume bool) {
	select {
	case <-s.stopping:
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	default:
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	c := &conn{
		id:         s.connIDs.Add(1),
		srv:        s,
		ws:         ws,
		nc:         ws.NetConn(),
		resumePath: resume,
		stream:     r.URL.Query().Get("compress") == "zlib-stream",
		kill:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
		writerD:    make(chan struct{}),
		shard:      -1,
	}
	s.mu.Lock()
	select {
	case <-s.stopping:
		s.mu.Unlock()
		_ = c.nc.Close()
		return
	default:
	}
	s.conns[c] = struct{}{}
	s.handlers.Add(1)
	s.mu.Unlock()
	defer s.handlers.Done()

	go c.writeLoop()
	reason, code, invalidate := c.readLoop(r)
	c.mu.Lock()
	if c.stallT != nil {
		c.stallT.Stop()
	}
	c.mu.Unlock()
	close(c.kill)
	<-c.writerD
	_ = c.nc.Close()
	c.detach(reason, code, invalidate)
	if reason == "client_close" && invalidate {
		c.invalidateReleased()
	}
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// readLoop handles the client's frames until the connection ends and returns why,
// the close code (client's or server's) and whether the session is invalidated.
func (c *conn) readLoop(r *http.Request) (reason string, code int, invalidate bool) {
	s := c.srv
	c.ws.SetCloseHandler(func(int, string) error { return nil }) // no echo: we close next
	q := r.URL.Query()
	if v := q.Get("v"); v != "9" && v != "10" {
		s.violation(Violation{Rule: RuleInvalidAPIVersion, Shard: -1, ConnID: c.id, CloseCode: CloseInvalidAPIVersion, Detail: "v=" + v})
		return c.closeAndDrain(CloseInvalidAPIVersion, "Invalid API version", true)
	}
	if e := q.Get("encoding"); e != "" && e != "json" {
		s.violation(Violation{Rule: RuleDecodeError, Shard: -1, ConnID: c.id, CloseCode: CloseDecodeError, Detail: "encoding=" + e + " unsupported by the fake"})
		return c.closeAndDrain(CloseDecodeError, "Error while decoding payload.", true)
	}
	if cmp := q.Get("compress"); cmp != "" && cmp != "zlib-stream" {
		s.violation(Violation{Rule: RuleDecodeError, Shard: -1, ConnID: c.id, CloseCode: CloseDecodeError, Detail: "compress=" + cmp})
		return c.closeAndDrain(CloseDecodeError, "Error while decoding payload.", true)
	}

	hello := fmt.Appendf(nil, `{"op":10,"d":{"heartbeat_interval":%d,"_trace":["fakediscord"]},"s":null,"t":null}`,
		s.cfg.HeartbeatInterval.Milliseconds())
	c.enqueue(hello, false)
	lastBeat := time.Now()
	_ = c.nc.SetReadDeadline(lastBeat.Add(s.cfg.HeartbeatTimeout))
	cmds := newWindowCounter(s.cfg.CommandLimit, s.cfg.CommandWindow)

	for {
		mt, rd, err := c.ws.NextReader()
		if err != nil {
			return c.readError(err)
		}
		c.mu.Lock()
		closing := c.closing
		c.mu.Unlock()
		if closing {
			_, _ = io.Copy(io.Discard, rd)
			continue
		}
		data, err := io.ReadAll(io.LimitReader(rd, int64(s.cfg.MaxPayloadBytes)+1))
		if err != nil {
			return c.readError(err)
		}
		if len(data) > s.cfg.MaxPayloadBytes {
			c.violate(RulePayloadTooLarge, CloseDecodeError, fmt.Sprintf("frame over %d bytes", s.cfg.MaxPayloadBytes))
			c.closeWith(CloseDecodeError, "Error while decoding payload.", false)
			continue
		}
		if !cmds.allow(time.Now()) {
			c.violate(RuleCommandRateLimit, CloseRateLimited, fmt.Sprintf("more than %d commands in %v", s.cfg.CommandLimit, s.cfg.CommandWindow))
			c.closeWith(CloseRateLimited, "You are being rate limited.", false)
			continue
		}
		if mt != websocket.TextMessage {
			c.violate(RuleDecodeError, CloseDecodeError, "binary frame from a json client")
			c.closeWith(CloseDecodeError, "Error while decoding payload.", false)
			continue
		}
		var env struct {
			Op *int            `json:"op"`
			D  json.RawMessage `json:"d"`
		}
		if err := json.Unmarshal(data, &env); err != nil || env.Op == nil {
			c.violate(RuleDecodeError, CloseDecodeError, "payload is not a gateway JSON object with op")
			c.closeWith(CloseDecodeError, "Error while decoding payload.", false)
			continue
		}
		now := time.Now()
		switch *env.Op {
		case OpHeartbeat:
			seq, ok := parseHeartbeat(env.D)
			if !ok {
				c.violate(RuleDecodeError, CloseDecodeError, "heartbeat d must be a sequence number or null")
				c.closeWith(CloseDecodeError, "Error while decoding payload.", false)
				continue
			}
			lastBeat = now
			_ = c.nc.SetReadDeadline(lastBeat.Add(s.cfg.HeartbeatTimeout))
			c.mu.Lock()
			noAck, sess := c.noAck, c.sess
			c.mu.Unlock()
			if sess != nil && seq >= 0 {
				sess.mu.Lock()
				sess.lastAckSeq = seq
				sess.mu.Unlock()
			}
			if !noAck {
				c.enqueue(frameAck, false)
			}
		case OpIdentify:
			c.identify(env.D, now)
		case OpResume:
			c.resume(env.D, now)
		case OpPresenceUpdate, OpVoiceStateUpdate, OpRequestGuildMembers:
			if !c.authenticated() {
				c.violate(RuleNotAuthenticated, CloseNotAuthenticated, fmt.Sprintf("op %d before IDENTIFY", *env.Op))
				c.closeWith(CloseNotAuthenticated, "Not authenticated.", false)
				continue
			}
			if len(env.D) == 0 || env.D[0] != '{' {
				c.violate(RuleDecodeError, CloseDecodeError, fmt.Sprintf("op %d d must be an object", *env.Op))
				c.closeWith(CloseDecodeError, "Error while decoding payload.", false)
			}
		default:
			c.violate(RuleUnknownOpcode, CloseUnknownOpcode, fmt.Sprintf("op %d", *env.Op))
			c.closeWith(CloseUnknownOpcode, "Unknown opcode.", false)
		}
	}
}

// readError classifies the end of the read side.
func (c *conn) readError(err error) (string, int, bool) {
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		// 1000 and 1001 from the client end the session (Discord's rule).
		inval := ce.Code == websocket.CloseNormalClosure || ce.Code == websocket.CloseGoingAway
		return "client_close", ce.Code, inval
	}
	var ne net.Error
	if !closing && errors.As(err, &ne) && ne.Timeout() {
		c.violate(RuleHeartbeatTimeout, CloseSessionTimedOut, fmt.Sprintf("no heartbeat for %v", c.srv.cfg.HeartbeatTimeout))
		reason, code, _ := c.closeAndDrain(CloseSessionTimedOut, "Session timed out.", true)
		return reason, code, true
	}
	if closing {
		return "server_close", 0, false
	}
	return "connection_lost", websocket.CloseAbnormalClosure, false
}

// closeWith ends the session hold (invalidating per Discord's table or when
// forced), queues a close frame and lets the read loop drain until the client goes.
func (c *conn) closeWith(code int, text string, invalidate bool) {
	invalidate = invalidate || closeInvalidates(code)
	c.detach("server_close", code, invalidate)
	if c.enqueueClose(code, text) {
		_ = c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.CloseTimeout))
	}
}

// closeAndDrain is closeWith for the read loop's own exits: it waits (bounded) for
// the client to go so the close frame is read before the TCP connection closes.
func (c *conn) closeAndDrain(code int, text string, invalidate bool) (string, int, bool) {
	c.closeWith(code, text, invalidate)
	for {
		if _, _, err := c.ws.NextReader(); err != nil {
			return "server_close", code, invalidate || closeInvalidates(code)
		}
	}
}

func (c *conn) authenticated() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess != nil
}

func (c *conn) violate(rule string, code int, detail string) {
	c.mu.Lock()
	v := Violation{Rule: rule, Shard: c.shard, ConnID: c.id, CloseCode: code, Detail: detail}
	if c.sess != nil {
		v.SessionID = c.sess.id
	}
	c.mu.Unlock()
	c.srv.violation(v)
}

func parseHeartbeat(d json.RawMessage) (int64, bool) {
	d = bytes.TrimSpace(d)
	if len(d) == 0 || string(d) == "null" {
		return -1, true
	}
	n, err := strconv.ParseInt(string(d), 10, 64)
	return n, err == nil && n >= 0
}

// detach ends this connection's hold on its session. The session stays resumable
// for ResumeWindow unless invalidate.
func (c *conn) detach(reason string, code int, invalidate bool) {
	s := c.srv
	c.mu.Lock()
	se, iv := c.sess, c.iv
	c.sess, c.iv = nil, nil
	c.mu.Unlock()
	if se == nil {
		return
	}
	now := time.Now()
	se.mu.Lock()
	lastSeq, clientSeq := se.seq, se.lastAckSeq
	if se.conn == c {
		se.conn = nil
		se.expiresAt.Store(now.Add(s.cfg.ResumeWindow).UnixNano())
	}
	if invalidate {
		se.invalid.Store(true)
	}
	se.mu.Unlock()
	s.mu.Lock()
	if iv != nil {
		iv.End, iv.Live, iv.EndReason, iv.CloseCode = now, false, reason, code
		iv.LastSeq, iv.ClientSeq = lastSeq, clientSeq
	}
	if invalidate {
		s.reg.remove(se)
	}
	s.mu.Unlock()
	s.cfg.Logger.Debug("fakediscord session detached", "shard_id", se.shard, "session_id", se.id,
		"conn_id", c.id, "reason", reason, "close_code", code, "invalidated", invalidate)
}

// invalidateReleased applies a client's 1000/1001 close to the session this
// connection was detached from by op 7 or op 9 d=true, unless another connection
// has resumed it meanwhile: on Discord such a close ends the session.
func (c *conn) invalidateReleased() {
	c.mu.Lock()
	se := c.released
	c.mu.Unlock()
	if se == nil {
		return
	}
	se.mu.Lock()
	idle := se.conn == nil
	if idle {
		se.invalid.Store(true)
	}
	se.mu.Unlock()
	if idle {
		c.srv.mu.Lock()
		c.srv.reg.remove(se)
		c.srv.mu.Unlock()
	}
}

// windowCounter allows limit events per sliding window.
type windowCounter struct {
	window time.Duration
	times  []time.Time // ring of the last len(times) accepted events
	next   int
	n      int
}

func newWindowCounter(limit int, window time.Duration) *windowCounter {
	return &windowCounter{window: window, times: make([]time.Time, limit)}
}

func (w *windowCounter) allow(now time.Time) bool {
	if w.n == len(w.times) && now.Sub(w.times[w.next]) < w.window {
		return false
	}
	w.times[w.next] = now
	w.next = (w.next + 1) % len(w.times)
	if w.n < len(w.times) {
		w.n++
	}
	return true
}

func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// stripBot accepts a token with or without the "Bot " prefix (arikawa sends it).
func stripBot(tok string) string { return strings.TrimPrefix(tok, "Bot ") }
