package fakediscord

import (
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// REST routes, as used in Config.RouteLimits and ForcedRateLimit.Route.
const (
	routeGateway             = "GET /gateway"
	routeGatewayBot          = "GET /gateway/bot"
	routeInteractionCallback = "POST /interactions/{id}/{token}/callback"
	routeChannelMessages     = "POST /channels/{id}/messages"
	routeCommands            = "PUT /applications/{id}/commands"
	routeWebhookFollowUp     = "POST /webhooks/{app}/{token}"
	routeApplicationMe       = "GET /applications/@me"
	routeUserMe              = "GET /users/@me"
	routeWebhookEdit         = "PATCH /webhooks/{app}/{token}/messages/{msg}"

	RouteGateway             = routeGateway
	RouteGatewayBot          = routeGatewayBot
	RouteInteractionCallback = routeInteractionCallback
	RouteChannelMessages     = routeChannelMessages
	RouteCommands            = routeCommands
	RouteWebhookFollowUp     = routeWebhookFollowUp
	RouteWebhookEdit         = routeWebhookEdit
)

// ForcedRateLimit makes the REST API answer 429 regardless of the buckets.
type ForcedRateLimit struct {
	// Route to force ("" forces every route).
	Route string `json:"route"`
	// Global marks the 429s as global (X-RateLimit-Global: true).
	Global bool `json:"global"`
	// RetryAfter is the Retry-After sent (default 1s; decimals are sent as such).
	RetryAfter time.Duration `json:"retry_after"`
	// Count is how many requests get a 429; 0 means until ClearForcedRateLimits.
	Count int `json:"count"`
}

type interaction struct {
	token    string
	at       time.Time
	answered bool
}

type bucket struct {
	remaining int
	reset     time.Time
}

type restState struct {
	mu           sync.Mutex
	interactions map[uint64]*interaction
	buckets      map[string]*bucket
	globalStart  time.Time
	globalCount  int
	forced       []*ForcedRateLimit
	commands     json.RawMessage
	byToken      map[string]uint64 // interaction token → id (webhook follow-ups)
	nonces       map[string]nonceEntry
	messages     int // distinct messages created
}

type nonceEntry struct {
	at  time.Time
	msg map[string]any
}

// nonceRetention: Discord deduplicates enforce_nonce within "a few minutes".
const nonceRetention = 5 * time.Minute

// followUpWindow: interaction tokens stay valid for follow-ups this long.
const followUpWindow = 15 * time.Minute

func newRESTState() restState {
	return restState{interactions: map[uint64]*interaction{}, buckets: map[string]*bucket{},
		byToken: map[string]uint64{}, nonces: map[string]nonceEntry{}}
}

func (r *restState) addInteraction(id uint64, token string, at time.Time) {
	r.mu.Lock()
	if _, ok := r.interactions[id]; !ok {
		r.interactions[id] = &interaction{token: token, at: at}
		r.byToken[token] = id
	}
	r.mu.Unlock()
}

// ForceRateLimit adds a rule answering 429; rules are checked in order.
func (s *Server) ForceRateLimit(f ForcedRateLimit) {
	if f.RetryAfter <= 0 {
		f.RetryAfter = time.Second
	}
	s.rest.mu.Lock()
	s.rest.forced = append(s.rest.forced, &f)
	s.rest.mu.Unlock()
}

// ClearForcedRateLimits removes every ForceRateLimit rule.
func (s *Server) ClearForcedRateLimits() {
	s.rest.mu.Lock()
	s.rest.forced = nil
	s.rest.mu.Unlock()
}

// MessagesCreated counts distinct messages created through POST
// /channels/{id}/messages and webhook follow-ups (an enforce_nonce retry that
// returns an existing message does not count).
func (s *Server) MessagesCreated() int {
	s.rest.mu.Lock()
	defer s.rest.mu.Unlock()
	return s.rest.messages
}

// Commands returns the body of the last accepted PUT /applications/{id}/commands.
func (s *Server) Commands() json.RawMessage {
	s.rest.mu.Lock()
	defer s.rest.mu.Unlock()
	return s.rest.commands
}

func (s *Server) restRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/{ver}/gateway", s.rest1(routeGateway, s.getGateway))
	mux.HandleFunc("GET /api/{ver}/gateway/bot", s.rest1(routeGatewayBot, s.getGatewayBot))
	mux.HandleFunc("POST /api/{ver}/interactions/{id}/{token}/callback", s.rest1(routeInteractionCallback, s.postInteractionCallback))
	mux.HandleFunc("POST /api/{ver}/channels/{id}/messages", s.rest1(routeChannelMessages, s.postChannelMessage))
	mux.HandleFunc("PUT /api/{ver}/applications/{id}/commands", s.rest1(routeCommands, s.putCommands))
	mux.HandleFunc("GET /api/{ver}/oauth2/applications/@me", s.rest1(routeApplicationMe, s.getApplication))
	mux.HandleFunc("GET /api/{ver}/applications/@me", s.rest1(routeApplicationMe, s.getApplication))
	mux.HandleFunc("GET /api/{ver}/users/@me", s.rest1(routeUserMe, s.getUserMe))
	mux.HandleFunc("POST /api/{ver}/webhooks/{app}/{token}", s.rest1(routeWebhookFollowUp, s.webhookMessage))
	mux.HandleFunc("PATCH /api/{ver}/webhooks/{app}/{token}/messages/{msg}", s.rest1(routeWebhookEdit, s.webhookMessage))
	mux.HandleFunc("/api/", s.rest1("unknown", func(w http.ResponseWriter, _ *http.Request, rec *RESTRequest, _ []byte) {
		writeError(w, rec, http.StatusNotFound, 0, "404: Not Found")
	}))
}

