// Package bus is the JetStream side of shardwarden: the streams, the subjects and
// headers every event carries, and the gateway's async publisher.
package bus

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream and subject names.
const (
	EventsStream   = "DISCORD_EVENTS"
	EventsSubjects = "discord.events.>"
	eventsPrefix   = "discord.events."

	DeadLetterStream   = "DISCORD_DLQ"
	DeadLetterSubjects = "discord.dead.>"
	deadLetterPrefix   = "discord.dead."
)

// Headers on every event message. Nats-Msg-Id is "<shard>:<session>:<seq>": a
// replayed dispatch (after RESUME, or a re-publish after a crash) is dropped by the
// stream's duplicate window.
const (
	HeaderShard      = "Discord-Shard"
	HeaderSeq        = "Discord-Seq"
	HeaderSession    = "Discord-Session"
	HeaderEpoch      = "Shardwarden-Lease-Epoch"
	HeaderGuild      = "Discord-Guild"
	HeaderEventType  = "Discord-Event-Type"
	HeaderReceivedAt = "Shardwarden-Received-At" // RFC 3339 with nanoseconds, gateway clock

	// On dead letters, besides the original headers.
	HeaderDeadWorker    = "Shardwarden-Dead-Worker"
	HeaderDeadError     = "Shardwarden-Dead-Error"
	HeaderDeadDelivered = "Shardwarden-Dead-Delivered"
	HeaderDeadSubject   = "Shardwarden-Dead-Subject"
	HeaderDeadStreamSeq = "Shardwarden-Dead-Stream-Seq"
)

// EventSubject is the subject of a dispatch of type t ("MESSAGE_CREATE" →
// "discord.events.message_create"). Types are Discord's upper-snake identifiers;
// anything outside [A-Z0-9_] is replaced so a subject can never be malformed.
func EventSubject(eventType string) string {
	var b strings.Builder
	b.Grow(len(eventsPrefix) + len(eventType))
	b.WriteString(eventsPrefix)
	if eventType == "" {
		b.WriteString("unknown")
		return b.String()
	}
	for i := 0; i < len(eventType); i++ {
		c := eventType[i]
		switch {
		case c >= 'A' && c <= 'Z':
			b.WriteByte(c + ('a' - 'A'))
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
			b.WriteByte(c)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// DeadLetterSubject is where worker's exhausted messages go.
func DeadLetterSubject(worker string) string { return deadLetterPrefix + worker }

// MsgID is the dedup id of one dispatch.
func MsgID(shard int, session string, seq int64) string {
	// Built by hand, not with fmt: the publisher calls this for every event.
	b := make([]byte, 0, len(session)+24)
	b = strconv.AppendInt(b, int64(shard), 10)
	b = append(b, ':')
	b = append(b, session...)
	b = append(b, ':')
	b = strconv.AppendInt(b, seq, 10)
	return string(b)
}

// StreamConfig sizes the streams. Zero values take the defaults.
type StreamConfig struct {
	MaxAge   time.Duration // default 72h
	MaxBytes int64         // default 10 GiB; -1 unlimited
	// Duplicates is the dedup window. It must outlast Discord's resume window (a
	// replay after RESUME must still be recognised): default 10 min.
	Duplicates time.Duration
	Replicas   int // default 1
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.MaxAge == 0 {
		c.MaxAge = 72 * time.Hour
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = 10 << 30
	}
	if c.Duplicates == 0 {
		c.Duplicates = 10 * time.Minute
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	return c
}

// EnsureStreams creates or updates DISCORD_EVENTS and DISCORD_DLQ. Idempotent: every
// process calls it at start.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) error {
	cfg = cfg.withDefaults()
	if cfg.Duplicates > cfg.MaxAge {
		return fmt.Errorf("stream config: duplicate window %s exceeds max age %s", cfg.Duplicates, cfg.MaxAge)
	}
	streams := []jetstream.StreamConfig{
		{
			Name:        EventsStream,
			Description: "Discord gateway dispatches, raw, one message per dispatch",
			Subjects:    []string{EventsSubjects},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			MaxAge:      cfg.MaxAge,
			MaxBytes:    cfg.MaxBytes,
			Duplicates:  cfg.Duplicates,
			Replicas:    cfg.Replicas,
		},
		{
			Name:        DeadLetterStream,
			Description: "Events a worker gave up on, with the last error",
			Subjects:    []string{DeadLetterSubjects},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			MaxAge:      30 * 24 * time.Hour,
			Duplicates:  cfg.Duplicates,
			Replicas:    cfg.Replicas,
		},
	}
	for _, sc := range streams {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
	}
	return nil
}
