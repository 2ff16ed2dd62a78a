package localcluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/shardwarden/shardwarden/internal/fakediscord"
)

// FakeClient talks to a fake Discord's admin API (cmd/fakediscord in another
// process): the referee's answers, traffic and fault injection.
type FakeClient struct {
	AdminURL string // e.g. http://127.0.0.1:PORT/admin
	HTTP     *http.Client
}

func (c *FakeClient) client() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *FakeClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.AdminURL+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.client().Do(req)
	if err != nil {
		return fmt.Errorf("fake admin %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("fake admin %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(msg))
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("fake admin %s %s: decode: %w", method, path, err)
	}
	return nil
}

// Summary returns the referee's counts (no per-event ledger).
func (c *FakeClient) Summary(ctx context.Context) (fakediscord.Report, error) {
	var r fakediscord.Report
	return r, c.do(ctx, http.MethodGet, "/referee/summary", nil, &r)
}

// Report returns the referee's full report except the ledger.
func (c *FakeClient) Report(ctx context.Context) (fakediscord.Report, error) {
	var r fakediscord.Report
	return r, c.do(ctx, http.MethodGet, "/referee", nil, &r)
}

// Sessions returns every session interval seen.
func (c *FakeClient) Sessions(ctx context.Context) ([]fakediscord.SessionInterval, error) {
	var s []fakediscord.SessionInterval
	return s, c.do(ctx, http.MethodGet, "/referee/sessions", nil, &s)
}

// Events streams the ledger (every dispatch sent) and calls fn for each.
func (c *FakeClient) Events(ctx context.Context, fn func(fakediscord.Event)) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.AdminURL+"/referee/events", nil)
	if err != nil {
		return err
	}
	resp, err := c.client().Do(req)
	if err != nil {
		return fmt.Errorf("fake admin events: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fake admin events: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e fakediscord.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("fake admin events: %w", err)
		}
		fn(e)
	}
	return sc.Err()
}

// Traffic describes generated traffic for StartTraffic.
type Traffic struct {
	Rate        float64        `json:"rate"`
	Mix         map[string]int `json:"mix,omitempty"`
	PayloadSize int            `json:"payload_size,omitempty"`
	Count       int64          `json:"count,omitempty"`
	Duration    string         `json:"duration,omitempty"`
}

// StartTraffic starts the generator.
func (c *FakeClient) StartTraffic(ctx context.Context, t Traffic) error {
	return c.do(ctx, http.MethodPost, "/traffic/start", t, nil)
}

// StopTraffic stops the generator.
func (c *FakeClient) StopTraffic(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/traffic/stop", struct{}{}, nil)
}

// TrafficStats reports the generator's counters.
func (c *FakeClient) TrafficStats(ctx context.Context) (fakediscord.TrafficStats, error) {
	var s fakediscord.TrafficStats
	return s, c.do(ctx, http.MethodGet, "/traffic", nil, &s)
}

// Fault injects a fault (see fakediscord.Fault's kinds) and returns how many
// connections it affected.
func (c *FakeClient) Fault(ctx context.Context, kind string, shard int, opts ...func(map[string]any)) (int, error) {
	body := map[string]any{"kind": kind, "shard": shard}
	for _, o := range opts {
		o(body)
	}
	var out struct {
		Affected int `json:"affected"`
	}
	return out.Affected, c.do(ctx, http.MethodPost, "/faults", body, &out)
}

// Dispatch injects one dispatch to shard and returns its event id.
func (c *FakeClient) Dispatch(ctx context.Context, shard int, eventType string, d any) (string, error) {
	var out struct {
		ID string `json:"id"`
	}
	return out.ID, c.do(ctx, http.MethodPost, "/dispatch", map[string]any{"shard": shard, "type": eventType, "d": d}, &out)
}

// WaitReady polls the admin API until it answers or ctx ends.
func (c *FakeClient) WaitReady(ctx context.Context) error {
	for {
		if err := c.do(ctx, http.MethodGet, "/info", nil, nil); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fake admin at %s not ready: %w", c.AdminURL, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
