package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardwarden/shardwarden/internal/fakediscord"
	"github.com/shardwarden/shardwarden/internal/localcluster"
)

// newDB creates a database for one run and returns its URL; dropped by the returned
// func.
func (b *bench) newDB(ctx context.Context, prefix string) (string, func(), error) {
	var r [4]byte
	_, _ = rand.Read(r[:])
	name := prefix + "_" + hex.EncodeToString(r[:])
	conn, err := pgx.Connect(ctx, b.adminURL)
	if err != nil {
		return "", nil, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", nil, fmt.Errorf("create database: %w", err)
	}
	u, err := url.Parse(b.adminURL)
	if err != nil {
		return "", nil, err
	}
	u.Path = "/" + name
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, b.adminURL); err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			c.Close(ctx)
		}
	}
	return u.String(), drop, nil
}

// run is one cluster for one part of the benchmark.
type benchRun struct {
	*localcluster.Cluster
	pool  *pgxpool.Pool
	drop  func()
	start time.Time // when the bots were launched
	// natsProfileAddr serves nats-server's /debug/pprof when the bench profiles.
	natsProfileAddr string
}

func (b *bench) startRun(ctx context.Context, name string, o localcluster.Options) (*benchRun, error) {
	dbURL, drop, err := b.newDB(ctx, "bench_"+name)
	if err != nil {
		return nil, err
	}
	o.Bins, o.DatabaseURL = b.bins, dbURL
	o.Dir = filepath.Join(b.dir, name)
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		drop()
		return nil, err
	}
	r := &benchRun{drop: drop, start: time.Now()}
	if b.profileDir != "" {
		if r.natsProfileAddr, err = localcluster.FreeAddr(); err != nil {
			drop()
			return nil, err
		}
		_, port, _ := net.SplitHostPort(r.natsProfileAddr)
		o.NATSArgs = append(o.NATSArgs, "--profile", port)
	}
	if r.Cluster, err = localcluster.Start(ctx, o); err != nil {
		drop()
		return nil, err
	}
	if r.pool, err = pgxpool.New(ctx, dbURL); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *benchRun) close() {
	if r.pool != nil {
		r.pool.Close()
	}
	r.Cluster.Close()
	r.drop()
}

// waitReady waits until every shard is READY in its lease row and has a live
// session at the fake, and the running replicas are balanced (max - min <= 1).
func (r *benchRun) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, detail, err := r.ready(ctx)
		if err == nil && ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("shards not ready after %s: %s %v", timeout, detail, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (r *benchRun) ready(ctx context.Context) (bool, string, error) {
	rows, err := r.pool.Query(ctx, `SELECT coalesce(owner_id, ''), state FROM discord_bot_shards`)
	if err != nil {
		return false, "", err
	}
	per := map[string]int{}
	n, readyRows := 0, 0
	for rows.Next() {
		var owner, state string
		if err := rows.Scan(&owner, &state); err != nil {
			rows.Close()
			return false, "", err
		}
		n++
		if state == "ready" && owner != "" {
			readyRows++
			per[owner]++
		}
	}
	rows.Close()
	if n != r.Opts.Shards || readyRows != n {
		return false, fmt.Sprintf("%d/%d rows ready", readyRows, n), nil
	}
	lo, hi := 1<<30, 0
	for _, bot := range r.Bots() {
		if bot.Proc.Running() {
			lo, hi = min(lo, per[bot.ID]), max(hi, per[bot.ID])
		}
	}
	if hi-lo > 1 {
		return false, fmt.Sprintf("unbalanced %v", per), nil
	}
	sessions, err := r.Admin.Sessions(ctx)
	if err != nil {
		return false, "", err
	}
	live := map[int]bool{}
	for _, s := range sessions {
		if s.Live {
			live[s.Shard] = true
		}
	}
	return len(live) == r.Opts.Shards, fmt.Sprintf("%d live sessions", len(live)), nil
}

func (r *benchRun) sessions(ctx context.Context) ([]fakediscord.SessionInterval, error) {
	return r.Admin.Sessions(ctx)
}

// percentile of sorted-in-place durations, nearest rank.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(p*float64(len(d)) + 0.5)
	i = min(max(i-1, 0), len(d)-1)
	return d[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// rssKiB reads a process's resident set size from /proc.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// cpuTime reads a process's user+system CPU time from /proc.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) start past ')'.
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks, nil
}

// cpuMeter reports how the CPU was shared between processes over a phase.
type cpuMeter struct {
	names []string
	pids  []int
	start []time.Duration
	at    time.Time
}

func newCPUMeter(procs map[string]int) *cpuMeter {
	m := &cpuMeter{at: time.Now()}
	for name, pid := range procs {
		t, _ := cpuTime(pid)
		m.names, m.pids, m.start = append(m.names, name), append(m.pids, pid), append(m.start, t)
	}
	return m
}

// String reports each process's CPU use in cores over the phase.
func (m *cpuMeter) String() string {
	wall := time.Since(m.at).Seconds()
	parts := make([]string, 0, len(m.names))
	for i, pid := range m.pids {
		t, err := cpuTime(pid)
		if err != nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.2f", m.names[i], (t-m.start[i]).Seconds()/wall))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ") + " cores"
}
