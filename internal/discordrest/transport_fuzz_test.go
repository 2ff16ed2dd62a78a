package discordrest

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzParse429 feeds Discord's 429 headers and body (untrusted bytes) to the
// parser: it must never panic and always yield a usable wait.
func FuzzParse429(f *testing.F) {
	f.Add("0.5", "", "", []byte(`{"message":"You are being rate limited.","retry_after":0.5,"global":false}`))
	f.Add("", "true", "global", []byte(`{"retry_after":1.234,"global":true}`))
	f.Add("3", "", "shared", []byte(`not json`))
	f.Add("1e300", "", "", []byte(`{"retry_after":-1}`))
	f.Add("NaN", "TRUE", "user", []byte(`{"retry_after":1e400}`))
	f.Fuzz(func(t *testing.T, retryAfter, global, scope string, body []byte) {
		h := http.Header{}
		h.Set("Retry-After", retryAfter)
		h.Set("X-RateLimit-Global", global)
		h.Set("X-RateLimit-Scope", scope)
		rl := parse429(&http.Response{StatusCode: 429, Header: h, Body: io.NopCloser(bytes.NewReader(body))})
		if rl.RetryAfter < 0 || rl.RetryAfter > maxRetryAfter {
			t.Fatalf("wait %v out of range for Retry-After %q body %q", rl.RetryAfter, retryAfter, body)
		}
		if rl.Scope == "" {
			t.Fatal("empty scope")
		}
	})
}

func TestParse429(t *testing.T) {
	for _, tc := range []struct {
		retryAfter, global, body string
		want                     time.Duration
		wantGlobal               bool
		scope                    string
	}{
		{"0.35", "", `{"retry_after":0.35}`, 350 * time.Millisecond, false, "user"},
		{"1", "", `{"retry_after":1.25}`, 1250 * time.Millisecond, false, "user"}, // body is more precise
		{"", "true", `{"retry_after":0.1,"global":true}`, 100 * time.Millisecond, true, "global"},
		{"", "", `{}`, time.Second, false, "user"},
		{"1e300", "", ``, maxRetryAfter, false, "user"},
	} {
		h := http.Header{}
		h.Set("Retry-After", tc.retryAfter)
		h.Set("X-RateLimit-Global", tc.global)
		rl := parse429(&http.Response{Header: h, Body: io.NopCloser(strings.NewReader(tc.body))})
		if rl.RetryAfter != tc.want || rl.Global != tc.wantGlobal || rl.Scope != tc.scope {
			t.Errorf("Retry-After %q body %s: got %v global=%v scope=%s", tc.retryAfter, tc.body, rl.RetryAfter, rl.Global, rl.Scope)
		}
	}
}
