package bus

import (
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// Headers that a dead letter replay (`worker dlq replay`) puts on the event it sends
// back to DISCORD_EVENTS. The replay gets a fresh Nats-Msg-Id (the original one may
// still be inside the duplicate window and would be dropped), so consumers identify
// the event by EventID, which prefers the original id.
const (
	// HeaderOriginalMsgID is the Nats-Msg-Id of the event as the gateway published it.
	HeaderOriginalMsgID = "Shardwarden-Original-Msg-Id"
	// HeaderOriginalStreamSeq is the DISCORD_EVENTS sequence of the first copy; workers
	// that order by stream sequence (guilds) use it so a replay is not "newer".
	HeaderOriginalStreamSeq = "Shardwarden-Original-Stream-Seq"
	// HeaderReplayFor names the one worker a replay is meant for; other workers whose
	// filters match the subject acknowledge it without handling it.
	HeaderReplayFor = "Shardwarden-Replay-For"
	// HeaderDeadAt is when the worker gave up (RFC 3339 with nanoseconds).
	HeaderDeadAt = "Shardwarden-Dead-At"
)

// EventID is the stable identity of an event: the original Nats-Msg-Id when the event
// is a replay, else its own Nats-Msg-Id. Empty when the message carries neither.
func EventID(h nats.Header) string {
	if id := h.Get(HeaderOriginalMsgID); id != "" {
		return id
	}
	return h.Get(nats.MsgIdHdr)
}

// OriginalStreamSeq returns HeaderOriginalStreamSeq when present and valid, else seq.
func OriginalStreamSeq(h nats.Header, seq uint64) uint64 {
	if v := h.Get(HeaderOriginalStreamSeq); v != "" {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return seq
}

// ReceivedAt parses HeaderReceivedAt, the gateway's receive time of the dispatch.
func ReceivedAt(h nats.Header) (time.Time, error) {
	v := h.Get(HeaderReceivedAt)
	if v == "" {
		return time.Time{}, fmt.Errorf("header %s missing", HeaderReceivedAt)
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("header %s: %w", HeaderReceivedAt, err)
	}
	return t, nil
}

// ShardID parses HeaderShard; ok is false when it is missing or not a number.
func ShardID(h nats.Header) (id int, ok bool) {
	n, err := strconv.Atoi(h.Get(HeaderShard))
	if err != nil {
		return 0, false
	}
	return n, true
}
