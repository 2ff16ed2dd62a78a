package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/natstest"
)

func TestEventSubject(t *testing.T) {
	for in, want := range map[string]string{
		"MESSAGE_CREATE":      "discord.events.message_create",
		"GUILD_CREATE":        "discord.events.guild_create",
		"":                    "discord.events.unknown",
		"WEIRD.TYPE *>":       "discord.events.weird_type___",
		"SOME_FUTURE_EVENT_2": "discord.events.some_future_event_2",
	} {
		require.Equal(t, want, bus.EventSubject(in), in)
	}
}

func TestMsgID(t *testing.T) {
	require.Equal(t, "3:sess:42", bus.MsgID(3, "sess", 42))
	require.Equal(t, "0:a:b:0", bus.MsgID(0, "a:b", 0))
	require.Equal(t, "-1::-7", bus.MsgID(-1, "", -7))
}

func TestEnsureStreamsIdempotentAndDedups(t *testing.T) {
	nc := natstest.Connect(t, natstest.InProcess(t))
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	require.NoError(t, bus.EnsureStreams(ctx, js, bus.StreamConfig{}))
	require.NoError(t, bus.EnsureStreams(ctx, js, bus.StreamConfig{}), "second call must be a no-op")

	s, err := js.Stream(ctx, bus.EventsStream)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, jetstream.FileStorage, info.Config.Storage)
	require.Equal(t, 10*time.Minute, info.Config.Duplicates)

	id := bus.MsgID(3, "sess", 42)
	msg := &nats.Msg{Subject: bus.EventSubject("MESSAGE_CREATE"), Data: []byte(`{}`), Header: nats.Header{}}
	msg.Header.Set(nats.MsgIdHdr, id)
	ack, err := js.PublishMsg(ctx, msg)
	require.NoError(t, err)
	require.False(t, ack.Duplicate)
	ack, err = js.PublishMsg(ctx, msg)
	require.NoError(t, err)
	require.True(t, ack.Duplicate, "the same msg id inside the window is dropped")

	err = bus.EnsureStreams(ctx, js, bus.StreamConfig{MaxAge: time.Minute, Duplicates: time.Hour})
	require.ErrorContains(t, err, "exceeds max age")
}
