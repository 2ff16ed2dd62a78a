// Package pgtest gives each test its own database on the server named by
// TEST_DATABASE_URL, so tests run in parallel with real Postgres semantics
// (LISTEN/NOTIFY, advisory locks, many connections). A test that cannot reach the
// server fails; it never skips.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardwarden/shardwarden/internal/migrate"
)

// EnvVar names the admin connection string of the test server.
const EnvVar = "TEST_DATABASE_URL"

var (
	adminOnce sync.Once
	adminURL  string
	adminErr  error
)

func admin(t testing.TB) string {
	t.Helper()
	adminOnce.Do(func() {
		adminURL = os.Getenv(EnvVar)
		if adminURL == "" {
			adminErr = fmt.Errorf("%s is not set: run the suite with `make test`, which starts a throwaway Postgres", EnvVar)
		}
	})
	if adminErr != nil {
		t.Fatal(adminErr)
	}
	return adminURL
}

// DB is one test's private database.
type DB struct {
	Name string
	URL  string // connection string for this database
}

// New creates an empty database for t and drops it when t ends.
func New(t testing.TB) DB {
	t.Helper()
	base := admin(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "test_" + hex.EncodeToString(b[:])

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("pgtest: connect to %s: %v", EnvVar, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("pgtest: drop %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop %s: %v", name, err)
		}
	})

	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("pgtest: parse %s: %v", EnvVar, err)
	}
	u.Path = "/" + name
	return DB{Name: name, URL: u.String()}
}

// NewMigrated creates a database for t with every migration applied.
func NewMigrated(t testing.TB) DB {
	t.Helper()
	db := New(t)
	pool := Pool(t, db.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := migrate.Up(ctx, pool, nil); err != nil {
		t.Fatalf("pgtest: migrate %s: %v", db.Name, err)
	}
	return db
}

// Pool opens a pool on connURL, closed when t ends.
func Pool(t testing.TB, connURL string) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, connURL)
	if err != nil {
		t.Fatalf("pgtest: pool: %v", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		t.Fatalf("pgtest: ping: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}
