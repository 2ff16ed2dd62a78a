package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shardwarden/shardwarden/internal/fakediscord"
)

// summary is what one scenario proves, printed as its one summary line.
type summary struct {
	Scenario          string
	Events            int // unique events the fake dispatched
	Processed         int // unique events the counting worker logged
	Lost              int // dispatched, never logged
	Duplicates        int // logged more than once
	Identifies        int
	Resumes           int
	HandoffIdentifies int // IDENTIFYs on a shard that already had a session
	HandoffP50        time.Duration
	HandoffMax        time.Duration
	Overlap           time.Duration
	Violations        []fakediscord.Violation
}

func (s summary) line() string {
	return fmt.Sprintf("e2e scenario=%s events=%d processed=%d lost=%d duplicates=%d identifies=%d resumes=%d handoff_identifies=%d handoff_p50_ms=%d handoff_max_ms=%d overlap_ms=%d",
		s.Scenario, s.Events, s.Processed, s.Lost, s.Duplicates, s.Identifies, s.Resumes, s.HandoffIdentifies,
		s.HandoffP50.Milliseconds(), s.HandoffMax.Milliseconds(), s.Overlap.Milliseconds())
}

type ledgerKey struct {
	shard   int
	session string
	seq     int64
}

// parseMsgID splits "<shard>:<session>:<seq>" (bus.MsgID).
func parseMsgID(id string) (ledgerKey, bool) {
	first, last := strings.IndexByte(id, ':'), strings.LastIndexByte(id, ':')
	if first <= 0 || last <= first {
		return ledgerKey{}, false
	}
	shard, err1 := strconv.Atoi(id[:first])
	seq, err2 := strconv.ParseInt(id[last+1:], 10, 64)
	if err1 != nil || err2 != nil {
		return ledgerKey{}, false
	}
	return ledgerKey{shard: shard, session: id[first+1 : last], seq: seq}, true
}

// tally compares the fake's ledger with the event log, by event id: a dispatch the
// fake sent twice (a RESUME replay) is one event; an event logged under two message
// ids is a duplicate.
func (c *cluster) tally(ctx context.Context) (s summary, unknown []string, err error) {
	ledger := map[ledgerKey]uint64{}
	ids := map[uint64]bool{}
	if err := c.Admin.Events(ctx, func(e fakediscord.Event) {
		ledger[ledgerKey{e.Shard, e.SessionID, e.Seq}] = e.ID
		ids[e.ID] = true
	}); err != nil {
		return s, nil, err
	}
	rows, err := c.pool.Query(ctx, `SELECT msg_id FROM discord_event_log`)
	if err != nil {
		return s, nil, fmt.Errorf("read event log: %w", err)
	}
	defer rows.Close()
	seen := map[uint64]int{}
	for rows.Next() {
		var msgID string
		if err := rows.Scan(&msgID); err != nil {
			return s, nil, err
		}
		k, ok := parseMsgID(msgID)
		id, known := ledger[k]
		if !ok || !known {
			unknown = append(unknown, msgID)
			continue
		}
		seen[id]++
	}
	if err := rows.Err(); err != nil {
		return s, nil, err
	}
	s.Events, s.Processed = len(ids), len(seen)
	for id := range ids {
		if seen[id] == 0 {
			s.Lost++
		}
	}
	for _, n := range seen {
		s.Duplicates += n - 1
	}
	return s, unknown, nil
}

// finish stops the traffic, waits for the pipeline to drain, fills in the referee's
// figures and prints the scenario's summary line (also appended to
// $E2E_SUMMARY_FILE, which scripts/test.sh prints at the end).
func (c *cluster) finish(name string, since time.Time) summary {
	c.t.Helper()
	c.stopTraffic()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Drain: the event log catches up with the ledger, and stays caught up.
	var s summary
	var unknown []string
	var err error
	deadline := time.Now().Add(60 * time.Second)
	stable := 0
	for {
		s, unknown, err = c.tally(ctx)
		if err != nil {
			c.t.Fatalf("tally: %v", err)
		}
		if s.Lost == 0 {
			stable++
		} else {
			stable = 0
		}
		if stable >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	s.Scenario = name

	rep, err := c.Admin.Report(ctx)
	if err != nil {
		c.t.Fatalf("referee: %v", err)
	}
	for _, st := range rep.Shards {
		s.Identifies += st.Identifies
		s.Resumes += st.Resumes
	}
	for _, o := range rep.Overlaps {
		s.Overlap += o.Duration
	}
	s.Violations = rep.Violations
	s.HandoffIdentifies, s.HandoffP50, s.HandoffMax = handoffs(rep.Sessions, since)

	line := s.line()
	fmt.Println(line)
	if path := os.Getenv("E2E_SUMMARY_FILE"); path != "" {
		if f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			fmt.Fprintln(f, line)
			f.Close()
		}
	}
	if len(unknown) > 0 {
		c.t.Errorf("%d logged events the fake never dispatched, e.g. %v", len(unknown), unknown[:min(5, len(unknown))])
	}
	return s
}

// handoffs reads the session intervals of every shard in start order: each interval
// after the shard's first that began after since is a takeover. A takeover by
// IDENTIFY spent a new session; one by RESUME kept it, and its gap is the time from
// the previous interval's end to the RESUME.
func handoffs(sessions []fakediscord.SessionInterval, since time.Time) (identifies int, p50, maxGap time.Duration) {
	byShard := map[int][]fakediscord.SessionInterval{}
	for _, s := range sessions {
		byShard[s.Shard] = append(byShard[s.Shard], s)
	}
	var gaps []time.Duration
	for _, list := range byShard {
		sort.Slice(list, func(i, j int) bool { return list[i].Start.Before(list[j].Start) })
		for i := 1; i < len(list); i++ {
			prev, cur := list[i-1], list[i]
			if cur.Start.Before(since) {
				continue
			}
			switch cur.Kind {
			case "identify":
				identifies++
			case "resume":
				if !prev.End.IsZero() && !cur.Start.Before(prev.End) {
					gaps = append(gaps, cur.Start.Sub(prev.End))
				}
			}
		}
	}
	if len(gaps) == 0 {
		return identifies, 0, 0
	}
	slices.Sort(gaps)
	return identifies, gaps[len(gaps)/2], gaps[len(gaps)-1]
}
