-- The event log kept by the built-in `eventlog` worker: one row per dispatch the
-- pipeline delivered, an audit trail operators can query from psql and the
-- end-to-end harness counts against the fake Discord's ledger.

-- +goose Up

-- Append-only on purpose: no unique key on msg_id. The worker writes each row in the
-- same transaction as its idempotency record, so a row appears once per event; if
-- that ever broke, duplicates would show here instead of being silently merged.
CREATE TABLE discord_event_log (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msg_id       text        NOT NULL, -- Nats-Msg-Id "<shard>:<session>:<seq>"
    event_type   text        NOT NULL,
    shard_id     integer,
    session_id   text,
    seq          bigint,
    guild_id     bigint,
    stream_seq   bigint      NOT NULL,
    received_at  timestamptz,          -- gateway clock
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX discord_event_log_msg_idx ON discord_event_log (msg_id);
CREATE INDEX discord_event_log_processed_idx ON discord_event_log (processed_at);

-- +goose Down
DROP TABLE discord_event_log;
