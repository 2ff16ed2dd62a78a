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
//
// The ring is made of fixed chunks allocated when first written and freed once
// every entry in them is acknowledged, so a shard's memory follows what it has
// buffered, not its bound: an idle shard holds one chunk, a shard backed up
// behind a NATS outage up to its whole size. Entries never move (publishers hold
// pointers to them until their completion).
type outbox struct {
	mu      sync.Mutex
	size    uint64        // most entries buffered at once
	chunks  [][]slotEntry // ring of chunkSize entries each; nil when unused
	spare   []slotEntry   // a freed chunk kept for the next allocation
	head    uint64        // oldest entry not yet acknowledged
	next    uint64        // next entry to publish
	tail    uint64        // one past the newest entry
	failing bool          // the last completion was a failure: back off before resending

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

// chunkSize entries are allocated at a time (about 15 KiB).
const chunkSize = 128

func newOutbox(size int, session string, seq int64) *outbox {
	size = max(size, 1)
	return &outbox{
		size:         uint64(size),
		chunks:       make([][]slotEntry, (size+chunkSize-1)/chunkSize+1),
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

// slot is the entry at ring position i, allocating its chunk when needed. The
// ring has one chunk more than size needs, so the chunk the head is leaving can be
// freed before the tail comes back to it. Callers hold o.mu.
func (o *outbox) slot(i uint64) *slotEntry {
	c := (i / chunkSize) % uint64(len(o.chunks))
	if o.chunks[c] == nil {
		if o.spare != nil {
			// Its entries are all acknowledged and cleared; push sets both fields.
			o.chunks[c], o.spare = o.spare, nil
		} else {
			o.chunks[c] = make([]slotEntry, chunkSize)
		}
	}
	return &o.chunks[c][i%chunkSize]
}

// push adds ev (its Data must be owned by the outbox) unless the buffer is full.
func (o *outbox) push(ev bus.Event) bool {
	o.mu.Lock()
	if o.tail-o.head >= o.size {
		o.mu.Unlock()
		return false
	}
	e := o.slot(o.tail)
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
		e := o.slot(o.next)
		if e.state == entryQueued {
			e.state = entryInFlight
			o.next++
			return &e.ev
		}
	}
	return nil
}

// failingNow reports whether a publish failed since backingOff last cleared it,
// without clearing it.
func (o *outbox) failingNow() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.failing
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
		if &o.slot(i).ev == ev {
			return i
		}
	}
	return o.tail
}

// done is the publisher's Completion for this shard's events.
func (o *outbox) done(ev *bus.Event, err error) {
	o.mu.Lock()
	// Fast path: acks arrive in order, the completed event is usually the head.
	i := o.head
	if i == o.tail || &o.slot(i).ev != ev {
		i = o.indexOf(ev)
	}
	if i == o.tail {
		o.mu.Unlock()
		return // a completion for an event already acknowledged (a stale retry)
	}
	e := o.slot(i)
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
		h := o.slot(o.head)
		if h.state != entryAcked {
			break
		}
		o.ackedSession, o.ackedSeq = h.ev.Session, h.ev.Seq
		h.ev = bus.Event{} // drop the payload reference
		o.head++
		advanced = true
		if o.head%chunkSize == 0 {
			// Every entry of the chunk behind the head is acknowledged: nothing
			// points into it any more, and the tail is at least a chunk away.
			c := ((o.head - 1) / chunkSize) % uint64(len(o.chunks))
			if o.spare == nil {
				o.spare = o.chunks[c]
			}
			o.chunks[c] = nil
		}
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
