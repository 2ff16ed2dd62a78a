package fakediscord

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Websocket opcodes the writer emits.
const (
	wsText   = 0x1
	wsBinary = 0x2
	wsClose  = 0x8
)

type outFrame struct {
	data []byte
	// dispatch frames may be zlib-compressed; control payloads never are.
	dispatch bool
	close    int // > 0: a close frame with this code; the writer stops after it
}

// conn is one client websocket. The handler goroutine reads; one writer goroutine
// owns every write. Frames are written raw on the hijacked TCP connection, many per
// syscall, which is what lets the fake push well over 100k events/s. gorilla's own
// control-frame writes (pong, close echo) are single Write calls too, and the
// kernel file lock keeps whole Write calls from interleaving.
type conn struct {
	id         uint64
	srv        *Server
	ws         *websocket.Conn
	nc         net.Conn
	resumePath bool
	stream     bool // ?compress=zlib-stream: transport compression

	kill    chan struct{} // closed when the handler ends: the writer stops
	wake    chan struct{} // cap 1
	writerD chan struct{} // closed when the writer has stopped
	sent    atomic.Int64  // frames written

	mu       sync.Mutex
	queue    []outFrame
	spare    []outFrame
	stalled  bool
	stallT   *time.Timer // ends a timed stall; stopped when the connection ends
	noAck    bool
	closing  bool // a close frame is queued or the TCP connection was dropped
	compress bool
	sess     *session
	released *session // detached from this connection by op 7 / op 9 d=true
	iv       *SessionInterval
	shard    int // -1 until IDENTIFY/RESUME
}

func (c *conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// enqueue queues a frame. A client too slow to read MaxQueuedFrames frames is
// disconnected (TCP drop: its session stays resumable and the events wait in it).
func (c *conn) enqueue(data []byte, dispatch bool) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	if len(c.queue) >= c.srv.cfg.MaxQueuedFrames && !c.stalled {
		c.closing = true
		shard, sess := c.shard, c.sess
		c.mu.Unlock()
		v := Violation{Rule: RuleSlowConsumer, Shard: shard, ConnID: c.id,
			Detail: "client did not read its frames; connection dropped"}
		if sess != nil {
			v.SessionID = sess.id
		}
		c.srv.violation(v) // lock order allows it: session → conn → Server.mu
		_ = c.nc.Close()
		return
	}
	c.queue = append(c.queue, outFrame{data: data, dispatch: dispatch})
	c.mu.Unlock()
	c.signal()
}

// enqueueClose queues a close frame with code; the writer sends it after what is
// already queued, half-closes TCP and stops. Later frames are discarded.
func (c *conn) enqueueClose(code int, reason string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.closing = true
	c.stalled = false
	c.queue = append(c.queue, outFrame{data: websocket.FormatCloseMessage(code, reason), close: code})
	c.signal()
	return true
}

// drop closes the TCP connection without a close frame (the client sees 1006).
func (c *conn) drop() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	_ = c.nc.Close()
}

func appendFrameHeader(buf []byte, op byte, n int) []byte {
	buf = append(buf, 0x80|op)
	switch {
	case n < 126:
		buf = append(buf, byte(n))
	case n <= 0xffff:
		buf = append(buf, 126, byte(n>>8), byte(n))
	default:
		buf = append(buf, 127)
		buf = binary.BigEndian.AppendUint64(buf, uint64(n))
	}
	return buf
}

// writeLoop owns all writes of frames queued by enqueue.
func (c *conn) writeLoop() {
	defer close(c.writerD)
	var (
		buf  []byte
		zbuf bytes.Buffer
		zw   *zlib.Writer
		sw   *zlib.Writer // zlib-stream, writing into zbuf
	)
	flush := func() bool {
		if len(buf) == 0 {
			return true
		}
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
		_, err := c.nc.Write(buf)
		buf = buf[:0]
		if err != nil {
			c.drop()
			return false
		}
		return true
	}
	for {
		final := false
		select {
		case <-c.wake:
		case <-c.kill:
			// The handler is ending: still send a queued close frame (and what
			// precedes it) so the client learns the close code.
			final = true
		}
		c.mu.Lock()
		if c.stalled && !final {
			c.mu.Unlock()
			continue
		}
		if final && !hasClose(c.queue) {
			c.mu.Unlock()
			return
		}
		batch := c.queue
		c.queue = c.spare[:0]
		compress := c.compress
		c.mu.Unlock()

		for i, f := range batch {
			if f.close > 0 {
				if !flush() {
					return
				}
				buf = appendFrameHeader(buf, wsClose, len(f.data))
				buf = append(buf, f.data...)
				flush()
				if tc, ok := c.nc.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				return
			}
			data, op := f.data, byte(wsText)
			if c.stream {
				// Transport compression: one zlib stream for the connection, each
				// payload ending in a sync flush (00 00 ff ff), sent as binary.
				zbuf.Reset()
				if sw == nil {
					sw, _ = zlib.NewWriterLevel(&zbuf, zlib.BestSpeed)
				}
				_, _ = sw.Write(data)
				_ = sw.Flush()
				data, op = zbuf.Bytes(), wsBinary
			} else if f.dispatch && compress && (c.srv.cfg.CompressMinBytes < 0 || len(data) >= c.srv.cfg.CompressMinBytes) {
				zbuf.Reset()
				if zw == nil {
					zw, _ = zlib.NewWriterLevel(&zbuf, zlib.BestSpeed)
				} else {
					zw.Reset(&zbuf)
				}
				_, _ = zw.Write(data)
				_ = zw.Close()
				data, op = zbuf.Bytes(), wsBinary
			}
			buf = appendFrameHeader(buf, op, len(data))
			buf = append(buf, data...)
			batch[i] = outFrame{}
			if len(buf) >= 256<<10 && !flush() {
				return
			}
		}
		if !flush() {
			return
		}
		c.sent.Add(int64(len(batch)))
		c.mu.Lock()
		c.spare = batch[:0]
		c.mu.Unlock()
	}
}

func hasClose(q []outFrame) bool {
	for _, f := range q {
		if f.close > 0 {
			return true
		}
	}
	return false
}
