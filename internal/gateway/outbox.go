package gateway

import (
	"context"
	"sync"

	"github.com/shardwarden/shardwarden/internal/bus"
)

// outbox is a shard's bounded buffer between the receive loop and JetStream. An
// event stays in it from receipt until JetStream acknowledged it: a failed
// publish is sent again (same Nats-Msg-Id, so a retry that was in fact stored is
// dropped as a duplicate), and the highest contiguously acknowledged sequence of
// the current session is what a new owner may RESUME from.
//
// The receive loop never blocks on it: push fails when it is full, and the shard
// then disconnects (with 4000, keeping its session) until there is room again.
type outbox struct {
	mu      sync.Mutex
	ring    []slotEntry
	head    uint64 // oldest entry not yet acknowledged
	next    uint64 // next entry to publish
	tail    uint64 // one past the newest entry
	failing bool   // the last completion was a failure: back off before resending

	// What the head has passed: the last acknowledged entry.
	ackedSession string
	ackedSeq     int64

	wake    chan struct{} // cap 1: entries to publish
	room    chan struct{} // closed and replaced when the ring drains to lowMark
	empty   chan struct{} // closed and replaced when the ring becomes empty
	lowMark int
}

type entryState uint8

const (
	entryQueued entryState = iota
	entryInFlight
	entryAcked
)

type slotEntry struct {
	ev    bus.Event
	state entryState
}

func newOutbox(size int, session string, seq int64) *outbox {
	return &outbox{
		ring:         make([]slotEntry, size),
		ackedSession: session,
		ackedSeq:     seq,
		wake:         make(chan struct{}, 1),
		room:         make(chan struct{}),
		empty:        make(chan struct{}),
		// A shard that disconnected because the buffer filled reconnects only
		// once it is empty: the RESUME replay then has the whole buffer.
		lowMark: 0,
	}
}

// push adds ev (its Data must be owned by the outbox) unless the buffer is full.
func (o *outbox) push(ev bus.Event) bool {
	o.mu.Lock()
	if o.tail-o.head >= uint64(len(o.ring)) {
		o.mu.Unlock()
		return false
	}
	e := &o.ring[o.tail%uint64(len(o.ring))]
	e.ev, e.state = ev, entryQueued
	o.tail++
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return true
}

// len is the number of events not yet acknowledged.
func (o *outbox) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return int(o.tail - o.head)
}

// hasRoom reports whether the ring is down to its low-water mark (so a shard that
// disconnected because it was full may reconnect), else a channel closed when it
// gets there.
func (o *outbox) hasRoom() (bool, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if int(o.tail-o.head) <= o.lowMark {
		return true, nil
	}
	return false, o.room
}

// waitRoom blocks until hasRoom.
func (o *outbox) waitRoom(ctx context.Context) error {
	for {
		ok, ch := o.hasRoom()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitEmpty blocks until every event is acknowledged or ctx ends.
func (o *outbox) waitEmpty(ctx context.Context) error {
	for {
		o.mu.Lock()
		n, ch := o.tail-o.head, o.empty
		o.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// take returns the next queued event to publish, or nil. The pointer stays valid
// until the event is acknowledged (its ring slot is not reused before).
func (o *outbox) take() *bus.Event {
	o.mu.Lock()
	defer o.mu.Unlock()
	for ; o.next < o.tail; o.next++ {
		e := &o.ring[o.next%uint64(len(o.ring))]
		if e.state == entryQueued {
			e.state = entryInFlight
			o.next++
			return &e.ev
		}
	}
	return nil
}

// backingOff reports (and clears) that a publish failed since the last call.
func (o *outbox) backingOff() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	f := o.failing
	o.failing = false
	return f
}

// indexOf finds ev's ring position from its address.
func (o *outbox) indexOf(ev *bus.Event) uint64 {
	for i := o.head; i < o.tail; i++ {
		if &o.ring[i%uint64(len(o.ring))].ev == ev {
			return i
		}
	}
	return o.tail
}

// done is the publisher's Completion for this shard's events.
func (o *outbox) done(ev *bus.Event, err error) {
	o.mu.Lock()
	size := uint64(len(o.ring))
	// Fast path: acks arrive in order, the completed event is usually the head.
	i := o.head
	if i == o.tail || &o.ring[i%size].ev != ev {
		i = o.indexOf(ev)
	}
	if i == o.tail {
		o.mu.Unlock()
		return // a completion for an event already acknowledged (a stale retry)
	}
	e := &o.ring[i%size]
	if err != nil {
		if e.state == entryInFlight {
			e.state = entryQueued
			if i < o.next {
				o.next = i
			}
			o.failing = true
		}
		o.mu.Unlock()
		select {
		case o.wake <- struct{}{}:
		default:
		}
		return
	}
	e.state = entryAcked
	advanced := false
	for o.head < o.tail {
		h := &o.ring[o.head%size]
		if h.state != entryAcked {
			break
		}
		o.ackedSession, o.ackedSeq = h.ev.Session, h.ev.Seq
		h.ev = bus.Event{} // drop the payload reference
		o.head++
		advanced = true
	}
	if o.next < o.head {
		o.next = o.head
	}
	if advanced && int(o.tail-o.head) <= o.lowMark {
		close(o.room)
		o.room = make(chan struct{})
	}
	if advanced && o.tail == o.head {
		close(o.empty)
		o.empty = make(chan struct{})
	}
	o.mu.Unlock()
}

// acked is the highest contiguously acknowledged sequence of session (0 when
// none of its events has been acknowledged yet).
func (o *outbox) acked(session string) int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ackedSession == session {
		return o.ackedSeq
	}
	return 0
}
