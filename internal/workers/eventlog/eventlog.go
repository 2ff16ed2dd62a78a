// Package eventlog is the built-in `eventlog` worker: it appends every dispatch it
// is given to discord_event_log (sql/migrations/00004), once per event, as an audit
// trail operators can query from psql:
//
//	SELECT event_type, count(*) FROM discord_event_log
//	WHERE processed_at > now() - interval '5 minutes' GROUP BY 1 ORDER BY 2 DESC;
//
// The end-to-end harness counts its rows against the fake Discord's ledger to prove
// that nothing was lost and nothing processed twice.
package eventlog

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/idempotency"
	"github.com/shardwarden/shardwarden/internal/worker"
)

// Name is the worker's default name.
const Name = "eventlog"

// Subjects: every event type.
var Subjects = []string{bus.EventsSubjects}

// Handler appends events to discord_event_log.
type Handler struct {
	store *idempotency.Store
}

// New returns a handler recording its events in store.
func New(store *idempotency.Store) (*Handler, error) {
	if store == nil {
		return nil, errors.New("eventlog: store is required")
	}
	return &Handler{store: store}, nil
}

// Handle implements worker.Handler.
func (h *Handler) Handle(ctx context.Context, m *worker.Message) error {
	var shard *int
	if s, ok := bus.ShardID(m.Header); ok {
		shard = &s
	}
	seq := headerInt(m.Header.Get(bus.HeaderSeq))
	guild := headerInt(m.Header.Get(bus.HeaderGuild))
	var session *string
	if s := m.Header.Get(bus.HeaderSession); s != "" {
		session = &s
	}
	var received any
	if !m.ReceivedAt.IsZero() {
		received = m.ReceivedAt
	}
	_, err := h.store.InTx(ctx, m.ID, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO discord_event_log (msg_id, event_type, shard_id, session_id, seq, guild_id, stream_seq, received_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			m.ID, m.EventType, shard, session, seq, guild, int64(m.StreamSeq), received)
		if err != nil {
			return fmt.Errorf("append event %s: %w", m.ID, err)
		}
		return nil
	})
	return err
}

// headerInt parses a numeric header; nil when absent or malformed (a missing guild
// is normal: DMs and guild-less events have none).
func headerInt(v string) *int64 {
	if v == "" {
		return nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return nil
	}
	return &n
}
