package main

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/fakediscord"
)

// forward is a stand-in for the bot's gateway in this package's tests: one shard
// connection to the fake Discord whose dispatches it publishes to DISCORD_EVENTS in
// the gateway's format (subject, headers, msg id). It does not heartbeat: tests
// are far shorter than the fake's heartbeat timeout.
func forward(t *testing.T, fake *fakediscord.Server, js jetstream.JetStream) {
	t.Helper()
	conn, _, err := websocket.DefaultDialer.Dial(fake.GatewayURL()+"?v=10&encoding=json", nil)
	require.NoError(t, err)
	var hello struct {
		Op int `json:"op"`
	}
	require.NoError(t, conn.ReadJSON(&hello))
	require.Equal(t, 10, hello.Op)
	require.NoError(t, conn.WriteJSON(map[string]any{"op": 2, "d": map[string]any{
		"token": fake.Token(), "intents": 1 | 1<<9, "shard": []int{0, 1},
		"properties": map[string]string{"os": "linux", "browser": "test", "device": "test"},
	}}))

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		session := ""
		for {
			var f struct {
				Op int             `json:"op"`
				T  string          `json:"t"`
				S  int64           `json:"s"`
				D  json.RawMessage `json:"d"`
			}
			if err := conn.ReadJSON(&f); err != nil {
				return // closed by the test
			}
			if f.Op != 0 {
				continue
			}
			if f.T == "READY" {
				var r struct {
					SessionID string `json:"session_id"`
				}
				_ = json.Unmarshal(f.D, &r)
				session = r.SessionID
			}
			m := nats.NewMsg(bus.EventSubject(f.T))
			m.Data = f.D
			m.Header.Set(nats.MsgIdHdr, bus.MsgID(0, session, f.S))
			m.Header.Set(bus.HeaderShard, "0")
			m.Header.Set(bus.HeaderSeq, strconv.FormatInt(f.S, 10))
			m.Header.Set(bus.HeaderSession, session)
			m.Header.Set(bus.HeaderEpoch, "1")
			m.Header.Set(bus.HeaderEventType, f.T)
			m.Header.Set(bus.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := js.PublishMsg(ctx, m)
			cancel()
			if err != nil {
				t.Errorf("forward %s: %v", f.T, err)
				return
			}
		}
	}()
	t.Cleanup(func() {
		_ = conn.Close()
		wg.Wait()
	})
}

// `worker run commands guilds` against the fake Discord, events coming through a
// gateway connection: GUILD_CREATEs fill the guilds table, a /ping interaction the
// fake dispatches is answered once through its REST API, within its window.
func TestRunAgainstFakeDiscordGateway(t *testing.T) {
	b := setup(t)
	fake, err := fakediscord.New(fakediscord.Config{Guilds: 5})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	require.NoError(t, fake.Start(ctx))
	t.Cleanup(fake.Stop)
	b.env["DISCORD_API_URL"] = fake.APIURL()
	b.env["DISCORD_TOKEN"] = fake.Token()
	delete(b.env, "DISCORD_APPLICATION_ID") // fetched from GET /oauth2/applications/@me
	b.env["COMMANDS_REPLY_WINDOW"] = "3s"   // the fake enforces Discord's 3 s

	p := startProcess(t, b.env, "commands", "guilds")
	readyAddr(t, p.logs, "commands")
	readyAddr(t, p.logs, "guilds")
	require.Contains(t, string(fake.Commands()), `"name":"ping"`, "registered under the fetched application id")
	forward(t, fake, b.js)

	require.Eventually(t, func() bool {
		var n int
		_ = b.pool.QueryRow(context.Background(), `SELECT count(*) FROM guilds WHERE left_at IS NULL AND shard_id = 0`).Scan(&n)
		return n == len(fake.Guilds())
	}, 20*time.Second, 20*time.Millisecond, "guilds filled from the fake's GUILD_CREATEs")

	g := fake.Guilds()[0]
	_, err = fake.Dispatch(0, "INTERACTION_CREATE", map[string]any{
		"id": "1300000000000000001", "application_id": strconv.FormatUint(fake.Config().ApplicationID, 10),
		"type": 2, "token": "fake-interaction-token", "guild_id": strconv.FormatUint(g.ID, 10),
		"channel_id": strconv.FormatUint(g.Channels[0], 10), "data": map[string]any{"id": "1", "name": "ping", "type": 1},
	})
	require.NoError(t, err)
	callbacks := func() (ok int) {
		for _, r := range fake.REST() {
			if r.Route == fakediscord.RouteInteractionCallback && r.Status == 204 {
				ok++
			}
		}
		return ok
	}
	require.Eventually(t, func() bool { return callbacks() == 1 }, 10*time.Second, 10*time.Millisecond, "/ping answered")
	time.Sleep(500 * time.Millisecond)
	require.Equal(t, 1, callbacks())
	require.Empty(t, fake.Violations())
	require.NotContains(t, p.logs.String(), fake.Token())
}
