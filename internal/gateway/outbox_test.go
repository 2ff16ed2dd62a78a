package gateway

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/bus"
)

func TestOutboxContiguousAcksAndRetries(t *testing.T) {
	o := newOutbox(4, "s1", 10)
	require.Equal(t, int64(10), o.acked("s1"), "starts at the lease's resume seq")
	for seq := int64(11); seq <= 14; seq++ {
		require.True(t, o.push(bus.Event{Session: "s1", Seq: seq}))
	}
	require.False(t, o.push(bus.Event{Session: "s1", Seq: 15}), "full: the reader must not block")
	ok, room := o.hasRoom()
	require.False(t, ok)

	var taken []*bus.Event
	for ev := o.take(); ev != nil; ev = o.take() {
		taken = append(taken, ev)
	}
	require.Len(t, taken, 4)

	// Acks out of order and a failure in the middle: only the contiguous prefix
	// counts as stored.
	o.done(taken[2], nil)
	require.Equal(t, int64(10), o.acked("s1"))
	o.done(taken[0], nil)
	require.Equal(t, int64(11), o.acked("s1"))
	o.done(taken[1], errors.New("ack timeout"))
	require.True(t, o.backingOff())
	require.False(t, o.backingOff(), "reported once")
	o.done(taken[3], nil)
	require.Equal(t, int64(11), o.acked("s1"), "seq 12 failed: 13 and 14 do not count yet")

	retry := o.take()
	require.NotNil(t, retry)
	require.Equal(t, int64(12), retry.Seq, "the failed event is published again")
	require.Nil(t, o.take())
	o.done(retry, nil)
	require.Equal(t, int64(14), o.acked("s1"))
	require.Equal(t, int64(0), o.acked("other"), "another session has nothing stored")
	select {
	case <-room:
	default:
		t.Fatal("room not signalled once empty")
	}
	require.NoError(t, o.waitEmpty(context.Background()))
	require.NoError(t, o.waitRoom(context.Background()))

	// A stale completion (the event was already acknowledged) is ignored.
	o.done(retry, nil)
	require.Equal(t, int64(14), o.acked("s1"))

	// A new session after an IDENTIFY.
	require.True(t, o.push(bus.Event{Session: "s2", Seq: 1}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, o.waitEmpty(ctx), context.DeadlineExceeded)
	ev := o.take()
	o.done(ev, nil)
	require.Equal(t, int64(1), o.acked("s2"))
}

// chunksInUse counts the allocated chunks (the spare included).
func (o *outbox) chunksInUse() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, c := range o.chunks {
		if c != nil {
			n++
		}
	}
	if o.spare != nil {
		n++
	}
	return n
}

// Memory follows what is buffered, not the bound: a shard that keeps up holds a
// chunk or two however many events passed through it, one backed up fills its whole
// size, and draining gives the chunks back. Events keep their order and sequences
// across chunk boundaries.
func TestOutboxChunksFollowTheBacklog(t *testing.T) {
	const size = 10*chunkSize + 7
	o := newOutbox(size, "s", 0)
	seq := int64(0)
	pushTakeAck := func(n int) {
		t.Helper()
		for range n {
			seq++
			require.True(t, o.push(bus.Event{Session: "s", Seq: seq}))
			ev := o.take()
			require.NotNil(t, ev)
			require.Equal(t, seq, ev.Seq)
			o.done(ev, nil)
		}
	}
	pushTakeAck(20 * chunkSize) // many laps of a keep-up shard
	require.Equal(t, seq, o.acked("s"))
	require.LessOrEqual(t, o.chunksInUse(), 2, "a shard that keeps up holds a chunk and a spare")

	// A backlog fills the whole bound, across chunk boundaries, then refuses.
	for range size {
		seq++
		require.True(t, o.push(bus.Event{Session: "s", Seq: seq}))
	}
	require.False(t, o.push(bus.Event{Session: "s", Seq: seq + 1}), "full at its size")
	require.GreaterOrEqual(t, o.chunksInUse(), size/chunkSize)

	// Acks in publish order drain it; every sequence comes out once, in order.
	want := seq - size + 1
	for ev := o.take(); ev != nil; ev = o.take() {
		require.Equal(t, want, ev.Seq)
		want++
		o.done(ev, nil)
	}
	require.Equal(t, seq+1, want)
	require.Equal(t, seq, o.acked("s"))
	require.LessOrEqual(t, o.chunksInUse(), 2, "drained chunks are given back")
	pushTakeAck(3 * chunkSize)
	require.Equal(t, seq, o.acked("s"))
}

// The publish loop peeks at a failure (to keep backing off) without consuming it:
// only backingOff clears it, so every failure is followed by its backoff.
func TestOutboxFailurePeekDoesNotConsume(t *testing.T) {
	o := newOutbox(4, "s", 0)
	require.True(t, o.push(bus.Event{Session: "s", Seq: 1}))
	o.done(o.take(), errors.New("nats down"))
	require.True(t, o.failingNow())
	require.True(t, o.failingNow(), "peeking leaves the failure for backingOff")
	require.True(t, o.backingOff())
	require.False(t, o.failingNow())
	require.False(t, o.backingOff())
}
