package shardlease

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Outcomes callers branch on.
var (
	// ErrLeaseLost: a fenced write matched no row; another replica owns the shard now.
	ErrLeaseLost = errors.New("shard lease lost")
	// ErrShardCountMismatch: this replica's SHARD_COUNT differs from the cluster's.
	ErrShardCountMismatch = errors.New("shard count differs from the cluster's")
	// ErrDuplicateReplica: another live process already uses this replica id.
	ErrDuplicateReplica = errors.New("replica id in use by another live process")
	// ErrFatal, wrapped by a Runner's error, stops the whole replica (for example
	// Discord closed with 4004 authentication failed: no shard can ever connect).
	ErrFatal = errors.New("fatal shard error")
)

// ResumeState is what a new owner needs to RESUME the shard's Discord session.
type ResumeState struct {
	SessionID string
	ResumeURL string
	// Seq is the highest dispatch sequence known to be stored (contiguously acked by
	// JetStream); a RESUME from it makes Discord replay everything after it.
	Seq int64
}

// Resumable reports whether a RESUME can be attempted.
func (r ResumeState) Resumable() bool { return r.SessionID != "" && r.ResumeURL != "" }

// ShardState is the state column of a held shard.
type ShardState string

// States of a held shard; "free" is the row's state without an owner.
const (
	StateFree       ShardState = "free"
	StateConnecting ShardState = "connecting"
	StateReady      ShardState = "ready"
	StateResuming   ShardState = "resuming"
	StateReleasing  ShardState = "releasing"
)

// Status is what a Runner reports about its shard; the manager writes the latest
// one with the next heartbeat (one statement for all shards).
type Status struct {
	State       ShardState
	Resume      ResumeState
	Guilds      int
	LastEventAt time.Time
}

// Lease is one held shard, handed to the Runner. Its fields are fixed for the
// lease's life; the methods are safe from any goroutine.
type Lease struct {
	ShardID    int
	ShardCount int
	Epoch      int64
	// Resume is what the previous owner saved (zero when there is none).
	Resume ResumeState

	mu       sync.Mutex
	status   Status
	dirty    bool
	draining chan struct{}
	drainOne sync.Once
}

func newLease(shardID, shardCount int, epoch int64, resume ResumeState) *Lease {
	return &Lease{
		ShardID:    shardID,
		ShardCount: shardCount,
		Epoch:      epoch,
		Resume:     resume,
		status:     Status{State: StateConnecting, Resume: resume},
		draining:   make(chan struct{}),
	}
}

// Report records the shard's current status; cheap, call it as often as needed.
func (l *Lease) Report(s Status) {
	l.mu.Lock()
	l.status, l.dirty = s, true
	l.mu.Unlock()
}

// Status returns the last reported status.
func (l *Lease) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.status
}

// Draining is closed when the manager wants the shard back gracefully (rebalance
// or shutdown): the runner stops reading, flushes, and returns its final
// ResumeState.
func (l *Lease) Draining() <-chan struct{} { return l.draining }

func (l *Lease) drain() { l.drainOne.Do(func() { close(l.draining) }) }

// Runner drives one shard while its lease is held.
type Runner interface {
	// RunShard runs in its own goroutine from the moment the lease is acquired.
	//
	// ctx is cancelled the moment the lease is lost (a renewal matched no row, the
	// self-fence deadline passed, or a hard stop): the runner must stop driving the
	// shard at once and return; what it returns is then ignored.
	//
	// When lease.Draining() is closed the runner hands off: it stops reading, waits
	// (bounded) for in-flight work, closes the connection so the session stays
	// resumable, and returns the final ResumeState with a nil error. The manager
	// saves that state and releases the row in one fenced statement.
	//
	// A runner that returns by itself releases the lease with the state it returns
	// (or the last reported one when it returns the zero value); the manager backs
	// off before claiming that shard again. An error wrapping ErrFatal stops the
	// replica.
	RunShard(ctx context.Context, lease *Lease) (ResumeState, error)
}

// RunnerFunc adapts a function to Runner.
type RunnerFunc func(ctx context.Context, lease *Lease) (ResumeState, error)

// RunShard calls f.
func (f RunnerFunc) RunShard(ctx context.Context, lease *Lease) (ResumeState, error) {
	return f(ctx, lease)
}
