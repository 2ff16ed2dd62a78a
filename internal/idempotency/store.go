package idempotency

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrInFlight means another attempt holds a live claim on the event: retry later.
var ErrInFlight = errors.New("idempotency: event is being handled by another attempt")

// Config for New.
type Config struct {
	Pool   *pgxpool.Pool
	Worker string // records are per worker: two workers may each handle one event
	// ClaimTTL bounds how long an External claim excludes other attempts; match it to
	// the handler timeout. Default 30s.
	ClaimTTL time.Duration
}

// Store records which events a worker has handled.
type Store struct {
	pool     *pgxpool.Pool
	worker   string
	claimTTL time.Duration
}

// New returns a store for cfg.Worker.
func New(cfg Config) (*Store, error) {
	if cfg.Pool == nil {
		return nil, errors.New("idempotency: Pool is required")
	}
	if cfg.Worker == "" {
		return nil, errors.New("idempotency: Worker is required")
	}
	cfg.ClaimTTL = cmp.Or(cfg.ClaimTTL, 30*time.Second)
	if cfg.ClaimTTL < 0 {
		return nil, fmt.Errorf("idempotency: ClaimTTL %s is negative", cfg.ClaimTTL)
	}
	return &Store{pool: cfg.Pool, worker: cfg.Worker, claimTTL: cfg.ClaimTTL}, nil
}

// InTx runs fn inside a transaction that also records eventID as done, and commits
// both together. When eventID was already recorded, fn does not run and ran is false.
func (s *Store) InTx(ctx context.Context, eventID string, fn func(ctx context.Context, tx pgx.Tx) error) (ran bool, err error) {
	if eventID == "" {
		return false, errors.New("idempotency: empty event id")
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			INSERT INTO worker_idempotency (worker, event_id, state, done_at)
			VALUES ($1, $2, 'done', now())
			ON CONFLICT (worker, event_id) DO NOTHING`, s.worker, eventID)
		if err != nil {
			return fmt.Errorf("record event %s: %w", eventID, err)
		}
		if tag.RowsAffected() == 0 {
			return nil // already handled; nothing to commit
		}
		ran = true
		return fn(ctx, tx)
	})
	if err != nil {
		return false, err
	}
	return ran, nil
}

// Attempt describes one attempt at an external effect.
type Attempt struct {
	// Number counts attempts at this event, from 1.
	Number int
	// MaybeDone is true when an earlier attempt claimed the event and did not record
	// it done: its call may have reached Discord, so this one must be idempotent.
	MaybeDone bool
}

// External runs fn, an effect outside the database, at most once to completion for
// eventID: claim, fn, mark done. When eventID is already done fn does not run and
// ran is false. ErrInFlight reports a live claim by another attempt. When fn fails
// the claim is released (the next attempt still sees MaybeDone).
func (s *Store) External(ctx context.Context, eventID string, fn func(ctx context.Context, a Attempt) error) (ran bool, err error) {
	if eventID == "" {
		return false, errors.New("idempotency: empty event id")
	}
	var attempts int
	err = s.pool.QueryRow(ctx, `
		INSERT INTO worker_idempotency AS r (worker, event_id, state, claimed_until)
		VALUES ($1, $2, 'claimed', now() + $3::float8 * interval '1 microsecond')
		ON CONFLICT (worker, event_id) DO UPDATE
		SET attempts = r.attempts + 1, claimed_until = EXCLUDED.claimed_until
		WHERE r.state = 'claimed' AND (r.claimed_until IS NULL OR r.claimed_until <= now())
		RETURNING r.attempts`, s.worker, eventID, float64(s.claimTTL.Microseconds())).Scan(&attempts)
	if errors.Is(err, pgx.ErrNoRows) {
		var state string
		if err := s.pool.QueryRow(ctx, `SELECT state FROM worker_idempotency WHERE worker = $1 AND event_id = $2`,
			s.worker, eventID).Scan(&state); err != nil {
			return false, fmt.Errorf("read claim of event %s: %w", eventID, err)
		}
		if state == "done" {
			return false, nil
		}
		return false, ErrInFlight
	}
	if err != nil {
		return false, fmt.Errorf("claim event %s: %w", eventID, err)
	}

	if ferr := fn(ctx, Attempt{Number: attempts, MaybeDone: attempts > 1}); ferr != nil {
		// Release so the retry need not wait for the TTL. Best effort: an unreleased
		// claim only delays the retry until it expires.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = s.pool.Exec(rctx, `UPDATE worker_idempotency SET claimed_until = NULL
			WHERE worker = $1 AND event_id = $2 AND state = 'claimed'`, s.worker, eventID)
		return true, ferr
	}

	// The effect happened: record it even when ctx ended meanwhile.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := s.pool.Exec(dctx, `UPDATE worker_idempotency
		SET state = 'done', done_at = now(), claimed_until = NULL
		WHERE worker = $1 AND event_id = $2`, s.worker, eventID); err != nil {
		return true, fmt.Errorf("mark event %s done: %w", eventID, err)
	}
	return true, nil
}

// State returns "claimed", "done" or "" (no record) for eventID, and the attempts.
func (s *Store) State(ctx context.Context, eventID string) (state string, attempts int, err error) {
	err = s.pool.QueryRow(ctx, `SELECT state, attempts FROM worker_idempotency WHERE worker = $1 AND event_id = $2`,
		s.worker, eventID).Scan(&state, &attempts)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, fmt.Errorf("read record of event %s: %w", eventID, err)
	}
	return state, attempts, nil
}

// Prune deletes this worker's records created before olderThan ago and returns how
// many went. Call it with at least the event stream's max age.
func (s *Store) Prune(ctx context.Context, olderThan time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM worker_idempotency
		WHERE worker = $1 AND created_at < now() - $2::float8 * interval '1 microsecond'`, s.worker, float64(olderThan.Microseconds()))
	if err != nil {
		return 0, fmt.Errorf("prune idempotency records: %w", err)
	}
	return tag.RowsAffected(), nil
}