type restHandler func(w http.ResponseWriter, r *http.Request, rec *RESTRequest, body []byte)

// rest1 wraps a REST handler: API version, body capture, the record.
func (s *Server) rest1(route string, h restHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		rec := &RESTRequest{At: time.Now(), Method: r.Method, Path: r.URL.Path, Route: route}
		rec.Body = body[:min(len(body), 64<<10)]
		if v := r.PathValue("ver"); route != "unknown" && v != "v9" && v != "v10" {
			writeError(w, rec, http.StatusNotFound, 0, "404: Not Found")
		} else {
			h(w, r, rec, body)
		}
		s.mu.Lock()
		s.ref.rest = append(s.ref.rest, *rec)
		s.mu.Unlock()
	}
}

func writeJSON(w http.ResponseWriter, rec *RESTRequest, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if rec != nil {
		rec.Status = status
	}
	if v != nil {
		_ = json.NewEncoder(w).Encode(v)
	}
}

func writeError(w http.ResponseWriter, rec *RESTRequest, status, code int, msg string) {
	writeJSON(w, rec, status, map[string]any{"message": msg, "code": code})
}

// authorized checks "Authorization: Bot <token>"; on failure it answers 401.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request, rec *RESTRequest) bool {
	auth := r.Header.Get("Authorization")
	s.mu.Lock()
	dead := s.tokenDead
	s.mu.Unlock()
	if !dead && auth == "Bot "+s.cfg.Token {
		return true
	}
	s.violation(Violation{Rule: RuleRESTUnauthorized, Shard: -1, Detail: r.Method + " " + r.URL.Path})
	writeError(w, rec, http.StatusUnauthorized, 0, "401: Unauthorized")
	return false
}

func secs(d time.Duration) string {
	return strconv.FormatFloat(math.Ceil(d.Seconds()*1000)/1000, 'f', 3, 64)
}

func bucketHash(route string) string {
	h := sha1.Sum([]byte(route))
	return hex.EncodeToString(h[:16])
}

