package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/config"
	"github.com/shardwarden/shardwarden/internal/logging/logtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func noEnv(string) string { return "" }

func TestRunHelp(t *testing.T) {
	var out bytes.Buffer
	err := run(t.Context(), []string{"-h"}, noEnv, io.Discard, &out)
	require.ErrorIs(t, err, flag.ErrHelp)
	for _, f := range []string{"-addr", "-admin-addr", "-token", "-shards", "-max-concurrency", "-identify-window",
		"-daily-budget", "-resume-window", "-heartbeat-interval", "-guilds", "-traffic-rate", "-traffic-mix",
		"-traffic-size", "-info-file", "FAKEDISCORD_SHARDS"} {
		require.Contains(t, out.String(), f)
	}
}

func TestRunBadConfig(t *testing.T) {
	err := run(t.Context(), []string{"-shards", "-1"}, noEnv, io.Discard, io.Discard)
	require.True(t, config.IsConfigError(err), "%v", err)
	err = run(t.Context(), nil, func(k string) string {
		if k == "FAKEDISCORD_SHARDS" {
			return "many"
		}
		return ""
	}, io.Discard, io.Discard)
	require.True(t, config.IsConfigError(err), "%v", err)
	require.Contains(t, err.Error(), "FAKEDISCORD_SHARDS")
}

func TestRunServesAndStops(t *testing.T) {
	info := filepath.Join(t.TempDir(), "info.json")
	ctx, cancel := context.WithCancel(t.Context())
	var stdout logtest.Buffer
	env := func(k string) string {
		if k == "FAKEDISCORD_SHARDS" {
			return "3"
		}
		return ""
	}
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-addr", "127.0.0.1:0", "-info-file", info, "-log-level", "warn",
			"-traffic", "-traffic-rate", "100", "-traffic-mix", "MESSAGE_CREATE=1"}, env, &stdout, io.Discard)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "gateway_url=") {
		require.True(t, time.Now().Before(deadline), "no URLs printed")
		time.Sleep(5 * time.Millisecond)
	}
	b, err := os.ReadFile(info)
	require.NoError(t, err)
	var urls map[string]string
	require.NoError(t, json.Unmarshal(b, &urls))
	require.Contains(t, stdout.String(), "api_url="+urls["api_url"])

	get := func(url string, v any) {
		req, err := http.NewRequestWithContext(t.Context(), "GET", url, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bot fake-bot-token")
		req.Close = true
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
		require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
	}
	var gb struct {
		URL    string `json:"url"`
		Shards int    `json:"shards"`
	}
	get(urls["api_url"]+"/v10/gateway/bot", &gb)
	require.Equal(t, 3, gb.Shards)
	require.Equal(t, urls["gateway_url"], gb.URL)
	var traffic struct {
		Running bool `json:"running"`
	}
	get(urls["admin_url"]+"/traffic", &traffic)
	require.True(t, traffic.Running)

	cancel() // SIGTERM
	select {
	case err := <-errc:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	_, err = http.Get(urls["api_url"] + "/v10/gateway")
	require.Error(t, err, "stopped")
	require.False(t, errors.Is(err, context.Canceled))
}
