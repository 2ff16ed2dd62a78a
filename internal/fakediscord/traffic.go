package fakediscord

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Event kinds the traffic generator knows. Any other name in a mix is sent as a
// guild event of that type with a filler payload.
const (
	KindMessageCreate     = "MESSAGE_CREATE"
	KindDMMessageCreate   = "DM_MESSAGE_CREATE" // t=MESSAGE_CREATE without guild_id, on shard 0 only
	KindInteractionCreate = "INTERACTION_CREATE"
	KindGuildUpdate       = "GUILD_UPDATE"
	KindGuildMemberAdd    = "GUILD_MEMBER_ADD"
	KindGuildRoleCreate   = "GUILD_ROLE_CREATE"
	KindPresenceUpdate    = "PRESENCE_UPDATE"
	KindTypingStart       = "TYPING_START"
	// UnknownEventType is a dispatch no library has a struct for.
	UnknownEventType = "SHARDWARDEN_FUTURE_EVENT"
)

// DefaultMix is the traffic mix when TrafficConfig.Mix is empty.
var DefaultMix = map[string]int{
	KindMessageCreate:     55,
	KindDMMessageCreate:   3,
	KindInteractionCreate: 10,
	KindGuildUpdate:       2,
	KindGuildMemberAdd:    5,
	KindGuildRoleCreate:   2,
	KindPresenceUpdate:    15,
	KindTypingStart:       5,
	UnknownEventType:      3,
}

// TrafficConfig configures the traffic generator.
type TrafficConfig struct {
	// Rate in events per second across all shards, held whatever the clients do
	// (as Discord does: a client that cannot keep up is dropped as a slow
	// consumer). 0 sends as fast as the slowest client reads: the generator waits
	// while any connection has more than backpressureFrames frames queued, so a
	// throughput benchmark measures the pipeline, not the fake's patience.
	Rate float64 `json:"rate"`
	// Mix: event kind → weight. Default DefaultMix.
	Mix map[string]int `json:"mix"`
	// PayloadSize is the approximate size in bytes of each event's d. Default 1024.
	PayloadSize int `json:"payload_size"`
	// Count stops the generator after this many events were dispatched (to at least
	// one session); 0 means no limit.
	Count int64 `json:"count"`
	// Duration stops the generator after this long; 0 means until StopTraffic.
	Duration time.Duration `json:"duration"`
}

// ParseMix parses "MESSAGE_CREATE=60,PRESENCE_UPDATE=20,..." into a mix.
func ParseMix(s string) (map[string]int, error) {
	mix := map[string]int{}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, w, ok := strings.Cut(part, "=")
		n, err := strconv.Atoi(w)
		if !ok || err != nil || n < 0 || name == "" {
			return nil, fmt.Errorf("traffic mix %q: want TYPE=WEIGHT", part)
		}
		mix[name] = n
	}
	return mix, nil
}

// backpressureFrames bounds the queue of any connection while traffic runs at
// Rate 0.
const backpressureFrames = 8192

// maxQueued returns the longest write queue of a connection that is not stalled.
func (s *Server) maxQueued() int {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	longest := 0
	for _, c := range conns {
		c.mu.Lock()
		if !c.stalled && !c.closing {
			longest = max(longest, len(c.queue))
		}
		c.mu.Unlock()
	}
	return longest
}

// TrafficStats reports the generator's progress.
type TrafficStats struct {
	Running     bool  `json:"running"`
	Generated   int64 `json:"generated"`
	Dispatched  int64 `json:"dispatched"`  // reached at least one session
	Undelivered int64 `json:"undelivered"` // their shard had no session
}

type trafficRunner struct {
	mu      sync.Mutex
	cancel  context.CancelFunc
	done    chan struct{}
	gen     atomic.Int64
	sent    atomic.Int64
	undeliv atomic.Int64
}