// limit applies forced 429s, the global limit (when global) and the route bucket
// keyed by major (when the route has one). It writes the X-RateLimit headers and,
// when limited, the 429 answer, and reports whether the request may proceed.
func (s *Server) limit(w http.ResponseWriter, rec *RESTRequest, route, major string, global bool) bool {
	now := time.Now()
	h := w.Header()
	s.rest.mu.Lock()
	for i, f := range s.rest.forced {
		if f.Route != "" && f.Route != route {
			continue
		}
		if f.Count > 0 {
			f.Count--
			if f.Count == 0 {
				s.rest.forced = append(s.rest.forced[:i:i], s.rest.forced[i+1:]...)
			}
		}
		s.rest.mu.Unlock()
		s.write429(w, rec, f.RetryAfter, f.Global, route, now, false)
		return false
	}
	if global {
		if now.Sub(s.rest.globalStart) >= time.Second {
			s.rest.globalStart, s.rest.globalCount = now, 0
		}
		if s.rest.globalCount >= s.cfg.GlobalRateLimit {
			wait := s.rest.globalStart.Add(time.Second).Sub(now)
			s.rest.mu.Unlock()
			s.write429(w, rec, wait, true, route, now, true)
			return false
		}
		s.rest.globalCount++
	}
	lim, ok := s.cfg.RouteLimits[route]
	if !ok {
		s.rest.mu.Unlock()
		return true
	}
	key := route + " " + major
	b := s.rest.buckets[key]
	if b == nil || !now.Before(b.reset) {
		b = &bucket{remaining: lim.Limit, reset: now.Add(lim.Period)}
		s.rest.buckets[key] = b
	}
	h.Set("X-RateLimit-Limit", strconv.Itoa(lim.Limit))
	h.Set("X-RateLimit-Bucket", bucketHash(route))
	h.Set("X-RateLimit-Reset", strconv.FormatFloat(float64(b.reset.UnixMilli())/1000, 'f', 3, 64))
	h.Set("X-RateLimit-Reset-After", secs(b.reset.Sub(now)))
	if b.remaining == 0 {
		wait := b.reset.Sub(now)
		s.rest.mu.Unlock()
		h.Set("X-RateLimit-Remaining", "0")
		s.write429(w, rec, wait, false, route, now, true)
		return false
	}
	b.remaining--
	h.Set("X-RateLimit-Remaining", strconv.Itoa(b.remaining))
	s.rest.mu.Unlock()
	return true
}

func (s *Server) write429(w http.ResponseWriter, rec *RESTRequest, wait time.Duration, global bool, route string, now time.Time, violation bool) {
	h := w.Header()
	h.Set("Retry-After", secs(wait))
	scope := "user"
	if global {
		h.Set("X-RateLimit-Global", "true")
		scope = "global"
	}
	h.Set("X-RateLimit-Scope", scope)
	rec.RateLimited, rec.Global = true, global
	if violation {
		s.violation(Violation{At: now, Rule: RuleRESTRateLimited, Shard: -1,
			Detail: fmt.Sprintf("%s (%s limit), retry after %ss", rec.Path, scope, secs(wait))})
	}
	writeJSON(w, rec, http.StatusTooManyRequests, map[string]any{
		"message": "You are being rate limited.", "retry_after": math.Ceil(wait.Seconds()*1000) / 1000,
		"global": global, "code": 0,
	})
}

func (s *Server) getGateway(w http.ResponseWriter, _ *http.Request, rec *RESTRequest, _ []byte) {
	writeJSON(w, rec, http.StatusOK, map[string]any{"url": s.GatewayURL()})
}

// SessionStartLimit is /gateway/bot's session_start_limit.
type SessionStartLimit struct {
	Total          int   `json:"total"`
	Remaining      int   `json:"remaining"`
	ResetAfter     int64 `json:"reset_after"` // ms
	MaxConcurrency int   `json:"max_concurrency"`
}

// GatewayBot is the /gateway/bot answer.
type GatewayBot struct {
	URL               string            `json:"url"`
	Shards            int               `json:"shards"`
	SessionStartLimit SessionStartLimit `json:"session_start_limit"`
}

