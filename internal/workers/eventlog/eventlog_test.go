package eventlog_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/idempotency"
	"github.com/shardwarden/shardwarden/internal/natstest"
	"github.com/shardwarden/shardwarden/internal/pgtest"
	"github.com/shardwarden/shardwarden/internal/worker"
	"github.com/shardwarden/shardwarden/internal/workers/eventlog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestEventLogOncePerEvent(t *testing.T) {
	pool := pgtest.Pool(t, pgtest.NewMigrated(t).URL)
	nc := natstest.Connect(t, natstest.InProcess(t))
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, bus.EnsureStreams(ctx, js, bus.StreamConfig{}))

	publish := func(shard int, seq int64, typ, guild string) {
		m := nats.NewMsg(bus.EventSubject(typ))
		m.Data = []byte(`{"id":"1"}`)
		m.Header.Set(nats.MsgIdHdr, bus.MsgID(shard, "sess", seq))
		m.Header.Set(bus.HeaderShard, strconv.Itoa(shard))
		m.Header.Set(bus.HeaderSeq, strconv.FormatInt(seq, 10))
		m.Header.Set(bus.HeaderSession, "sess")
		m.Header.Set(bus.HeaderEventType, typ)
		if guild != "" {
			m.Header.Set(bus.HeaderGuild, guild)
		}
		m.Header.Set(bus.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
		_, err := js.PublishMsg(ctx, m)
		require.NoError(t, err)
	}
	publish(0, 1, "MESSAGE_CREATE", "81234567890123456")
	publish(0, 2, "SOME_FUTURE_EVENT", "")
	publish(1, 1, "GUILD_CREATE", "81234567890999999")

	// The same event delivered twice (the stream's dedup window bypassed, as after a
	// dead-letter replay) must still be logged once: the idempotency record decides.
	store, err := idempotency.New(idempotency.Config{Pool: pool, Worker: eventlog.Name})
	require.NoError(t, err)
	h, err := eventlog.New(store)
	require.NoError(t, err)
	w, err := worker.New(worker.Config{Name: eventlog.Name, FilterSubjects: eventlog.Subjects, Handler: h, JetStream: js,
		AckWait: 3 * time.Second, BackOff: []time.Duration{50 * time.Millisecond}})
	require.NoError(t, err)
	require.NoError(t, w.Start(ctx))
	t.Cleanup(w.Stop)

	count := func() int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM discord_event_log`).Scan(&n))
		return n
	}
	require.Eventually(t, func() bool { return count() == 3 }, 15*time.Second, 20*time.Millisecond)

	direct := &worker.Message{ID: bus.MsgID(0, "sess", 1), EventType: "MESSAGE_CREATE", Header: nats.Header{}, StreamSeq: 1}
	require.NoError(t, h.Handle(ctx, direct))
	require.Equal(t, 3, count(), "a redelivered event is not logged again")

	var shard int
	var seq, guild int64
	var session string
	require.NoError(t, pool.QueryRow(ctx, `
		SELECT shard_id, seq, guild_id, session_id FROM discord_event_log WHERE event_type = 'GUILD_CREATE'`).
		Scan(&shard, &seq, &guild, &session))
	require.Equal(t, 1, shard)
	require.Equal(t, int64(1), seq)
	require.Equal(t, int64(81234567890999999), guild)
	require.Equal(t, "sess", session)

	var nullGuild *int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT guild_id FROM discord_event_log WHERE event_type = 'SOME_FUTURE_EVENT'`).Scan(&nullGuild))
	require.Nil(t, nullGuild, "guild-less events have no guild")
}
