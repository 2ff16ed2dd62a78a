package shardlease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// NotifyChannel is the LISTEN/NOTIFY channel: payloads "join:ID", "release:ID" and
// "leave:ID" wake peers early. Polling stays the truth; a missed notification
// only delays a claim until the next heartbeat.
const NotifyChannel = "discord_bot_shards"

// The claim lock lives in the two-int4 advisory key space, namespaced by the
// shards table's oid; -1 keeps it clear of any future per-shard key (shard ids
// are >= 0). Two-int4 keys never collide with goose's bigint migration lock.
const claimLockSQL = `SELECT pg_try_advisory_xact_lock('discord_bot_shards'::regclass::oid::int, -1)`

// A lease is stale when now() - heartbeat_at exceeds the greater of the TTL its
// owner wrote and ours ($ttl, in seconds): a peer configured with a longer
// interval is never judged by our shorter one.

const registerClusterSQL = `
INSERT INTO discord_bot_cluster (shard_count) VALUES ($1) ON CONFLICT (singleton) DO NOTHING`

const readClusterSQL = `SELECT shard_count FROM discord_bot_cluster`

const insertShardsSQL = `
INSERT INTO discord_bot_shards (shard_id)
SELECT g FROM generate_series(0, $1::int - 1) AS g
ON CONFLICT (shard_id) DO NOTHING`

// upsertReplicaSQL takes the replica row when it is ours (same instance), new,
// or left stale by a crashed predecessor; it returns no row when another live
// process holds the id.
const upsertReplicaSQL = `
INSERT INTO discord_bot_replicas AS r (replica_id, instance_id, version, lease_ttl, started_at, heartbeat_at, draining)
VALUES ($1, $2::uuid, $3, make_interval(secs => $4::float8), now(), now(), false)
ON CONFLICT (replica_id) DO UPDATE
   SET instance_id  = EXCLUDED.instance_id,
       version      = EXCLUDED.version,
       lease_ttl    = EXCLUDED.lease_ttl,
       started_at   = CASE WHEN r.instance_id = EXCLUDED.instance_id THEN r.started_at ELSE now() END,
       heartbeat_at = now(),
       draining     = false
 WHERE r.instance_id = EXCLUDED.instance_id
    OR now() - r.heartbeat_at > greatest(r.lease_ttl, EXCLUDED.lease_ttl)
RETURNING true`

const readReplicaSQL = `
SELECT instance_id::text, version,
       extract(epoch FROM now() - heartbeat_at)::float8,
       extract(epoch FROM greatest(lease_ttl, make_interval(secs => $2::float8)))::float8
  FROM discord_bot_replicas WHERE replica_id = $1`

