package fakediscord

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestAdminAPI(t *testing.T) {
	cfg := fastConfig()
	cfg.AdminAddr = "127.0.0.1:0"
	s := startServer(t, cfg)
	require.NotContains(t, s.AdminURL(), s.BaseURL(), "own listener")
	c := dialGateway(t, s)
	r, last := c.identify(s, 1, 4)

	post := func(path, body string) (int, map[string]any) {
		resp, b := httpDo(t, "POST", s.AdminURL()+path, "", body)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}

	// Dispatch by shard and by guild.
	code, m := post("/dispatch", `{"shard":1,"type":"MESSAGE_CREATE","d":{"content":"hi"}}`)
	require.Equal(t, http.StatusOK, code, "%v", m)
	id, _ := strconv.ParseUint(m["id"].(string), 10, 64)
	got, _ := EventID(c.readDispatch().D)
	require.Equal(t, id, got)
	g := s.GuildsOfShard(1, 4)[0]
	code, _ = post("/dispatch", `{"guild_id":"`+strconv.FormatUint(g.ID, 10)+`","type":"GUILD_UPDATE","d":{}}`)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "GUILD_UPDATE", c.readDispatch().typ())
	code, m = post("/dispatch", `{"shard":3,"type":"X","d":{}}`)
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, m["error"], "no session")

	// Faults.
	code, m = post("/faults", `{"kind":"request_heartbeat","shard":1}`)
	require.Equal(t, http.StatusOK, code)
	require.EqualValues(t, 1, m["affected"])
	require.Equal(t, OpHeartbeat, c.read().Op)
	code, _ = post("/faults", `{"kind":"stall","shard":1,"duration":"20ms"}`)
	require.Equal(t, http.StatusOK, code)
	code, _ = post("/faults", `{"kind":"nope","shard":1}`)
	require.Equal(t, http.StatusBadRequest, code)
	code, _ = post("/faults", `{"kind":"close"}`)
	require.Equal(t, http.StatusBadRequest, code, "a target is required")
	code, _ = post("/faults", `{"kind":"close","shard":1,"code":4000}`)
	require.Equal(t, http.StatusOK, code)
	c.expectClose(4000)

	// Traffic.
	c2 := dial(t, s.ResumeURL()+"?v=10&encoding=json")
	c2.read()
	c2.send(OpResume, map[string]any{"token": s.Token(), "session_id": r.SessionID, "seq": last + 2})
	require.Equal(t, "RESUMED", c2.readDispatch().typ())
	code, _ = post("/traffic/start", `{"rate":0,"count":20,"payload_size":300,"mix":{"MESSAGE_CREATE":1}}`)
	require.Equal(t, http.StatusOK, code)
	require.NoError(t, s.WaitTraffic(t.Context()))
	var ts TrafficStats
	resp, b := httpDo(t, "GET", s.AdminURL()+"/traffic", "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.Unmarshal(b, &ts))
	require.False(t, ts.Running)
	require.Positive(t, ts.Dispatched)
	code, _ = post("/traffic/stop", ``)
	require.Equal(t, http.StatusOK, code)

	// REST 429 switch.
	code, _ = post("/rest/ratelimit", `{"route":"","retry_after":"0.25s","count":1}`)
	require.Equal(t, http.StatusOK, code)
	resp, _ = httpDo(t, "GET", s.APIURL()+"/v10/gateway", "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET /gateway has no limits at all")
	resp, _ = httpDo(t, "GET", s.APIURL()+"/v10/gateway/bot", "Bot "+s.Token(), "")
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.Equal(t, "0.250", resp.Header.Get("Retry-After"))
	resp, _ = httpDo(t, "DELETE", s.AdminURL()+"/rest/ratelimit", "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// The referee.
	var rep Report
	resp, b = httpDo(t, "GET", s.AdminURL()+"/referee", "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.Unmarshal(b, &rep))
	require.Len(t, rep.Sessions, 2)
	require.Equal(t, "identify", rep.Sessions[0].Kind)
	require.Equal(t, 4000, rep.Sessions[0].CloseCode)
	require.Equal(t, "resume", rep.Sessions[1].Kind)
	require.Empty(t, rep.Overlaps)
	require.Empty(t, rep.Violations)
	require.Equal(t, []ShardStats{{Shard: 1, Identifies: 1, Resumes: 1, Events: rep.EventsDispatched}}, rep.Shards)
	require.NotEmpty(t, rep.REST)

	resp, b = httpDo(t, "GET", s.AdminURL()+"/referee/events?shard=1", "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var e Event
		require.NoError(t, json.Unmarshal(sc.Bytes(), &e))
		require.Equal(t, 1, e.Shard)
		require.NotZero(t, e.ID)
		n++
	}
	require.EqualValues(t, rep.EventsDispatched, n)

	var sum Report
	resp, b = httpDo(t, "GET", s.AdminURL()+"/referee/summary", "", "")
	require.NoError(t, json.Unmarshal(b, &sum), "summary decodes as a Report")
	require.Equal(t, rep.EventsDispatched, sum.EventsDispatched)
	require.Equal(t, rep.Shards, sum.Shards)
	require.Empty(t, sum.Sessions)

	for _, p := range []string{"/info", "/guilds", "/referee/summary", "/referee/sessions", "/referee/violations",
		"/referee/shards", "/referee/rest", "/referee/overlaps?shard=1"} {
		resp, b := httpDo(t, "GET", s.AdminURL()+p, "", "")
		require.Equal(t, http.StatusOK, resp.StatusCode, p)
		require.True(t, json.Valid(b), p)
	}
	resp, _ = httpDo(t, "GET", s.AdminURL()+"/referee/overlaps?shard=x", "", "")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}