func (t *trafficRunner) stop() {
	t.mu.Lock()
	cancel, done := t.cancel, t.done
	t.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// StartTraffic starts the generator; it returns at once. It fails when the
// generator already runs.
func (s *Server) StartTraffic(tc TrafficConfig) error {
	g, err := s.newGenerator(tc)
	if err != nil {
		return err
	}
	t := &s.traffic
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done != nil {
		select {
		case <-t.done:
		default:
			return errors.New("fakediscord: traffic already running")
		}
	}
	select {
	case <-s.stopping:
		return errors.New("fakediscord: server stopped")
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	if tc.Duration > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), tc.Duration)
	}
	t.cancel, t.done = cancel, make(chan struct{})
	t.gen.Store(0)
	t.sent.Store(0)
	t.undeliv.Store(0)
	done := t.done
	go func() {
		defer close(done)
		defer cancel()
		g.run(ctx, tc, t)
	}()
	return nil
}

// StopTraffic stops the generator and waits for it. Idempotent.
func (s *Server) StopTraffic() { s.traffic.stop() }

// WaitTraffic blocks until the generator stops by itself (Count, Duration) or ctx ends.
func (s *Server) WaitTraffic(ctx context.Context) error {
	s.traffic.mu.Lock()
	done := s.traffic.done
	s.traffic.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TrafficStats returns the generator's counters (of the current or last run).
func (s *Server) TrafficStats() TrafficStats {
	t := &s.traffic
	t.mu.Lock()
	running := false
	if t.done != nil {
		select {
		case <-t.done:
		default:
			running = true
		}
	}
	t.mu.Unlock()
	return TrafficStats{Running: running, Generated: t.gen.Load(), Dispatched: t.sent.Load(), Undelivered: t.undeliv.Load()}
}

// template is a payload split at its placeholders.
type template struct {
	typ    string // the t sent
	intent uint64
	dm     bool
	parts  []string // literal, hole, literal, hole, ..., literal
	holes  []byte   // 'I' id, 'G' guild, 'C' channel, 'U' user, 'T' timestamp, 'F' filler, 'K' interaction token
	fixed  int      // literal bytes
}

func parseTemplate(typ string, intent uint64, dm bool, src string) template {
	t := template{typ: typ, intent: intent, dm: dm}
	for {
		i := strings.Index(src, "{{")
		if i < 0 {
			t.parts = append(t.parts, src)
			t.fixed += len(src)
			return t
		}
		t.parts = append(t.parts, src[:i])
		t.fixed += len(src[:i])
		t.holes = append(t.holes, src[i+2])
		src = src[i+5:]
	}
}

const userJSON = `{"id":"{{U}}","username":"user{{U}}","discriminator":"0","global_name":null,"avatar":null,"bot":false}`

var templates = map[string]func() template{
	KindMessageCreate: func() template {
		return parseTemplate("MESSAGE_CREATE", IntentGuildMessages, false,
			`"id":"{{I}}","nonce":"{{I}}","type":0,"channel_id":"{{C}}","guild_id":"{{G}}","author":`+userJSON+
				`,"member":{"roles":[],"joined_at":"2024-01-01T00:00:00.000000+00:00","deaf":false,"mute":false,"flags":0},"content":"{{F}}","timestamp":"{{T}}","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"flags":0}`)
	},
	KindDMMessageCreate: func() template {
		return parseTemplate("MESSAGE_CREATE", IntentDirectMessages, true,
			`"id":"{{I}}","nonce":"{{I}}","type":0,"channel_id":"{{C}}","author":`+userJSON+
				`,"content":"{{F}}","timestamp":"{{T}}","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"flags":0}`)
	},
	KindInteractionCreate: func() template {
		return parseTemplate("INTERACTION_CREATE", 0, false,
			`"id":"{{I}}","application_id":"{{A}}","type":2,"token":"{{K}}","version":1,"guild_id":"{{G}}","channel_id":"{{C}}","member":{"user":`+userJSON+
				`,"roles":[],"permissions":"2248473465835073","joined_at":"2024-01-01T00:00:00.000000+00:00","deaf":false,"mute":false,"flags":0},"data":{"id":"1100000000000000100","name":"echo","type":1,"options":[{"name":"text","type":3,"value":"{{F}}"}]},"locale":"en-US","guild_locale":"en-US","app_permissions":"2248473465835073","entitlements":[],"authorizing_integration_owners":{"0":"{{G}}"},"context":0}`)
	},
	KindGuildUpdate: func() template {
		return parseTemplate("GUILD_UPDATE", IntentGuilds, false,
			`"id":"{{G}}","guild_id":"{{G}}","name":"guild {{G}}","description":"{{F}}","icon":null,"owner_id":"{{U}}","roles":[],"emojis":[],"features":[],"premium_tier":0}`)
	},
	KindGuildMemberAdd: func() template {
		return parseTemplate("GUILD_MEMBER_ADD", IntentGuildMembers, false,
			`"guild_id":"{{G}}","user":`+userJSON+`,"nick":"{{F}}","roles":[],"joined_at":"{{T}}","deaf":false,"mute":false,"flags":0}`)
	},
	KindGuildRoleCreate: func() template {
		return parseTemplate("GUILD_ROLE_CREATE", IntentGuilds, false,
			`"guild_id":"{{G}}","role":{"id":"{{I}}","name":"{{F}}","color":0,"hoist":false,"position":1,"permissions":"0","managed":false,"mentionable":false,"flags":0}}`)
	},
	KindPresenceUpdate: func() template {
		return parseTemplate("PRESENCE_UPDATE", IntentGuildPresences, false,
			`"user":{"id":"{{U}}"},"guild_id":"{{G}}","status":"online","activities":[{"name":"{{F}}","type":0,"created_at":1700000000000}],"client_status":{"desktop":"online"}}`)
	},
	KindTypingStart: func() template {
		return parseTemplate("TYPING_START", 1<<11, false,
			`"channel_id":"{{C}}","guild_id":"{{G}}","user_id":"{{U}}","timestamp":1700000000,"filler":"{{F}}"}`)
	},
}

func genericTemplate(typ string) template {
	return parseTemplate(typ, 0, false, `"guild_id":"{{G}}","channel_id":"{{C}}","future_field":{"nested":true,"filler":"{{F}}"}}`)
}

type generator struct {
	s            *Server
	backpressure int // Rate 0: wait while a connection has more frames queued
	kinds        []template
	cum          []int // cumulative weights
	total        int
	size         int
	filler       []byte
	rng          *rand.Rand
	guilds       []Guild
	appID        string
	scratch      []*session
	tsCache      []byte
	tsCached     int64
}

func (s *Server) newGenerator(tc TrafficConfig) (*generator, error) {
	mix := tc.Mix
	if len(mix) == 0 {
		mix = DefaultMix
	}
	if tc.Rate < 0 || tc.Count < 0 || tc.Duration < 0 || tc.PayloadSize < 0 {
		return nil, errors.New("fakediscord traffic: rate, count, duration and payload size must not be negative")
	}
	names := make([]string, 0, len(mix))
	for n, w := range mix {
		if w > 0 {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, errors.New("fakediscord traffic: mix has no positive weight")
	}
	sort.Strings(names)
	g := &generator{s: s, size: tc.PayloadSize, guilds: s.guilds, appID: strconv.FormatUint(s.cfg.ApplicationID, 10),
		backpressure: min(s.cfg.MaxQueuedFrames/4, backpressureFrames)}
	if g.size == 0 {
		g.size = 1024
	}
	for _, n := range names {
		mk, ok := templates[n]
		t := genericTemplate(n)
		if ok {
			t = mk()
		}
		g.kinds = append(g.kinds, t)
		g.total += mix[n]
		g.cum = append(g.cum, g.total)
	}
	g.filler = make([]byte, g.size)
	for i := range g.filler {
		g.filler[i] = 'a' + byte(i%26)
	}
	g.rng = rand.New(rand.NewPCG(uint64(s.cfg.Seed), 0x7aff1c))
	return g, nil
}

func (g *generator) run(ctx context.Context, tc TrafficConfig, t *trafficRunner) {
	start := time.Now()
	var emitted int64
	for {
		if ctx.Err() != nil {
			return
		}
		batch := int64(256)
		if tc.Rate > 0 {
			due := int64(tc.Rate * time.Since(start).Seconds())
			batch = due - emitted
			if batch <= 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Millisecond):
				}
				continue
			}
			batch = min(batch, 4096)
		}
		if tc.Rate == 0 {
			for g.s.maxQueued() > g.backpressure {
				if ctx.Err() != nil {
					return
				}
				time.Sleep(50 * time.Microsecond)
			}
		}
		now := time.Now()
		delivered := int64(0)
		for range batch {
			if g.one(now) {
				delivered++
				if n := t.sent.Add(1); tc.Count > 0 && n >= tc.Count {
					t.gen.Add(1)
					return
				}
			} else {
				t.undeliv.Add(1)
			}
			t.gen.Add(1)
		}
		emitted += batch
		if delivered == 0 && tc.Rate == 0 {
			// Nobody is connected: do not spin.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Millisecond):
			}
		}
	}
}

