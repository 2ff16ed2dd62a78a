package fakediscord

import (
	"slices"
	"sort"
	"time"
)

// Rules recorded as violations. A violation is something a well-behaved bot never
// causes; tests assert the list is empty (or holds exactly the one they provoked).
const (
	RuleAuthenticationFailed = "authentication_failed" // 4004: bad token
	RuleInvalidShard         = "invalid_shard"         // 4010
	RuleShardingRequired     = "sharding_required"     // 4011
	RuleInvalidIntents       = "invalid_intents"       // 4013
	RuleDisallowedIntents    = "disallowed_intents"    // 4014
	RuleInvalidAPIVersion    = "invalid_api_version"   // 4012
	RuleDecodeError          = "decode_error"          // 4002: bad JSON, binary frame, bad field
	RulePayloadTooLarge      = "payload_too_large"     // 4002: frame > MaxPayloadBytes
	RuleUnknownOpcode        = "unknown_opcode"        // 4001
	RuleNotAuthenticated     = "not_authenticated"     // 4003: a command before IDENTIFY
	RuleAlreadyAuthenticated = "already_authenticated" // 4005: IDENTIFY/RESUME twice
	RuleCommandRateLimit     = "command_rate_limit"    // 4008: > CommandLimit per CommandWindow
	RuleIdentifyRateLimit    = "identify_rate_limit"   // op 9 false: bucket identified within IdentifyWindow
	RuleDailyBudget          = "daily_budget_exhausted"
	RuleHeartbeatTimeout     = "heartbeat_timeout" // 4009: no heartbeat within HeartbeatTimeout
	RuleResumeWrongURL       = "resume_wrong_url"  // RESUME not on resume_gateway_url
	RuleResumeSeqAhead       = "resume_seq_ahead"  // 4007: RESUME with a seq never sent
	RuleSessionTakeover      = "session_takeover"  // RESUME of a session still attached to a live connection
	RuleSlowConsumer         = "slow_consumer"     // more than MaxQueuedFrames unread frames
	RuleRESTRateLimited      = "rest_rate_limited" // a REST request answered 429 (not forced)
	RuleRESTUnauthorized     = "rest_unauthorized" // REST without a valid Authorization
	RuleInteractionTooLate   = "interaction_too_late"
	RuleInteractionTwice     = "interaction_already_acknowledged"
)

// Violation is one rule broken by a client.
type Violation struct {
	At        time.Time `json:"at"`
	Rule      string    `json:"rule"`
	Shard     int       `json:"shard"` // -1 when not known (before IDENTIFY, REST)
	SessionID string    `json:"session_id,omitempty"`
	ConnID    uint64    `json:"conn_id,omitempty"`
	CloseCode int       `json:"close_code,omitempty"`
	Detail    string    `json:"detail"`
}

// Event is one dispatch in the ledger: what the fake sent (or buffered for RESUME)
// on one session. A replay on RESUME is the same Event (same seq, same id).
type Event struct {
	ID         uint64    `json:"id,string"`
	Shard      int       `json:"shard"`
	ShardCount int       `json:"shard_count"`
	SessionID  string    `json:"session_id"`
	Seq        int64     `json:"seq"`
	Type       string    `json:"type"`
	GuildID    uint64    `json:"guild_id,string,omitempty"`
	At         time.Time `json:"at"` // when the fake dispatched it (queued it for writing)
}

// SessionInterval is one connection's hold on a session: from READY or RESUMED
// (Start) to the moment the connection stopped receiving the session's events
// (End; zero while Live).
type SessionInterval struct {
	Shard      int       `json:"shard"`
	ShardCount int       `json:"shard_count"`
	SessionID  string    `json:"session_id"`
	ConnID     uint64    `json:"conn_id"`
	Kind       string    `json:"kind"` // "identify" or "resume"
	Start      time.Time `json:"start"`
	End        time.Time `json:"end,omitzero"`
	Live       bool      `json:"live"`
	EndReason  string    `json:"end_reason,omitempty"`
	CloseCode  int       `json:"close_code,omitempty"`
	// LastSeq is the session's highest seq when the interval ended (now, while
	// live); ClientSeq the seq of the client's last heartbeat on the session.
	LastSeq   int64 `json:"last_seq"`
	ClientSeq int64 `json:"client_seq"`

	se *session
}

