package shardlease

import "context"

// HeartbeatNow makes the manager's loop send one heartbeat now and returns its
// error; tests use it with a long interval so that they count every statement.
func (m *Manager) HeartbeatNow(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case m.hbReq <- reply:
	case <-ctx.Done():
		return ctx.Err()
	case <-m.done:
		return context.Canceled
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Statements are the SQL statements the manager sends, by name, for the schema
// test that prepares each against the migrated database.
var Statements = map[string]string{
	"claim lock":       claimLockSQL,
	"register cluster": registerClusterSQL,
	"read cluster":     readClusterSQL,
	"insert shards":    insertShardsSQL,
	"upsert replica":   upsertReplicaSQL,
	"read replica":     readReplicaSQL,
	"heartbeat":        heartbeatSQL,
	"claim":            claimSQL,
	"release":          releaseSQL,
	"leave":            leaveSQL,
}
