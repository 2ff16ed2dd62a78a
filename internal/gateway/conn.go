package gateway

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diamondburned/arikawa/v3/discord"
	"github.com/diamondburned/arikawa/v3/gateway"
	"github.com/diamondburned/arikawa/v3/utils/ws"
	"github.com/gorilla/websocket"

	"github.com/shardwarden/shardwarden/internal/bus"
)

// Close codes we send. 4000 keeps the session resumable; 1000/1001 would end it
// and are never sent.
const (
	closeResumable  = 4000
	closeInvalidSeq = 4007 // Discord's "invalid seq": arikawa wipes its session on it
)

var (
	errZombie         = errors.New("heartbeat not acknowledged before the next one: zombie connection")
	errNoIdentifySlot = errors.New("identify without a valid identify claim: redial to claim one")
	errBufferFull     = errors.New("shard buffer full: JetStream is not keeping up")
)

// conn is the ws.Connection under arikawa's ws.Gateway: it decodes only the
// envelope of each frame, hands every dispatch (unknown types too) to the shard's
// outbox with a copy of its raw d, and gives the event loop just what it needs
// for its state (sequence, session, hello, acks). Dial waits for room in the
// outbox and for an identify claim before dialing, and picks the resume URL when
// the next handshake is a RESUME; Close always sends 4000.
//
// A conn dials once: the runner builds a fresh arikawa gateway (from its own
// session state) for every connection instead of letting arikawa reconnect. That
// skips arikawa's dial limiter (one dial per 5 s per websocket) so a RESUME after
// op 7 or a drop is immediate, and arikawa's hidden state (sequence, session,
// its 15-minute "deadbeat" rule) never outlives one connection. ended is closed
// when the connection is over (or its dial failed): the runner then stops that
// gateway.
type conn struct {
	sh     *shard
	dialer websocket.Dialer

	mu          sync.Mutex
	cur         *socket
	dialed      bool
	ended       chan struct{}
	endOnce     sync.Once
	established atomic.Bool // READY or RESUMED was received on this connection
}

var _ ws.Connection = (*conn)(nil)

var errOneShot = errors.New("connection already used: the runner reconnects with a new gateway")

func newConn(sh *shard) *conn {
	return &conn{sh: sh, ended: make(chan struct{}), dialer: websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   1 << 15,
		WriteBufferSize:  1 << 12,
	}}
}

// socket is one websocket connection and its reader.
type socket struct {
	c          *conn
	sh         *shard
	ws         *websocket.Conn
	ops        chan ws.Op
	done       chan struct{} // closed when the socket is being closed
	readerDone chan struct{}
	closeOnce  sync.Once
	writeMu    sync.Mutex
	watchdog   *time.Timer

	established atomic.Bool // READY or RESUMED seen
	seqLag      int         // dispatches not shown to arikawa's loop since the last one (reader only)
	hbMu        sync.Mutex
	hbSent      time.Time
	hbPending   bool
	hbRequested atomic.Int32 // op 1s from the server not yet answered by a heartbeat
}

// Dial implements ws.Connection. addr (fixed by arikawa) is ignored: the shard
// knows whether this handshake is a RESUME (resume_gateway_url) or an IDENTIFY.
func (c *conn) Dial(ctx context.Context, _ string) (ops <-chan ws.Op, err error) {
	c.mu.Lock()
	again := c.dialed
	c.dialed = true
	c.mu.Unlock()
	if again {
		return nil, errOneShot
	}
	defer func() {
		if err != nil {
			c.end()
		}
	}()
	sh := c.sh
	sh.setState(stateConnecting)

	// Backpressure: reconnect only once JetStream has drained the buffer.
	if ok, _ := sh.ob.hasRoom(); !ok {
		sh.setBackpressure(true)
		sh.log.WarnContext(ctx, "waiting for JetStream to drain the shard buffer before reconnecting",
			slog.Int("buffered", sh.ob.len()))
		if err := sh.ob.waitRoom(ctx); err != nil {
			return nil, fmt.Errorf("wait for buffer room: %w", err)
		}
	}
	sh.setBackpressure(false)

	url, identify := sh.nextHandshake()
	if identify {
		if err := sh.acquireIdentify(ctx); err != nil {
			return nil, err
		}
	} else {
		sh.setState(stateResuming)
	}

	dialCtx, cancel := context.WithTimeout(ctx, sh.svc.cfg.DialTimeout)
	defer cancel()
	wsc, resp, err := c.dialer.DialContext(dialCtx, withGatewayParams(url), nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		sh.m.reconnect(reconnectDialError)
		return nil, fmt.Errorf("dial gateway: %w", err)
	}
	wsc.SetReadLimit(sh.svc.cfg.MaxFrameBytes)
	s := &socket{
		c:          c,
		sh:         sh,
		ws:         wsc,
		ops:        make(chan ws.Op, 1),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	// The zombie gap before the session is up: a server that never sends HELLO,
	// READY or RESUMED is never declared dead by arikawa. Any frame restarts the
	// clock.
	s.watchdog = time.AfterFunc(sh.svc.cfg.HandshakeTimeout, func() {
		if !s.established.Load() {
			sh.m.reconnect(reconnectHandshakeTimeout)
			sh.log.Warn("handshake stalled (no frame, READY or RESUMED in time): reconnecting", slog.Duration("timeout", sh.svc.cfg.HandshakeTimeout))
			s.close()
		}
	})
	c.mu.Lock()
	c.cur = s
	c.mu.Unlock()
	go s.read()
	return s.ops, nil
}

func withGatewayParams(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		u = u[:i]
	}
	return u + "?v=10&encoding=json"
}

