// Package worker is the runtime every shardwarden worker runs on: a worker is a
// name, the event subjects it wants and a Handler. The runtime owns the JetStream
// side so that a handler only has to be idempotent (see internal/idempotency).
//
// One delivery, start to end:
//
//	DISCORD_EVENTS ──pull──▶ reader ──▶ handler goroutine (Concurrency of them)
//	                                      │  ctx deadline HandlerTimeout (< AckWait)
//	                                      │  InProgress every InProgressInterval
//	                                      │  panic → failure
//	                     success ◀────────┴────────▶ failure
//	                        Ack                       │
//	                              delivery < MaxDeliver and not Permanent
//	                                 ├── yes: NakWithDelay(BackOff[delivery-1])
//	                                 └── no:  publish to DISCORD_DLQ discord.dead.<worker>
//	                                          (msg id dead:<worker>:<stream seq>), then Term
//
// The delivery budget is enforced here, not by the server: the consumer is created
// with MaxDeliver -1 and no server BackOff. A server-side BackOff replaces AckWait
// for every delivery (a 1 s first step would redeliver a handler still running after
// 1 s), and a server-side MaxDeliver would strand a message whose dead-letter publish
// failed on its last delivery. Here a failed dead-letter publish is Nak'ed and tried
// again on the next delivery, and a message delivered more than MaxDeliver times
// without ever reporting a failure (the process died handling it, every time) is
// dead-lettered before its handler runs again, so a poison event cannot crash-loop a
// worker forever.
//
// Stop drains: the pull subscription is drained, messages already buffered but not
// started are Nak'ed for immediate redelivery elsewhere, handlers in flight get
// DrainTimeout to finish (and are acked), then their contexts are cancelled.
//
// Adding a worker: write a Handler, then New(Config{Name, FilterSubjects, Handler,
// JetStream, ...}); cmd/worker has a registry of named workers.
package worker
