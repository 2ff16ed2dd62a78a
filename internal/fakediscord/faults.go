package fakediscord

import (
	"errors"
	"fmt"
	"time"
)

// Fault kinds.
const (
	// FaultReconnect sends op 7 RECONNECT. The session is detached at once (events
	// wait in it for the RESUME); the connection stays open until the client closes.
	FaultReconnect = "reconnect"
	// FaultInvalidSession sends op 9 with d=Resumable. d=false invalidates the
	// session; either way the connection may IDENTIFY or RESUME again.
	FaultInvalidSession = "invalid_session"
	// FaultClose closes with Code (resumable unless Discord's table says the code
	// ends the session: 4004, 4007, 4009-4014).
	FaultClose = "close"
	// FaultStopAcks stops answering heartbeats (a zombie connection); FaultResumeAcks undoes it.
	FaultStopAcks   = "stop_acks"
	FaultResumeAcks = "resume_acks"
	// FaultDrop drops the TCP connection without a close frame (the client sees 1006).
	FaultDrop = "drop"
	// FaultStall stops writing anything to the connection for Duration (0: until
	// FaultUnstall); frames queue up, TCP stays open.
	FaultStall   = "stall"
	FaultUnstall = "unstall"
	// FaultExpireSession makes the session unresumable; an attached connection is
	// closed with 4009.
	FaultExpireSession = "expire_session"
	// FaultRequestHeartbeat sends op 1: the client must heartbeat at once.
	FaultRequestHeartbeat = "request_heartbeat"
)

// Fault is one injected failure. Target: SessionID when set, else every open
// connection on Shard (Shard < 0: every connection).
type Fault struct {
	Kind      string        `json:"kind"`
	Shard     int           `json:"shard"`
	SessionID string        `json:"session_id,omitempty"`
	Code      int           `json:"code,omitempty"`      // FaultClose
	Resumable bool          `json:"resumable,omitempty"` // FaultInvalidSession
	Duration  time.Duration `json:"duration,omitempty"`  // FaultStall
}

// Inject applies f and returns how many connections (or sessions) it hit.
func (s *Server) Inject(f Fault) (int, error) {
	if f.Kind == FaultExpireSession {
		return s.expire(f)
	}
	switch f.Kind {
	case FaultReconnect, FaultInvalidSession, FaultClose, FaultStopAcks, FaultResumeAcks,
		FaultDrop, FaultStall, FaultUnstall, FaultRequestHeartbeat:
	default:
		return 0, fmt.Errorf("fakediscord fault: unknown kind %q", f.Kind)
	}
	if f.Kind == FaultClose && (f.Code < 1000 || f.Code > 4999) {
		return 0, fmt.Errorf("fakediscord fault: close code %d outside 1000-4999", f.Code)
	}
	conns := s.targets(f)
	for _, c := range conns {
		s.cfg.Logger.Debug("fakediscord fault", "kind", f.Kind, "conn_id", c.id, "shard_id", c.shard)
		switch f.Kind {
		case FaultReconnect:
			c.enqueue(frameReconnect, false)
			c.release()
			c.detach("op7_reconnect", 0, false)
		case FaultInvalidSession:
			frame := frameInvalidF
			if f.Resumable {
				frame = frameInvalidT
			}
			if f.Resumable {
				c.release()
			}
			c.detach("op9_invalid_session", 0, !f.Resumable)
			c.enqueue(frame, false)
		case FaultClose:
			c.closeWith(f.Code, "fault injected", false)
		case FaultStopAcks, FaultResumeAcks:
			c.mu.Lock()
			c.noAck = f.Kind == FaultStopAcks
			c.mu.Unlock()
		case FaultDrop:
			c.detach("dropped", 1006, false)
			c.drop()
		case FaultStall:
			c.mu.Lock()
			c.stalled = true
			if c.stallT != nil {
				c.stallT.Stop()
				c.stallT = nil
			}
			if f.Duration > 0 {
				c.stallT = time.AfterFunc(f.Duration, c.unstall)
			}
			c.mu.Unlock()
		case FaultUnstall:
			c.unstall()
		case FaultRequestHeartbeat:
			c.enqueue(frameHBRequest, false)
		}
	}
	return len(conns), nil
}