// heartbeatSQL is the one statement per interval: it renews the replica row and,
// only if that row is still ours, every held lease fenced by owner and epoch,
// writing each lease's latest status; then it reads what the claim logic needs
// (live replicas, our rank among them, free and stale shards) from the same
// snapshot. Its cost in statements does not grow with the shard count.
const heartbeatSQL = `
WITH rep AS (
    UPDATE discord_bot_replicas
       SET heartbeat_at = now(), lease_ttl = make_interval(secs => $3::float8), draining = $4::bool
     WHERE replica_id = $1 AND instance_id = $2::uuid
 RETURNING replica_id
), renewed AS (
    UPDATE discord_bot_shards s
       SET heartbeat_at  = now(),
           lease_ttl     = make_interval(secs => $3::float8),
           state         = u.state,
           session_id    = nullif(u.session_id, ''),
           resume_url    = nullif(u.resume_url, ''),
           resume_seq    = CASE WHEN u.session_id = '' THEN NULL ELSE u.resume_seq END,
           guilds        = u.guilds,
           last_event_at = u.last_event_at
      FROM unnest($5::int[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::int[], $12::timestamptz[])
           AS u(shard_id, epoch, state, session_id, resume_url, resume_seq, guilds, last_event_at)
     WHERE s.shard_id = u.shard_id AND s.owner_id = $1 AND s.epoch = u.epoch
       AND EXISTS (SELECT FROM rep)
 RETURNING s.shard_id
), live AS (
    SELECT r.replica_id FROM discord_bot_replicas r
     WHERE CASE WHEN r.replica_id = $1 THEN NOT $4::bool
                ELSE NOT r.draining
                     AND now() - r.heartbeat_at <= greatest(r.lease_ttl, make_interval(secs => $3::float8))
           END
)
SELECT EXISTS (SELECT FROM rep),
       coalesce((SELECT array_agg(shard_id) FROM renewed), '{}'::int[]),
       (SELECT count(*) FROM live),
       (SELECT count(*) FROM live WHERE replica_id COLLATE "C" < $1 COLLATE "C"),
       (SELECT count(*) FROM discord_bot_shards WHERE owner_id IS NULL),
       (SELECT count(*) FROM discord_bot_shards
         WHERE owner_id IS NOT NULL
           AND (heartbeat_at IS NULL
                OR now() - heartbeat_at > greatest(lease_ttl, make_interval(secs => $3::float8)))),
       -- Seconds until the first lease of another replica goes stale if it is not
       -- renewed: a claim scheduled for that moment takes over a dead peer's shards
       -- at the stale threshold instead of up to one interval later.
       (SELECT coalesce(extract(epoch FROM min(heartbeat_at
                   + greatest(lease_ttl, make_interval(secs => $3::float8)) - now())), -1)::float8
          FROM discord_bot_shards
         WHERE owner_id IS NOT NULL AND owner_id <> $1 AND heartbeat_at IS NOT NULL)`

// claimSQL runs inside the claim transaction, after the advisory lock, so its
// snapshot (READ COMMITTED: taken at this statement) sees every earlier claim. It
// computes this replica's share from the live replicas (fair share with the
// remainder going to the lowest ids, so shares add up to the shard count), takes
// free shards first, then stale ones, never those in $6, and forgets replica
// rows long gone. The UPDATE re-checks staleness, so an owner's renewal that
// commits first wins the row.
const claimSQL = `
WITH me AS (
    SELECT FROM discord_bot_replicas
     WHERE replica_id = $1 AND instance_id = $2::uuid AND NOT draining
), live AS (
    SELECT r.replica_id FROM discord_bot_replicas r
     WHERE r.replica_id = $1
        OR (NOT r.draining
            AND now() - r.heartbeat_at <= greatest(r.lease_ttl, make_interval(secs => $3::float8)))
), share AS (
    SELECT nullif(count(*), 0)::int AS n,
           count(*) FILTER (WHERE replica_id COLLATE "C" < $1 COLLATE "C")::int AS rank
      FROM live
), quota AS (
    SELECT CASE WHEN EXISTS (SELECT FROM me)
                THEN greatest(0, $4::int / n + CASE WHEN rank < $4::int % n THEN 1 ELSE 0 END - $5::int)
                ELSE 0 END AS n
      FROM share
), gone AS (
    DELETE FROM discord_bot_replicas r
     WHERE r.replica_id <> $1
       AND now() - r.heartbeat_at > 2 * greatest(r.lease_ttl, make_interval(secs => $3::float8))
), cand AS (
    SELECT s.shard_id, s.owner_id AS prev_owner
      FROM discord_bot_shards s
     WHERE (s.owner_id IS NULL OR s.heartbeat_at IS NULL
            OR now() - s.heartbeat_at > greatest(s.lease_ttl, make_interval(secs => $3::float8)))
       AND s.shard_id <> ALL ($6::int[])
     ORDER BY s.owner_id IS NOT NULL, s.shard_id
     LIMIT (SELECT coalesce(n, 0) FROM quota)
)
UPDATE discord_bot_shards s
   SET owner_id = $1, epoch = s.epoch + 1, state = 'connecting',
       claimed_at = now(), heartbeat_at = now(),
       lease_ttl = make_interval(secs => $3::float8), released_at = NULL
  FROM cand
 WHERE s.shard_id = cand.shard_id
   AND (s.owner_id IS NULL OR s.heartbeat_at IS NULL
        OR now() - s.heartbeat_at > greatest(s.lease_ttl, make_interval(secs => $3::float8)))
RETURNING s.shard_id, s.epoch, coalesce(cand.prev_owner, ''),
          coalesce(s.session_id, ''), coalesce(s.resume_url, ''), coalesce(s.resume_seq, 0),
          s.guilds, s.last_event_at`

