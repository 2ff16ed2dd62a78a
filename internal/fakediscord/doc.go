// Package fakediscord is a strict fake of Discord's gateway and REST API that also
// referees: it records every connection, session and dispatched event so tests
// can prove "never two owners of a shard, nothing lost".
//
// It is stricter than Discord, never kinder: where Discord is vague the fake picks
// the strict reading and says so in a comment. A bot that passes against it should
// pass against the real thing.
//
// # Starting it
//
//	srv, err := fakediscord.New(fakediscord.Config{Shards: 4, HeartbeatInterval: 200 * time.Millisecond})
//	err = srv.Start(ctx)        // listens on 127.0.0.1:0, returns at once
//	defer srv.Stop()            // closes everything, waits for every goroutine; idempotent
//
//	srv.APIURL()     // http://127.0.0.1:PORT/api        REST: APIURL()+"/v10/gateway/bot" (or /v9)
//	srv.GatewayURL() // ws://127.0.0.1:PORT/gateway      append ?v=10&encoding=json (arikawa appends ?v=9...)
//	srv.ResumeURL()  // ws://127.0.0.1:PORT/resume       READY's resume_gateway_url; RESUME must go here
//	srv.AdminURL()   // http://127.0.0.1:PORT/admin      (or on Config.AdminAddr)
//	srv.Token()      // the bot token ("Bot " prefix accepted in IDENTIFY/RESUME, required in REST)
//
// cmd/fakediscord runs the same server as a process.
//
// # Event ids: matching events end to end
//
// Every dispatch the fake sends, generated or injected, carries a unique id (a
// snowflake, increasing) as the FIRST key of its d object:
//
//	{"op":0,"s":17,"t":"MESSAGE_CREATE","d":{"fake_event_id":"1311112222333344445","id":"1311112222333344445",...}}
//
// A consumer holding only the raw d bytes calls EventID(d) (a prefix check and a
// number parse, no JSON decode), or decodes the string field "fake_event_id"
// (EventIDField) itself. Generated MESSAGE_CREATEs also use the id as message id
// and nonce; generated INTERACTION_CREATEs use it as interaction id. A replay on
// RESUME is byte-identical: same id, same seq. The ledger (Events) lists every
// dispatch as (shard, session, seq, type, id): an event sent to two sessions of a
// shard (two owners) is two ledger rows with one id. Dispatch payloads that are not
// JSON objects carry no id in d (the ledger still has one).
//
// # Gateway rules enforced
//
// HELLO with Config.HeartbeatInterval; op 1 answered by op 11; a connection that
// sends no heartbeat for HeartbeatTimeout is closed 4009 and its session is
// invalidated. IDENTIFY: token (4004), properties (4002), shard in range (4010),
// intents present and known (4013), privileged intents approved (4014), at most
// MaxGuildsPerShard guilds (4011), one IDENTIFY per bucket shard_id %
// max_concurrency per IdentifyWindow (else op 9 d=false, Discord's documented
// answer), DailyBudget IDENTIFYs per BudgetWindow (running out terminates every
// session with 4004 and kills the token, as Discord resets it). READY carries
// session_id, resume_gateway_url, shard, user.bot=true, application and the
// shard's guilds as unavailable; then one GUILD_CREATE per guild (GUILDS intent).
// Seqs start at 1 per session. RESUME (on ResumeURL only, else op 9 d=false and a
// violation) replays every dispatch after seq, then RESUMED; unknown, expired or
// too-old sessions get op 9 d=false; a seq the server never sent closes 4007.
// A session stays resumable for ResumeWindow after any disconnect except a client
// close 1000/1001 or a server close whose code ends sessions (4004, 4007,
// 4009-4014). Frames over MaxPayloadBytes: 4002; bad JSON or a binary frame: 4002;
// unknown op: 4001; a command before IDENTIFY: 4003; IDENTIFY/RESUME twice: 4005;
// more than CommandLimit frames per CommandWindow: 4008. When IDENTIFY says
// "compress": true, dispatches of at least CompressMinBytes are sent as
// per-message zlib binary frames (as Discord compresses big payloads only). With
// ?compress=zlib-stream every payload (HELLO included) is one more piece of a
// single zlib stream per connection, ending in a sync flush, in binary frames.
// Generated dispatches are filtered by intents the way Discord does
// (MESSAGE_CREATE needs GUILD_MESSAGES or DIRECT_MESSAGES, PRESENCE_UPDATE needs
// GUILD_PRESENCES...); events injected with Dispatch always go. A session without
// the privileged MESSAGE_CONTENT intent gets guild MESSAGE_CREATE/MESSAGE_UPDATE
// with content, embeds, attachments and components emptied (generated or
// injected), except messages mentioning the app and the app's own, as on Discord:
// a "!ping" command needs that intent.
//
// # REST (under APIURL()+"/v10" or "/v9"; everything recorded, see REST())
//
//	GET   /gateway, /gateway/bot (Authorization: Bot <token>)   url, shards, session_start_limit
//	GET   /oauth2/applications/@me, /applications/@me, /users/@me
//	POST  /interactions/{id}/{token}/callback   204; 404 10062 unknown or later than InteractionTimeout,
//	                                            400 40060 answered twice, 401 50027 wrong token
//	POST  /webhooks/{app}/{token}               follow-up (after the callback, 15 min)
//	PATCH /webhooks/{app}/{token}/messages/{id} edit (e.g. @original)
//	POST  /channels/{id}/messages               message object; enforce_nonce dedup (nonce <= 25 chars)
//	PUT   /applications/{id}/commands           the commands with ids
//
// Buckets (Config.RouteLimits; defaults 5/5s per channel for messages, 2/20s for
// commands) and the global limit (50/s; interaction and webhook routes exempt)
// answer 429 with X-RateLimit-Limit/Remaining/Reset/Reset-After/Bucket/Scope,
// Retry-After in seconds with decimals and X-RateLimit-Global; each such 429 is a
// violation (the client ignored the headers). ForceRateLimit forces 429s that are
// not violations.
//
// # Routing, guilds, traffic
//
// Guilds() is a seeded population whose ids spread over years, so
// (id >> 22) % shards spreads them realistically. Guild events go to every live or
// resumable session whose own shard count maps the guild to it; DMs go to shard 0.
// While a session is detached but resumable, its events are buffered for RESUME
// (ReplayLimit per session). Events for a shard without a session are counted as
// Undelivered, never ledgered. StartTraffic generates a configurable rate, mix
// (MESSAGE_CREATE, DM_MESSAGE_CREATE, INTERACTION_CREATE, GUILD_*, PRESENCE_UPDATE,
// TYPING_START, and UnknownEventType which no library knows) and payload size.
// A positive rate is held whatever the clients do (one that cannot keep up is
// dropped as a slow consumer, as Discord would); rate 0 goes as fast as the
// slowest connected client reads (backpressure), for throughput benchmarks.
//
// # Referee
//
// Sessions() lists every interval during which one connection held a session
// (identify or resume → end), Overlaps(shard) the pairs of intervals of one shard
// that were live at the same time (two owners) with the overlap duration,
// ShardStats() identifies/resumes/rejections/events per shard, Violations() every
// rule a client broke, Events() the ledger, REST() every REST request. A new
// IDENTIFY or RESUME on a shard waits up to TakeoverGrace for a connection the
// client just closed to be seen gone, so a clean handover never counts as overlap;
// a RESUME that steals a session from a live connection is a violation and an
// overlap.
//
// # Faults
//
// Inject(Fault{Kind, Shard|SessionID, Code, Resumable, Duration}) or the helpers
// Reconnect (op 7), InvalidSession (op 9 d=true/false), CloseShard(code),
// DropShard (TCP drop, client sees 1006), StopAcks (zombie), Stall (stop
// writing), ExpireSession, RequestHeartbeat (server op 1). ForceRateLimit makes
// REST answer 429s.
//
// # Admin HTTP API (JSON), under AdminURL()
//
//	GET    /admin/info                    URLs, shards, application id
//	GET    /admin/guilds                  the population
//	GET    /admin/referee                 Report: counts, shards, sessions, overlaps, violations, rest
//	GET    /admin/referee/summary         Report without sessions and rest (decodes as a Report)
//	GET    /admin/referee/sessions|violations|shards|rest
//	GET    /admin/referee/overlaps?shard=N
//	GET    /admin/referee/events?shard=N  the ledger as NDJSON, one Event per line
//	POST   /admin/dispatch                {"shard":0,"type":"MESSAGE_CREATE","d":{...}} or "guild_id":"…" → {"id":"…"}
//	POST   /admin/traffic/start           {"rate":1000,"mix":{"MESSAGE_CREATE":5},"payload_size":1024,"count":0,"duration":"10s"}
//	POST   /admin/traffic/stop
//	GET    /admin/traffic                 TrafficStats
//	POST   /admin/faults                  {"kind":"reconnect","shard":3} (kinds: reconnect, invalid_session,
//	                                      close, stop_acks, resume_acks, drop, stall, unstall, expire_session,
//	                                      request_heartbeat; "shard":-1 hits all; "session_id", "code",
//	                                      "resumable", "duration":"2s") → {"affected":n}
//	POST   /admin/rest/ratelimit          {"route":"POST /channels/{id}/messages","global":false,"retry_after":"1.5s","count":3}
//	DELETE /admin/rest/ratelimit
package fakediscord
