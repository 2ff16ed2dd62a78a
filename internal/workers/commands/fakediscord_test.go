package commands_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/diamondburned/arikawa/v3/discord"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/discordrest"
	"github.com/shardwarden/shardwarden/internal/fakediscord"
	"github.com/shardwarden/shardwarden/internal/idempotency"
	"github.com/shardwarden/shardwarden/internal/worker"
	"github.com/shardwarden/shardwarden/internal/workers/commands"
)

// The same worker against the project's fake Discord REST API: command
// registration, !ping replies, a forced 429 with a fractional Retry-After, and the
// crash-window repeat deduplicated by enforce_nonce. (Interactions are covered with
// resttest: the fake only knows an interaction it dispatched to a gateway session.)
func TestAgainstFakeDiscord(t *testing.T) {
	b := setup(t)
	fake, err := fakediscord.New(fakediscord.Config{})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	require.NoError(t, fake.Start(ctx))
	t.Cleanup(fake.Stop)

	reg := prometheus.NewRegistry()
	client, err := discordrest.New(discordrest.Config{Token: fake.Token(), APIURL: fake.APIURL(), Registerer: reg})
	require.NoError(t, err)
	store, err := idempotency.New(idempotency.Config{Pool: b.pool, Worker: commands.Name, ClaimTTL: 2 * time.Second})
	require.NoError(t, err)
	b.reg = reg
	b.handler, err = commands.New(commands.Config{REST: client, Store: store,
		AppID: discord.AppID(fake.Config().ApplicationID), Registerer: reg})
	require.NoError(t, err)

	require.NoError(t, b.handler.RegisterCommands(ctx))
	var cmds []map[string]any
	require.NoError(t, json.Unmarshal(fake.Commands(), &cmds))
	require.Equal(t, "ping", cmds[0]["name"])

	b.run(t)
	publish(t, b.js, "MESSAGE_CREATE", `{"id":"9000","channel_id":"101","content":"!ping","author":{"id":"1"}}`, time.Now())
	require.Eventually(t, func() bool { return fake.MessagesCreated() == 1 }, 10*time.Second, 10*time.Millisecond)

	fake.ForceRateLimit(fakediscord.ForcedRateLimit{Route: fakediscord.RouteChannelMessages, RetryAfter: 350 * time.Millisecond, Count: 1})
	publish(t, b.js, "MESSAGE_CREATE", `{"id":"9001","channel_id":"102","content":"!ping","author":{"id":"1"}}`, time.Now())
	require.Eventually(t, func() bool { return fake.MessagesCreated() == 2 }, 10*time.Second, 10*time.Millisecond)
	var to102 []fakediscord.RESTRequest
	for _, r := range fake.REST() {
		if r.ChannelID == 102 {
			to102 = append(to102, r)
		}
	}
	require.Len(t, to102, 2, "a 429, then the reply once")
	require.True(t, to102[0].RateLimited)
	require.Equal(t, 200, to102[1].Status)
	require.GreaterOrEqual(t, to102[1].At.Sub(to102[0].At), 350*time.Millisecond)

	// Crash window: the reply reached Discord, "done" was never recorded.
	msg := &worker.Message{ID: "0:fake:1", EventType: "MESSAGE_CREATE", ReceivedAt: time.Now(),
		Data: []byte(`{"id":"9002","channel_id":"103","content":"!ping","author":{"id":"1"}}`)}
	require.NoError(t, b.handler.Handle(ctx, msg))
	_, err = b.pool.Exec(ctx, `UPDATE worker_idempotency SET state = 'claimed', claimed_until = NULL WHERE event_id = '0:fake:1'`)
	require.NoError(t, err)
	require.NoError(t, b.handler.Handle(ctx, msg))
	require.Equal(t, 3, fake.MessagesCreated(), "the repeat returned the first message (enforce_nonce)")
	require.Empty(t, fake.Violations())
}
