package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/config"
	"github.com/shardwarden/shardwarden/internal/discordrest/resttest"
	"github.com/shardwarden/shardwarden/internal/fakediscord"
	"github.com/shardwarden/shardwarden/internal/health"
	"github.com/shardwarden/shardwarden/internal/logging/logtest"
	"github.com/shardwarden/shardwarden/internal/natstest"
	"github.com/shardwarden/shardwarden/internal/pgtest"
	"github.com/shardwarden/shardwarden/internal/worker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.Cleanup(func(int) {
			if binPath != "" {
				_ = os.RemoveAll(filepath.Dir(binPath))
			}
		}))
}

const token = "MTE5.secret-bot-token.xyz"

type env map[string]string

func (e env) get(k string) string { return e[k] }

func (e env) list() []string {
	out := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range e {
		out = append(out, k+"="+v)
	}
	return out
}

type bundle struct {
	env  env
	js   jetstream.JetStream
	pool *pgxpool.Pool
	rest *resttest.Server
}

func setup(t *testing.T) bundle {
	t.Helper()
	db := pgtest.NewMigrated(t)
	natsURL := natstest.InProcess(t)
	nc := natstest.Connect(t, natsURL)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, bus.EnsureStreams(context.Background(), js, bus.StreamConfig{}))
	rest := resttest.New(t, token)
	rest.SetReplyWindow(10 * time.Second)
	e := env{
		"NATS_URL":               natsURL,
		"DATABASE_URL":           db.URL,
		"DISCORD_TOKEN":          token,
		"DISCORD_API_URL":        rest.APIURL(),
		"DISCORD_APPLICATION_ID": "1100000000000000001",
		"LOG_FORMAT":             "json",
		"LOG_LEVEL":              "debug",
		"WORKER_ACK_WAIT":        "1s",
		"WORKER_BACKOFF":         "50ms,100ms",
		"WORKER_MAX_DELIVER":     "3",
		"WORKER_DRAIN_TIMEOUT":   "5s",
		// Port 0: the worker logs the address it got (no port race with other tests).
		"WORKER_COMMANDS_HEALTH_ADDR":  "127.0.0.1:0",
		"WORKER_GUILDS_HEALTH_ADDR":    "127.0.0.1:0",
		"WORKER_IDEMPOTENCY_RETENTION": "168h",
		"COMMANDS_REPLY_WINDOW":        "10s",
	}
	return bundle{env: e, js: js, pool: pgtest.Pool(t, db.URL), rest: rest}
}

var seq int64