// one generates and delivers one event; it reports whether a session took it.
func (g *generator) one(now time.Time) bool {
	x := g.rng.IntN(g.total)
	k := sort.SearchInts(g.cum, x+1)
	t := &g.kinds[k]
	id := g.s.ids.id()
	var guild Guild
	shard := 0
	if !t.dm {
		guild = g.guilds[g.rng.IntN(len(g.guilds))]
	}
	var user, channel uint64
	if t.dm {
		user = 1<<60 | uint64(g.rng.IntN(1000))<<4
		channel = user | 1
	} else {
		user = guild.Members[g.rng.IntN(len(guild.Members))]
		channel = guild.Channels[g.rng.IntN(len(guild.Channels))]
	}
	d := g.render(t, id, guild.ID, channel, user, -1, now)
	var blank func() []byte
	if t.typ == "MESSAGE_CREATE" && !t.dm {
		blank = func() []byte { return g.render(t, id, guild.ID, channel, user, 0, now) }
	}
	n, scratch := g.s.deliver(g.scratch, t.typ, id, guild.ID, shard, t.intent, d, blank, now)
	g.scratch = scratch
	if n > 0 && t.typ == "INTERACTION_CREATE" {
		g.s.rest.addInteraction(id, interactionToken(id), now)
	}
	return n > 0
}

