// Package commands is the built-in `commands` worker: it answers the /ping slash
// command (INTERACTION_CREATE → interaction callback) and the !ping message command
// (MESSAGE_CREATE → create message) with the measured gateway-to-reply latency, and
// registers its slash commands at start.
//
// Replies are external effects: each goes through idempotency.Store.External, and
// each call has a form Discord deduplicates (see internal/idempotency/doc.go), so a
// redelivered event never produces a second reply.
package commands

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/diamondburned/arikawa/v3/api"
	"github.com/diamondburned/arikawa/v3/discord"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/discordrest"
	"github.com/shardwarden/shardwarden/internal/idempotency"
	"github.com/shardwarden/shardwarden/internal/worker"
)

// Name is the worker's default name.
const Name = "commands"

// Subjects are the events the worker handles.
var Subjects = []string{bus.EventSubject("INTERACTION_CREATE"), bus.EventSubject("MESSAGE_CREATE")}

// Commands are the slash commands the worker registers.
var Commands = []api.CreateCommandData{{
	Name:        "ping",
	Description: "Measure the bot's gateway-to-reply latency",
	Type:        discord.ChatInputCommand,
}}

// Config for New.
type Config struct {
	Name  string // default Name
	REST  *discordrest.Client
	Store *idempotency.Store // records keyed by this worker's name
	AppID discord.AppID      // for command registration
	// ReplyWindow is how long after the gateway received an interaction a callback
	// is still accepted: Discord's 3 s. Older interactions are acked, counted and
	// not answered.
	ReplyWindow time.Duration
	Registerer  prometheus.Registerer
	Logger      *slog.Logger
}

// Handler answers the commands.
type Handler struct {
	cfg  Config
	log  *slog.Logger
	late prometheus.Counter
}

// New validates cfg.
func New(cfg Config) (*Handler, error) {
	cfg.Name = cmp.Or(cfg.Name, Name)
	if cfg.REST == nil || cfg.Store == nil {
		return nil, errors.New("commands: REST and Store are required")
	}
	cfg.ReplyWindow = cmp.Or(cfg.ReplyWindow, 3*time.Second)
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	late, err := worker.Register(cfg.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "shardwarden_worker_late_interactions_total",
		Help: "Interactions older than Discord's reply window when handled: acked, not answered.",
	}, []string{"worker"}))
	if err != nil {
		return nil, fmt.Errorf("commands metrics: %w", err)
	}
	return &Handler{cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default()).With(slog.String("worker", cfg.Name)),
		late: late.WithLabelValues(cfg.Name)}, nil
}

// RegisterCommands overwrites the application's global commands with Commands.
func (h *Handler) RegisterCommands(ctx context.Context) error {
	if !h.cfg.AppID.IsValid() {
		return errors.New("commands: no application id to register commands with")
	}
	if _, err := h.cfg.REST.RegisterCommands(ctx, h.cfg.AppID, Commands); err != nil {
		return err
	}
	h.log.InfoContext(ctx, "slash commands registered", slog.Int("commands", len(Commands)))
	return nil
}

// Handle implements worker.Handler.
func (h *Handler) Handle(ctx context.Context, m *worker.Message) error {
	switch m.EventType {
	case "INTERACTION_CREATE":
		return h.interaction(ctx, m)
	case "MESSAGE_CREATE":
		return h.message(ctx, m)
	}
	return nil
}

type interactionCreate struct {
	ID    discord.InteractionID `json:"id"`
	Type  int                   `json:"type"`
	Token string                `json:"token"`
	Data  struct {
		Name string `json:"name"`
	} `json:"data"`
}

const applicationCommand = 2

