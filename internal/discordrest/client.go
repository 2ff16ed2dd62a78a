// Package discordrest is shardwarden's Discord REST layer: arikawa's api.Client
// pointed at DISCORD_API_URL, with 429s handled correctly (fractional Retry-After,
// the global limit) and the calls the built-in workers make, in their idempotent
// forms.
package discordrest

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/diamondburned/arikawa/v3/api"
	"github.com/diamondburned/arikawa/v3/discord"
	"github.com/diamondburned/arikawa/v3/utils/httputil"
	"github.com/diamondburned/arikawa/v3/utils/httputil/httpdriver"
	"github.com/diamondburned/arikawa/v3/utils/json/option"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// DefaultAPIURL is Discord's REST API without the version.
const DefaultAPIURL = "https://discord.com/api"

// APIVersion is the version requests are sent with (arikawa v3.6.0 builds v9 URLs).
const APIVersion = "v10"

// Config for New.
type Config struct {
	Token string // bot token, without "Bot "
	// APIURL is DISCORD_API_URL: Discord's API base ("https://discord.com/api") or
	// the fake's. A trailing version ("/api/v10") is kept as given.
	APIURL     string
	Registerer prometheus.Registerer // default: a private registry
	Logger     *slog.Logger          // default slog.Default()
	// GlobalRate is requests per second across all routes except interactions.
	// Default 50 (Discord's global limit); negative disables the proactive limiter.
	GlobalRate int
	// MaxRetries is how many 429s one request waits out before giving up; default 3.
	MaxRetries int
	// Timeout bounds a request without a deadline of its own; default 15s.
	Timeout time.Duration
	// BaseTransport under the rate-limit layer; default http.DefaultTransport.
	BaseTransport http.RoundTripper
}

// Client is the REST client. Safe for concurrent use.
type Client struct {
	api     *api.Client
	timeout time.Duration
}

var versionRE = regexp.MustCompile(`/v[0-9]+$`)