func (c *conn) end() { c.endOnce.Do(func() { close(c.ended) }) }

// Close implements ws.Connection. It closes with 4000 whatever gracefully says:
// a 1000 close would end the Discord session.
func (c *conn) Close(bool) error {
	c.mu.Lock()
	s := c.cur
	c.cur = nil
	c.mu.Unlock()
	if s == nil {
		return ws.ErrWebsocketClosed
	}
	s.close()
	<-s.readerDone
	return nil
}

// Send implements ws.Connection; arikawa's event loop calls it.
func (c *conn) Send(ctx context.Context, b []byte) error {
	c.mu.Lock()
	s := c.cur
	c.mu.Unlock()
	if s == nil {
		return ws.ErrWebsocketClosed
	}
	sh := s.sh
	switch peekOp(b) {
	case 1:
		requested := false
		for n := s.hbRequested.Load(); n > 0 && !requested; n = s.hbRequested.Load() {
			requested = s.hbRequested.CompareAndSwap(n, n-1)
		}
		s.hbMu.Lock()
		zombie := s.hbPending && !requested
		s.hbSent, s.hbPending = time.Now(), true
		s.hbMu.Unlock()
		if zombie {
			sh.m.reconnect(reconnectZombie)
			sh.log.WarnContext(ctx, "heartbeat not acknowledged: zombie connection, reconnecting")
			s.close()
			return errZombie
		}
	case 2:
		claim := sh.takeClaim()
		if !claim.Valid() {
			// The dial took longer than the claim lasts: sending now could land
			// within another replica's window. Reconnect and claim again.
			sh.m.reconnect(reconnectClaimExpired)
			s.close()
			return errNoIdentifySlot
		}
		if err := s.write(ctx, b); err != nil {
			return err
		}
		sh.m.identifies.Inc()
		sh.log.InfoContext(ctx, "identify sent", slog.Duration("since_claim", time.Since(claim.claimedAt)))
		sentCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := claim.Sent(sentCtx); err != nil {
			sh.log.ErrorContext(ctx, "record identify", slog.Any("error", err))
		}
		return nil
	case 6:
		sh.m.resumes.Inc()
		sh.setState(stateResuming)
		sh.log.InfoContext(ctx, "resume sent", slog.Int64("seq", sh.currentSeq()))
	}
	return s.write(ctx, b)
}

func (s *socket) write(ctx context.Context, b []byte) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	_ = s.ws.SetWriteDeadline(deadline)
	if err := s.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		return fmt.Errorf("gateway write: %w", err)
	}
	return nil
}

// close sends a 4000 close frame and drops the connection; the reader then ends.
// Safe from any goroutine, more than once.
func (s *socket) close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.watchdog.Stop()
		msg := websocket.FormatCloseMessage(closeResumable, "shardwarden: reconnecting")
		_ = s.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		_ = s.ws.Close()
	})
}

// emit hands op to arikawa's event loop unless the socket is closing.
func (s *socket) emit(op ws.Op) bool {
	select {
	case s.ops <- op:
		return true
	case <-s.done:
		return false
	}
}

func (s *socket) emitClose(code int, err error) {
	ev := &ws.CloseEvent{Err: err, Code: code}
	s.emit(ws.Op{Code: ev.Op(), Type: ev.EventType(), Data: ev})
}

