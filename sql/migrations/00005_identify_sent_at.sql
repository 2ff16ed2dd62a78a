-- When the bucket's last claim actually sent its IDENTIFY. Until then the claim's
-- next_allowed_at is a reservation that covers the dial (validity + window +
-- margin); a shard waiting for the bucket wakes when the window since the claim
-- could end (last_claimed_at + window + margin) instead of sleeping through the
-- whole reservation, which the send usually shortens by most of the validity.

-- +goose Up
ALTER TABLE discord_identify_buckets ADD COLUMN last_sent_at timestamptz;

-- +goose Down
ALTER TABLE discord_identify_buckets DROP COLUMN last_sent_at;
