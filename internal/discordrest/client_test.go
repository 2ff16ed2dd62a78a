package discordrest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/diamondburned/arikawa/v3/api"
	"github.com/diamondburned/arikawa/v3/discord"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/discordrest"
	"github.com/shardwarden/shardwarden/internal/promtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"), goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

type request struct {
	at     time.Time
	method string
	path   string
	auth   string
	body   string
}

// server is a scripted Discord REST endpoint: answers are queued per path; an
// empty queue answers 200 {}.
type server struct {
	*httptest.Server
	mu      sync.Mutex
	reqs    []request
	answers map[string][]func(w http.ResponseWriter)
}

func newServer(t *testing.T) *server {
	s := &server{answers: map[string][]func(http.ResponseWriter){}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.reqs = append(s.reqs, request{time.Now(), r.Method, r.URL.Path, r.Header.Get("Authorization"), string(b)})
		var answer func(http.ResponseWriter)
		if q := s.answers[r.URL.Path]; len(q) > 0 {
			answer, s.answers[r.URL.Path] = q[0], q[1:]
		}
		s.mu.Unlock()
		if answer != nil {
			answer(w)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id":"42","channel_id":"7","content":"ok"}`))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) queue(path string, answers ...func(http.ResponseWriter)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answers[path] = append(s.answers[path], answers...)
}

func (s *server) requests() []request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]request(nil), s.reqs...)
}

func tooMany(retryAfter string, global bool, scope string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Retry-After", retryAfter)
		if global {
			w.Header().Set("X-RateLimit-Global", "true")
		}
		w.Header().Set("X-RateLimit-Scope", scope)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte(`{"message":"You are being rate limited.","retry_after":` + retryAfter + `,"global":` + map[bool]string{true: "true", false: "false"}[global] + `}`))
	}
}

func newClient(t *testing.T, s *server) (*discordrest.Client, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := discordrest.New(discordrest.Config{Token: "secret-token", APIURL: s.URL + "/api", Registerer: reg})
	require.NoError(t, err)
	return c, reg
}

func TestCreateMessageRewritesToTheConfiguredAPI(t *testing.T) {
	s := newServer(t)
	c, reg := newClient(t, s)
	nonce := discordrest.Nonce("commands:0:sess:1")
	require.Len(t, nonce, 25)
	require.Equal(t, nonce, discordrest.Nonce("commands:0:sess:1"))
	m, err := c.CreateMessage(context.Background(), 7, discordrest.Message{Content: "Pong!", Nonce: nonce, EnforceNonce: true, ReplyTo: 99})
	require.NoError(t, err)
	require.Equal(t, discord.MessageID(42), m.ID)

	reqs := s.requests()
	require.Len(t, reqs, 1)
	require.Equal(t, "POST", reqs[0].method)
	require.Equal(t, "/api/v10/channels/7/messages", reqs[0].path)
	require.Equal(t, "Bot secret-token", reqs[0].auth)
	var body map[string]any
	require.NoError(t, json.Unmarshal([]byte(reqs[0].body), &body))
	require.Equal(t, "Pong!", body["content"])
	require.Equal(t, nonce, body["nonce"])
	require.Equal(t, true, body["enforce_nonce"])
	require.Equal(t, "99", body["message_reference"].(map[string]any)["message_id"])
	require.Equal(t, 1.0, value(t, reg, "shardwarden_rest_requests_total", map[string]string{"route": "POST /channels/{id}/messages", "code": "200"}))
}

func TestFractionalRetryAfterIsWaitedOutOnce(t *testing.T) {
	s := newServer(t)
	c, reg := newClient(t, s)
	s.queue("/api/v10/interactions/5/tok/callback", tooMany("0.35", false, "user"), func(w http.ResponseWriter) { w.WriteHeader(http.StatusNoContent) })

	start := time.Now()
	require.NoError(t, c.RespondInteraction(context.Background(), 5, "tok", "Pong!"))
	reqs := s.requests()
	require.Len(t, reqs, 2, "one 429, then the reply, once")
	require.GreaterOrEqual(t, reqs[1].at.Sub(reqs[0].at), 350*time.Millisecond)
	require.Less(t, time.Since(start), 3*time.Second)
	require.Equal(t, reqs[0].body, reqs[1].body, "the retried request carries the same body")
	require.Contains(t, reqs[1].body, `"content":"Pong!"`)
	require.Equal(t, 1.0, value(t, reg, "shardwarden_rest_rate_limited_total", map[string]string{"scope": "user"}))
	require.Equal(t, 1.0, value(t, reg, "shardwarden_rest_requests_total", map[string]string{"route": "POST /interactions/{id}/{token}/callback", "code": "429"}))
	require.Equal(t, 1.0, value(t, reg, "shardwarden_rest_requests_total", map[string]string{"route": "POST /interactions/{id}/{token}/callback", "code": "204"}))
}

func TestGlobalRateLimitHoldsEveryRoute(t *testing.T) {
	s := newServer(t)
	c, reg := newClient(t, s)
	s.queue("/api/v10/channels/1/messages", tooMany("0.4", true, "global"))

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := c.CreateMessage(context.Background(), 1, discordrest.Message{Content: "a"})
		require.NoError(t, err)
	}()
	require.Eventually(t, func() bool { return len(s.requests()) == 1 }, 5*time.Second, 5*time.Millisecond)
	first := s.requests()[0].at
	_, err := c.CreateMessage(context.Background(), 2, discordrest.Message{Content: "b"})
	require.NoError(t, err)
	wg.Wait()
	for _, r := range s.requests()[1:] {
		require.GreaterOrEqual(t, r.at.Sub(first), 400*time.Millisecond, "%s sent during the global limit", r.path)
	}
	require.Equal(t, 1.0, value(t, reg, "shardwarden_rest_rate_limited_total", map[string]string{"scope": "global"}))
}

