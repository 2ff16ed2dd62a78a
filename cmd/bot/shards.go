package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardwarden/shardwarden/internal/config"
)

// shardRow is one row of discord_bot_shards_status, as `bot shards --json`
// prints it.
type shardRow struct {
	ShardID       int      `json:"shard_id"`
	OwnerID       *string  `json:"owner_id"`
	Epoch         int64    `json:"epoch"`
	State         string   `json:"state"`
	Status        string   `json:"status"` // held, stale or free
	HeartbeatAgeS *float64 `json:"heartbeat_age_s"`
	Resumable     bool     `json:"resumable"`
	ResumeSeq     *int64   `json:"resume_seq"`
	Guilds        int      `json:"guilds"`
	LastEventAgeS *float64 `json:"last_event_age_s"`
}

const shardsSQL = `
SELECT shard_id, owner_id, epoch, state, status, heartbeat_age_s::float8, resumable,
       resume_seq, guilds, last_event_age_s::float8
  FROM discord_bot_shards_status
 ORDER BY shard_id`

// clusterSummary is the line under the table.
type clusterSummary struct {
	shardCount   *int // nil: no replica has registered yet
	liveReplicas int
}

const summarySQL = `
SELECT (SELECT shard_count FROM discord_bot_cluster),
       (SELECT count(*) FROM discord_bot_replicas WHERE now() - heartbeat_at <= lease_ttl)`

// runShards prints the lease table: who drives which shard, how fresh its lease
// is, and whether a new owner could RESUME it.
func runShards(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bot shards", flag.ContinueOnError)
	fs.SetOutput(stderr)
	l := config.NewLoader(fs, os.Getenv)
	var db dbSettings
	db.bind(l)
	asJSON := fs.Bool("json", false, "print a JSON array (one object per shard) instead of a table")
	if err := parse(l, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &config.Error{Var: "arguments", Reason: fmt.Sprintf("shards takes no arguments, got %q", fs.Args())}
	}
	pool, err := db.openPool(ctx, "shardwarden-bot-shards")
	if err != nil {
		return err
	}
	defer pool.Close()

	rows, sum, err := readShards(ctx, pool)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		fmt.Fprintln(stderr, "no lease tables in this database yet: run `bot migrate` (or start a replica)")
		rows, err = nil, nil
	}
	if err != nil {
		return err
	}
	if *asJSON {
		if rows == nil {
			rows = []shardRow{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	return printShards(stdout, rows, sum)
}

func readShards(ctx context.Context, pool *pgxpool.Pool) ([]shardRow, clusterSummary, error) {
	var sum clusterSummary
	rows, err := pool.Query(ctx, shardsSQL)
	if err != nil {
		return nil, sum, fmt.Errorf("read shards: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[shardRow])
	if err != nil {
		return nil, sum, fmt.Errorf("read shards: %w", err)
	}
	if err := pool.QueryRow(ctx, summarySQL).Scan(&sum.shardCount, &sum.liveReplicas); err != nil {
		return nil, sum, fmt.Errorf("read cluster: %w", err)
	}
	return out, sum, nil
}

func printShards(w io.Writer, rows []shardRow, sum clusterSummary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tOWNER\tEPOCH\tSTATE\tSTATUS\tHEARTBEAT\tRESUMABLE\tGUILDS")
	counts := map[string]int{}
	for _, r := range rows {
		counts[r.Status]++
		owner, age := "-", "-"
		if r.OwnerID != nil {
			owner = *r.OwnerID
		}
		if r.HeartbeatAgeS != nil && r.Status != "free" {
			age = strconv.FormatFloat(*r.HeartbeatAgeS, 'f', 1, 64) + "s ago"
		}
		resumable := "no"
		if r.Resumable {
			resumable = "yes"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t%s\t%d\n", r.ShardID, owner, r.Epoch, r.State, r.Status, age, resumable, r.Guilds)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	count := "not set yet (no replica has started)"
	if sum.shardCount != nil {
		count = strconv.Itoa(*sum.shardCount)
	}
	_, err := fmt.Fprintf(w, "\n%d shards: %d held, %d stale, %d free; cluster shard count %s; %d live replica(s)\n",
		len(rows), counts["held"], counts["stale"], counts["free"], count, sum.liveReplicas)
	return err
}
