package fakediscord

import (
	"math/rand/v2"
	"sort"
	"sync/atomic"
	"time"
)

// discordEpoch is the snowflake epoch (2015-01-01T00:00:00Z) in milliseconds.
const discordEpoch = 1420070400000

// ShardFor returns the shard of a guild: (guild_id >> 22) % shards.
func ShardFor(guildID uint64, shards int) int {
	return int((guildID >> 22) % uint64(shards))
}

// Guild is one guild of the population.
type Guild struct {
	ID       uint64   `json:"id,string"`
	Channels []uint64 `json:"channels"`
	Members  []uint64 `json:"members"`
}

// idSource hands out unique, increasing snowflakes for events, messages and
// sessions. It starts at the current time so ids look like fresh Discord ids and do
// not collide with the (older) guild ids.
type idSource struct{ next atomic.Uint64 }

func newIDSource(now time.Time) *idSource {
	s := &idSource{}
	s.next.Store(uint64(now.UnixMilli()-discordEpoch) << 22)
	return s
}

func (s *idSource) id() uint64 { return s.next.Add(1) }

// population builds n guilds whose creation times are spread over 2016–2024, so
// (id >> 22) % shards spreads them the way a real bot's guilds spread. Low bits are
// zero in the last four bits so a guild's channels (id|1..id|3) and members stay
// distinct from every other guild id.
func population(n int, seed int64) []Guild {
	r := rand.New(rand.NewPCG(uint64(seed), 0x5eed))
	from := time.Date(2016, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli() - discordEpoch
	to := time.Date(2024, 12, 31, 0, 0, 0, 0, time.UTC).UnixMilli() - discordEpoch
	seen := make(map[uint64]bool, n)
	guilds := make([]Guild, 0, n)
	for len(guilds) < n {
		ms := uint64(from + r.Int64N(to-from))
		id := ms<<22 | uint64(r.IntN(1<<18))<<4
		if seen[id] {
			continue
		}
		seen[id] = true
		g := Guild{ID: id, Channels: []uint64{id | 1, id | 2, id | 3}}
		for k := uint64(0); k < 4; k++ {
			g.Members = append(g.Members, id|(8+k))
		}
		guilds = append(guilds, g)
	}
	sort.Slice(guilds, func(i, j int) bool { return guilds[i].ID < guilds[j].ID })
	return guilds
}

// guildsOfShard returns the guilds of shard [id, count].
func guildsOfShard(all []Guild, id, count int) []Guild {
	var out []Guild
	for _, g := range all {
		if ShardFor(g.ID, count) == id {
			out = append(out, g)
		}
	}
	return out
}