// releaseSQL saves each lease's final state and frees its row, fenced by owner
// and epoch, in one statement; peers are told with one NOTIFY when any row was
// released (delivered at commit).
const releaseSQL = `
WITH r AS (
    UPDATE discord_bot_shards s
       SET owner_id      = NULL,
           state         = 'free',
           released_at   = now(),
           session_id    = nullif(u.session_id, ''),
           resume_url    = nullif(u.resume_url, ''),
           resume_seq    = CASE WHEN u.session_id = '' THEN NULL ELSE u.resume_seq END,
           guilds        = u.guilds,
           last_event_at = u.last_event_at
      FROM unnest($2::int[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::int[], $8::timestamptz[])
           AS u(shard_id, epoch, session_id, resume_url, resume_seq, guilds, last_event_at)
     WHERE s.shard_id = u.shard_id AND s.owner_id = $1 AND s.epoch = u.epoch
 RETURNING s.shard_id
), notified AS (
    SELECT pg_notify($9, $10) FROM (SELECT FROM r LIMIT 1) AS any_row
)
SELECT coalesce((SELECT array_agg(shard_id) FROM r), '{}'::int[]), (SELECT count(*) FROM notified)`

const leaveSQL = `
WITH gone AS (
    DELETE FROM discord_bot_replicas WHERE replica_id = $1 AND instance_id = $2::uuid
)
SELECT pg_notify($3, $4)`

// heartbeatResult is what one heartbeat learned.
type heartbeatResult struct {
	replicaOK bool    // the replica row is still ours
	renewed   []int32 // shards renewed
	live      int     // live, non-draining replicas, this one included unless draining
	rank      int     // live replicas with a smaller id
	free      int     // shards without owner
	stale     int     // owned shards whose lease is stale
	// nextStale is how long until the first lease of another replica goes stale
	// unless renewed (zero: none, or already stale).
	nextStale time.Duration
}

// target is this replica's share: the shards divided by the live replicas, the
// remainder going to the replicas with the smallest ids. Shares add up to the
// shard count, so every shard has a taker and the spread is at most one.
func (r heartbeatResult) target(shards int) int {
	if r.live <= 0 {
		return 0
	}
	t := shards / r.live
	if r.rank < shards%r.live {
		t++
	}
	return t
}

// renewal is one held lease as the heartbeat sends it.
type renewal struct {
	shardID int
	epoch   int64
	status  Status
}

// releaseItem is one lease to release, with the state to save.
type releaseItem struct {
	shardID int
	epoch   int64
	status  Status
	reason  string // "" when the lease was fenced (not counted as a release)
}

// claimed is one shard the claim took, with what the previous owner saved.
type claimed struct {
	shardID     int
	epoch       int64
	prevOwner   string
	resume      ResumeState
	guilds      int
	lastEventAt time.Time
}

// duplicateError says who holds our replica id.
type duplicateError struct {
	replicaID, instanceID, version string
	age, ttl                       time.Duration
}

func (e *duplicateError) Error() string {
	return fmt.Sprintf("%v: replica id %q is held by instance %s (version %q), last heartbeat %s ago; it counts as gone after %s without one",
		ErrDuplicateReplica, e.replicaID, e.instanceID, e.version, e.age.Round(time.Millisecond), e.ttl)
}

