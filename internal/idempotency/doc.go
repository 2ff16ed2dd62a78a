// Package idempotency makes a worker's effects happen once per event, although
// JetStream delivers at least once (a crash before the ack, an ack lost on the way,
// an ack-wait expiry, a dead letter replayed).
//
// Every record is keyed by (worker, event id); the event id is bus.EventID, the
// gateway's Nats-Msg-Id "<shard>:<session>:<seq>", which is stable across
// redeliveries and dead-letter replays.
//
// # Database effects: InTx
//
// The record and the effect commit in one transaction:
//
//	BEGIN
//	INSERT (worker, event, 'done') ON CONFLICT DO NOTHING   -- 0 rows: seen, skip
//	<the handler's writes>
//	COMMIT
//
// A crash anywhere before COMMIT leaves nothing; a redelivery after COMMIT finds the
// row and skips. Two copies handled at once serialise on the primary key: the
// second INSERT waits for the first transaction and then sees its row.
//
// # External effects: External
//
// A REST call cannot join a transaction, so the record brackets it:
//
//	claim ('claimed', attempts+1, claimed_until = now()+ttl)  -- committed
//	call Discord
//	mark 'done'                                              -- committed
//
//	crash before the call           → redelivery: attempts > 1, nothing was sent
//	crash between call and 'done'   → redelivery: attempts > 1, the reply WAS sent
//	crash after 'done'              → redelivery: skipped
//
// The two middle cases cannot be told apart from our side, so an attempt after the
// first (Attempt.MaybeDone) must use a form of the call that Discord itself
// deduplicates. Discord offers one for each reply the built-in workers make:
//
//   - Interaction callbacks: an interaction accepts one callback; a second one is
//     refused with 400 / code 40060 "Interaction has already been acknowledged",
//     which the caller treats as success.
//   - Create message: the body carries a nonce derived from the event id (at most 25
//     characters) with enforce_nonce=true; Discord returns the message created
//     earlier with the same nonce (within a few minutes) instead of creating another.
//
// A live claim (claimed_until in the future) makes a concurrent copy of the event
// fail with ErrInFlight, a retryable error: the runtime redelivers it after a delay
// and by then the first attempt has either finished ('done' → skipped) or released
// its claim. The claim TTL should match the handler timeout, which ends before the
// consumer's ack wait: a redelivery after a crash always finds the claim expired.
//
// Records are pruned (Prune) once they are older than the event stream's retention:
// an event older than that can no longer be redelivered.
package idempotency
