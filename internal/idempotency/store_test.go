package idempotency_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shardwarden/shardwarden/internal/idempotency"
	"github.com/shardwarden/shardwarden/internal/pgtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func setup(t *testing.T, ttl time.Duration) (*idempotency.Store, *pgxpool.Pool) {
	t.Helper()
	pool := pgtest.Pool(t, pgtest.NewMigrated(t).URL)
	_, err := pool.Exec(context.Background(), `CREATE TABLE effects (event text, n int)`)
	require.NoError(t, err)
	s, err := idempotency.New(idempotency.Config{Pool: pool, Worker: "w", ClaimTTL: ttl})
	require.NoError(t, err)
	return s, pool
}

func count(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM effects`).Scan(&n))
	return n
}

func TestInTx(t *testing.T) {
	ctx := context.Background()
	s, pool := setup(t, time.Second)
	insert := func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO effects VALUES ('e1', 1)`)
		return err
	}

	t.Run("failure rolls back the record with the effect", func(t *testing.T) {
		boom := errors.New("boom")
		ran, err := s.InTx(ctx, "e1", func(ctx context.Context, tx pgx.Tx) error {
			require.NoError(t, insert(ctx, tx))
			return boom
		})
		require.ErrorIs(t, err, boom)
		require.False(t, ran)
		require.Equal(t, 0, count(t, pool))
		state, _, err := s.State(ctx, "e1")
		require.NoError(t, err)
		require.Empty(t, state)
	})

	t.Run("effect once across redeliveries", func(t *testing.T) {
		for i := range 3 {
			ran, err := s.InTx(ctx, "e1", insert)
			require.NoError(t, err)
			require.Equal(t, i == 0, ran)
		}
		require.Equal(t, 1, count(t, pool))
	})

	t.Run("concurrent copies serialise", func(t *testing.T) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		runs := 0
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ran, err := s.InTx(ctx, "e2", func(ctx context.Context, tx pgx.Tx) error {
					_, err := tx.Exec(ctx, `INSERT INTO effects VALUES ('e2', 1)`)
					time.Sleep(10 * time.Millisecond)
					return err
				})
				require.NoError(t, err)
				if ran {
					mu.Lock()
					runs++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		require.Equal(t, 1, runs)
		require.Equal(t, 2, count(t, pool))
	})

	t.Run("other workers keep their own records", func(t *testing.T) {
		other, err := idempotency.New(idempotency.Config{Pool: pool, Worker: "other"})
		require.NoError(t, err)
		ran, err := other.InTx(ctx, "e1", func(context.Context, pgx.Tx) error { return nil })
		require.NoError(t, err)
		require.True(t, ran)
	})
}

func TestExternal(t *testing.T) {
	ctx := context.Background()
	s, _ := setup(t, 300*time.Millisecond)

	t.Run("first attempt, then skipped once done", func(t *testing.T) {
		var got []idempotency.Attempt
		for range 2 {
			_, err := s.External(ctx, "x1", func(_ context.Context, a idempotency.Attempt) error {
				got = append(got, a)
				return nil
			})
			require.NoError(t, err)
		}
		require.Equal(t, []idempotency.Attempt{{Number: 1}}, got)
		state, attempts, err := s.State(ctx, "x1")
		require.NoError(t, err)
		require.Equal(t, "done", state)
		require.Equal(t, 1, attempts)
	})

	t.Run("a failed attempt makes the next one MaybeDone", func(t *testing.T) {
		boom := errors.New("timeout after send")
		ran, err := s.External(ctx, "x2", func(context.Context, idempotency.Attempt) error { return boom })
		require.ErrorIs(t, err, boom)
		require.True(t, ran)
		var a idempotency.Attempt
		ran, err = s.External(ctx, "x2", func(_ context.Context, at idempotency.Attempt) error { a = at; return nil })
		require.NoError(t, err)
		require.True(t, ran)
		require.Equal(t, idempotency.Attempt{Number: 2, MaybeDone: true}, a)
	})

	t.Run("a live claim excludes a concurrent copy until it expires", func(t *testing.T) {
		inside, release := make(chan struct{}), make(chan struct{})
		done := make(chan error, 1)
		go func() {
			_, err := s.External(ctx, "x3", func(context.Context, idempotency.Attempt) error {
				close(inside)
				<-release
				return nil
			})
			done <- err
		}()
		<-inside
		_, err := s.External(ctx, "x3", func(context.Context, idempotency.Attempt) error {
			t.Error("ran while another attempt held the claim")
			return nil
		})
		require.ErrorIs(t, err, idempotency.ErrInFlight)

		// The first attempt "crashed" (never finishes in time): after the TTL a new
		// attempt may claim, and knows the effect may have happened.
		var a idempotency.Attempt
		require.Eventually(t, func() bool {
			_, err := s.External(ctx, "x3", func(_ context.Context, at idempotency.Attempt) error { a = at; return nil })
			return err == nil
		}, 5*time.Second, 50*time.Millisecond)
		require.True(t, a.MaybeDone)
		close(release)
		require.NoError(t, <-done)
	})

	t.Run("prune", func(t *testing.T) {
		n, err := s.Prune(ctx, time.Hour)
		require.NoError(t, err)
		require.Zero(t, n)
		n, err = s.Prune(ctx, 0)
		require.NoError(t, err)
		require.Equal(t, int64(3), n)
	})
}
