package shardlease

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// listen holds a dedicated connection (outside the pool: LISTEN needs a session
// of its own, and does not survive PgBouncer transaction pooling) and wakes the
// loop when a peer releases shards or leaves, so this replica claims at once
// instead of at its next heartbeat. Polling stays the truth: a lost connection
// only delays claims.
func (m *Manager) listen(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	var (
		failures int
		logs     = throttle{every: logEvery}
	)
	for ctx.Err() == nil {
		err := m.listenOnce(ctx, func() { failures = 0 })
		if ctx.Err() != nil {
			return
		}
		failures++
		if ok, suppressed := logs.allow(time.Now()); ok {
			m.log.DebugContext(ctx, "notification listener disconnected; reconnecting",
				slog.Any("error", err), slog.Int("suppressed", suppressed))
		}
		d := m.cfg.HeartbeatInterval / 10
		for i := 1; i < failures && d < m.cfg.HeartbeatInterval; i++ {
			d *= 2
		}
		d = min(d, m.cfg.HeartbeatInterval)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d/2 + m.cfg.Jitter(d/2+1)):
		}
	}
}

func (m *Manager) listenOnce(ctx context.Context, connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, m.pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("listen: connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{NotifyChannel}.Sanitize()); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	connected()
	m.nudge() // whatever was released while we were not listening
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("listen: wait: %w", err)
		}
		kind, from, _ := strings.Cut(n.Payload, ":")
		if from == m.cfg.ReplicaID || kind == "join" {
			continue // a join frees no shard; the joiner's share shows in the next heartbeat
		}
		m.nudge()
	}
}

func (m *Manager) nudge() {
	select {
	case m.notified <- struct{}{}:
	default:
	}
}
