-- Identify coordination across replicas: Discord allows one IDENTIFY per rate-limit
-- bucket (shard_id % max_concurrency) per 5 s, and a daily budget of session
-- starts (usually 1000 per 24 h; running it out resets the bot token). Every
-- replica claims here before it dials to IDENTIFY; times are the database's now().

-- +goose Up

-- The session start budget, from GET /gateway/bot's session_start_limit, spent by
-- one per IDENTIFY. When reset_at has passed the budget is full again (total).
CREATE TABLE discord_identify_budget (
    singleton       boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    total           integer     NOT NULL CHECK (total >= 0),
    remaining       integer     NOT NULL,
    reset_at        timestamptz NOT NULL,
    max_concurrency integer     NOT NULL CHECK (max_concurrency >= 1),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per rate-limit bucket. A claim is a conditional UPDATE
-- (WHERE next_allowed_at <= now()) that moves next_allowed_at one window ahead;
-- after the IDENTIFY is sent the claimer pushes it to (send time + window).
CREATE TABLE discord_identify_buckets (
    bucket          integer     PRIMARY KEY CHECK (bucket >= 0),
    next_allowed_at timestamptz NOT NULL DEFAULT 'epoch',
    last_shard_id   integer,
    last_replica_id text,
    last_claimed_at timestamptz
);

-- +goose Down
DROP TABLE discord_identify_buckets;
DROP TABLE discord_identify_budget;
