package fakediscord

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// session is one Discord gateway session: a sequence, the dispatches it holds for
// RESUME, and the connection it is attached to (nil while detached).
type session struct {
	id       string
	shard    int
	count    int
	intents  uint64
	compress bool

	// expiresAt is zero while attached; while detached it is when the session stops
	// being resumable (UnixNano). invalid is final. Both are read without mu by
	// routing.
	expiresAt atomic.Int64
	invalid   atomic.Bool
	reaped    bool // replay released; guarded by Server.mu

	mu         sync.Mutex
	seq        int64
	replay     replayRing
	events     []ledgerEntry
	conn       *conn
	lastAckSeq int64 // the d of the client's last heartbeat
}

type ledgerEntry struct {
	id, guild uint64
	seq       int64
	at        int64
	typ       string
}

// resumable reports whether a RESUME could pick the session up now.
func (se *session) resumable(now time.Time) bool {
	if se.invalid.Load() {
		return false
	}
	exp := se.expiresAt.Load()
	return exp == 0 || now.UnixNano() < exp
}

// appendDispatch appends a dispatch frame {"op":0,"s":seq,"t":typ,"d":d}.
func appendDispatch(buf []byte, seq int64, typ string, d []byte) []byte {
	buf = append(buf, `{"op":0,"s":`...)
	buf = strconv.AppendInt(buf, seq, 10)
	buf = append(buf, `,"t":"`...)
	buf = append(buf, typ...)
	buf = append(buf, `","d":`...)
	buf = append(buf, d...)
	return append(buf, '}')
}

// dispatch gives the event the next seq, keeps it for RESUME, records it in the
// ledger and sends it to the attached connection. It reports false when the
// session can no longer take events. Callers hold se.mu.
func (se *session) dispatchLocked(s *Server, typ string, id, guild uint64, d []byte, now time.Time) bool {
	if se.invalid.Load() {
		return false
	}
	se.seq++
	frame := appendDispatch(make([]byte, 0, len(d)+len(typ)+40), se.seq, typ, d)
	se.replay.push(se.seq, frame, s.cfg.ReplayLimit)
	se.events = append(se.events, ledgerEntry{id: id, guild: guild, seq: se.seq, at: now.UnixNano(), typ: typ})
	if se.conn != nil {
		se.conn.enqueue(frame, true)
	}
	return true
}

// framesAfterLocked returns the kept frames with seq > after, or ok=false when
// some of them are no longer kept.
func (se *session) framesAfterLocked(after int64) (frames [][]byte, ok bool) {
	if after >= se.seq {
		return nil, true
	}
	return se.replay.after(after)
}

// replayRing keeps the last `limit` dispatch frames of a session.
type replayRing struct {
	buf   [][]byte // oldest at buf[head] once full
	head  int
	first int64 // seq of the oldest kept frame
}

func (r *replayRing) push(seq int64, frame []byte, limit int) {
	if len(r.buf) == 0 {
		r.first = seq
	}
	if len(r.buf) < limit {
		r.buf = append(r.buf, frame)
		return
	}
	r.buf[r.head] = frame
	r.head = (r.head + 1) % len(r.buf)
	r.first++
}

// after returns the frames with seq > after in order (a copy), or false when the
// oldest of them is gone.
func (r *replayRing) after(after int64) ([][]byte, bool) {
	if len(r.buf) == 0 || after+1 < r.first {
		return nil, false
	}
	ordered := make([][]byte, 0, len(r.buf))
	ordered = append(ordered, r.buf[r.head:]...)
	ordered = append(ordered, r.buf[:r.head]...)
	return ordered[after+1-r.first:], true
}

// release frees the frames of a session that can no longer be resumed.
func (r *replayRing) release() { *r = replayRing{} }

// registry: the sessions that can take events (live or resumable), by shard id.
// Guarded by Server.mu.
type registry struct {
	byShard map[int][]*session
	counts  map[int]int // shard count → sessions using it
}

func (r *registry) add(se *session) {
	r.byShard[se.shard] = append(r.byShard[se.shard], se)
	r.counts[se.count]++
}

func (r *registry) remove(se *session) {
	list := r.byShard[se.shard]
	for i, x := range list {
		if x == se {
			list = append(list[:i:i], list[i+1:]...)
			r.counts[se.count]--
			if r.counts[se.count] == 0 {
				delete(r.counts, se.count)
			}
			break
		}
	}
	if len(list) == 0 {
		delete(r.byShard, se.shard)
	} else {
		r.byShard[se.shard] = list
	}
}

// routeLocked appends to dst the sessions that should receive an event: those of
// shard `shard` (any shard count) when guild is 0 and shard >= 0, else those whose
// own shard count maps guild to them. Expired sessions are dropped on the way.
func (s *Server) routeLocked(dst []*session, shard int, guild uint64, now time.Time) []*session {
	if guild == 0 {
		return s.appendLiveLocked(dst, shard, -1, now)
	}
	for count := range s.reg.counts {
		dst = s.appendLiveLocked(dst, ShardFor(guild, count), count, now)
	}
	return dst
}

func (s *Server) appendLiveLocked(dst []*session, shard, count int, now time.Time) []*session {
	list := s.reg.byShard[shard]
	for i := 0; i < len(list); i++ {
		se := list[i]
		if count >= 0 && se.count != count {
			continue
		}
		if !se.resumable(now) {
			se.invalid.Store(true)
			s.reg.remove(se)
			list = s.reg.byShard[shard]
			i--
			continue
		}
		dst = append(dst, se)
	}
	return dst
}
