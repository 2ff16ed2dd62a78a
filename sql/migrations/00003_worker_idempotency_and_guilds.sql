-- Workers: the idempotency record of every event a worker has handled, and the
-- guilds table the `guilds` worker keeps. See internal/idempotency for the protocol.

-- +goose Up

-- One row per (worker, event). event_id is the event's stable identity (the
-- gateway's Nats-Msg-Id "<shard>:<session>:<seq>", kept across dead-letter replays).
-- A database effect commits in the same transaction as a 'done' row. An external
-- effect (a REST reply) first commits 'claimed', then calls out, then marks 'done':
-- a row left 'claimed' means "an attempt may have reached Discord", and the next
-- attempt must use an idempotent form of the call (see internal/idempotency/doc.go).
CREATE TABLE worker_idempotency (
    worker        text        NOT NULL,
    event_id      text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('claimed', 'done')),
    attempts      integer     NOT NULL DEFAULT 1,
    -- A claim is exclusive until claimed_until: a second copy of the event handled
    -- at the same moment (a redelivery racing a slow first attempt) backs off.
    claimed_until timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    done_at       timestamptz,
    PRIMARY KEY (worker, event_id)
);

-- Pruning deletes rows older than the event stream's retention.
CREATE INDEX worker_idempotency_created_idx ON worker_idempotency (created_at);

-- The guilds the bot is in, kept by the `guilds` worker from GUILD_CREATE,
-- GUILD_UPDATE and GUILD_DELETE. Events can arrive out of order (retries, replays,
-- several worker replicas): a row only moves forward in event_seq, the
-- DISCORD_EVENTS sequence of the event that last wrote it.
CREATE TABLE guilds (
    id           bigint      PRIMARY KEY,
    name         text        NOT NULL DEFAULT '',
    member_count integer,
    shard_id     integer,
    -- Unavailable: an outage (GUILD_DELETE with unavailable=true), not a removal.
    unavailable  boolean     NOT NULL DEFAULT false,
    joined_at    timestamptz,
    -- Set when the bot was removed (GUILD_DELETE without unavailable); cleared by a
    -- later GUILD_CREATE.
    left_at      timestamptz,
    event_seq    bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE guilds;
DROP TABLE worker_idempotency;
