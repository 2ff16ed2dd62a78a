package shardlease

// NewLeaseForTest returns a lease as a Manager hands it to a Runner, so runner
// packages can test RunShard without a Manager. Not for production code.
func NewLeaseForTest(shardID, shardCount int, epoch int64, resume ResumeState) *Lease {
	return newLease(shardID, shardCount, epoch, resume)
}

// DrainForTest closes Draining(), as the Manager does on a rebalance or shutdown.
func (l *Lease) DrainForTest() { l.drain() }
