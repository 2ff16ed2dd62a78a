package commands_test

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/discordrest"
	"github.com/shardwarden/shardwarden/internal/discordrest/resttest"
	"github.com/shardwarden/shardwarden/internal/idempotency"
	"github.com/shardwarden/shardwarden/internal/natstest"
	"github.com/shardwarden/shardwarden/internal/pgtest"
	"github.com/shardwarden/shardwarden/internal/promtest"
	"github.com/shardwarden/shardwarden/internal/worker"
	"github.com/shardwarden/shardwarden/internal/workers/commands"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

type bundle struct {
	js      jetstream.JetStream
	pool    *pgxpool.Pool
	rest    *resttest.Server
	reg     *prometheus.Registry
	handler *commands.Handler
}

func setup(t *testing.T) bundle {
	t.Helper()
	b := bundle{reg: prometheus.NewRegistry()}
	b.pool = pgtest.Pool(t, pgtest.NewMigrated(t).URL)
	nc := natstest.Connect(t, natstest.InProcess(t))
	var err error
	b.js, err = jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, bus.EnsureStreams(context.Background(), b.js, bus.StreamConfig{}))
	b.rest = resttest.New(t, "tok-123")
	b.rest.SetReplyWindow(10 * time.Second) // generous on a loaded CI machine; lateness is tested with an old event
	client, err := discordrest.New(discordrest.Config{Token: "tok-123", APIURL: b.rest.APIURL(), Registerer: b.reg})
	require.NoError(t, err)
	store, err := idempotency.New(idempotency.Config{Pool: b.pool, Worker: commands.Name, ClaimTTL: 2 * time.Second})
	require.NoError(t, err)
	b.handler, err = commands.New(commands.Config{REST: client, Store: store, AppID: 77, Registerer: b.reg,
		ReplyWindow: 10 * time.Second})
	require.NoError(t, err)
	return b
}

func (b bundle) run(t *testing.T) {
	t.Helper()
	w, err := worker.New(worker.Config{Name: commands.Name, FilterSubjects: commands.Subjects, Handler: b.handler,
		JetStream: b.js, Registerer: b.reg, AckWait: 3 * time.Second, BackOff: []time.Duration{50 * time.Millisecond},
		DeliverPolicy: jetstream.DeliverNewPolicy})
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(w.Stop)
	select {
	case <-w.Bound():
	case <-time.After(10 * time.Second):
		t.Fatal("not bound")
	}
}

var seq int64

func publish(t *testing.T, js jetstream.JetStream, eventType, data string, receivedAt time.Time) string {
	t.Helper()
	seq++
	m := nats.NewMsg(bus.EventSubject(eventType))
	m.Data = []byte(data)
	id := bus.MsgID(0, "sess", seq)
	m.Header.Set(nats.MsgIdHdr, id)
	m.Header.Set(bus.HeaderShard, "0")
	m.Header.Set(bus.HeaderEventType, eventType)
	m.Header.Set(bus.HeaderReceivedAt, receivedAt.UTC().Format(time.RFC3339Nano))
	_, err := js.PublishMsg(context.Background(), m)
	require.NoError(t, err)
	return id
}

func interaction(id string) string {
	return `{"id":"` + id + `","type":2,"token":"itok-` + id + `","application_id":"77","channel_id":"5","data":{"id":"1","name":"ping","type":1}}`
}

func callbackPath(id string) string {
	return "/api/v10/interactions/" + id + "/itok-" + id + "/callback"
}

func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return promtest.Value(t, reg, name)
}

func TestRegistersSlashCommands(t *testing.T) {
	b := setup(t)
	require.NoError(t, b.handler.RegisterCommands(context.Background()))
	reqs := b.rest.Requests()
	require.Len(t, reqs, 1)
	require.Equal(t, "PUT", reqs[0].Method)
	require.Equal(t, "/api/v10/applications/77/commands", reqs[0].Path)
	var cmds []map[string]any
	require.NoError(t, json.Unmarshal(b.rest.Commands(), &cmds))
	require.Len(t, cmds, 1)
	require.Equal(t, "ping", cmds[0]["name"])
}

func TestPingInteractionEndToEnd(t *testing.T) {
	b := setup(t)
	b.run(t)
	b.rest.AddInteraction("900", "itok-900")
	publish(t, b.js, "INTERACTION_CREATE", interaction("900"), time.Now())
	require.Eventually(t, func() bool { return b.rest.Count(callbackPath("900"), 204) == 1 }, 10*time.Second, 10*time.Millisecond)
	var body struct {
		Type int `json:"type"`
		Data struct {
			Content string `json:"content"`
		} `json:"data"`
	}
	reqs := b.rest.Requests()
	require.NoError(t, json.Unmarshal(reqs[0].Body, &body))
	require.Equal(t, 4, body.Type)
	require.True(t, strings.HasPrefix(body.Data.Content, "Pong! gateway→reply "), body.Data.Content)
	require.True(t, strings.HasSuffix(body.Data.Content, " ms"), body.Data.Content)
	ms, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(body.Data.Content, "Pong! gateway→reply "), " ms"))
	require.NoError(t, err)
	require.Less(t, ms, 3000)

	// Other commands and component interactions are not this worker's.
	publish(t, b.js, "INTERACTION_CREATE", `{"id":"901","type":2,"token":"t","data":{"name":"other"}}`, time.Now())
	publish(t, b.js, "INTERACTION_CREATE", `{"id":"902","type":3,"token":"t","data":{"custom_id":"x"}}`, time.Now())
	require.Eventually(t, func() bool { return metric(t, b.reg, "shardwarden_worker_processed_total") == 3 }, 10*time.Second, 10*time.Millisecond)
	require.Len(t, b.rest.Requests(), 1)
}