// Overlap is two intervals of the same shard that were live at the same time: two
// owners of one shard.
type Overlap struct {
	Shard    int             `json:"shard"`
	A        SessionInterval `json:"a"`
	B        SessionInterval `json:"b"`
	Start    time.Time       `json:"start"`
	Duration time.Duration   `json:"duration_ns"`
}

// ShardStats counts one shard's session starts.
type ShardStats struct {
	Shard            int   `json:"shard"`
	Identifies       int   `json:"identifies"`
	Resumes          int   `json:"resumes"`
	IdentifyRejected int   `json:"identify_rejected"`
	ResumeRejected   int   `json:"resume_rejected"`
	Events           int64 `json:"events"`
}

// RESTRequest is one request the bot or a worker sent to the REST API.
type RESTRequest struct {
	At          time.Time `json:"at"`
	Method      string    `json:"method"`
	Path        string    `json:"path"`
	Route       string    `json:"route"`
	Status      int       `json:"status"`
	RateLimited bool      `json:"rate_limited,omitempty"`
	Global      bool      `json:"global,omitempty"`
	Body        []byte    `json:"body,omitempty"` // request body as sent (JSON), at most 64 KiB
	// InteractionID is set on interaction callbacks; ChannelID on channel messages.
	InteractionID uint64 `json:"interaction_id,string,omitempty"`
	ChannelID     uint64 `json:"channel_id,string,omitempty"`
}

// Report is everything the referee knows, as served by GET /admin/referee.
type Report struct {
	EventsDispatched int64             `json:"events_dispatched"`
	UniqueEvents     int64             `json:"unique_events"`
	Undelivered      int64             `json:"undelivered"`
	Shards           []ShardStats      `json:"shards"`
	Sessions         []SessionInterval `json:"sessions,omitempty"`
	Overlaps         []Overlap         `json:"overlaps"`
	Violations       []Violation       `json:"violations"`
	REST             []RESTRequest     `json:"rest,omitempty"`
}

// referee holds the record. Its fields are guarded by Server.mu.
type referee struct {
	sessions   []*session // every session ever created, in creation order
	intervals  []*SessionInterval
	violations []Violation
	stats      map[int]*ShardStats
	rest       []RESTRequest
}

func (r *referee) shard(id int) *ShardStats {
	st := r.stats[id]
	if st == nil {
		st = &ShardStats{Shard: id}
		r.stats[id] = st
	}
	return st
}

func (s *Server) violation(v Violation) {
	if v.At.IsZero() {
		v.At = time.Now()
	}
	s.cfg.Logger.Warn("fakediscord violation", "rule", v.Rule, "shard_id", v.Shard,
		"session_id", v.SessionID, "conn_id", v.ConnID, "detail", v.Detail)
	s.mu.Lock()
	s.ref.violations = append(s.ref.violations, v)
	s.mu.Unlock()
}

// Violations returns the rules broken so far, oldest first.
func (s *Server) Violations() []Violation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ref.violations)
}

// Sessions returns every session interval, oldest first.
func (s *Server) Sessions() []SessionInterval {
	s.mu.Lock()
	ivs := s.intervalsLocked(-1)
	s.mu.Unlock()
	return fillSeqs(ivs)
}

// fillSeqs reads the live intervals' seqs from their sessions (without Server.mu:
// session locks come first).
func fillSeqs(ivs []SessionInterval) []SessionInterval {
	for i := range ivs {
		if ivs[i].Live && ivs[i].se != nil {
			ivs[i].se.mu.Lock()
			ivs[i].LastSeq, ivs[i].ClientSeq = ivs[i].se.seq, ivs[i].se.lastAckSeq
			ivs[i].se.mu.Unlock()
		}
	}
	return ivs
}

func (s *Server) intervalsLocked(shard int) []SessionInterval {
	out := make([]SessionInterval, 0, len(s.ref.intervals))
	for _, iv := range s.ref.intervals {
		if shard < 0 || iv.Shard == shard {
			out = append(out, *iv)
		}
	}
	return out
}

