package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/shardwarden/shardwarden/internal/buildinfo"
	"github.com/shardwarden/shardwarden/internal/migrate"
)

// runVersion prints the build's version and the schema version it migrates to.
func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bot version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	schema, err := migrate.Latest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s (schema %d)\n", buildinfo.String(), schema)
	return nil
}
