package fakediscord

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRESTGateway(t *testing.T) {
	s := startServer(t, fastConfig())
	auth := "Bot " + s.Token()
	for _, ver := range []string{"v9", "v10"} {
		resp, body := httpDo(t, "GET", s.APIURL()+"/"+ver+"/gateway", "", "")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.JSONEq(t, fmt.Sprintf(`{"url":%q}`, s.GatewayURL()), string(body))

		resp, body = httpDo(t, "GET", s.APIURL()+"/"+ver+"/gateway/bot", auth, "")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var gb GatewayBot
		require.NoError(t, json.Unmarshal(body, &gb))
		require.Equal(t, s.GatewayURL(), gb.URL)
		require.Equal(t, 4, gb.Shards)
		require.Equal(t, 1000, gb.SessionStartLimit.Total)
		require.Equal(t, 1000, gb.SessionStartLimit.Remaining)
		require.Equal(t, 16, gb.SessionStartLimit.MaxConcurrency)
		require.Positive(t, gb.SessionStartLimit.ResetAfter)
	}
	resp, _ := httpDo(t, "GET", s.APIURL()+"/v10/gateway/bot", "Bot wrong", "")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, _ = httpDo(t, "GET", s.APIURL()+"/v8/gateway", "", "")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	// Identifying spends the budget.
	c := dialGateway(t, s)
	c.identify(s, 0, 4)
	require.Equal(t, 999, s.GatewayBot().SessionStartLimit.Remaining)
	require.Len(t, s.REST(), 6)
	require.Equal(t, []string{RuleRESTUnauthorized}, rules(s.Violations()))
}

func TestRESTInteractionCallback(t *testing.T) {
	cfg := fastConfig()
	cfg.InteractionTimeout = 1500 * time.Millisecond
	s := startServer(t, cfg)
	c := dialGateway(t, s)
	c.identify(s, 0, 4)

	_, err := s.Dispatch(0, "INTERACTION_CREATE", map[string]any{"id": "5001", "token": "tok-a", "type": 2})
	require.NoError(t, err)
	_, err = s.Dispatch(0, "INTERACTION_CREATE", map[string]any{"id": "5002", "token": "tok-b", "type": 2})
	require.NoError(t, err)
	dispatched := time.Now()
	cb := func(id, tok, body string) int {
		resp, _ := httpDo(t, "POST", s.APIURL()+"/v10/interactions/"+id+"/"+tok+"/callback", "", body)
		return resp.StatusCode
	}
	require.Equal(t, http.StatusUnauthorized, cb("5001", "tok-x", `{"type":4,"data":{"content":"x"}}`))
	require.Equal(t, http.StatusBadRequest, cb("5001", "tok-a", `{"type":99}`))
	require.Equal(t, http.StatusNoContent, cb("5001", "tok-a", `{"type":4,"data":{"content":"pong"}}`))
	require.Equal(t, http.StatusBadRequest, cb("5001", "tok-a", `{"type":4,"data":{"content":"again"}}`))
	require.Equal(t, http.StatusNotFound, cb("9999", "tok", `{"type":4,"data":{"content":"x"}}`))
	time.Sleep(time.Until(dispatched.Add(1600 * time.Millisecond)))
	require.Equal(t, http.StatusNotFound, cb("5002", "tok-b", `{"type":5}`), "after the 3 s window")
	require.Equal(t, []string{RuleInteractionTwice, RuleInteractionTooLate}, rules(s.Violations()))

	var ok []RESTRequest
	for _, r := range s.REST() {
		if r.Status == http.StatusNoContent {
			ok = append(ok, r)
		}
	}
	require.Len(t, ok, 1)
	require.EqualValues(t, 5001, ok[0].InteractionID)
	require.JSONEq(t, `{"type":4,"data":{"content":"pong"}}`, string(ok[0].Body))
}

