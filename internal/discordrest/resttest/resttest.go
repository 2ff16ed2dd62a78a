// Package resttest is a small Discord REST endpoint for worker tests: the three
// routes the built-in workers call, with Discord's rules for them (one callback per
// interaction within a reply window, enforce_nonce deduplication, 429 with
// fractional Retry-After on demand) and a record of every request. The project's
// full fake Discord (internal/fakediscord) serves the same routes next to its
// gateway; this one needs no gateway session to know an interaction.
package resttest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Request is one recorded request.
type Request struct {
	At     time.Time
	Method string
	Path   string
	Status int
	Body   []byte
}

type interaction struct {
	token    string
	at       time.Time
	answered bool
}

// Server is the endpoint; URL()+"/api" is its DISCORD_API_URL.
type Server struct {
	*httptest.Server
	Token string // expected bot token

	mu           sync.Mutex
	replyWindow  time.Duration
	reqs         []Request
	interactions map[string]*interaction
	nonces       map[string]string // nonce → message id
	nextID       uint64
	limits       []limit
	commands     []byte
	holds        map[string]*hold
}

type hold struct {
	arrived, release chan struct{}
}

type limit struct {
	path       string
	retryAfter string
	global     bool
	count      int
}

// New starts a server closed when t ends.
func New(t testing.TB, token string) *Server {
	s := &Server{Token: token, replyWindow: 3 * time.Second, interactions: map[string]*interaction{},
		nonces: map[string]string{}, nextID: 1 << 40, holds: map[string]*hold{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// APIURL is the DISCORD_API_URL of the server.
func (s *Server) APIURL() string { return s.URL + "/api" }

// SetReplyWindow sets how long an interaction accepts its callback (default 3s,
// Discord's).
func (s *Server) SetReplyWindow(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replyWindow = d
}

// AddInteraction makes an interaction known, created now (as the fake does when it
// dispatches an INTERACTION_CREATE).
func (s *Server) AddInteraction(id, token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.interactions[id] = &interaction{token: token, at: time.Now()}
}

// RateLimit makes the next count requests to path answer 429 with Retry-After.
func (s *Server) RateLimit(path, retryAfter string, global bool, count int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limits = append(s.limits, limit{path, retryAfter, global, count})
}

// Requests returns the record.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// Count returns how many recorded requests to path got status.
func (s *Server) Count(path string, status int) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Path == path && r.Status == status {
			n++
		}
	}
	return n
}

// Commands is the body of the last accepted PUT commands.
func (s *Server) Commands() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commands
}

// Hold makes the next request to path wait before it is processed: arrived is
// closed when it comes in, release lets it through. A request whose client goes
// away while held (a killed worker) is recorded with Status 0 and has no effect.
func (s *Server) Hold(path string) (arrived <-chan struct{}, release func()) {
	h := &hold{arrived: make(chan struct{}), release: make(chan struct{})}
	s.mu.Lock()
	s.holds[path] = h
	s.mu.Unlock()
	var once sync.Once
	return h.arrived, func() { once.Do(func() { close(h.release) }) }
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	h := s.holds[r.URL.Path]
	delete(s.holds, r.URL.Path)
	s.mu.Unlock()
	if h != nil {
		close(h.arrived)
		select {
		case <-h.release:
		case <-r.Context().Done():
			s.mu.Lock()
			s.reqs = append(s.reqs, Request{At: time.Now(), Method: r.Method, Path: r.URL.Path, Body: body})
			s.mu.Unlock()
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	status, out := s.answer(w, r, body)
	s.reqs = append(s.reqs, Request{At: time.Now(), Method: r.Method, Path: r.URL.Path, Status: status, Body: body})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if out != nil {
		_ = json.NewEncoder(w).Encode(out)
	}
}

func errBody(code int, msg string) map[string]any {
	return map[string]any{"code": code, "message": msg}
}

func (s *Server) answer(w http.ResponseWriter, r *http.Request, body []byte) (int, any) {
	for i := range s.limits {
		l := &s.limits[i]
		if l.count > 0 && l.path == r.URL.Path {
			l.count--
			w.Header().Set("Retry-After", l.retryAfter)
			scope := "user"
			if l.global {
				w.Header().Set("X-RateLimit-Global", "true")
				scope = "global"
			}
			w.Header().Set("X-RateLimit-Scope", scope)
			ra, _ := strconv.ParseFloat(l.retryAfter, 64)
			return http.StatusTooManyRequests, map[string]any{"message": "You are being rate limited.", "retry_after": ra, "global": l.global}
		}
	}
	mux := http.NewServeMux()
	var status int
	var out any
	mux.HandleFunc("POST /api/{ver}/interactions/{id}/{token}/callback", func(_ http.ResponseWriter, r *http.Request) {
		in := s.interactions[r.PathValue("id")]
		switch {
		case in == nil || in.token != r.PathValue("token"):
			status, out = http.StatusNotFound, errBody(10062, "Unknown interaction")
		case in.answered:
			status, out = http.StatusBadRequest, errBody(40060, "Interaction has already been acknowledged.")
		case time.Since(in.at) > s.replyWindow:
			status, out = http.StatusNotFound, errBody(10062, "Unknown interaction")
		default:
			in.answered = true
			status = http.StatusNoContent
		}
	})
	mux.HandleFunc("POST /api/{ver}/channels/{id}/messages", func(_ http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bot "+s.Token {
			status, out = http.StatusUnauthorized, errBody(0, "401: Unauthorized")
			return
		}
		var m struct {
			Content      string `json:"content"`
			Nonce        string `json:"nonce"`
			EnforceNonce bool   `json:"enforce_nonce"`
		}
		if json.Unmarshal(body, &m) != nil || m.Content == "" {
			status, out = http.StatusBadRequest, errBody(50006, "Cannot send an empty message")
			return
		}
		id, seen := s.nonces[m.Nonce]
		if !seen || !m.EnforceNonce || m.Nonce == "" {
			s.nextID++
			id = strconv.FormatUint(s.nextID, 10)
			if m.Nonce != "" {
				s.nonces[m.Nonce] = id
			}
		}
		status, out = http.StatusOK, map[string]any{"id": id, "channel_id": r.PathValue("id"), "content": m.Content, "nonce": m.Nonce}
	})
	mux.HandleFunc("PUT /api/{ver}/applications/{id}/commands", func(_ http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bot "+s.Token {
			status, out = http.StatusUnauthorized, errBody(0, "401: Unauthorized")
			return
		}
		s.commands = body
		var cmds []map[string]any
		_ = json.Unmarshal(body, &cmds)
		for i := range cmds {
			cmds[i]["id"] = fmt.Sprint(i + 1)
			cmds[i]["application_id"] = r.PathValue("id")
		}
		status, out = http.StatusOK, cmds
	})
	if _, pattern := mux.Handler(r); pattern == "" {
		return http.StatusNotFound, errBody(0, "404: Not Found")
	}
	mux.ServeHTTP(httptest.NewRecorder(), r) // the handlers set status and out
	return status, out
}

// MessagesCreated counts distinct messages created (a nonce-deduplicated retry
// returns an existing one).
func (s *Server) MessagesCreated() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.nextID - 1<<40)
}