func (e *duplicateError) Unwrap() error { return ErrDuplicateReplica }

func seconds(d time.Duration) float64 { return d.Seconds() }

func timestamptz(t time.Time) pgtype.Timestamptz {
	return pgtype.Timestamptz{Time: t, Valid: !t.IsZero()}
}

// register stores the cluster's shard count (first replica) and the shard rows,
// and takes the replica row. It fails with ErrShardCountMismatch or a
// duplicateError before touching the replica row.
func (m *Manager) register(ctx context.Context) error {
	tx, err := m.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return fmt.Errorf("register: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	n := m.cfg.ShardCount
	if _, err := tx.Exec(ctx, registerClusterSQL, n); err != nil {
		return fmt.Errorf("register: store shard count: %w", err)
	}
	var clusterCount int
	if err := tx.QueryRow(ctx, readClusterSQL).Scan(&clusterCount); err != nil {
		return fmt.Errorf("register: read shard count: %w", err)
	}
	if clusterCount != n {
		return fmt.Errorf("%w: this replica is configured with %d shards, the cluster runs %d (discord_bot_cluster); it will not claim until they agree",
			ErrShardCountMismatch, n, clusterCount)
	}
	if _, err := tx.Exec(ctx, insertShardsSQL, n); err != nil {
		return fmt.Errorf("register: insert shard rows: %w", err)
	}
	var ok bool
	err = tx.QueryRow(ctx, upsertReplicaSQL, m.cfg.ReplicaID, m.instanceID, m.cfg.Version, seconds(m.ttl)).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		d := &duplicateError{replicaID: m.cfg.ReplicaID}
		var age, ttl float64
		if err := tx.QueryRow(ctx, readReplicaSQL, m.cfg.ReplicaID, seconds(m.ttl)).Scan(&d.instanceID, &d.version, &age, &ttl); err != nil {
			return fmt.Errorf("%w: replica id %q is held by another live instance (details: %v)", ErrDuplicateReplica, m.cfg.ReplicaID, err)
		}
		d.age, d.ttl = time.Duration(age*float64(time.Second)), time.Duration(ttl*float64(time.Second))
		return d
	}
	if err != nil {
		return fmt.Errorf("register: replica row: %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", NotifyChannel, "join:"+m.cfg.ReplicaID); err != nil {
		return fmt.Errorf("register: notify: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("register: commit: %w", err)
	}
	return nil
}

// heartbeat sends the one renewal statement.
func (m *Manager) sendHeartbeat(ctx context.Context, draining bool, leases []renewal) (heartbeatResult, error) {
	n := len(leases)
	ids, epochs := make([]int32, n), make([]int64, n)
	states, sessions, urls := make([]string, n), make([]string, n), make([]string, n)
	seqs, guilds := make([]int64, n), make([]int32, n)
	lastEvents := make([]pgtype.Timestamptz, n)
	for i, l := range leases {
		ids[i], epochs[i] = int32(l.shardID), l.epoch
		states[i] = string(l.status.State)
		sessions[i], urls[i], seqs[i] = l.status.Resume.SessionID, l.status.Resume.ResumeURL, l.status.Resume.Seq
		guilds[i] = clampInt32(l.status.Guilds)
		lastEvents[i] = timestamptz(l.status.LastEventAt)
	}
	m.met.heartbeatStatements.Inc()
	var res heartbeatResult
	var live, rank, free, stale int64
	var nextStale float64
	err := m.pool.QueryRow(ctx, heartbeatSQL,
		m.cfg.ReplicaID, m.instanceID, seconds(m.ttl), draining,
		ids, epochs, states, sessions, urls, seqs, guilds, lastEvents,
	).Scan(&res.replicaOK, &res.renewed, &live, &rank, &free, &stale, &nextStale)
	if err != nil {
		return heartbeatResult{}, fmt.Errorf("heartbeat: %w", err)
	}
	res.live, res.rank, res.free, res.stale = int(live), int(rank), int(free), int(stale)
	if nextStale >= 0 {
		res.nextStale = time.Duration(nextStale * float64(time.Second))
	}
	return res, nil
}

var errClaimBusy = errors.New("claim lock held by a peer")

// claim takes up to this replica's share in one READ COMMITTED transaction
// guarded by one advisory lock. held is how many shards this replica runs;
// exclude are shards it must not take now.
func (m *Manager) claim(ctx context.Context, held int, exclude []int32) ([]claimed, error) {
	tx, err := m.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return nil, fmt.Errorf("claim: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	var locked bool
	if err := tx.QueryRow(ctx, claimLockSQL).Scan(&locked); err != nil {
		return nil, fmt.Errorf("claim: lock: %w", err)
	}
	if !locked {
		return nil, errClaimBusy
	}
	if exclude == nil {
		exclude = []int32{}
	}
	rows, err := tx.Query(ctx, claimSQL, m.cfg.ReplicaID, m.instanceID, seconds(m.ttl), m.cfg.ShardCount, held, exclude)
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	var out []claimed
	for rows.Next() {
		var c claimed
		var lastEvent pgtype.Timestamptz
		var guilds int32
		if err := rows.Scan(&c.shardID, &c.epoch, &c.prevOwner, &c.resume.SessionID, &c.resume.ResumeURL, &c.resume.Seq, &guilds, &lastEvent); err != nil {
			rows.Close()
			return nil, fmt.Errorf("claim: scan: %w", err)
		}
		c.guilds = int(guilds)
		if lastEvent.Valid {
			c.lastEventAt = lastEvent.Time
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("claim: commit: %w", err)
	}
	return out, nil
}

// release saves and frees the given leases in one fenced statement and returns
// the shards actually released (a lease lost meanwhile matches no row).
func (m *Manager) release(ctx context.Context, items []releaseItem) ([]int32, error) {
	n := len(items)
	ids, epochs := make([]int32, n), make([]int64, n)
	sessions, urls := make([]string, n), make([]string, n)
	seqs, guilds := make([]int64, n), make([]int32, n)
	lastEvents := make([]pgtype.Timestamptz, n)
	for i, it := range items {
		ids[i], epochs[i] = int32(it.shardID), it.epoch
		sessions[i], urls[i], seqs[i] = it.status.Resume.SessionID, it.status.Resume.ResumeURL, it.status.Resume.Seq
		guilds[i] = clampInt32(it.status.Guilds)
		lastEvents[i] = timestamptz(it.status.LastEventAt)
	}
	var released []int32
	var notified int64
	err := m.pool.QueryRow(ctx, releaseSQL, m.cfg.ReplicaID, ids, epochs, sessions, urls, seqs, guilds, lastEvents,
		NotifyChannel, "release:"+m.cfg.ReplicaID).Scan(&released, &notified)
	if err != nil {
		return nil, fmt.Errorf("release %d shards: %w", n, err)
	}
	return released, nil
}

// leave deletes the replica row (only if still ours) and tells peers.
func (m *Manager) leave(ctx context.Context) error {
	if _, err := m.pool.Exec(ctx, leaveSQL, m.cfg.ReplicaID, m.instanceID, NotifyChannel, "leave:"+m.cfg.ReplicaID); err != nil {
		return fmt.Errorf("delete replica row: %w", err)
	}
	return nil
}

func clampInt32(v int) int32 {
	return int32(max(0, min(v, 1<<31-1)))
}

// StoredShardCount is the shard count the cluster's first replica stored, and
// false when no replica has run against this database yet. SHARD_COUNT=auto uses
// it: asking Discord again at every start would make replicas started after a
// change in its recommendation refuse to claim (ErrShardCountMismatch).
func StoredShardCount(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int, bool, error) {
	var n int
	err := db.QueryRow(ctx, readClusterSQL).Scan(&n)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("read the stored shard count: %w", err)
	}
	return n, true, nil
}
