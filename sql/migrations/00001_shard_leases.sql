-- Shard leases: who drives which Discord gateway shard, and what a new owner needs
-- to RESUME its session. See internal/shardlease/doc.go for the state model.

-- +goose Up

-- The cluster's shard count, stored once. A replica configured with another count
-- refuses to claim (resharding is a separate, explicit operation).
CREATE TABLE discord_bot_cluster (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    shard_count integer     NOT NULL CHECK (shard_count > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per live replica, heartbeated with its leases and deleted on a clean exit.
-- instance_id is a per-process nonce: two processes configured with one replica_id
-- are told apart by it and the second is refused.
CREATE TABLE discord_bot_replicas (
    replica_id   text        PRIMARY KEY,
    instance_id  uuid        NOT NULL,
    version      text        NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    -- How long after heartbeat_at the replica counts as gone (written by the replica
    -- itself, like the shards' lease_ttl): gone replicas leave the fair share and
    -- their replica_id may be taken by a new process.
    lease_ttl    interval    NOT NULL DEFAULT interval '30 seconds',
    draining     boolean     NOT NULL DEFAULT false
);

-- One row per shard. All times are the database's now(): staleness is judged on one
-- clock. epoch is the fencing token: +1 on every claim, and every write by an owner
-- says WHERE owner_id = $me AND epoch = $epoch.
CREATE TABLE discord_bot_shards (
    shard_id      integer     PRIMARY KEY CHECK (shard_id >= 0),
    owner_id      text,
    epoch         bigint      NOT NULL DEFAULT 0,
    state         text        NOT NULL DEFAULT 'free'
                  CHECK (state IN ('free', 'connecting', 'ready', 'resuming', 'releasing')),
    claimed_at    timestamptz,
    heartbeat_at  timestamptz,
    -- How long after heartbeat_at the owner's lease counts as stale (the owner's
    -- heartbeat interval times its missed-heartbeat threshold).
    lease_ttl     interval,
    released_at   timestamptz,
    -- Resume state a new owner needs; resume_seq is the highest sequence the old
    -- owner knows is stored (contiguously acked by JetStream).
    session_id    text,
    resume_url    text,
    resume_seq    bigint,
    guilds        integer     NOT NULL DEFAULT 0,
    last_event_at timestamptz,
    CONSTRAINT owner_matches_state CHECK ((owner_id IS NULL) = (state = 'free'))
);

CREATE INDEX discord_bot_shards_owner_idx ON discord_bot_shards (owner_id) WHERE owner_id IS NOT NULL;

-- What an operator reads first: SELECT * FROM discord_bot_shards_status;
CREATE VIEW discord_bot_shards_status AS
SELECT
    s.shard_id,
    s.owner_id,
    s.epoch,
    s.state,
    CASE
        WHEN s.owner_id IS NULL THEN 'free'
        WHEN s.heartbeat_at IS NULL OR now() - s.heartbeat_at > s.lease_ttl THEN 'stale'
        ELSE 'held'
    END AS status,
    round(extract(epoch FROM now() - s.heartbeat_at)::numeric, 1) AS heartbeat_age_s,
    (s.session_id IS NOT NULL AND s.resume_url IS NOT NULL) AS resumable,
    s.resume_seq,
    s.guilds,
    round(extract(epoch FROM now() - s.last_event_at)::numeric, 1) AS last_event_age_s,
    s.claimed_at,
    s.released_at
FROM discord_bot_shards s
ORDER BY s.shard_id;

-- +goose Down
DROP VIEW discord_bot_shards_status;
DROP TABLE discord_bot_shards;
DROP TABLE discord_bot_replicas;
DROP TABLE discord_bot_cluster;