// read is the receive loop: one goroutine per socket, never blocking on NATS.
func (s *socket) read() {
	defer s.c.end()
	defer close(s.readerDone)
	defer close(s.ops)
	sh := s.sh
	var buf bytes.Buffer
	var zr io.ReadCloser
	defer func() {
		if zr != nil {
			zr.Close()
		}
	}()
	for {
		mt, r, err := s.ws.NextReader()
		if err != nil {
			code := -1
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				code = ce.Code
				err = fmt.Errorf("%d %s", ce.Code, ce.Text)
				if code == closeInvalidSeq {
					sh.invalidateSession("close 4007")
				}
				sh.m.reconnect(closeReason(code))
			} else {
				select {
				case <-s.done: // our own close
				default:
					sh.m.reconnect(reconnectConnectionLost)
				}
			}
			s.emitClose(code, err)
			return
		}
		buf.Reset()
		if mt == websocket.BinaryMessage {
			if zr == nil {
				zr, err = zlib.NewReader(r)
			} else {
				err = zr.(zlib.Resetter).Reset(r, nil)
			}
			if err == nil {
				_, err = buf.ReadFrom(zr)
			}
		} else {
			_, err = buf.ReadFrom(r)
		}
		if err != nil {
			s.fail(reconnectReadError, fmt.Errorf("read frame: %w", err))
			return
		}
		env, err := decodeEnvelope(buf.Bytes())
		if err != nil {
			// A frame we cannot read may be a dispatch: its sequence would be
			// lost. Reconnect and RESUME; Discord replays it.
			s.fail(reconnectDecodeError, err)
			return
		}
		if !s.established.Load() {
			// A long RESUME replay is progress, not a zombie: RESUMED comes last.
			s.watchdog.Reset(sh.svc.cfg.HandshakeTimeout)
		}
		if !s.handle(env) {
			return
		}
	}
}

// fail closes the socket with 4000 and reports the reason to the event loop.
func (s *socket) fail(reason reconnectReason, err error) {
	s.sh.m.reconnect(reason)
	s.sh.log.Warn("gateway connection failed: reconnecting", slog.String("reason", string(reason)), slog.Any("error", err))
	s.emitClose(-1, err)
	s.close()
}

func closeReason(code int) reconnectReason {
	switch code {
	case 4000, 4001, 4002, 4003, 4004, 4005, 4007, 4008, 4009, 4010, 4011, 4012, 4013, 4014:
		return reconnectReason(fmt.Sprintf("close_%d", code))
	case 1000, 1001, 1006, 1011:
		return reconnectReason(fmt.Sprintf("close_%d", code))
	}
	return "close_other"
}

// handle processes one frame; false stops the reader.
func (s *socket) handle(env envelope) bool {
	sh := s.sh
	switch env.Op {
	case 0:
		return s.dispatch(env)
	case 1: // the server asks for a heartbeat now
		s.hbRequested.Add(1) // not a missed ACK if the last one is pending
		hb := gateway.HeartbeatCommand(0)
		return s.emit(ws.Op{Code: 1, Data: &hb})
	case 7:
		sh.m.reconnect(reconnectOp7)
		sh.log.Info("discord asked to reconnect (op 7)")
		return s.emit(ws.Op{Code: 7, Data: &gateway.ReconnectEvent{}})
	case 9:
		resumable := bytes.Equal(bytes.TrimSpace(env.Data), []byte("true"))
		sh.m.reconnect(reconnectOp9)
		// arikawa would re-identify inside its event loop after a blocking 1–5 s
		// wait, without our identify gate, and never resume on d=true. Reconnect
		// instead: a 4007-coded close makes it drop the session (IDENTIFY on the
		// next dial, gated), any other code RESUMEs.
		code := -1
		if !resumable {
			sh.invalidateSession("op 9 invalid session")
			sh.markInvalidated()
			code = closeInvalidSeq
		}
		sh.log.Warn("invalid session (op 9)", slog.Bool("resumable", resumable))
		s.emitClose(code, fmt.Errorf("invalid session, resumable=%t", resumable))
		s.close()
		return false
	case 10:
		var hello struct {
			HeartbeatInterval float64 `json:"heartbeat_interval"`
		}
		if err := json.Unmarshal(env.Data, &hello); err != nil || hello.HeartbeatInterval <= 0 {
			s.fail(reconnectBadHello, fmt.Errorf("HELLO without a heartbeat interval: %s", env.Data))
			return false
		}
		return s.emit(ws.Op{Code: 10, Data: &gateway.HelloEvent{HeartbeatInterval: discord.Milliseconds(hello.HeartbeatInterval)}})
	case 11:
		s.hbMu.Lock()
		if s.hbPending {
			sh.m.ackLatency.Set(time.Since(s.hbSent).Seconds())
		}
		s.hbPending = false
		s.hbMu.Unlock()
		return s.emit(ws.Op{Code: 11, Data: &gateway.HeartbeatAckEvent{}})
	}
	return true // other ops are client-bound only; ignore
}

// maxSeqLag bounds how many dispatches arikawa's sequence may lag behind.
const maxSeqLag = 256