func TestLateInteractionIsAckedAndCounted(t *testing.T) {
	b := setup(t)
	b.run(t)
	b.rest.AddInteraction("910", "itok-910")
	publish(t, b.js, "INTERACTION_CREATE", interaction("910"), time.Now().Add(-11*time.Second))
	require.Eventually(t, func() bool { return metric(t, b.reg, "shardwarden_worker_late_interactions_total") == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { return metric(t, b.reg, "shardwarden_worker_processed_total") == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Empty(t, b.rest.Requests(), "not answered late")
}

func TestRateLimitedReplyGoesOutOnceAfterRetryAfter(t *testing.T) {
	b := setup(t)
	b.run(t)
	b.rest.AddInteraction("920", "itok-920")
	b.rest.RateLimit(callbackPath("920"), "0.3", false, 1)
	publish(t, b.js, "INTERACTION_CREATE", interaction("920"), time.Now())
	require.Eventually(t, func() bool { return b.rest.Count(callbackPath("920"), 204) == 1 }, 10*time.Second, 10*time.Millisecond)
	reqs := b.rest.Requests()
	require.Len(t, reqs, 2)
	require.Equal(t, 429, reqs[0].Status)
	require.GreaterOrEqual(t, reqs[1].At.Sub(reqs[0].At), 300*time.Millisecond)
	require.Equal(t, float64(1), metric(t, b.reg, "shardwarden_rest_rate_limited_total"))
}

func TestPingMessageEndToEnd(t *testing.T) {
	b := setup(t)
	b.run(t)
	publish(t, b.js, "MESSAGE_CREATE", `{"id":"3000","channel_id":"55","content":"!ping","author":{"id":"8","bot":false}}`, time.Now())
	publish(t, b.js, "MESSAGE_CREATE", `{"id":"3001","channel_id":"55","content":"!ping","author":{"id":"9","bot":true}}`, time.Now())
	publish(t, b.js, "MESSAGE_CREATE", `{"id":"3002","channel_id":"55","content":"hello","author":{"id":"8"}}`, time.Now())
	require.Eventually(t, func() bool { return metric(t, b.reg, "shardwarden_worker_processed_total") == 3 }, 10*time.Second, 10*time.Millisecond)
	reqs := b.rest.Requests()
	require.Len(t, reqs, 1, "only the human's !ping is answered")
	require.Equal(t, "/api/v10/channels/55/messages", reqs[0].Path)
	var body map[string]any
	require.NoError(t, json.Unmarshal(reqs[0].Body, &body))
	require.Contains(t, body["content"], "Pong!")
	require.Len(t, body["nonce"], 25)
	require.Equal(t, true, body["enforce_nonce"])
	require.Equal(t, "3000", body["message_reference"].(map[string]any)["message_id"])
}

// The crash window: the reply reached Discord, the process died before recording
// it done. The next attempt repeats the call in its idempotent form and the user
// still sees one reply.
func TestRedeliveryInTheCrashWindowDoesNotReplyTwice(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	crash := func() {
		_, err := b.pool.Exec(ctx, `UPDATE worker_idempotency SET state = 'claimed', done_at = NULL, claimed_until = NULL`)
		require.NoError(t, err)
	}
	msg := &worker.Message{ID: "0:s:1", EventType: "MESSAGE_CREATE", ReceivedAt: time.Now(),
		Data: []byte(`{"id":"4000","channel_id":"56","content":"!ping","author":{"id":"8"}}`)}
	require.NoError(t, b.handler.Handle(ctx, msg))
	crash()
	require.NoError(t, b.handler.Handle(ctx, msg))
	require.Equal(t, 2, b.rest.Count("/api/v10/channels/56/messages", 200), "the call was repeated")
	require.Equal(t, 1, b.rest.MessagesCreated(), "with the same nonce: one message")
	require.NoError(t, b.handler.Handle(ctx, msg))
	require.Equal(t, 2, b.rest.Count("/api/v10/channels/56/messages", 200), "done: not repeated again")

	b.rest.AddInteraction("930", "itok-930")
	in := &worker.Message{ID: "0:s:2", EventType: "INTERACTION_CREATE", ReceivedAt: time.Now(), Data: []byte(interaction("930"))}
	require.NoError(t, b.handler.Handle(ctx, in))
	crash()
	require.NoError(t, b.handler.Handle(ctx, in), "40060 on the repeat means answered")
	require.Equal(t, 1, b.rest.Count(callbackPath("930"), 204))
	require.Equal(t, float64(0), metric(t, b.reg, "shardwarden_worker_late_interactions_total"))
}

func TestMalformedEventsArePermanent(t *testing.T) {
	b := setup(t)
	err := b.handler.Handle(context.Background(), &worker.Message{ID: "x", EventType: "MESSAGE_CREATE", Data: []byte(`{`)})
	require.True(t, worker.IsPermanent(err))
	err = b.handler.Handle(context.Background(), &worker.Message{ID: "y", EventType: "INTERACTION_CREATE", Data: []byte(`{"type":2,"data":{"name":"ping"}}`)})
	require.True(t, worker.IsPermanent(err))
}