func publish(t *testing.T, js jetstream.JetStream, eventType, data string) {
	t.Helper()
	seq++
	m := nats.NewMsg(bus.EventSubject(eventType))
	m.Data = []byte(data)
	m.Header.Set(nats.MsgIdHdr, bus.MsgID(0, "cmd", seq))
	m.Header.Set(bus.HeaderShard, "0")
	m.Header.Set(bus.HeaderEventType, eventType)
	m.Header.Set(bus.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	_, err := js.PublishMsg(context.Background(), m)
	require.NoError(t, err)
}

// readyAddr finds the health address worker name logged at start in logs and
// waits until it reports ready.
func readyAddr(t *testing.T, logs fmt.Stringer, name string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, line := range strings.Split(logs.String(), "\n") {
			var l struct {
				Msg, Worker string
				HealthAddr  string `json:"health_addr"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "worker started" && l.Worker == name {
				waitReady(t, l.HealthAddr)
				return l.HealthAddr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %s never logged its start:\n%s", name, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitReady(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := health.Probe(ctx, addr)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker at %s not ready: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	base := env{"DATABASE_URL": "postgres://x@127.0.0.1/db", "DISCORD_TOKEN": token}
	with := func(kv ...string) env {
		e := env{}
		for k, v := range base {
			e[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(e, kv[i])
			} else {
				e[kv[i]] = kv[i+1]
			}
		}
		return e
	}
	secret := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(secret, []byte(token+"\n"), 0o600))
	for name, tc := range map[string]struct {
		args []string
		env  env
		want string
	}{
		"no command":         {nil, base, "command"},
		"unknown command":    {[]string{"frobnicate"}, base, "command"},
		"no database":        {[]string{"run", "guilds"}, with("DATABASE_URL", ""), "DATABASE_URL"},
		"token for commands": {[]string{"run", "commands"}, with("DISCORD_TOKEN", ""), "DISCORD_TOKEN"},
		"token twice":        {[]string{"run", "commands"}, with("DISCORD_TOKEN_FILE", secret), "DISCORD_TOKEN"},
		"bad backoff":        {[]string{"run", "guilds"}, with("WORKER_BACKOFF", "1s,soon"), "WORKER_BACKOFF"},
		"bad ack wait":       {[]string{"run", "guilds"}, with("WORKER_ACK_WAIT", "forever"), "WORKER_ACK_WAIT"},
		"bad nats url":       {[]string{"run", "guilds"}, with("NATS_URL", "http://x"), "NATS_URL"},
		"bad app id":         {[]string{"run", "guilds"}, with("DISCORD_APPLICATION_ID", "abc"), "DISCORD_APPLICATION_ID"},
		"bad health addr":    {[]string{"run", "guilds"}, with("WORKER_GUILDS_HEALTH_ADDR", "9002"), "WORKER_GUILDS_HEALTH_ADDR"},
		"bad log level":      {[]string{"run", "guilds"}, with("LOG_LEVEL", "loud", "NATS_URL", "nats://127.0.0.1:1"), "LOG_LEVEL"},
		"no names":           {[]string{"run"}, base, "worker names"},
		"unknown worker":     {[]string{"run", "nope"}, base, "worker names"},
		"dlq without verb":   {[]string{"dlq"}, base, "dlq command"},
		"purge needs target": {[]string{"dlq", "purge"}, with("NATS_URL", "nats://127.0.0.1:1"), ""},
		// Checked before connecting: a typo must not wait for an unreachable NATS.
		"unknown dlq verb": {[]string{"dlq", "lsit"}, with("NATS_URL", "nats://127.0.0.1:1"), "dlq command"},
	} {
		t.Run(name, func(t *testing.T) {
			var stderr bytes.Buffer
			err := run(context.Background(), tc.args, tc.env.get, io.Discard, &stderr)
			require.Error(t, err)
			if tc.want != "" {
				require.True(t, config.IsConfigError(err), "%v: exit code 2", err)
				require.ErrorContains(t, err, tc.want)
			}
			require.NotContains(t, err.Error()+stderr.String(), token)
		})
	}

	// The _FILE variant alone works (and the token is read trimmed).
	s, _, err := loadSettings(flag.NewFlagSet("t", flag.ContinueOnError), []string{"guilds"}, with("DISCORD_TOKEN", "", "DISCORD_TOKEN_FILE", secret).get, io.Discard, loadOpts{needToken: true})
	require.NoError(t, err)
	require.Equal(t, token, s.Token)
	require.Equal(t, ":9001", s.HealthAddrs["commands"])
	require.Equal(t, ":9002", s.HealthAddrs["guilds"])
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"version"}, env{}.get, &out, io.Discard))
	require.NotEmpty(t, strings.TrimSpace(out.String()))
}

// Both built-in workers in one process: /ping answered, guilds filled, health and
// metrics on each worker's port, a poison event dead-lettered and replayed with the
// CLI, SIGTERM-style drain on cancel, and the token in no log line.
func TestRunCommandsAndGuilds(t *testing.T) {
	b := setup(t)
	logs := &logtest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "commands", "guilds"}, b.env.get, io.Discard, logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("run did not return")
		}
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
	commandsAddr := readyAddr(t, logs, "commands")
	guildsAddr := readyAddr(t, logs, "guilds")
	require.Contains(t, string(b.rest.Commands()), `"name":"ping"`, "slash commands registered at start")

	var out bytes.Buffer
	probeEnv := env{"WORKER_GUILDS_HEALTH_ADDR": guildsAddr}
	require.NoError(t, run(context.Background(), []string{"healthcheck", "guilds"}, probeEnv.get, &out, io.Discard))

	b.rest.AddInteraction("5000", "itok")
	publish(t, b.js, "INTERACTION_CREATE", `{"id":"5000","type":2,"token":"itok","data":{"name":"ping"}}`)
	publish(t, b.js, "GUILD_CREATE", `{"id":"81234567890123456","name":"Alpha","member_count":12}`)
	publish(t, b.js, "GUILD_CREATE", `{"id":"not-a-snowflake"}`) // poison
	publish(t, b.js, "MESSAGE_CREATE", `{"id":"6000","channel_id":"77","content":"!ping","author":{"id":"1"}}`)

	require.Eventually(t, func() bool {
		return b.rest.Count("/api/v10/interactions/5000/itok/callback", 204) == 1 &&
			b.rest.Count("/api/v10/channels/77/messages", 200) == 1
	}, 15*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		var name string
		_ = b.pool.QueryRow(context.Background(), `SELECT name FROM guilds WHERE id = 81234567890123456`).Scan(&name)
		return name == "Alpha"
	}, 15*time.Second, 20*time.Millisecond)

	// The poison event is dead-lettered; the CLI lists, shows and replays it.
	var list bytes.Buffer
	require.Eventually(t, func() bool {
		list.Reset()
		return run(context.Background(), []string{"dlq", "list", "--worker", "guilds"}, b.env.get, &list, io.Discard) == nil &&
			strings.Contains(list.String(), "discord.events.guild_create")
	}, 15*time.Second, 50*time.Millisecond)
	dls, err := worker.ListDeadLetters(context.Background(), b.js, "guilds", 0)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Contains(t, dls[0].Error, "guild id")
	var show bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"dlq", "show", strconv.FormatUint(dls[0].Seq, 10)}, b.env.get, &show, io.Discard))
	require.Contains(t, show.String(), `data: {"id":"not-a-snowflake"}`)
	require.Contains(t, show.String(), "Shardwarden-Dead-Error")
	var replay bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"dlq", "replay", strconv.FormatUint(dls[0].Seq, 10)}, b.env.get, &replay, io.Discard))
	require.Contains(t, replay.String(), "to guilds")
	// Still poison: back in the dead-letter stream, as a new entry.
	require.Eventually(t, func() bool {
		dls2, err := worker.ListDeadLetters(context.Background(), b.js, "guilds", 0)
		return err == nil && len(dls2) == 1 && dls2[0].Seq != dls[0].Seq
	}, 15*time.Second, 50*time.Millisecond)
	var purge bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"dlq", "purge", "--worker", "guilds"}, b.env.get, &purge, io.Discard))
	dls, err = worker.ListDeadLetters(context.Background(), b.js, "", 0)
	require.NoError(t, err)
	require.Empty(t, dls)

	metrics := get(t, "http://"+commandsAddr+"/metrics")
	for _, name := range []string{
		`shardwarden_worker_processed_total{worker="commands"} 2`,
		`shardwarden_worker_deliveries_total{worker="commands"}`,
		`shardwarden_worker_handler_duration_seconds_bucket{worker="commands"`,
		`shardwarden_worker_consumer_pending{worker="commands"}`,
		`shardwarden_worker_late_interactions_total{worker="commands"} 0`,
		`shardwarden_rest_requests_total{code="204",route="POST /interactions/{id}/{token}/callback"} 1`,
		`shardwarden_rest_requests_total{code="200",route="PUT /applications/{id}/commands"} 1`,
	} {
		require.Contains(t, metrics, name)
	}
	gm := get(t, "http://"+guildsAddr+"/metrics")
	require.Contains(t, gm, `shardwarden_worker_dead_lettered_total{worker="guilds"} 2`)
	require.NotContains(t, gm, `worker="commands"`, "each port serves its own worker")

	cancel()
	select {
	case err := <-done:
		done <- err // for the cleanup
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("run did not drain and return")
	}
	require.Contains(t, logs.String(), `"msg":"worker stopped"`)
	require.NotContains(t, logs.String(), token, "the token never reaches a log line")
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

func workerBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shardwarden-worker-test-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "worker")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, binErr)
	return binPath
}

type proc struct {
	cmd    *exec.Cmd
	logs   *logtest.Buffer
	exited chan struct{} // closed when the process has exited; err is then set
	err    error
}

func startProcess(t *testing.T, e env, names ...string) *proc {
	t.Helper()
	p := &proc{logs: &logtest.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(workerBinary(t), append([]string{"run"}, names...)...)
	p.cmd.Env = e.list()
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	require.NoError(t, p.cmd.Start())
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("worker process log:\n%s", p.logs.String())
		}
	})
	return p
}

// A worker killed with SIGKILL in the middle of a reply: the event is redelivered
// to the next process and the reply goes out exactly once.
func TestSIGKILLMidHandlerRepliesOnce(t *testing.T) {
	b := setup(t)
	const path = "/api/v10/channels/88/messages"
	arrived, release := b.rest.Hold(path)
	defer release()

	p1 := startProcess(t, b.env, "commands")
	readyAddr(t, p1.logs, "commands")
	publish(t, b.js, "MESSAGE_CREATE", `{"id":"7000","channel_id":"88","content":"!ping","author":{"id":"1"}}`)
	select {
	case <-arrived: // the handler is inside its REST call
	case <-time.After(20 * time.Second):
		t.Fatal("reply never reached the REST server")
	}
	require.NoError(t, p1.cmd.Process.Signal(syscall.SIGKILL))
	<-p1.exited
	require.Eventually(t, func() bool { return b.rest.Count(path, 0) == 1 }, 5*time.Second, 10*time.Millisecond,
		"the held request is dropped with its client")

	startProcess(t, b.env, "commands")
	require.Eventually(t, func() bool { return b.rest.Count(path, 200) == 1 }, 30*time.Second, 20*time.Millisecond)
	var state string
	require.Eventually(t, func() bool {
		_ = b.pool.QueryRow(context.Background(), `SELECT state FROM worker_idempotency WHERE worker = 'commands'`).Scan(&state)
		return state == "done"
	}, 10*time.Second, 20*time.Millisecond)
	time.Sleep(1500 * time.Millisecond) // past another ack wait: nothing more may arrive
	require.Equal(t, 1, b.rest.Count(path, 200), "exactly one reply")
	require.Equal(t, 1, b.rest.MessagesCreated())
}

// SIGTERM while a handler is in flight: the process stops pulling, lets the
// handler finish, acks it and exits 0; nothing is redelivered afterwards.
func TestSIGTERMDrainsInFlight(t *testing.T) {
	b := setup(t)
	const path = "/api/v10/channels/99/messages"
	arrived, release := b.rest.Hold(path)
	defer release()

	p := startProcess(t, b.env, "commands")
	readyAddr(t, p.logs, "commands")
	publish(t, b.js, "MESSAGE_CREATE", `{"id":"8000","channel_id":"99","content":"!ping","author":{"id":"1"}}`)
	<-arrived
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.exited:
		t.Fatalf("exited before the in-flight handler finished: %v", p.err)
	case <-time.After(300 * time.Millisecond):
	}
	release()
	select {
	case <-p.exited:
		require.NoError(t, p.err, "clean exit")
	case <-time.After(20 * time.Second):
		t.Fatal("did not exit after draining")
	}
	require.Contains(t, p.logs.String(), "signal received: draining workers")
	require.Equal(t, 1, b.rest.Count(path, 200))

	cons, err := b.js.Consumer(context.Background(), bus.EventsStream, "commands")
	require.NoError(t, err)
	info, err := cons.Info(context.Background())
	require.NoError(t, err)
	require.Zero(t, info.NumAckPending, "acked before exit")
	require.Zero(t, info.NumPending)
	require.NotContains(t, p.logs.String(), token)
}

// The same crash against the project's fake Discord: the worker is killed while
// its reply waits out a 429's Retry-After; the next process replies, and the fake's
// REST record holds exactly one created message.
func TestSIGKILLWhileRateLimitedAgainstFakeDiscord(t *testing.T) {
	b := setup(t)
	fake, err := fakediscord.New(fakediscord.Config{})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	require.NoError(t, fake.Start(ctx))
	t.Cleanup(fake.Stop)
	b.env["DISCORD_API_URL"] = fake.APIURL()
	b.env["DISCORD_TOKEN"] = fake.Token()
	b.env["DISCORD_APPLICATION_ID"] = strconv.FormatUint(fake.Config().ApplicationID, 10)
	b.env["WORKER_ACK_WAIT"] = "3s" // handler deadline 2.4s: long enough to wait out the 429

	p1 := startProcess(t, b.env, "commands")
	readyAddr(t, p1.logs, "commands")
	fake.ForceRateLimit(fakediscord.ForcedRateLimit{Route: fakediscord.RouteChannelMessages, RetryAfter: 2 * time.Second, Count: 1})
	publish(t, b.js, "MESSAGE_CREATE", `{"id":"7100","channel_id":"201","content":"!ping","author":{"id":"1"}}`)
	require.Eventually(t, func() bool {
		for _, r := range fake.REST() {
			if r.ChannelID == 201 && r.RateLimited {
				return true
			}
		}
		return false
	}, 20*time.Second, 10*time.Millisecond, "the reply was rate limited")
	require.NoError(t, p1.cmd.Process.Signal(syscall.SIGKILL)) // mid-handler: waiting out Retry-After
	<-p1.exited
	require.Zero(t, fake.MessagesCreated())

	startProcess(t, b.env, "commands")
	require.Eventually(t, func() bool { return fake.MessagesCreated() == 1 }, 30*time.Second, 20*time.Millisecond)
	time.Sleep(3500 * time.Millisecond) // past another ack wait: nothing more may arrive
	require.Equal(t, 1, fake.MessagesCreated(), "exactly one reply")
	ok := 0
	for _, r := range fake.REST() {
		if r.ChannelID == 201 && r.Status == 200 {
			ok++
		}
	}
	require.Equal(t, 1, ok, "one successful create message in the REST record")
	require.Empty(t, fake.Violations())
}

func TestProcessExitCodes(t *testing.T) {
	bin := workerBinary(t)
	cmd := exec.Command(bin, "run", "guilds")
	cmd.Env = env{"DISCORD_TOKEN": token}.list()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	require.Equal(t, 2, exit.ExitCode(), "a configuration error exits 2")
	require.Contains(t, string(out), "DATABASE_URL")
	require.NotContains(t, string(out), token)

	out, err = exec.Command(bin, "version").CombinedOutput()
	require.NoError(t, err)
	require.NotEmpty(t, strings.TrimSpace(string(out)))

	cmd = exec.Command(bin, "healthcheck", "guilds")
	cmd.Env = env{"WORKER_GUILDS_HEALTH_ADDR": fmt.Sprintf("127.0.0.1:%d", natstest.FreePort(t))}.list()
	err = cmd.Run()
	require.ErrorAs(t, err, &exit)
	require.Equal(t, 1, exit.ExitCode(), "nothing listening: unhealthy")
}

func TestDLQReplayAllAndPurge(t *testing.T) {
	natsURL := natstest.InProcess(t)
	js, err := jetstream.New(natstest.Connect(t, natsURL))
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, bus.EnsureStreams(ctx, js, bus.StreamConfig{}))
	e := env{"NATS_URL": natsURL}
	for i, w := range []string{"alpha", "alpha", "beta"} {
		h := nats.Header{}
		h.Set(nats.MsgIdHdr, bus.MsgID(0, "s", int64(i)))
		h.Set(bus.HeaderEventType, "MESSAGE_CREATE")
		dm := worker.DeadLetterMsg(w, bus.EventSubject("MESSAGE_CREATE"), []byte(`{}`), h, uint64(100+i), 5, fmt.Errorf("boom %d", i), time.Now())
		_, err := js.PublishMsg(ctx, dm)
		require.NoError(t, err)
	}
	var out bytes.Buffer
	require.NoError(t, run(ctx, []string{"dlq", "list"}, e.get, &out, io.Discard))
	require.Equal(t, 4, strings.Count(out.String(), "\n"), "header and three dead letters:\n%s", out.String())

	out.Reset()
	require.NoError(t, run(ctx, []string{"dlq", "replay", "--worker", "alpha", "--all"}, e.get, &out, io.Discard))
	require.Equal(t, 2, strings.Count(out.String(), "to alpha"))
	s, err := js.Stream(ctx, bus.EventsStream)
	require.NoError(t, err)
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := s.GetMsg(ctx, seq)
		require.NoError(t, err)
		require.Equal(t, "alpha", m.Header.Get(bus.HeaderReplayFor))
		require.Equal(t, bus.MsgID(0, "s", int64(seq-1)), bus.EventID(m.Header), "the original event id travels with the replay")
		require.Empty(t, m.Header.Get(bus.HeaderDeadError))
	}
	dls, err := worker.ListDeadLetters(ctx, js, "", 0)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, "beta", dls[0].Worker)

	require.NoError(t, run(ctx, []string{"dlq", "purge", "--all"}, e.get, io.Discard, io.Discard))
	dls, err = worker.ListDeadLetters(ctx, js, "", 0)
	require.NoError(t, err)
	require.Empty(t, dls)
}

func TestDLQHelpNeedsNoConnection(t *testing.T) {
	var stdout bytes.Buffer
	e := env{"NATS_URL": "nats://127.0.0.1:1"}
	require.NoError(t, run(context.Background(), []string{"dlq", "--help"}, e.get, &stdout, io.Discard))
	require.Contains(t, stdout.String(), "usage: worker dlq")
}