func (h *Handler) interaction(ctx context.Context, m *worker.Message) error {
	var in interactionCreate
	if err := json.Unmarshal(m.Data, &in); err != nil {
		return worker.Permanent(fmt.Errorf("decode INTERACTION_CREATE: %w", err))
	}
	if in.Type != applicationCommand || in.Data.Name != "ping" {
		return nil
	}
	if !in.ID.IsValid() || in.Token == "" {
		return worker.Permanent(errors.New("INTERACTION_CREATE without id or token"))
	}
	received := m.ReceivedAt
	if received.IsZero() {
		received = in.ID.Time() // the interaction's creation time
	}
	deadline := received.Add(h.cfg.ReplyWindow)
	log := h.log.With(slog.String("event_id", m.ID), slog.String("interaction_id", in.ID.String()))

	_, err := h.cfg.Store.External(ctx, m.ID, func(ctx context.Context, a idempotency.Attempt) error {
		if !time.Now().Before(deadline) {
			h.lateInteraction(ctx, log, received, a)
			return nil
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		latency := time.Since(received)
		err := h.cfg.REST.RespondInteraction(rctx, in.ID, in.Token, pong(latency))
		switch {
		case err == nil:
			log.DebugContext(ctx, "answered /ping", slog.Duration("latency", latency))
			return nil
		case discordrest.HasCode(err, discordrest.CodeInteractionAlreadyAnswered):
			// An earlier attempt's callback reached Discord before the process
			// stopped: the user has the answer.
			log.InfoContext(ctx, "interaction already answered by an earlier attempt", slog.Int("attempt", a.Number))
			return nil
		case discordrest.HasCode(err, discordrest.CodeUnknownInteraction),
			discordrest.IsRateLimited(err) && !time.Now().Add(rateLimitWait(err)).Before(deadline),
			errors.Is(err, context.DeadlineExceeded) && !time.Now().Before(deadline):
			h.lateInteraction(ctx, log, received, a)
			return nil
		}
		return classify(err)
	})
	return err
}

func rateLimitWait(err error) time.Duration {
	var rl *discordrest.RateLimitError
	if errors.As(err, &rl) {
		return rl.RetryAfter
	}
	return 0
}

func (h *Handler) lateInteraction(ctx context.Context, log *slog.Logger, received time.Time, a idempotency.Attempt) {
	h.late.Inc()
	log.WarnContext(ctx, "interaction past Discord's reply window: not answered",
		slog.Duration("age", time.Since(received)), slog.Bool("maybe_answered_earlier", a.MaybeDone))
}

type messageCreate struct {
	ID        discord.MessageID `json:"id"`
	ChannelID discord.ChannelID `json:"channel_id"`
	Content   string            `json:"content"`
	WebhookID string            `json:"webhook_id"`
	Author    struct {
		Bot bool `json:"bot"`
	} `json:"author"`
}

func (h *Handler) message(ctx context.Context, m *worker.Message) error {
	var mc messageCreate
	if err := json.Unmarshal(m.Data, &mc); err != nil {
		return worker.Permanent(fmt.Errorf("decode MESSAGE_CREATE: %w", err))
	}
	// Never answer bots (our own "Pong!" comes back as a MESSAGE_CREATE).
	if mc.Author.Bot || mc.WebhookID != "" || strings.TrimSpace(mc.Content) != "!ping" {
		return nil
	}
	if !mc.ChannelID.IsValid() {
		return worker.Permanent(errors.New("MESSAGE_CREATE without channel_id"))
	}
	received := cmp.Or(m.ReceivedAt, mc.ID.Time())
	// The nonce is the same on every attempt: with enforce_nonce Discord returns the
	// message an earlier attempt created instead of posting a second one.
	nonce := discordrest.Nonce(h.cfg.Name + ":" + m.ID)
	_, err := h.cfg.Store.External(ctx, m.ID, func(ctx context.Context, a idempotency.Attempt) error {
		_, err := h.cfg.REST.CreateMessage(ctx, mc.ChannelID, discordrest.Message{
			Content: pong(time.Since(received)), Nonce: nonce, EnforceNonce: true, ReplyTo: mc.ID,
		})
		return classify(err)
	})
	return err
}

// classify marks client errors as permanent when Discord will refuse the same
// request again for this event (missing access, unknown channel, invalid body). A
// 401 is about the token, not the event, and a 429 about timing: both are retried.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if s := discordrest.StatusOf(err); s >= 400 && s < 500 && s != http.StatusTooManyRequests && s != http.StatusUnauthorized {
		return worker.Permanent(err)
	}
	return err
}

func pong(latency time.Duration) string {
	return fmt.Sprintf("Pong! gateway→reply %d ms", latency.Milliseconds())
}