// release remembers the session about to be detached (see invalidateReleased).
func (c *conn) release() {
	c.mu.Lock()
	if c.sess != nil {
		c.released = c.sess
	}
	c.mu.Unlock()
}

func (c *conn) unstall() {
	c.mu.Lock()
	c.stalled = false
	if c.stallT != nil {
		c.stallT.Stop()
		c.stallT = nil
	}
	c.mu.Unlock()
	c.signal()
}

// targets returns the open connections f addresses.
func (s *Server) targets(f Fault) []*conn {
	s.mu.Lock()
	all := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		all = append(all, c)
	}
	s.mu.Unlock()
	var out []*conn
	for _, c := range all {
		c.mu.Lock()
		hit := false
		switch {
		case f.SessionID != "":
			hit = c.sess != nil && c.sess.id == f.SessionID
		case f.Shard < 0:
			hit = true
		default:
			hit = c.shard == f.Shard && !c.closing
		}
		c.mu.Unlock()
		if hit {
			out = append(out, c)
		}
	}
	return out
}

func (s *Server) expire(f Fault) (int, error) {
	var list []*session
	s.mu.Lock()
	if f.SessionID != "" {
		if se := s.sessions[f.SessionID]; se != nil {
			list = append(list, se)
		}
	} else {
		for _, se := range s.sessions {
			if f.Shard < 0 || se.shard == f.Shard {
				list = append(list, se)
			}
		}
	}
	s.mu.Unlock()
	n := 0
	for _, se := range list {
		if se.invalid.Load() {
			continue
		}
		n++
		se.mu.Lock()
		c := se.conn
		se.mu.Unlock()
		if c != nil {
			c.closeWith(CloseSessionTimedOut, "Session timed out.", true)
		}
		se.invalid.Store(true)
		s.mu.Lock()
		s.reg.remove(se)
		s.mu.Unlock()
	}
	if n == 0 && f.SessionID != "" {
		return 0, errors.New("fakediscord fault: no such resumable session")
	}
	return n, nil
}

// Convenience wrappers around Inject for one shard.

// Reconnect sends op 7 to every connection of shard.
func (s *Server) Reconnect(shard int) int {
	n, _ := s.Inject(Fault{Kind: FaultReconnect, Shard: shard})
	return n
}

// InvalidSession sends op 9 with d=resumable to every connection of shard.
func (s *Server) InvalidSession(shard int, resumable bool) int {
	n, _ := s.Inject(Fault{Kind: FaultInvalidSession, Shard: shard, Resumable: resumable})
	return n
}

// CloseShard closes every connection of shard with code.
func (s *Server) CloseShard(shard, code int) int {
	n, _ := s.Inject(Fault{Kind: FaultClose, Shard: shard, Code: code})
	return n
}

// DropShard drops the TCP connections of shard.
func (s *Server) DropShard(shard int) int {
	n, _ := s.Inject(Fault{Kind: FaultDrop, Shard: shard})
	return n
}

// StopAcks stops (or, with false, resumes) heartbeat ACKs on shard.
func (s *Server) StopAcks(shard int, stop bool) int {
	k := FaultResumeAcks
	if stop {
		k = FaultStopAcks
	}
	n, _ := s.Inject(Fault{Kind: k, Shard: shard})
	return n
}

// Stall stops writing to shard's connections for d (0: until Unstall).
func (s *Server) Stall(shard int, d time.Duration) int {
	n, _ := s.Inject(Fault{Kind: FaultStall, Shard: shard, Duration: d})
	return n
}

// Unstall resumes writing to shard's connections.
func (s *Server) Unstall(shard int) int {
	n, _ := s.Inject(Fault{Kind: FaultUnstall, Shard: shard})
	return n
}

// ExpireSession makes a session unresumable (closing its connection with 4009).
func (s *Server) ExpireSession(sessionID string) error {
	_, err := s.Inject(Fault{Kind: FaultExpireSession, SessionID: sessionID})
	return err
}

// RequestHeartbeat sends op 1 to shard's connections.
func (s *Server) RequestHeartbeat(shard int) int {
	n, _ := s.Inject(Fault{Kind: FaultRequestHeartbeat, Shard: shard})
	return n
}