// New builds a client for cfg.
func New(cfg Config) (*Client, error) {
	if strings.TrimSpace(cfg.Token) == "" {
		return nil, errors.New("discordrest: empty token")
	}
	u, err := url.Parse(cmp.Or(cfg.APIURL, DefaultAPIURL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("discordrest: API URL %q: want http(s)://host[/path]", cfg.APIURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	if !versionRE.MatchString(u.Path) {
		u.Path += "/" + APIVersion
	}
	u.RawQuery, u.Fragment = "", ""
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	cfg.GlobalRate = cmp.Or(cfg.GlobalRate, 50)
	cfg.MaxRetries = cmp.Or(cfg.MaxRetries, 3)
	t := &transport{
		base:       cmp.Or[http.RoundTripper](cfg.BaseTransport, http.DefaultTransport),
		api:        u,
		maxRetries: cfg.MaxRetries,
		metrics:    m,
		log:        cmp.Or(cfg.Logger, slog.Default()),
	}
	if cfg.GlobalRate > 0 {
		t.global = rate.NewLimiter(rate.Limit(cfg.GlobalRate), cfg.GlobalRate)
	}
	hc := httputil.NewClient()
	hc.Client = httpdriver.WrapClient(http.Client{
		Transport: t,
		// Discord's API does not redirect; following one would leave the rewritten
		// host (and carry the token elsewhere).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	})
	// One attempt at arikawa's level: 429s are retried by the transport; 5xx and
	// network errors go back to the worker runtime, which retries with backoff
	// (and knows whether the call is idempotent).
	hc.Retries = 1
	c := api.NewCustomClient("Bot "+strings.TrimSpace(cfg.Token), hc)
	return &Client{api: c, timeout: cmp.Or(cfg.Timeout, 15*time.Second)}, nil
}

func (c *Client) with(ctx context.Context) (*api.Client, context.CancelFunc) {
	cancel := context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
	}
	return c.api.WithContext(ctx), cancel
}

// API returns arikawa's client bound to ctx, for calls this package does not wrap.
// Every request still goes through the rate-limit layer.
func (c *Client) API(ctx context.Context) *api.Client { return c.api.WithContext(ctx) }

// Discord JSON error codes the workers branch on.
const (
	CodeUnknownInteraction         = 10062
	CodeInteractionAlreadyAnswered = 40060
)

// HasCode reports whether err is a Discord API error with the given JSON code.
func HasCode(err error, code int) bool {
	var he *httputil.HTTPError
	return errors.As(err, &he) && int(he.Code) == code
}

// StatusOf returns the HTTP status of a Discord API error, or 0.
func StatusOf(err error) int {
	var he *httputil.HTTPError
	if errors.As(err, &he) {
		return he.Status
	}
	return 0
}

// RespondInteraction sends the interaction callback with a message. A second
// callback for one interaction is refused by Discord with
// CodeInteractionAlreadyAnswered; callers that may be repeating one treat that as
// success.
func (c *Client) RespondInteraction(ctx context.Context, id discord.InteractionID, token, content string) error {
	a, cancel := c.with(ctx)
	defer cancel()
	err := a.RespondInteraction(id, token, api.InteractionResponse{
		Type: api.MessageInteractionWithSource,
		Data: &api.InteractionResponseData{Content: option.NewNullableString(content)},
	})
	if err != nil {
		return fmt.Errorf("interaction callback %s: %w", id, redactErr(err))
	}
	return nil
}

// Message is what CreateMessage sends.
type Message struct {
	Content string
	// Nonce with EnforceNonce makes the call idempotent: Discord returns the message
	// created with the same nonce in the last few minutes instead of a new one. At
	// most 25 characters; see Nonce.
	Nonce        string
	EnforceNonce bool
	// ReplyTo makes the message a reply (message_reference); 0 for none.
	ReplyTo discord.MessageID
}

type createMessageBody struct {
	Content          string            `json:"content"`
	Nonce            string            `json:"nonce,omitempty"`
	EnforceNonce     bool              `json:"enforce_nonce,omitempty"`
	MessageReference *messageReference `json:"message_reference,omitempty"`
	AllowedMentions  *allowedMentions  `json:"allowed_mentions,omitempty"`
}

type messageReference struct {
	MessageID       discord.MessageID `json:"message_id"`
	FailIfNotExists bool              `json:"fail_if_not_exists"`
}

type allowedMentions struct {
	Parse       []string `json:"parse"`
	RepliedUser bool     `json:"replied_user"`
}

// CreateMessage posts a message to a channel. arikawa's SendMessageData has no
// enforce_nonce, so the body is ours; the request still goes through arikawa's
// client (auth, buckets) and our transport.
func (c *Client) CreateMessage(ctx context.Context, channel discord.ChannelID, m Message) (*discord.Message, error) {
	if len(m.Nonce) > 25 {
		return nil, fmt.Errorf("create message: nonce %q longer than 25 characters", m.Nonce)
	}
	body := createMessageBody{Content: m.Content, Nonce: m.Nonce, EnforceNonce: m.EnforceNonce && m.Nonce != "",
		AllowedMentions: &allowedMentions{Parse: []string{}}}
	if m.ReplyTo.IsValid() {
		body.MessageReference = &messageReference{MessageID: m.ReplyTo}
	}
	a, cancel := c.with(ctx)
	defer cancel()
	var out *discord.Message
	if err := a.RequestJSON(&out, http.MethodPost, api.EndpointChannels+channel.String()+"/messages",
		httputil.WithJSONBody(body)); err != nil {
		return nil, fmt.Errorf("create message in %s: %w", channel, redactErr(err))
	}
	return out, nil
}

// Nonce derives a create-message nonce (25 characters) from a stable key such as
// "<worker>:<event id>": the same event always yields the same nonce.
func Nonce(key string) string {
	sum := sha256.Sum256([]byte(key))
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:])[:25])
}

// RegisterCommands overwrites the application's global commands (PUT
// /applications/{id}/commands). Idempotent by nature.
func (c *Client) RegisterCommands(ctx context.Context, app discord.AppID, cmds []api.CreateCommandData) ([]discord.Command, error) {
	a, cancel := c.with(ctx)
	defer cancel()
	out, err := a.BulkOverwriteCommands(app, cmds)
	if err != nil {
		return nil, fmt.Errorf("register %d commands: %w", len(cmds), redactErr(err))
	}
	return out, nil
}

// ApplicationID asks Discord for the bot's application id (GET
// /oauth2/applications/@me), for when DISCORD_APPLICATION_ID is not configured.
func (c *Client) ApplicationID(ctx context.Context) (discord.AppID, error) {
	a, cancel := c.with(ctx)
	defer cancel()
	app, err := a.CurrentApplication()
	if err != nil {
		return 0, fmt.Errorf("fetch application id: %w", redactErr(err))
	}
	return app.ID, nil
}

// redactErr hides interaction and webhook tokens in the URL that net/http puts in
// its errors ("Post \"…/interactions/1/<token>/callback\": timeout"): a token lets
// anyone post as the bot in that conversation for 15 minutes, so it stays out of
// logs like the bot token.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = redactURL(ue.URL)
	}
	return err
}

func redactURL(raw string) string {
	segs := strings.Split(raw, "/")
	for i := 2; i < len(segs); i++ {
		if (segs[i-2] == "interactions" || segs[i-2] == "webhooks") && segs[i] != "" {
			segs[i] = "[REDACTED]"
		}
	}
	return strings.Join(segs, "/")
}
