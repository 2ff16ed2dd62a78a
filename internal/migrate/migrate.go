// Package migrate applies the embedded schema (sql/migrations) with goose.
//
// Many replicas may start at once: goose holds a Postgres session advisory lock for
// the whole run, so exactly one applies the migrations and the others wait, then
// find nothing left to do.
package migrate

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	schema "github.com/shardwarden/shardwarden/sql"
)

// lockID namespaces the migration lock away from goose's default and from the
// shard-claim advisory locks (which use the two-int4 key space).
const lockID int64 = 0x5348_4152_4457 // "SHARDW"

// Result reports what Up did.
type Result struct {
	Applied []int64 // versions applied by this call
	Current int64   // schema version afterwards
}

// Up applies every pending migration. It is safe to call from many processes at
// once.
func Up(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) (Result, error) {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := newProvider(db, logger)
	if err != nil {
		return Result{}, err
	}
	results, err := p.Up(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("apply migrations: %w", err)
	}
	var res Result
	for _, r := range results {
		res.Applied = append(res.Applied, r.Source.Version)
	}
	if res.Current, err = p.GetDBVersion(ctx); err != nil {
		return res, fmt.Errorf("read schema version: %w", err)
	}
	return res, nil
}

// Latest is the highest migration version embedded in this binary.
func Latest() (int64, error) {
	sub, err := migrationsFS()
	if err != nil {
		return 0, err
	}
	var latest int64
	entries, err := fs.ReadDir(sub, ".")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		var v int64
		if _, err := fmt.Sscanf(e.Name(), "%d_", &v); err == nil && v > latest {
			latest = v
		}
	}
	return latest, nil
}

func migrationsFS() (fs.FS, error) {
	sub, err := fs.Sub(schema.Migrations, "migrations")
	if err != nil {
		return nil, fmt.Errorf("embedded migrations: %w", err)
	}
	return sub, nil
}

func newProvider(db *sql.DB, logger *slog.Logger) (*goose.Provider, error) {
	sub, err := migrationsFS()
	if err != nil {
		return nil, err
	}
	// Retry the lock every second for up to five minutes: a replica that loses the
	// race waits for the winner instead of failing its start.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(lockID), lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, fmt.Errorf("migration locker: %w", err)
	}
	opts := []goose.ProviderOption{goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true)}
	if logger != nil {
		opts = append(opts, goose.WithSlog(logger.With(slog.String("component", "migrate"))))
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub, opts...)
	if err != nil {
		return nil, fmt.Errorf("migration provider: %w", err)
	}
	return p, nil
}
