package fakediscord

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

type identifyData struct {
	Token          *string          `json:"token"`
	Properties     map[string]any   `json:"properties"`
	Intents        *uint64          `json:"intents"`
	Shard          *[2]int          `json:"shard"`
	Compress       bool             `json:"compress"`
	LargeThreshold *int             `json:"large_threshold"`
	Presence       *json.RawMessage `json:"presence"`
}

type resumeData struct {
	Token     *string `json:"token"`
	SessionID *string `json:"session_id"`
	Seq       *int64  `json:"seq"`
}

func (s *Server) tokenOK(tok string) bool {
	s.mu.Lock()
	dead := s.tokenDead
	s.mu.Unlock()
	return !dead && stripBot(tok) == s.cfg.Token
}

// identify handles op 2. Checks run in Discord's order: already authenticated,
// decode, token, shard, intents, guild count, identify rate limit, daily budget.
func (c *conn) identify(raw json.RawMessage, received time.Time) {
	s := c.srv
	if c.authenticated() {
		c.violate(RuleAlreadyAuthenticated, CloseAlreadyAuthenticated, "IDENTIFY on an authenticated connection")
		c.closeWith(CloseAlreadyAuthenticated, "You sent more than one identify payload.", false)
		return
	}
	var d identifyData
	if err := json.Unmarshal(raw, &d); err != nil || d.Token == nil || d.Properties == nil {
		c.violate(RuleDecodeError, CloseDecodeError, "IDENTIFY d needs token and properties")
		c.closeWith(CloseDecodeError, "Error while decoding payload.", false)
		return
	}
	if d.LargeThreshold != nil && (*d.LargeThreshold < 50 || *d.LargeThreshold > 250) {
		c.violate(RuleDecodeError, CloseDecodeError, "large_threshold outside 50-250")
		c.closeWith(CloseDecodeError, "Error while decoding payload.", false)
		return
	}
	if !s.tokenOK(*d.Token) {
		c.violate(RuleAuthenticationFailed, CloseAuthenticationFailed, "IDENTIFY with a wrong token")
		c.closeWith(CloseAuthenticationFailed, "Authentication failed.", true)
		return
	}
	shard := [2]int{0, 1}
	if d.Shard != nil {
		shard = *d.Shard
	}
	c.mu.Lock()
	c.shard = shard[0]
	c.mu.Unlock()
	if shard[1] < 1 || shard[0] < 0 || shard[0] >= shard[1] {
		c.violate(RuleInvalidShard, CloseInvalidShard, fmt.Sprintf("shard %v", shard))
		c.closeWith(CloseInvalidShard, "Invalid shard.", true)
		return
	}
	// The strict reading: intents are required since v8; missing or unknown bits
	// are invalid intents.
	if d.Intents == nil || *d.Intents&^uint64(knownIntents) != 0 {
		c.violate(RuleInvalidIntents, CloseInvalidIntents, "intents missing or with unknown bits")
		c.closeWith(CloseInvalidIntents, "Invalid intent(s).", true)
		return
	}
	if denied := *d.Intents & privilegedIntents & s.cfg.DeniedPrivilegedIntents; denied != 0 {
		c.violate(RuleDisallowedIntents, CloseDisallowedIntents, fmt.Sprintf("privileged intents %#x not approved", denied))
		c.closeWith(CloseDisallowedIntents, "Disallowed intent(s).", true)
		return
	}
	guilds := s.GuildsOfShard(shard[0], shard[1])
	if len(guilds) > s.cfg.MaxGuildsPerShard {
		c.violate(RuleShardingRequired, CloseShardingRequired, fmt.Sprintf("%d guilds on shard %v, max %d", len(guilds), shard, s.cfg.MaxGuildsPerShard))
		c.closeWith(CloseShardingRequired, "Sharding required.", true)
		return
	}

	bucket := shard[0] % s.cfg.MaxConcurrency
	s.mu.Lock()
	if last, ok := s.buckets[bucket]; ok && received.Sub(last) < s.cfg.IdentifyWindow {
		s.ref.shard(shard[0]).IdentifyRejected++
		s.mu.Unlock()
		// Discord answers an IDENTIFY over max_concurrency with op 9 d=false.
		c.violate(RuleIdentifyRateLimit, 0, fmt.Sprintf("bucket %d identified %v ago (window %v)", bucket, received.Sub(last).Round(time.Millisecond), s.cfg.IdentifyWindow))
		c.enqueue(frameInvalidF, false)
		return
	}
	if received.Sub(s.budgetFrom) >= s.cfg.BudgetWindow {
		s.budgetFrom, s.budgetUsed = received, 0
	}
	if s.budgetUsed >= s.cfg.DailyBudget {
		// Discord terminates every session and resets the token.
		s.tokenDead = true
		s.ref.shard(shard[0]).IdentifyRejected++
		conns := make([]*conn, 0, len(s.conns))
		for other := range s.conns {
			conns = append(conns, other)
		}
		s.mu.Unlock()
		c.violate(RuleDailyBudget, CloseAuthenticationFailed, fmt.Sprintf("%d identifies in %v", s.cfg.DailyBudget, s.cfg.BudgetWindow))
		for _, other := range conns {
			other.closeWith(CloseAuthenticationFailed, "Authentication failed.", true)
		}
		return
	}
	s.budgetUsed++
	s.buckets[bucket] = received
	s.ref.shard(shard[0]).Identifies++
	s.mu.Unlock()

	s.reapSessions(received)
	start := s.waitOthers(c, shard[0], shard[1], received)
	se := &session{id: newSessionID(), shard: shard[0], count: shard[1], intents: *d.Intents, compress: d.Compress}
	c.mu.Lock()
	c.compress = d.Compress
	c.mu.Unlock()

	iv := &SessionInterval{Shard: shard[0], ShardCount: shard[1], SessionID: se.id, ConnID: c.id, Kind: "identify", Start: start, Live: true, se: se}
	// Registered before READY is sent (so the record is complete when the client
	// sees it) but under se.mu, so no event can precede READY and the GUILD_CREATEs.
	se.mu.Lock()
	se.conn = c
	c.mu.Lock()
	c.sess, c.iv = se, iv
	c.mu.Unlock()
	s.mu.Lock()
	s.sessions[se.id] = se
	s.reg.add(se)
	s.ref.sessions = append(s.ref.sessions, se)
	s.ref.intervals = append(s.ref.intervals, iv)
	s.mu.Unlock()
	s.dispatchReadyLocked(se, guilds, start)
	se.mu.Unlock()
	s.cfg.Logger.Debug("fakediscord identify", "shard_id", shard[0], "session_id", se.id, "conn_id", c.id)
}

