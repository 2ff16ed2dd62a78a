package discordrest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/diamondburned/arikawa/v3/api"
	"golang.org/x/time/rate"
)

// RateLimitError is returned when a 429's Retry-After does not fit in the request's
// deadline (or the retries are used up): the caller decides whether to try later.
type RateLimitError struct {
	Route      string
	RetryAfter time.Duration
	Global     bool
	Scope      string
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("discord rate limit on %s (%s scope): retry after %s", e.Route, e.Scope, e.RetryAfter)
}

// transport is the http.RoundTripper under arikawa's client. It points requests at
// the configured API, keeps the global limit (50/s proactively, and every request
// waits out a global 429), and answers 429s itself: Retry-After is read as seconds
// with decimals (arikawa parses it as an integer and fails on "0.5"), the request is
// sent again after that wait, and arikawa never sees the 429.
type transport struct {
	base       http.RoundTripper
	api        *url.URL // scheme, host and path prefix replacing https://discord.com/api/v9
	global     *rate.Limiter
	maxRetries int
	metrics    *metrics
	log        *slog.Logger

	mu          sync.Mutex
	globalUntil time.Time
}

// maxRetryAfter caps a 429's wait; no request has a deadline that long anyway.
const maxRetryAfter = 24 * time.Hour

// arikawaPrefix is where arikawa's endpoint variables point (computed at its init).
var arikawaPrefix = strings.TrimSuffix(api.Endpoint, "/")

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	full := req.URL.String()
	rest, ok := strings.CutPrefix(full, arikawaPrefix)
	if !ok {
		return nil, fmt.Errorf("discordrest: request outside the Discord API: %s %s", req.Method, req.URL.Redacted())
	}
	// arikawa builds some URLs with a doubled slash (CurrentApplication:
	// Endpoint+"/oauth2/..."): Discord tolerates it, Go's ServeMux (the fake)
	// answers a redirect. Send the clean path.
	for strings.Contains(rest, "//") {
		rest = strings.ReplaceAll(rest, "//", "/")
	}
	target, err := url.Parse(t.api.String() + rest)
	if err != nil {
		return nil, fmt.Errorf("discordrest: rewrite url: %w", err)
	}
	route := Route(req.Method, target.Path)
	// Interaction callbacks and webhooks are not subject to the global limit.
	exempt := strings.Contains(route, "/interactions/") || strings.Contains(route, "/webhooks/")

	var body []byte
	if req.Body != nil {
		body, err = io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("discordrest: read request body: %w", err)
		}
	}

	for attempt := 0; ; attempt++ {
		if !exempt {
			if err := t.waitGlobal(ctx); err != nil {
				return nil, err
			}
		}
		out := req.Clone(ctx)
		out.URL = target
		out.Host = ""
		if body != nil {
			out.Body = io.NopCloser(bytes.NewReader(body))
			out.ContentLength = int64(len(body))
			out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		}
		resp, err := t.base.RoundTrip(out)
		if err != nil {
			t.metrics.requests.WithLabelValues(route, "error").Inc()
			return nil, err
		}
		t.metrics.requests.WithLabelValues(route, strconv.Itoa(resp.StatusCode)).Inc()
		if resp.StatusCode != http.StatusTooManyRequests {
			resp.Header.Del("Retry-After") // never for arikawa's integer parser
			return resp, nil
		}

		rl := parse429(resp)
		rl.Route = route
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		t.metrics.rateLimited.WithLabelValues(rl.Scope).Inc()
		if rl.Global {
			t.mu.Lock()
			if until := time.Now().Add(rl.RetryAfter); until.After(t.globalUntil) {
				t.globalUntil = until
			}
			t.mu.Unlock()
		}
		if attempt >= t.maxRetries {
			return nil, rl
		}
		if deadline, ok := ctx.Deadline(); ok && time.Now().Add(rl.RetryAfter).After(deadline) {
			return nil, rl
		}
		t.log.DebugContext(ctx, "rate limited; waiting", slog.String("route", route), slog.String("scope", rl.Scope),
			slog.Duration("retry_after", rl.RetryAfter))
		if err := sleep(ctx, rl.RetryAfter); err != nil {
			return nil, err
		}
	}
}

func (t *transport) waitGlobal(ctx context.Context) error {
	t.mu.Lock()
	until := t.globalUntil
	t.mu.Unlock()
	if d := time.Until(until); d > 0 {
		if deadline, ok := ctx.Deadline(); ok && until.After(deadline) {
			return &RateLimitError{RetryAfter: d, Global: true, Scope: "global"}
		}
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
	if t.global != nil {
		if err := t.global.Wait(ctx); err != nil {
			return fmt.Errorf("discordrest: global rate limit: %w", err)
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// parse429 reads a 429: the wait from Retry-After (seconds, decimals allowed) or the
// body's retry_after, the global flag from X-RateLimit-Global or the body, and the
// scope from X-RateLimit-Scope ("user", "global", "shared").
func parse429(resp *http.Response) *RateLimitError {
	rl := &RateLimitError{}
	var b struct {
		RetryAfter *float64 `json:"retry_after"`
		Global     bool     `json:"global"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = json.Unmarshal(raw, &b)
	secs := -1.0
	if v, err := strconv.ParseFloat(strings.TrimSpace(resp.Header.Get("Retry-After")), 64); err == nil && v >= 0 && !math.IsInf(v, 0) {
		secs = v
	}
	if b.RetryAfter != nil && *b.RetryAfter >= 0 && (secs < 0 || *b.RetryAfter > secs) {
		secs = *b.RetryAfter // the body is more precise when both are there
	}
	if secs < 0 {
		secs = 1 // a 429 without a wait: be conservative
	}
	secs = min(secs, maxRetryAfter.Seconds()) // absurd values must not overflow a Duration
	rl.RetryAfter = time.Duration(secs * float64(time.Second))
	rl.Global = b.Global || strings.EqualFold(resp.Header.Get("X-RateLimit-Global"), "true")
	rl.Scope = strings.ToLower(resp.Header.Get("X-RateLimit-Scope"))
	if rl.Scope == "" {
		rl.Scope = "user"
		if rl.Global {
			rl.Scope = "global"
		}
	}
	return rl
}

// Route is the metrics label of a request: ids and tokens replaced by placeholders
// so the label stays bounded ("POST /interactions/{id}/{token}/callback").
func Route(method, path string) string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	// Drop "api" and the version.
	if len(segs) > 0 && segs[0] == "api" {
		segs = segs[1:]
	}
	if len(segs) > 0 && len(segs[0]) > 1 && segs[0][0] == 'v' && isDigits(segs[0][1:]) {
		segs = segs[1:]
	}
	for i, s := range segs {
		switch {
		case isDigits(s):
			segs[i] = "{id}"
		case i >= 2 && (segs[i-2] == "interactions" || segs[i-2] == "webhooks"):
			segs[i] = "{token}"
		case i >= 1 && segs[i-1] == "reactions":
			segs[i] = "{emoji}"
		}
	}
	return method + " /" + strings.Join(segs, "/")
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// IsRateLimited reports whether err is a 429 the client gave up waiting for.
func IsRateLimited(err error) bool {
	var rl *RateLimitError
	return errors.As(err, &rl)
}
