package guilds_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/idempotency"
	"github.com/shardwarden/shardwarden/internal/natstest"
	"github.com/shardwarden/shardwarden/internal/pgtest"
	"github.com/shardwarden/shardwarden/internal/worker"
	"github.com/shardwarden/shardwarden/internal/workers/guilds"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type guildRow struct {
	Name        string
	MemberCount *int
	Shard       *int
	JoinedAt    *time.Time
	LeftAt      *time.Time
	Unavailable bool
	EventSeq    int64
}

func row(t *testing.T, pool *pgxpool.Pool, id int64) (guildRow, bool) {
	t.Helper()
	var r guildRow
	err := pool.QueryRow(context.Background(), `SELECT name, member_count, shard_id, joined_at, left_at, unavailable, event_seq FROM guilds WHERE id = $1`, id).
		Scan(&r.Name, &r.MemberCount, &r.Shard, &r.JoinedAt, &r.LeftAt, &r.Unavailable, &r.EventSeq)
	if err != nil {
		return r, false
	}
	return r, true
}

func publish(t *testing.T, js jetstream.JetStream, shard int, seq int64, eventType, data string) {
	t.Helper()
	m := nats.NewMsg(bus.EventSubject(eventType))
	m.Data = []byte(data)
	m.Header.Set(nats.MsgIdHdr, bus.MsgID(shard, "s", seq))
	m.Header.Set(bus.HeaderShard, strconv.Itoa(shard))
	m.Header.Set(bus.HeaderEventType, eventType)
	m.Header.Set(bus.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	_, err := js.PublishMsg(context.Background(), m)
	require.NoError(t, err)
}

func TestGuildsEndToEnd(t *testing.T) {
	pool := pgtest.Pool(t, pgtest.NewMigrated(t).URL)
	nc := natstest.Connect(t, natstest.InProcess(t))
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, bus.EnsureStreams(ctx, js, bus.StreamConfig{}))
	store, err := idempotency.New(idempotency.Config{Pool: pool, Worker: guilds.Name})
	require.NoError(t, err)
	h, err := guilds.New(store)
	require.NoError(t, err)
	w, err := worker.New(worker.Config{Name: guilds.Name, FilterSubjects: guilds.Subjects, Handler: h, JetStream: js,
		AckWait: 3 * time.Second, BackOff: []time.Duration{50 * time.Millisecond}})
	require.NoError(t, err)
	require.NoError(t, w.Start(ctx))
	t.Cleanup(w.Stop)

	const a, b = int64(81234567890123456), int64(81234567890999999)
	publish(t, js, 1, 1, "GUILD_CREATE", `{"id":"81234567890123456","name":"Alpha","member_count":12,"joined_at":"2024-05-01T10:00:00.000000+00:00"}`)
	publish(t, js, 2, 2, "GUILD_CREATE", `{"id":"81234567890999999","name":"Beta","member_count":3}`)
	publish(t, js, 1, 3, "GUILD_UPDATE", `{"id":"81234567890123456","name":"Alpha Renamed"}`)
	publish(t, js, 2, 4, "GUILD_DELETE", `{"id":"81234567890999999"}`)
	publish(t, js, 1, 5, "MESSAGE_CREATE", `{"id":"1"}`) // not the worker's

	require.Eventually(t, func() bool {
		r, ok := row(t, pool, b)
		return ok && r.LeftAt != nil && r.Name == "Beta" // create and delete in either order
	}, 15*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		r, _ := row(t, pool, a)
		return r.Name == "Alpha Renamed" && r.MemberCount != nil // in either order
	}, 15*time.Second, 20*time.Millisecond)

	ra, _ := row(t, pool, a)
	require.Equal(t, 12, *ra.MemberCount, "an update without member_count keeps it")
	require.Equal(t, 1, *ra.Shard)
	require.Equal(t, time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC), ra.JoinedAt.UTC())
	require.Nil(t, ra.LeftAt)
	rb, _ := row(t, pool, b)
	require.Equal(t, "Beta", rb.Name)
	require.False(t, rb.Unavailable)

	// The bot is added back: GUILD_CREATE clears left_at. An outage marks it
	// unavailable without removing it.
	publish(t, js, 2, 6, "GUILD_CREATE", `{"id":"81234567890999999","name":"Beta","member_count":4}`)
	publish(t, js, 1, 7, "GUILD_DELETE", `{"id":"81234567890123456","unavailable":true}`)
	require.Eventually(t, func() bool {
		rb, _ := row(t, pool, b)
		ra, _ := row(t, pool, a)
		return rb.LeftAt == nil && *rb.MemberCount == 4 && ra.Unavailable && ra.LeftAt == nil
	}, 15*time.Second, 20*time.Millisecond)

	var active int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM guilds WHERE left_at IS NULL`).Scan(&active))
	require.Equal(t, 2, active)
}

func TestGuildsIdempotentAndOrdered(t *testing.T) {
	pool := pgtest.Pool(t, pgtest.NewMigrated(t).URL)
	store, err := idempotency.New(idempotency.Config{Pool: pool, Worker: guilds.Name})
	require.NoError(t, err)
	h, err := guilds.New(store)
	require.NoError(t, err)
	ctx := context.Background()
	msg := func(id string, seq uint64, typ, data string) *worker.Message {
		return &worker.Message{ID: id, EventType: typ, Data: []byte(data), StreamSeq: seq, Header: nats.Header{bus.HeaderShard: {"0"}}}
	}

	require.NoError(t, h.Handle(ctx, msg("e10", 10, "GUILD_CREATE", `{"id":"42","name":"New","member_count":5}`)))
	// An older update arriving late (a retry, a replay) does not win.
	require.NoError(t, h.Handle(ctx, msg("e7", 7, "GUILD_UPDATE", `{"id":"42","name":"Old"}`)))
	r, ok := row(t, pool, 42)
	require.True(t, ok)
	require.Equal(t, "New", r.Name)
	require.EqualValues(t, 10, r.EventSeq)

	// The same event twice: the second changes nothing (even after a newer one
	// was reverted by hand, the record says it was applied).
	require.NoError(t, h.Handle(ctx, msg("e11", 11, "GUILD_DELETE", `{"id":"42"}`)))
	_, err = pool.Exec(ctx, `UPDATE guilds SET left_at = NULL WHERE id = 42`)
	require.NoError(t, err)
	require.NoError(t, h.Handle(ctx, msg("e11", 11, "GUILD_DELETE", `{"id":"42"}`)))
	r, _ = row(t, pool, 42)
	require.Nil(t, r.LeftAt)

	// An update handled before its create (GUILD_UPDATE has no member_count): the
	// older create fills the gaps without undoing the newer name.
	require.NoError(t, h.Handle(ctx, msg("u21", 21, "GUILD_UPDATE", `{"id":"43","name":"Renamed"}`)))
	require.NoError(t, h.Handle(ctx, msg("c20", 20, "GUILD_CREATE", `{"id":"43","name":"Original","member_count":9,"joined_at":"2025-01-02T03:04:05.000000+00:00"}`)))
	r, _ = row(t, pool, 43)
	require.Equal(t, "Renamed", r.Name)
	require.Equal(t, 9, *r.MemberCount)
	require.NotNil(t, r.JoinedAt)
	require.EqualValues(t, 21, r.EventSeq)
	// A delete-created row has no name; a nameless update keeps it valid.
	require.NoError(t, h.Handle(ctx, msg("d30", 30, "GUILD_DELETE", `{"id":"44"}`)))
	require.NoError(t, h.Handle(ctx, msg("u31", 31, "GUILD_UPDATE", `{"id":"44"}`)))
	r, _ = row(t, pool, 44)
	require.Equal(t, "", r.Name)
	require.NotNil(t, r.LeftAt)

	err = h.Handle(ctx, msg("bad", 12, "GUILD_CREATE", `{"id":"not a number"}`))
	require.True(t, worker.IsPermanent(err), "%v", err)
	err = h.Handle(ctx, msg("bad2", 13, "GUILD_CREATE", `{`))
	require.True(t, worker.IsPermanent(err), "%v", err)
}
