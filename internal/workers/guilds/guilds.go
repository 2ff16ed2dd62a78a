// Package guilds is the built-in `guilds` worker: it keeps the guilds table
// (sql/migrations/00003) from GUILD_CREATE, GUILD_UPDATE and GUILD_DELETE, so
// operators can see from psql which guilds the bot is in:
//
//	SELECT id, name, member_count, shard_id, joined_at FROM guilds WHERE left_at IS NULL;
//
// Each event is applied in one transaction with its idempotency record, and a row
// only moves forward in event_seq (the DISCORD_EVENTS sequence of the event that
// wrote it): a redelivered or replayed older event changes nothing.
package guilds

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/idempotency"
	"github.com/shardwarden/shardwarden/internal/worker"
)

// Name is the worker's default name.
const Name = "guilds"

// Subjects are the events the worker handles.
var Subjects = []string{
	bus.EventSubject("GUILD_CREATE"), bus.EventSubject("GUILD_UPDATE"), bus.EventSubject("GUILD_DELETE"),
}

// Handler applies guild events to the guilds table.
type Handler struct {
	store *idempotency.Store
}

// New returns a handler recording its events in store.
func New(store *idempotency.Store) (*Handler, error) {
	if store == nil {
		return nil, errors.New("guilds: store is required")
	}
	return &Handler{store: store}, nil
}

type guildEvent struct {
	ID          string  `json:"id"`
	Name        *string `json:"name"`
	MemberCount *int    `json:"member_count"`
	JoinedAt    *string `json:"joined_at"`
	Unavailable bool    `json:"unavailable"`
}

// Handle implements worker.Handler.
func (h *Handler) Handle(ctx context.Context, m *worker.Message) error {
	var ev guildEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return worker.Permanent(fmt.Errorf("decode %s: %w", m.EventType, err))
	}
	id, err := strconv.ParseInt(ev.ID, 10, 64)
	if err != nil || id <= 0 {
		return worker.Permanent(fmt.Errorf("%s: guild id %q", m.EventType, ev.ID))
	}
	var shard *int
	if s, ok := bus.ShardID(m.Header); ok {
		shard = &s
	}
	at := cmp.Or(m.ReceivedAt, time.Now())
	seq := int64(m.StreamSeq)

	_, err = h.store.InTx(ctx, m.ID, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		switch m.EventType {
		case "GUILD_CREATE":
			if ev.Unavailable { // announced but in an outage: known, not yet described
				err = markUnavailable(ctx, tx, id, shard, seq)
				break
			}
			_, err = tx.Exec(ctx, `
				INSERT INTO guilds AS g (id, name, member_count, shard_id, joined_at, left_at, unavailable, event_seq, updated_at)
				VALUES ($1, coalesce($2, ''), $3, $4, $5, NULL, false, $6, now())
				ON CONFLICT (id) DO UPDATE SET
					name = `+merge("name", "$2", "$6")+`,
					member_count = `+merge("member_count", "$3", "$6")+`,
					shard_id = `+merge("shard_id", "$4", "$6")+`,
					joined_at = `+merge("joined_at", "$5", "$6")+`,
					left_at = CASE WHEN g.event_seq < $6 THEN NULL ELSE g.left_at END,
					unavailable = CASE WHEN g.event_seq < $6 THEN false ELSE g.unavailable END,
					event_seq = greatest(g.event_seq, $6), updated_at = now()
				WHERE g.event_seq <> $6`, id, ev.Name, ev.MemberCount, shard, parseTime(ev.JoinedAt), seq)
		case "GUILD_UPDATE":
			_, err = tx.Exec(ctx, `
				INSERT INTO guilds AS g (id, name, member_count, shard_id, event_seq, updated_at)
				VALUES ($1, coalesce($2, ''), $3, $4, $5, now())
				ON CONFLICT (id) DO UPDATE SET
					name = `+merge("name", "$2", "$5")+`,
					member_count = `+merge("member_count", "$3", "$5")+`,
					shard_id = `+merge("shard_id", "$4", "$5")+`,
					event_seq = greatest(g.event_seq, $5), updated_at = now()
				WHERE g.event_seq <> $5`, id, ev.Name, ev.MemberCount, shard, seq)
		case "GUILD_DELETE":
			if ev.Unavailable { // an outage, not a removal
				err = markUnavailable(ctx, tx, id, shard, seq)
				break
			}
			_, err = tx.Exec(ctx, `
				INSERT INTO guilds AS g (id, shard_id, left_at, event_seq, updated_at)
				VALUES ($1, $2, $3, $4, now())
				ON CONFLICT (id) DO UPDATE SET
					left_at = $3, unavailable = false, event_seq = $4, updated_at = now()
				WHERE g.event_seq < $4`, id, shard, at, seq)
		default:
			return nil
		}
		if err != nil {
			return fmt.Errorf("apply %s of guild %d: %w", m.EventType, id, err)
		}
		return nil
	})
	return err
}

// merge is the value of column col after an event carrying param at stream sequence
// seq: a newer event overwrites (where it carries a value), an older one only fills
// a gap. GUILD_UPDATE has no member_count, so an update handled before its
// GUILD_CREATE (retries, concurrency) must not lose the create's count.
func merge(col, param, seq string) string {
	cur := "g." + col
	if col == "name" {
		cur = "nullif(g.name, '')"
	}
	expr := fmt.Sprintf("CASE WHEN g.event_seq < %[3]s THEN coalesce(%[2]s, %[1]s) ELSE coalesce(%[1]s, %[2]s) END", cur, param, seq)
	if col == "name" {
		expr = "coalesce(" + expr + ", '')"
	}
	return expr
}

func markUnavailable(ctx context.Context, tx pgx.Tx, id int64, shard *int, seq int64) error {
	_, err := tx.Exec(ctx, `
		INSERT INTO guilds AS g (id, shard_id, unavailable, event_seq, updated_at)
		VALUES ($1, $2, true, $3, now())
		ON CONFLICT (id) DO UPDATE SET unavailable = true, shard_id = coalesce($2, g.shard_id), event_seq = $3, updated_at = now()
		WHERE g.event_seq < $3`, id, shard, seq)
	return err
}

func parseTime(s *string) *time.Time {
	if s == nil {
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, *s)
	if err != nil {
		return nil
	}
	return &t
}
