package fakediscord

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// FuzzClientFrame sends arbitrary bytes as a client frame (then a heartbeat) and
// requires the fake to answer as Discord does: carry on (heartbeat ACK) or close
// with one of Discord's close codes. A panic of the fake fails the run.
//
//	go test -run '^$' -fuzz FuzzClientFrame -fuzztime 30s ./internal/fakediscord/
func FuzzClientFrame(f *testing.F) {
	s, err := New(Config{
		Shards: 2, Guilds: 4, HeartbeatInterval: time.Minute,
		IdentifyWindow: time.Nanosecond, DailyBudget: 1 << 30, CloseTimeout: 200 * time.Millisecond,
	})
	if err != nil {
		f.Fatal(err)
	}
	if err := s.Start(f.Context()); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(s.Stop)
	for _, seed := range []string{
		`{"op":1,"d":null}`, `{"op":1,"d":42}`, `{"op":1,"d":"x"}`, `{"op":1}`, `{"op":99}`, `{"op":-1}`,
		`{"op":2,"d":{"token":"fake-bot-token","properties":{},"intents":1,"shard":[0,2]}}`,
		`{"op":2,"d":{"token":"fake-bot-token","properties":{},"intents":1,"shard":[5,2]}}`,
		`{"op":2,"d":{"token":"fake-bot-token","properties":{},"intents":1,"shard":[0]}}`,
		`{"op":2,"d":{"token":"bad","properties":{},"intents":1}}`,
		`{"op":6,"d":{"token":"fake-bot-token","session_id":"x","seq":1}}`,
		`{"op":6,"d":{"token":"fake-bot-token","session_id":"x","seq":-5}}`,
		`{"op":3,"d":{}}`, `{"op":8,"d":[]}`, `null`, `[]`, `"op"`, `{`, ``, "\x00\xff",
		`{"op":1.5,"d":null}`, `{"op":"1"}`, `{"op":1,"d":99999999999999999999999}`,
	} {
		f.Add([]byte(seed))
	}
	discord := map[int]bool{}
	for code := 4000; code <= 4014; code++ {
		discord[code] = true
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		ws, _, err := wsDialer.Dial(s.GatewayURL()+"?v=10&encoding=json", nil)
		if err != nil {
			t.Fatal(err)
		}
		// Abortive close (RST): thousands of inputs per second would otherwise fill
		// the machine's ephemeral ports with TIME_WAIT sockets.
		if tc, ok := ws.NetConn().(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		defer ws.Close()
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := ws.ReadMessage(); err != nil { // HELLO
			t.Fatal(err)
		}
		if err := ws.WriteMessage(websocket.TextMessage, frame); err != nil {
			t.Fatal(err)
		}
		_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"op":1,"d":null}`))
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || !discord[ce.Code] {
					t.Fatalf("frame %q: want a Discord close code, got %v", frame, err)
				}
				return
			}
			if string(b) == string(frameAck) {
				return
			}
		}
	})
}
