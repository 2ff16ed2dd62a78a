package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/shardwarden/shardwarden/internal/config"
	"github.com/shardwarden/shardwarden/internal/migrate"
)

// runMigrate applies every pending migration (safe while replicas start: one
// process applies, the others wait) and prints what it did.
func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bot migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	l := config.NewLoader(fs, os.Getenv)
	var db dbSettings
	var logs logSettings
	db.bind(l)
	logs.bind(l)
	if err := parse(l, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &config.Error{Var: "arguments", Reason: fmt.Sprintf("migrate takes no arguments, got %q", fs.Args())}
	}
	logger, err := logs.logger(stderr, db.secrets()...)
	if err != nil {
		return err
	}
	pool, err := db.openPool(ctx, "shardwarden-bot-migrate")
	if err != nil {
		return err
	}
	defer pool.Close()

	res, err := migrate.Up(ctx, pool, logger)
	if err != nil {
		return err
	}
	latest, err := migrate.Latest()
	if err != nil {
		return err
	}
	if len(res.Applied) == 0 {
		fmt.Fprintf(stdout, "schema up to date at version %d\n", res.Current)
	} else {
		fmt.Fprintf(stdout, "applied %d migration(s): %v\nschema at version %d\n", len(res.Applied), res.Applied, res.Current)
	}
	if res.Current > latest {
		fmt.Fprintf(stderr, "note: the database is at version %d, newer than this binary's %d\n", res.Current, latest)
	}
	return nil
}