func TestRetryAfterBeyondTheDeadlineGivesUp(t *testing.T) {
	s := newServer(t)
	c, _ := newClient(t, s)
	s.queue("/api/v10/interactions/5/tok/callback", tooMany("5", false, "shared"))
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.RespondInteraction(ctx, 5, "tok", "late")
	require.Error(t, err)
	require.True(t, discordrest.IsRateLimited(err), "%v", err)
	require.Less(t, time.Since(start), 400*time.Millisecond, "gives up at once instead of sleeping past the deadline")
	require.Len(t, s.requests(), 1)
}

func TestDiscordErrorCodes(t *testing.T) {
	s := newServer(t)
	c, _ := newClient(t, s)
	s.queue("/api/v10/interactions/5/tok/callback", func(w http.ResponseWriter) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"message":"Interaction has already been acknowledged.","code":40060}`))
	})
	err := c.RespondInteraction(context.Background(), 5, "tok", "x")
	require.True(t, discordrest.HasCode(err, discordrest.CodeInteractionAlreadyAnswered), "%v", err)
	require.Equal(t, http.StatusBadRequest, discordrest.StatusOf(err))
	require.Len(t, s.requests(), 1, "a 4xx is not retried")

	s.queue("/api/v10/channels/3/messages", func(w http.ResponseWriter) { w.WriteHeader(http.StatusBadGateway) })
	_, err = c.CreateMessage(context.Background(), 3, discordrest.Message{Content: "x"})
	require.Equal(t, http.StatusBadGateway, discordrest.StatusOf(err))
	require.Len(t, s.requests(), 2, "a 5xx goes back to the caller (the worker runtime retries)")
}

func TestRegisterCommands(t *testing.T) {
	s := newServer(t)
	c, _ := newClient(t, s)
	s.queue("/api/v10/applications/77/commands", func(w http.ResponseWriter) {
		_, _ = w.Write([]byte(`[{"id":"1","application_id":"77","name":"ping","description":"d","type":1,"version":"1"}]`))
	})
	cmds, err := c.RegisterCommands(context.Background(), 77, []api.CreateCommandData{{Name: "ping", Description: "d", Type: discord.ChatInputCommand}})
	require.NoError(t, err)
	require.Len(t, cmds, 1)
	req := s.requests()[0]
	require.Equal(t, "PUT", req.method)
	require.Contains(t, req.body, `"name":"ping"`)
}

func TestRoute(t *testing.T) {
	for in, want := range map[[2]string]string{
		{"POST", "/api/v10/interactions/123/aW50ZXJhY3Rpb24/callback"}: "POST /interactions/{id}/{token}/callback",
		{"POST", "/api/v9/channels/123/messages"}:                      "POST /channels/{id}/messages",
		{"PUT", "/api/v10/applications/1/commands"}:                    "PUT /applications/{id}/commands",
		{"GET", "/api/v10/oauth2/applications/@me"}:                    "GET /oauth2/applications/@me",
		{"PATCH", "/api/v10/webhooks/1/tok/messages/@original"}:        "PATCH /webhooks/{id}/{token}/messages/@original",
		{"PUT", "/api/v10/channels/1/messages/2/reactions/x:1/@me"}:    "PUT /channels/{id}/messages/{id}/reactions/{emoji}/@me",
	} {
		require.Equal(t, want, discordrest.Route(in[0], in[1]))
	}
}

func TestConfig(t *testing.T) {
	_, err := discordrest.New(discordrest.Config{})
	require.ErrorContains(t, err, "empty token")
	_, err = discordrest.New(discordrest.Config{Token: "t", APIURL: "discord.com"})
	require.ErrorContains(t, err, "API URL")
	s := newServer(t)
	c, err := discordrest.New(discordrest.Config{Token: "t", APIURL: s.URL + "/api/v9/"})
	require.NoError(t, err)
	_, err = c.CreateMessage(context.Background(), 1, discordrest.Message{Content: "x"})
	require.NoError(t, err)
	require.Equal(t, "/api/v9/channels/1/messages", s.requests()[0].path, "an explicit version is kept")
}

func value(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	var pairs []string
	for k, v := range labels {
		pairs = append(pairs, k, v)
	}
	return promtest.Value(t, reg, name, pairs...)
}

func TestTransportErrorsHideInteractionTokens(t *testing.T) {
	s := newServer(t)
	c, _ := newClient(t, s)
	s.Close() // connection refused
	err := c.RespondInteraction(context.Background(), 5, "very-secret-interaction-token", "x")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "very-secret-interaction-token")
	require.Contains(t, err.Error(), "/interactions/5/[REDACTED]/callback")
}

func TestApplicationID(t *testing.T) {
	s := newServer(t)
	c, _ := newClient(t, s)
	s.queue("/api/v10/oauth2/applications/@me", func(w http.ResponseWriter) {
		_, _ = w.Write([]byte(`{"id":"1100000000000000001","name":"bot"}`))
	})
	id, err := c.ApplicationID(context.Background())
	require.NoError(t, err)
	require.Equal(t, discord.AppID(1100000000000000001), id)
	require.Equal(t, "/api/v10/oauth2/applications/@me", s.requests()[0].path, "arikawa's doubled slash is cleaned")
}
