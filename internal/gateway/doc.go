// Package gateway drives the Discord gateway shards this replica holds and
// forwards every dispatch to JetStream: the shardlease.Runner of `bot run`.
//
// # One shard
//
//	           arikawa ws.Gateway event loop (heartbeats, HELLO/RESUME/IDENTIFY)
//	                ▲ ops: seq, session, hello, acks (no payloads)
//	                │
//	Discord ──ws──▶ conn (our ws.Connection) ──push d copy──▶ outbox (bounded ring)
//	                reader goroutine:                            │ publishLoop
//	                envelope decode only                         ▼
//	                                                  bus.Publisher ──▶ JetStream
//	                                                  (async, acks per message)
//
// arikawa v3.6.0's ws.Gateway keeps the protocol loop (heartbeat timer, HELLO →
// IDENTIFY or RESUME, op 7, reconnects). Everything that breaks our promises in
// its defaults is replaced by conn, a ws.Connection of our own:
//
//   - Frames are decoded to the envelope only (op, s, t, raw d); every dispatch,
//     unknown types included, is copied out of the read buffer into the outbox
//     and the event loop sees only its sequence (arikawa drops unknown types
//     and aliases a reused buffer).
//   - The reader never blocks on NATS: when the outbox is full it closes the
//     socket with 4000 (session kept), and the next Dial waits until JetStream
//     has emptied the outbox, then RESUMEs from the last buffered sequence.
//     Discord replays the rest. Readiness is false meanwhile.
//   - Close always sends 4000, never 1000/1001 (which would end the session).
//   - Dial chooses the URL: READY's resume_gateway_url for a RESUME, the
//     gateway URL for an IDENTIFY.
//   - IDENTIFY is gated before dialing, never in the event loop: Dial waits for
//     an IdentifyLimiter claim (Postgres: one per bucket shard_id %
//     max_concurrency per window across all replicas, daily budget above a
//     reserve). Send refuses an op 2 without a valid claim. arikawa's own
//     limiters are set to nil.
//   - op 9 is turned into a reconnect: d=true RESUMEs, d=false drops the session
//     (counted as a session loss) and IDENTIFYs after Discord's 1–5 s. arikawa
//     would never resume and would wait inside its event loop.
//   - A watchdog closes a connection without READY/RESUMED in HandshakeTimeout,
//     and a heartbeat sent while the previous one is unacknowledged closes the
//     connection (zombie) so that it RESUMEs.
//   - Every connection runs on a fresh arikawa gateway built from the shard's
//     own session state (conn dials once): a RESUME after op 7 or a drop is
//     immediate (arikawa's websocket allows one dial per 5 s), and arikawa's
//     hidden state (its sequence, its 15-minute "deadbeat" rule) never outlives
//     a connection. A connection that reached READY/RESUMED reconnects at once;
//     failed dials back off exponentially, capped and fully jittered (instead of
//     arikawa's linear ReconnectDelay). One reader goroutine per socket, always
//     joined on Close (goleak checks it).
//
// # Sequences and handoff
//
// The outbox holds each event from receipt until JetStream acknowledged it; a
// failed or timed-out publish is sent again with the same Nats-Msg-Id
// (shard:session:seq), so the stream stores it once. Its head is the highest
// contiguously acknowledged sequence of the session: that, with the session id
// and resume URL, is the ResumeState reported to the lease (saved with every
// lease heartbeat) and returned on a handoff.
//
// On lease.Draining() the runner closes the socket (4000), waits up to
// DrainTimeout for the outbox to be acknowledged and returns the ResumeState;
// the next owner RESUMEs from it and Discord replays whatever was not stored
// (deduplicated by the stream). A cancelled context (lease lost) stops at once
// and writes nothing. A fatal close (4004, 4010–4014) returns an error wrapping
// shardlease.ErrFatal.
package gateway