// Overlaps returns, for one shard (or every shard when shard < 0), each pair of
// session intervals that were live at the same time, with how long. A live
// interval counts until now.
func (s *Server) Overlaps(shard int) []Overlap {
	s.mu.Lock()
	ivs := s.intervalsLocked(shard)
	s.mu.Unlock()
	ivs = fillSeqs(ivs)
	now := time.Now()
	end := func(iv SessionInterval) time.Time {
		if iv.Live {
			return now
		}
		return iv.End
	}
	sort.SliceStable(ivs, func(i, j int) bool {
		if ivs[i].Shard != ivs[j].Shard {
			return ivs[i].Shard < ivs[j].Shard
		}
		return ivs[i].Start.Before(ivs[j].Start)
	})
	var out []Overlap
	for i := range ivs {
		for j := i + 1; j < len(ivs) && ivs[j].Shard == ivs[i].Shard; j++ {
			a, b := ivs[i], ivs[j]
			if a.ShardCount != b.ShardCount {
				continue
			}
			start := b.Start // b starts no earlier than a
			stop := end(a)
			if e := end(b); e.Before(stop) {
				stop = e
			}
			if stop.After(start) {
				out = append(out, Overlap{Shard: a.Shard, A: a, B: b, Start: start, Duration: stop.Sub(start)})
			}
		}
	}
	return out
}

// ShardStats returns identifies, resumes and events per shard, by shard id.
func (s *Server) ShardStats() []ShardStats {
	s.mu.Lock()
	out := make([]ShardStats, 0, len(s.ref.stats))
	for _, st := range s.ref.stats {
		out = append(out, *st)
	}
	sessions := slices.Clone(s.ref.sessions)
	s.mu.Unlock()
	events := map[int]int64{}
	for _, se := range sessions {
		se.mu.Lock()
		events[se.shard] += int64(len(se.events))
		se.mu.Unlock()
	}
	for i := range out {
		out[i].Events = events[out[i].Shard]
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Shard < out[j].Shard })
	return out
}

// Stats returns one shard's counters (zero when the shard was never seen).
func (s *Server) Stats(shard int) ShardStats {
	for _, st := range s.ShardStats() {
		if st.Shard == shard {
			return st
		}
	}
	return ShardStats{Shard: shard}
}

// Events returns the ledger: every dispatch on every session, ordered by session
// creation then seq. READY, GUILD_CREATE and RESUMED are included (they have ids
// and seqs like any dispatch).
func (s *Server) Events() []Event {
	var out []Event
	s.forEachEvent(func(e Event) { out = append(out, e) })
	return out
}

// EventsDispatched returns how many dispatches the ledger holds (an event sent to
// two sessions of one shard counts twice) and how many distinct ids those are.
func (s *Server) EventsDispatched() (dispatches, unique int64) {
	s.mu.Lock()
	sessions := slices.Clone(s.ref.sessions)
	s.mu.Unlock()
	unique = s.uniqueEvents.Load()
	for _, se := range sessions {
		se.mu.Lock()
		dispatches += int64(len(se.events))
		se.mu.Unlock()
	}
	return dispatches, unique
}

// Undelivered returns how many generated or injected events found no session on
// their shard (so were never dispatched and are not in the ledger).
func (s *Server) Undelivered() int64 { return s.undelivered.Load() }

func (s *Server) forEachEvent(fn func(Event)) {
	s.mu.Lock()
	sessions := slices.Clone(s.ref.sessions)
	s.mu.Unlock()
	for _, se := range sessions {
		se.mu.Lock()
		evs := slices.Clone(se.events)
		se.mu.Unlock()
		for _, e := range evs {
			fn(Event{ID: e.id, Shard: se.shard, ShardCount: se.count, SessionID: se.id,
				Seq: e.seq, Type: e.typ, GuildID: e.guild, At: time.Unix(0, e.at)})
		}
	}
}

// REST returns every REST request received, oldest first.
func (s *Server) REST() []RESTRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ref.rest)
}

// Summary is Report without Sessions and REST (both grow with the run): counts,
// per-shard stats, overlaps and violations.
func (s *Server) Summary() Report {
	d, u := s.EventsDispatched()
	return Report{
		EventsDispatched: d,
		UniqueEvents:     u,
		Undelivered:      s.Undelivered(),
		Shards:           s.ShardStats(),
		Overlaps:         s.Overlaps(-1),
		Violations:       s.Violations(),
	}
}

// Report returns the whole record (without the event ledger, which can be large:
// use Events or GET /admin/referee/events).
func (s *Server) Report() Report {
	d, u := s.EventsDispatched()
	r := Report{
		EventsDispatched: d,
		UniqueEvents:     u,
		Undelivered:      s.Undelivered(),
		Shards:           s.ShardStats(),
		Sessions:         s.Sessions(),
		Overlaps:         s.Overlaps(-1),
		Violations:       s.Violations(),
		REST:             s.REST(),
	}
	return r
}