func interactionToken(id uint64) string { return "aW50ZXJhY3Rpb246" + strconv.FormatUint(id, 36) }

func (g *generator) timestamp(now time.Time) []byte {
	if ms := now.UnixMilli(); ms != g.tsCached {
		g.tsCached = ms
		g.tsCache = now.UTC().AppendFormat(g.tsCache[:0], "2006-01-02T15:04:05.000000+00:00")
	}
	return g.tsCache
}

// render fills a template with fill bytes of filler (the content of a message);
// fill < 0 sizes the filler so d is about PayloadSize bytes.
func (g *generator) render(t *template, id, guild, channel, user uint64, fill int, now time.Time) []byte {
	if fill < 0 {
		fill = max(g.size-t.fixed-22*len(t.holes)-24, 1)
	}
	d := make([]byte, 0, g.size+64)
	d = appendEventIDField(d, id)
	for i, h := range t.holes {
		d = append(d, t.parts[i]...)
		switch h {
		case 'I':
			d = strconv.AppendUint(d, id, 10)
		case 'G':
			d = strconv.AppendUint(d, guild, 10)
		case 'C':
			d = strconv.AppendUint(d, channel, 10)
		case 'U':
			d = strconv.AppendUint(d, user, 10)
		case 'A':
			d = append(d, g.appID...)
		case 'K':
			d = append(d, "aW50ZXJhY3Rpb246"...)
			d = strconv.AppendUint(d, id, 36)
		case 'T':
			d = append(d, g.timestamp(now)...)
		case 'F':
			d = append(d, g.filler[:min(fill, len(g.filler))]...)
		}
	}
	return append(d, t.parts[len(t.parts)-1]...)
}