// rawDispatch stands in for a dispatch's typed payload in arikawa's event loop:
// it only needs the sequence.
type rawDispatch struct{}

func (*rawDispatch) Op() ws.OpCode           { return 0 }
func (*rawDispatch) EventType() ws.EventType { return "__shardwarden.Dispatch" }

var dispatchMark = &rawDispatch{}

func (s *socket) dispatch(env envelope) bool {
	sh := s.sh
	if !env.HasSeq {
		s.fail(reconnectDecodeError, fmt.Errorf("dispatch %s without a sequence", env.Type))
		return false
	}
	var data ws.Event = dispatchMark
	switch env.Type {
	case "READY":
		var ready struct {
			SessionID        string `json:"session_id"`
			ResumeGatewayURL string `json:"resume_gateway_url"`
			Guilds           []struct {
				ID discord.GuildID `json:"id"`
			} `json:"guilds"`
		}
		if err := json.Unmarshal(env.Data, &ready); err != nil || ready.SessionID == "" {
			s.fail(reconnectDecodeError, fmt.Errorf("READY without a session: %v", err))
			return false
		}
		ids := make([]string, len(ready.Guilds))
		for i, g := range ready.Guilds {
			ids[i] = g.ID.String()
		}
		sh.onReady(ready.SessionID, ready.ResumeGatewayURL, ids)
		s.established.Store(true)
		s.c.established.Store(true)
		s.watchdog.Stop()
		data = &gateway.ReadyEvent{SessionID: ready.SessionID}
	case "RESUMED":
		sh.onResumed()
		s.established.Store(true)
		s.c.established.Store(true)
		s.watchdog.Stop()
		data = &gateway.ResumedEvent{}
	}

	session, last := sh.sessionSeq()
	if env.Seq <= last && env.Type != "READY" {
		return true // replayed after RESUME and already buffered or stored
	}
	if last != 0 && env.Seq != last+1 {
		sh.log.Warn("dispatch sequence gap", slog.Int64("after", last), slog.Int64("seq", env.Seq))
	}
	now := time.Now()
	ev := bus.Event{
		Shard:      sh.id,
		Session:    session,
		Seq:        env.Seq,
		Epoch:      sh.lease.Epoch,
		Type:       env.Type,
		ReceivedAt: now,
	}
	if env.Data != nil {
		ev.Data = bytes.Clone(env.Data) // env.Data aliases the reused read buffer
	} else {
		ev.Data = []byte("null")
	}
	ev.GuildID = env.Guild()
	if !sh.ob.push(ev) {
		sh.m.bufferFull.Inc()
		sh.setBackpressure(true)
		sh.m.reconnect(reconnectBufferFull)
		sh.log.Warn("shard buffer full: disconnecting until JetStream catches up",
			slog.Int64("seq", env.Seq), slog.Int("buffered", sh.ob.len()))
		s.emitClose(-1, errBufferFull)
		s.close()
		return false
	}
	sh.onEvent(env.Type, env.Seq, ev.GuildID, ev.Data, now)
	op := ws.Op{Code: 0, Type: ws.EventType(env.Type), Sequence: env.Seq, Data: data}
	if data != dispatchMark {
		return s.emit(op) // READY, RESUMED: the event loop must see them
	}
	// arikawa needs a dispatch only for its sequence (heartbeats, RESUME). Under
	// load, hand it over only when its loop is free: two goroutine hand-offs per
	// event would cost more than the rest of the pipeline. A sequence that lags
	// is harmless: a RESUME from it replays dispatches this reader then skips
	// (already buffered). It never runs ahead, and lags by at most maxSeqLag.
	select {
	case s.ops <- op:
		s.seqLag = 0
		return true
	default:
	}
	if s.seqLag++; s.seqLag < maxSeqLag {
		return true
	}
	s.seqLag = 0
	return s.emit(op)
}

// peekOp reads the op of a frame arikawa marshalled ({"op":N,...}).
func peekOp(b []byte) int {
	const prefix = `{"op":`
	if !bytes.HasPrefix(b, []byte(prefix)) {
		if env, err := decodeEnvelope(b); err == nil {
			return env.Op
		}
		return -1
	}
	n := 0
	for _, c := range b[len(prefix):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// jitteredBackoff replaces arikawa's linear ReconnectDelay: exponential from min,
// capped at max, with full jitter so that replicas do not reconnect in lockstep.
func jitteredBackoff(minDelay, maxDelay time.Duration) func(try int) time.Duration {
	return func(try int) time.Duration {
		d := minDelay
		for i := 0; i < try && d < maxDelay; i++ {
			d *= 2
		}
		d = min(d, maxDelay)
		return d/2 + rand.N(d/2+1)
	}
}