func TestRESTChannelMessageAndRateLimit(t *testing.T) {
	s := startServer(t, fastConfig())
	auth := "Bot " + s.Token()
	url := s.APIURL() + "/v10/channels/123/messages"
	for i := range 5 {
		resp, body := httpDo(t, "POST", url, auth, `{"content":"hello","nonce":"n1"}`)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		require.Equal(t, "5", resp.Header.Get("X-RateLimit-Limit"))
		require.Equal(t, strconv.Itoa(4-i), resp.Header.Get("X-RateLimit-Remaining"))
		require.NotEmpty(t, resp.Header.Get("X-RateLimit-Bucket"))
		require.Regexp(t, `^\d+\.\d{3}$`, resp.Header.Get("X-RateLimit-Reset-After"))
		require.Regexp(t, `^\d+\.\d{3}$`, resp.Header.Get("X-RateLimit-Reset"))
		var m map[string]any
		require.NoError(t, json.Unmarshal(body, &m))
		require.Equal(t, "123", m["channel_id"])
		require.Equal(t, "hello", m["content"])
		require.Equal(t, "n1", m["nonce"])
		require.NotEmpty(t, m["id"])
	}
	resp, body := httpDo(t, "POST", url, auth, `{"content":"hello"}`)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.Regexp(t, `^\d+\.\d{3}$`, resp.Header.Get("Retry-After"))
	require.Empty(t, resp.Header.Get("X-RateLimit-Global"))
	var rl struct {
		RetryAfter float64 `json:"retry_after"`
		Global     bool    `json:"global"`
	}
	require.NoError(t, json.Unmarshal(body, &rl))
	require.Positive(t, rl.RetryAfter)
	require.False(t, rl.Global)

	// Another channel is another bucket; empty messages are refused.
	resp, _ = httpDo(t, "POST", s.APIURL()+"/v10/channels/124/messages", auth, `{"content":""}`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Equal(t, []string{RuleRESTRateLimited}, rules(s.Violations()))
}

func TestRESTForcedAndGlobalRateLimit(t *testing.T) {
	cfg := fastConfig()
	cfg.GlobalRateLimit = 3
	s := startServer(t, cfg)
	auth := "Bot " + s.Token()
	s.ForceRateLimit(ForcedRateLimit{Route: RouteChannelMessages, RetryAfter: 1500 * time.Millisecond, Count: 1, Global: true})
	resp, _ := httpDo(t, "POST", s.APIURL()+"/v10/channels/1/messages", auth, `{"content":"x"}`)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.Equal(t, "1.500", resp.Header.Get("Retry-After"))
	require.Equal(t, "true", resp.Header.Get("X-RateLimit-Global"))
	require.Empty(t, s.Violations(), "forced 429s are not the client's fault")

	got := []int{}
	for i := range 4 {
		resp, _ := httpDo(t, "POST", s.APIURL()+"/v10/channels/"+strconv.Itoa(10+i)+"/messages", auth, `{"content":"x"}`)
		got = append(got, resp.StatusCode)
	}
	// The forced 429 does not count; 3 per second pass, the 4th is global.
	require.Equal(t, []int{200, 200, 200, 429}, got)
	require.Equal(t, []string{RuleRESTRateLimited}, rules(s.Violations()))
}

func TestRESTCommands(t *testing.T) {
	s := startServer(t, fastConfig())
	auth := "Bot " + s.Token()
	app := strconv.FormatUint(s.Config().ApplicationID, 10)
	resp, body := httpDo(t, "PUT", s.APIURL()+"/v10/applications/"+app+"/commands", auth,
		`[{"name":"echo","description":"Echo text","type":1,"options":[{"name":"text","description":"t","type":3}]}]`)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	var cmds []map[string]any
	require.NoError(t, json.Unmarshal(body, &cmds))
	require.Len(t, cmds, 1)
	require.Equal(t, "echo", cmds[0]["name"])
	require.Equal(t, app, cmds[0]["application_id"])
	require.NotEmpty(t, s.Commands())

	resp, _ = httpDo(t, "PUT", s.APIURL()+"/v10/applications/"+app+"/commands", auth, `[{"name":"Bad Name","description":"x"}]`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	resp, _ = httpDo(t, "PUT", s.APIURL()+"/v10/applications/42/commands", auth, `[]`)
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "another application")
	resp, _ = httpDo(t, "PUT", s.APIURL()+"/v10/applications/"+app+"/commands", auth, `[]`)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "2 per 20 s per application")
}

func TestRESTEnforceNonceAndFollowUps(t *testing.T) {
	s := startServer(t, fastConfig())
	auth := "Bot " + s.Token()
	url := s.APIURL() + "/v10/channels/77/messages"
	var ids []string
	for range 2 {
		resp, body := httpDo(t, "POST", url, auth, `{"content":"once","nonce":"evt-1","enforce_nonce":true}`)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var m map[string]any
		require.NoError(t, json.Unmarshal(body, &m))
		ids = append(ids, m["id"].(string))
	}
	require.Equal(t, ids[0], ids[1], "an enforce_nonce retry returns the first message")
	require.Equal(t, 1, s.MessagesCreated())
	resp, _ := httpDo(t, "POST", url, auth, `{"content":"x","nonce":"`+strings.Repeat("n", 26)+`"}`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, "nonce over 25 characters")

	c := dialGateway(t, s)
	c.identify(s, 0, 4)
	_, err := s.Dispatch(0, "INTERACTION_CREATE", map[string]any{"id": "9001", "token": "itok", "type": 2})
	require.NoError(t, err)
	app := strconv.FormatUint(s.Config().ApplicationID, 10)
	follow := s.APIURL() + "/v10/webhooks/" + app + "/itok"
	resp, _ = httpDo(t, "POST", follow, "", `{"content":"early"}`)
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "no follow-up before the callback")
	resp, _ = httpDo(t, "POST", s.APIURL()+"/v10/interactions/9001/itok/callback", "", `{"type":5}`)
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	resp, _ = httpDo(t, "PATCH", follow+"/messages/@original", "", `{"content":"done"}`)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = httpDo(t, "POST", follow, "", `{"content":"more"}`)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = httpDo(t, "POST", s.APIURL()+"/v10/webhooks/"+app+"/nope", "", `{"content":"x"}`)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Equal(t, 2, s.MessagesCreated())
}

func TestRESTApplicationAndUser(t *testing.T) {
	s := startServer(t, fastConfig())
	app := strconv.FormatUint(s.Config().ApplicationID, 10)
	for _, p := range []string{"/v10/oauth2/applications/@me", "/v9/applications/@me", "/v10/users/@me"} {
		resp, body := httpDo(t, "GET", s.APIURL()+p, "Bot "+s.Token(), "")
		require.Equal(t, http.StatusOK, resp.StatusCode, p)
		var m map[string]any
		require.NoError(t, json.Unmarshal(body, &m))
		require.Equal(t, app, m["id"], p)
		resp, _ = httpDo(t, "GET", s.APIURL()+p, "", "")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, p)
	}
}
