// Package shardlease lets identical bot replicas agree, through Postgres alone, on
// who drives which Discord gateway shard.
//
// # Tables
//
// discord_bot_cluster holds the shard count, stored once by the first replica.
// discord_bot_replicas has one row per live replica (replica_id, a per-process
// instance_id nonce, heartbeat_at, lease_ttl, draining). discord_bot_shards has one
// row per shard: owner_id, epoch, state, heartbeat_at, lease_ttl and the resume
// state a new owner needs. All times are the database's now(): staleness is judged
// on one clock, never by comparing replica clocks.
//
// # State model of a shard row
//
//	          claim: free, or stale by the DB clock; epoch+1
//	┌──────┐ ───────────────────────────────────▶ ┌────────────┐
//	│ free │                                      │ connecting │ ─▶ ready, resuming
//	└──────┘ ◀──────────┐                         └────────────┘    (the runner's Status,
//	                    │ release: save resume          │          written by heartbeats)
//	                    │ state, owner := NULL,         │ drain: rebalance or shutdown
//	                    │ fenced by owner AND           ▼
//	                    │ epoch; NOTIFY peers     ┌───────────┐
//	                    └──────────────────────── │ releasing │
//	                                              └───────────┘
//
// An owner that stops renewing leaves its row stale after lease_ttl; a peer's
// claim takes it with epoch+1, and any later write by the old owner matches no
// row: "lease lost".
//
// Inside a replica each held shard is a runner goroutine (Runner.RunShard) with a
// context of its own. The manager cancels that context when the lease is lost (a
// renewal matched no row), when it fences itself, or on a hard stop: a caller
// cannot keep driving a shard whose lease is gone. Graceful hand-off goes through
// Lease.Draining(): the runner returns its final ResumeState, the manager saves it
// and frees the row in one fenced statement, and the next owner receives it in
// Lease.Resume.
//
// # One statement per heartbeat
//
// Every HeartbeatInterval one statement (a CTE) renews the replica row and, only
// if that row is still ours (same instance_id), every held lease, fenced per shard
// by owner and epoch (UPDATE … FROM unnest(ids, epochs, statuses…)), writing each
// lease's latest Status; from the same snapshot it reads the live replicas, this
// replica's rank among them and the free and stale shard counts. Its cost in
// statements does not depend on the number of shards. Held leases the statement
// did not renew are lost at once: their runners are cancelled.
//
// # Claiming and fair share
//
// One claim loop per replica. A claim is a READ COMMITTED transaction that first
// takes pg_try_advisory_xact_lock(('discord_bot_shards'::regclass::oid, -1)) — one
// key guarding the whole claim — and then, in a statement whose snapshot follows
// the lock, takes free shards first, then stale ones (now() − heartbeat_at >
// greatest(row's lease_ttl, ours)), epoch+1, state 'connecting'. A replica whose
// lock attempt fails retries after a short jittered delay (ClaimRetryDelay), not a
// whole interval.
//
// A replica's share is shards / live replicas (live: not draining and heartbeat
// within its TTL), the remainder going one each to the replicas with the smallest
// ids, so the shares add up to the shard count: the assignment converges to a
// spread of at most one, and every shard has a taker (a share never exceeds
// ceil(shards / live)). A replica above its share for rebalanceTicks heartbeats in
// a row (hysteresis: a passing disagreement about who is live does not move
// anything) drains the excess, most recently claimed first, and does not claim
// those shards back for one TTL, unless a peer releases shards or leaves first
// (the assignment changed; in a rolling update the replica that took them is
// often the next one stopped); the NOTIFY sent with the release wakes the
// under-loaded replicas, which claim at once. LISTEN uses a dedicated connection
// outside the pool; notifications only wake replicas early, polling stays the
// truth.
//
// # The trust window
//
//	           t0: attempt start     t0 + SelfFenceAfter       heartbeat_at + lease_ttl
//	           (≤ heartbeat_at)      (2 intervals)             (≥ t0 + 3 intervals)
//	replica   ──●═════ trusted ═══════════●  every runner cancelled
//	database  ───●══════════════ lease held ══════════════════════●  peers may claim
//	                                      └─────── margin ─────────┘
//	                                   (claim latency, clock-rate drift)
//
// A renewal that succeeds extends trust to its attempt's start + SelfFenceAfter
// (default 2 intervals) by the replica's monotonic clock; the database keeps the
// lease until heartbeat_at + lease_ttl (default 3 intervals), and heartbeat_at is
// never earlier than the attempt's start. So the holder stops before anyone may
// take over, with one interval to spare (the rule behind Kubernetes leader
// election: RenewDeadline < LeaseDuration). The fence runs on its own timer, not
// in the heartbeat loop, so a statement hanging on a dead connection cannot delay
// it. New refuses a SelfFenceAfter that is not shorter than the TTL.
//
// # Failure cases
//
//   - Database unreachable at start: Start returns at once; registration is
//     retried with jittered exponential backoff (up to one interval) and logged,
//     rate-limited. Ready reports "not registered" until it succeeds.
//   - Database lost while holding shards: heartbeats fail and are retried quickly;
//     at SelfFenceAfter without success every runner is cancelled
//     (shardwarden_lease_self_fences_total, an ERROR log), before the rows go stale
//     for peers. When a heartbeat succeeds again the replica rejoins: the rows it
//     fenced are released (fenced by epoch, so a row a peer took is untouched) and
//     it claims its share anew.
//   - Crash (no release): rows go stale after lease_ttl; peers claim them with a
//     new epoch and the saved resume state the dead owner last heartbeated.
//   - Pause (GC, SIGSTOP, a stalled VM): on waking, the fence timer and the next
//     renewal see the truth; a renewal fenced by epoch cannot revive a lease a
//     peer took. Downstream writes carry the epoch for the same reason.
//   - Lease lost (renewal matched no row): that runner's context is cancelled at
//     once (shardwarden_lease_lost_total); nothing is written for it.
//   - Replica row lost (removed after being stale for two TTLs, or taken by a new
//     process with the same id): every runner is cancelled and the replica
//     registers again (which may find it is now the duplicate).
//   - Duplicate replica id: registration finds the row held by another instance
//     with a fresh heartbeat and refuses (ErrDuplicateReplica: ERROR log on every
//     retry, shardwarden_lease_duplicate_replica = 1, not ready, never claims). It
//     retries every interval, so a restart whose crashed predecessor left a row
//     behind proceeds once that row is stale.
//   - Shard count mismatch: the replica never registers, so it does not count in
//     anyone's share and never claims (ErrShardCountMismatch in the log and in
//     Ready). Resharding is a separate, explicit operation.
//   - Runner returns by itself: its lease is released with the state it returned
//     (or its last report), and this replica waits before claiming that shard
//     again (one interval, doubling on repeated exits, up to 32). An error wrapping
//     ErrFatal stops the whole replica gracefully; Done is closed and Err says why.
//   - Runner ignores Draining: its context is cancelled after ShutdownTimeout and
//     its last reported state is saved instead of its return value.
//   - Graceful stop: the replica marks itself draining (peers' shares grow), drains
//     every runner, releases each lease as its runner returns (NOTIFY wakes peers
//     at once), deletes its row and notifies again.
//
// # Metrics
//
// The names are a contract with the deployment's alert rules:
//
//	shardwarden_lease_held_shards                  gauge: shards this replica drives
//	shardwarden_lease_heartbeat_duration_seconds   histogram: the renewal statement, failures included
//	shardwarden_lease_heartbeat_failures_total     counter
//	shardwarden_lease_self_fences_total            counter: outages that made this replica stop its shards
//	shardwarden_lease_lost_total                   counter: leases found taken by a peer
//	shardwarden_lease_claims_total                 counter: shards claimed
//	shardwarden_lease_releases_total{reason}       counter: reason = shutdown | rebalance | runner_exit
//	shardwarden_lease_stale_shards                 gauge: owned rows with a stale lease at the last scan
//	shardwarden_lease_live_replicas                gauge: live, non-draining replicas at the last scan
//	shardwarden_lease_duplicate_replica            gauge: 1 while refused for a duplicate replica id
//	shardwarden_lease_heartbeat_statements_total   counter: statements sent by heartbeats (one each)
package shardlease