// waitOthers gives other open connections of the shard TakeoverGrace to go away
// (a client that just closed one is seen a little later by its read loop). It
// returns when the new hold starts: now if they all went, else received, so that
// a real second owner shows as an overlap.
func (s *Server) waitOthers(c *conn, shard, count int, received time.Time) time.Time {
	deadline := time.Now().Add(s.cfg.TakeoverGrace)
	for {
		busy := false
		s.mu.Lock()
		for _, iv := range s.ref.intervals {
			if iv.Live && iv.Shard == shard && iv.ShardCount == count && iv.ConnID != c.id {
				busy = true
				break
			}
		}
		s.mu.Unlock()
		if !busy {
			return time.Now()
		}
		if time.Now().After(deadline) {
			return received
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// dispatchReadyLocked sends READY and one GUILD_CREATE per guild. se.mu is held.
func (s *Server) dispatchReadyLocked(se *session, guilds []Guild, now time.Time) {
	id := s.ids.id()
	d := make([]byte, 0, 512+len(guilds)*48)
	d = appendEventIDField(d, id)
	d = append(d, `"v":10,"user":{"id":"`...)
	d = strconv.AppendUint(d, s.cfg.ApplicationID, 10)
	d = append(d, `","username":"shardwarden-fake","discriminator":"0","global_name":null,"avatar":null,"bot":true,"verified":true,"flags":0,"mfa_enabled":false},"guilds":[`...)
	for i, g := range guilds {
		if i > 0 {
			d = append(d, ',')
		}
		d = append(d, `{"id":"`...)
		d = strconv.AppendUint(d, g.ID, 10)
		d = append(d, `","unavailable":true}`...)
	}
	d = append(d, `],"session_id":"`...)
	d = append(d, se.id...)
	d = append(d, `","session_type":"normal","resume_gateway_url":"`...)
	d = append(d, s.ResumeURL()...)
	d = append(d, `","shard":[`...)
	d = strconv.AppendInt(d, int64(se.shard), 10)
	d = append(d, ',')
	d = strconv.AppendInt(d, int64(se.count), 10)
	d = append(d, `],"application":{"id":"`...)
	d = strconv.AppendUint(d, s.cfg.ApplicationID, 10)
	d = append(d, `","flags":0},"private_channels":[],"presences":[],"relationships":[],"guild_join_requests":[],"_trace":["fakediscord"]}`...)
	se.dispatchLocked(s, "READY", id, 0, d, now)
	s.uniqueEvents.Add(1)

	if se.intents&IntentGuilds == 0 {
		return // GUILD_CREATE needs the GUILDS intent
	}
	for _, g := range guilds {
		id := s.ids.id()
		se.dispatchLocked(s, "GUILD_CREATE", id, g.ID, guildCreate(id, g, now), now)
	}
	s.uniqueEvents.Add(int64(len(guilds)))
}

func guildCreate(eventID uint64, g Guild, now time.Time) []byte {
	d := make([]byte, 0, 1024)
	d = appendEventIDField(d, eventID)
	gid := strconv.FormatUint(g.ID, 10)
	d = append(d, `"id":"`+gid+`","name":"guild `+gid+`","icon":null,"owner_id":"`...)
	d = strconv.AppendUint(d, g.Members[0], 10)
	d = append(d, `","unavailable":false,"large":false,"member_count":`...)
	d = strconv.AppendInt(d, int64(len(g.Members)), 10)
	d = append(d, `,"joined_at":"`...)
	d = now.UTC().AppendFormat(d, "2006-01-02T15:04:05.000000+00:00")
	d = append(d, `","roles":[{"id":"`+gid+`","name":"@everyone","permissions":"0","position":0,"color":0,"hoist":false,"managed":false,"mentionable":false}],"emojis":[],"features":[],"channels":[`...)
	for i, ch := range g.Channels {
		if i > 0 {
			d = append(d, ',')
		}
		d = append(d, `{"id":"`...)
		d = strconv.AppendUint(d, ch, 10)
		d = append(d, `","type":0,"name":"channel-`...)
		d = strconv.AppendInt(d, int64(i), 10)
		d = append(d, `","position":`...)
		d = strconv.AppendInt(d, int64(i), 10)
		d = append(d, `,"guild_id":"`+gid+`"}`...)
	}
	d = append(d, `],"threads":[],"members":[],"presences":[],"voice_states":[],"stage_instances":[],"guild_scheduled_events":[]}`...)
	return d
}

// resume handles op 6.
func (c *conn) resume(raw json.RawMessage, received time.Time) {
	s := c.srv
	if c.authenticated() {
		c.violate(RuleAlreadyAuthenticated, CloseAlreadyAuthenticated, "RESUME on an authenticated connection")
		c.closeWith(CloseAlreadyAuthenticated, "You sent more than one identify payload.", false)
		return
	}
	var d resumeData
	if err := json.Unmarshal(raw, &d); err != nil || d.Token == nil || d.SessionID == nil || d.Seq == nil {
		c.violate(RuleDecodeError, CloseDecodeError, "RESUME d needs token, session_id and seq")
		c.closeWith(CloseDecodeError, "Error while decoding payload.", false)
		return
	}
	if !s.tokenOK(*d.Token) {
		c.violate(RuleAuthenticationFailed, CloseAuthenticationFailed, "RESUME with a wrong token")
		c.closeWith(CloseAuthenticationFailed, "Authentication failed.", true)
		return
	}
	s.mu.Lock()
	se := s.sessions[*d.SessionID]
	s.mu.Unlock()
	reject := func(why string) {
		if se != nil {
			s.mu.Lock()
			s.ref.shard(se.shard).ResumeRejected++
			s.mu.Unlock()
		}
		s.cfg.Logger.Debug("fakediscord resume rejected", "conn_id", c.id, "reason", why)
		c.enqueue(frameInvalidF, false)
	}
	if se == nil || !se.resumable(received) {
		reject("unknown or expired session")
		return
	}
	c.mu.Lock()
	c.shard = se.shard
	c.mu.Unlock()
	if !c.resumePath && !s.cfg.AllowResumeOnGatewayURL {
		c.violate(RuleResumeWrongURL, 0, "RESUME on the gateway URL instead of resume_gateway_url")
		se.invalid.Store(true)
		s.mu.Lock()
		s.reg.remove(se)
		s.mu.Unlock()
		reject("resume on the wrong URL")
		return
	}
	if *d.Seq < 0 {
		c.violate(RuleResumeSeqAhead, CloseInvalidSeq, fmt.Sprintf("seq %d", *d.Seq))
		c.closeWith(CloseInvalidSeq, "Invalid seq.", true)
		return
	}

	start := s.waitOthers(c, se.shard, se.count, received)
	se.mu.Lock()
	old := se.conn
	se.mu.Unlock()
	if old != nil && old != c {
		// Still attached after the grace: a second process took the session while
		// the first one was alive.
		c.violate(RuleSessionTakeover, CloseUnknownError, fmt.Sprintf("session %s resumed while conn %d held it", se.id, old.id))
		old.closeWith(CloseUnknownError, "Session resumed elsewhere.", false)
	}

	se.mu.Lock()
	if se.invalid.Load() {
		se.mu.Unlock()
		reject("session invalidated meanwhile")
		return
	}
	if *d.Seq > se.seq {
		last := se.seq
		se.mu.Unlock()
		c.violate(RuleResumeSeqAhead, CloseInvalidSeq, fmt.Sprintf("RESUME seq %d, server sent up to %d", *d.Seq, last))
		// attach briefly so closeWith invalidates this session
		c.mu.Lock()
		c.sess = se
		c.mu.Unlock()
		c.closeWith(CloseInvalidSeq, "Invalid seq.", true)
		return
	}
	frames, ok := se.framesAfterLocked(*d.Seq)
	if !ok {
		se.invalid.Store(true)
		se.mu.Unlock()
		s.mu.Lock()
		s.reg.remove(se)
		s.mu.Unlock()
		reject("seq older than the replay buffer")
		return
	}
	iv := &SessionInterval{Shard: se.shard, ShardCount: se.count, SessionID: se.id, ConnID: c.id, Kind: "resume", Start: start, Live: true, se: se}
	c.mu.Lock()
	c.compress = se.compress
	c.sess, c.iv = se, iv
	c.mu.Unlock()
	se.conn = c
	se.expiresAt.Store(0)
	s.mu.Lock()
	s.ref.shard(se.shard).Resumes++
	s.ref.intervals = append(s.ref.intervals, iv)
	s.mu.Unlock()
	for _, f := range frames {
		c.enqueue(f, true)
	}
	id := s.ids.id()
	d2 := appendEventIDField(nil, id)
	d2 = append(d2, `"_trace":["fakediscord"]}`...)
	se.dispatchLocked(s, "RESUMED", id, 0, d2, start)
	se.mu.Unlock()
	s.uniqueEvents.Add(1)
	s.cfg.Logger.Debug("fakediscord resume", "shard_id", se.shard, "session_id", se.id, "conn_id", c.id, "seq", *d.Seq, "replayed", len(frames))
}

// reapSessions frees the replay buffers of sessions that can no longer be resumed
// (their ledger stays).
func (s *Server) reapSessions(now time.Time) {
	s.mu.Lock()
	var dead []*session
	for _, se := range s.ref.sessions {
		if !se.reaped && !se.resumable(now) {
			dead = append(dead, se)
		}
	}
	s.mu.Unlock()
	for _, se := range dead {
		se.mu.Lock()
		se.replay.release()
		se.mu.Unlock()
		s.mu.Lock()
		se.reaped = true
		s.mu.Unlock()
	}
}