// GatewayBot returns what GET /gateway/bot answers now.
func (s *Server) GatewayBot() GatewayBot {
	now := time.Now()
	s.mu.Lock()
	if now.Sub(s.budgetFrom) >= s.cfg.BudgetWindow {
		s.budgetFrom, s.budgetUsed = now, 0
	}
	remaining := max(s.cfg.DailyBudget-s.budgetUsed, 0)
	resetAfter := s.budgetFrom.Add(s.cfg.BudgetWindow).Sub(now).Milliseconds()
	s.mu.Unlock()
	return GatewayBot{URL: s.GatewayURL(), Shards: s.cfg.Shards, SessionStartLimit: SessionStartLimit{
		Total: s.cfg.DailyBudget, Remaining: remaining, ResetAfter: resetAfter, MaxConcurrency: s.cfg.MaxConcurrency,
	}}
}

func (s *Server) getGatewayBot(w http.ResponseWriter, r *http.Request, rec *RESTRequest, _ []byte) {
	if !s.authorized(w, r, rec) || !s.limit(w, rec, routeGatewayBot, "", true) {
		return
	}
	writeJSON(w, rec, http.StatusOK, s.GatewayBot())
}

func (s *Server) postInteractionCallback(w http.ResponseWriter, r *http.Request, rec *RESTRequest, body []byte) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	token := r.PathValue("token")
	rec.InteractionID = id
	// Interaction endpoints are not bound to the global limit.
	if !s.limit(w, rec, routeInteractionCallback, r.PathValue("id"), false) {
		return
	}
	now := time.Now()
	s.rest.mu.Lock()
	in := s.rest.interactions[id]
	switch {
	case err != nil || in == nil:
		s.rest.mu.Unlock()
		writeError(w, rec, http.StatusNotFound, 10062, "Unknown interaction")
		return
	case in.token != token:
		s.rest.mu.Unlock()
		writeError(w, rec, http.StatusUnauthorized, 50027, "Invalid Webhook Token")
		return
	case in.answered:
		s.rest.mu.Unlock()
		s.violation(Violation{Rule: RuleInteractionTwice, Shard: -1, Detail: fmt.Sprintf("interaction %d", id)})
		writeError(w, rec, http.StatusBadRequest, 40060, "Interaction has already been acknowledged.")
		return
	case now.Sub(in.at) > s.cfg.InteractionTimeout:
		late := now.Sub(in.at)
		s.rest.mu.Unlock()
		s.violation(Violation{Rule: RuleInteractionTooLate, Shard: -1,
			Detail: fmt.Sprintf("interaction %d answered after %v (limit %v)", id, late.Round(time.Millisecond), s.cfg.InteractionTimeout)})
		writeError(w, rec, http.StatusNotFound, 10062, "Unknown interaction")
		return
	}
	var cb struct {
		Type *int            `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(body, &cb) != nil || cb.Type == nil || !validCallbackType(*cb.Type) ||
		(*cb.Type == 4 && len(cb.Data) == 0) {
		s.rest.mu.Unlock()
		writeError(w, rec, http.StatusBadRequest, 50035, "Invalid Form Body")
		return
	}
	in.answered = true
	s.rest.mu.Unlock()
	rec.Status = http.StatusNoContent
	w.WriteHeader(http.StatusNoContent)
}

func validCallbackType(t int) bool {
	switch t {
	case 1, 4, 5, 6, 7, 8, 9, 10, 12:
		return true
	}
	return false
}

func (s *Server) postChannelMessage(w http.ResponseWriter, r *http.Request, rec *RESTRequest, body []byte) {
	ch, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	rec.ChannelID = ch
	if !s.authorized(w, r, rec) || !s.limit(w, rec, routeChannelMessages, r.PathValue("id"), true) {
		return
	}
	if err != nil {
		writeError(w, rec, http.StatusNotFound, 10003, "Unknown Channel")
		return
	}
	out, status, code, text := s.newMessage(ch, body, true)
	if status != http.StatusOK {
		writeError(w, rec, status, code, text)
		return
	}
	writeJSON(w, rec, http.StatusOK, out)
}

// newMessage validates a message body and builds the message Discord returns.
// With enforce_nonce, a nonce seen on the channel within nonceRetention returns
// the message created then instead of a new one.
func (s *Server) newMessage(ch uint64, body []byte, create bool) (map[string]any, int, int, string) {
	var msg struct {
		Content      *string         `json:"content"`
		Embeds       json.RawMessage `json:"embeds"`
		Components   json.RawMessage `json:"components"`
		StickerIDs   json.RawMessage `json:"sticker_ids"`
		Nonce        json.RawMessage `json:"nonce"`
		EnforceNonce bool            `json:"enforce_nonce"`
		TTS          bool            `json:"tts"`
	}
	if json.Unmarshal(body, &msg) != nil {
		return nil, http.StatusBadRequest, 50109, "The request body contains invalid JSON."
	}
	content := ""
	if msg.Content != nil {
		content = *msg.Content
	}
	if len([]rune(content)) > 2000 {
		return nil, http.StatusBadRequest, 50035, "Invalid Form Body"
	}
	empty := func(r json.RawMessage) bool { return len(r) == 0 || string(r) == "null" || string(r) == "[]" }
	if content == "" && empty(msg.Embeds) && empty(msg.Components) && empty(msg.StickerIDs) {
		return nil, http.StatusBadRequest, 50006, "Cannot send an empty message"
	}
	var nonce string
	if create && len(msg.Nonce) > 0 && string(msg.Nonce) != "null" {
		// A nonce is a string or an integer of at most 25 characters.
		if json.Unmarshal(msg.Nonce, &nonce) != nil {
			nonce = string(msg.Nonce)
		}
		if len(nonce) > 25 {
			return nil, http.StatusBadRequest, 50035, "Invalid Form Body"
		}
	}
	now := time.Now()
	key := strconv.FormatUint(ch, 10) + "/" + nonce
	s.rest.mu.Lock()
	defer s.rest.mu.Unlock()
	if nonce != "" && msg.EnforceNonce {
		if e, ok := s.rest.nonces[key]; ok && now.Sub(e.at) < nonceRetention {
			return e.msg, http.StatusOK, 0, ""
		}
	}
	embeds := msg.Embeds
	if empty(embeds) {
		embeds = json.RawMessage("[]")
	}
	out := map[string]any{
		"id": strconv.FormatUint(s.ids.id(), 10), "channel_id": strconv.FormatUint(ch, 10), "type": 0,
		"author": map[string]any{"id": strconv.FormatUint(s.cfg.ApplicationID, 10), "username": "shardwarden-fake",
			"discriminator": "0", "global_name": nil, "avatar": nil, "bot": true},
		"content": content, "timestamp": now.UTC().Format("2006-01-02T15:04:05.000000+00:00"),
		"edited_timestamp": nil, "tts": msg.TTS, "mention_everyone": false, "mentions": []any{}, "mention_roles": []any{},
		"attachments": []any{}, "embeds": embeds, "pinned": false, "flags": 0,
	}
	if nonce != "" {
		out["nonce"] = nonce
		s.rest.nonces[key] = nonceEntry{at: now, msg: out}
	}
	if create {
		s.rest.messages++
	}
	return out, http.StatusOK, 0, ""
}

// webhookMessage serves interaction follow-ups (POST /webhooks/{app}/{token}) and
// edits (PATCH .../messages/{id|@original}): the token must be a dispatched
// interaction's, at most 15 minutes old, already acknowledged by its callback.
func (s *Server) webhookMessage(w http.ResponseWriter, r *http.Request, rec *RESTRequest, body []byte) {
	if !s.limit(w, rec, rec.Route, r.PathValue("token"), false) {
		return
	}
	if r.PathValue("app") != strconv.FormatUint(s.cfg.ApplicationID, 10) {
		writeError(w, rec, http.StatusNotFound, 10015, "Unknown Webhook")
		return
	}
	s.rest.mu.Lock()
	id, ok := s.rest.byToken[r.PathValue("token")]
	var in *interaction
	if ok {
		in = s.rest.interactions[id]
	}
	s.rest.mu.Unlock()
	rec.InteractionID = id
	switch {
	case in == nil || time.Since(in.at) > followUpWindow:
		writeError(w, rec, http.StatusNotFound, 10015, "Unknown Webhook")
		return
	case !in.answered:
		// The strict reading: follow-ups and edits need the initial response.
		writeError(w, rec, http.StatusNotFound, 10008, "Unknown Message")
		return
	}
	out, status, code, text := s.newMessage(0, body, r.Method == http.MethodPost)
	if status != http.StatusOK {
		writeError(w, rec, status, code, text)
		return
	}
	writeJSON(w, rec, http.StatusOK, out)
}

var commandName = regexp.MustCompile(`^[-_\p{Ll}\p{N}]{1,32}$`)

func (s *Server) putCommands(w http.ResponseWriter, r *http.Request, rec *RESTRequest, body []byte) {
	if !s.authorized(w, r, rec) || !s.limit(w, rec, routeCommands, r.PathValue("id"), true) {
		return
	}
	if r.PathValue("id") != strconv.FormatUint(s.cfg.ApplicationID, 10) {
		writeError(w, rec, http.StatusForbidden, 50001, "Missing Access")
		return
	}
	var cmds []map[string]any
	if json.Unmarshal(body, &cmds) != nil || len(cmds) > 100 {
		writeError(w, rec, http.StatusBadRequest, 50035, "Invalid Form Body")
		return
	}
	for i, c := range cmds {
		name, _ := c["name"].(string)
		desc, _ := c["description"].(string)
		typ, _ := c["type"].(float64)
		if !commandName.MatchString(name) || len(desc) > 100 || ((typ == 0 || typ == 1) && strings.TrimSpace(desc) == "") {
			writeError(w, rec, http.StatusBadRequest, 50035, "Invalid Form Body")
			return
		}
		c["id"] = strconv.FormatUint(s.ids.id(), 10)
		c["application_id"] = strconv.FormatUint(s.cfg.ApplicationID, 10)
		c["version"] = c["id"]
		if typ == 0 {
			c["type"] = 1
		}
		cmds[i] = c
	}
	s.rest.mu.Lock()
	s.rest.commands = append(json.RawMessage(nil), body...)
	s.rest.mu.Unlock()
	if cmds == nil {
		cmds = []map[string]any{}
	}
	writeJSON(w, rec, http.StatusOK, cmds)
}

func (s *Server) botUser() map[string]any {
	return map[string]any{"id": strconv.FormatUint(s.cfg.ApplicationID, 10), "username": "shardwarden-fake",
		"discriminator": "0", "global_name": nil, "avatar": nil, "bot": true, "verified": true, "flags": 0}
}

func (s *Server) getApplication(w http.ResponseWriter, r *http.Request, rec *RESTRequest, _ []byte) {
	if !s.authorized(w, r, rec) || !s.limit(w, rec, rec.Route, "", true) {
		return
	}
	writeJSON(w, rec, http.StatusOK, map[string]any{
		"id": strconv.FormatUint(s.cfg.ApplicationID, 10), "name": "shardwarden-fake", "icon": nil,
		"description": "", "bot_public": false, "bot_require_code_grant": false, "verify_key": "00",
		"flags": 0, "bot": s.botUser(), "owner": map[string]any{"id": "1", "username": "owner", "discriminator": "0"},
		"team": nil, "approximate_guild_count": len(s.guilds),
	})
}

func (s *Server) getUserMe(w http.ResponseWriter, r *http.Request, rec *RESTRequest, _ []byte) {
	if !s.authorized(w, r, rec) || !s.limit(w, rec, rec.Route, "", true) {
		return
	}
	writeJSON(w, rec, http.StatusOK, s.botUser())
}
