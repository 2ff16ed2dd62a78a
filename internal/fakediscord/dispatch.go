package fakediscord

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"
)

// EventIDField is the key, first in every dispatch's `d` object, that carries the
// event's unique id as a decimal string: {"fake_event_id":"1234",...}. A replay on
// RESUME carries the same id (and seq). Use EventID to read it.
const EventIDField = "fake_event_id"

var eventIDPrefix = []byte(`{"` + EventIDField + `":"`)

func appendEventIDField(d []byte, id uint64) []byte {
	d = append(d, eventIDPrefix...)
	d = strconv.AppendUint(d, id, 10)
	return append(d, `",`...)
}

// EventID extracts the fake's unique event id from a dispatch's raw `d`. It is
// cheap when d starts with the field (every payload the fake builds does) and
// falls back to decoding d otherwise.
func EventID(d []byte) (uint64, bool) {
	if rest, ok := bytes.CutPrefix(d, eventIDPrefix); ok {
		if end := bytes.IndexByte(rest, '"'); end > 0 {
			if id, err := strconv.ParseUint(string(rest[:end]), 10, 64); err == nil {
				return id, true
			}
		}
	}
	var v struct {
		ID string `json:"fake_event_id"`
	}
	if json.Unmarshal(d, &v) != nil || v.ID == "" {
		return 0, false
	}
	id, err := strconv.ParseUint(v.ID, 10, 64)
	return id, err == nil
}

// withEventID returns payload with the id field spliced in first. A payload that
// is not a JSON object is returned unchanged (its id is then only in the ledger).
func withEventID(payload []byte, id uint64) []byte {
	p := bytes.TrimSpace(payload)
	if len(p) < 2 || p[0] != '{' {
		return p
	}
	inner := bytes.TrimSpace(p[1:])
	d := appendEventIDField(make([]byte, 0, len(p)+40), id)
	if len(inner) > 0 && inner[0] == '}' {
		d = d[:len(d)-1] // drop the comma
		return append(d, inner...)
	}
	return append(d, inner...)
}

// Dispatch sends one event of eventType with payload d to every live or
// resumable session of shard (whatever shard count it identified with) and
// returns the event's unique id. d may be []byte/json.RawMessage (JSON) or any
// value encoding/json can encode; when it is an object the id field is added
// first (see EventIDField). No intent filtering is applied. ErrNoSession: the
// shard has no session, nothing was dispatched.
func (s *Server) Dispatch(shard int, eventType string, d any) (uint64, error) {
	return s.dispatchAny(shard, 0, eventType, d)
}

// DispatchGuild sends an event about guild guildID to the session(s) owning it,
// (guild_id >> 22) % shard_count, like Discord routes guild events.
func (s *Server) DispatchGuild(guildID uint64, eventType string, d any) (uint64, error) {
	return s.dispatchAny(-1, guildID, eventType, d)
}

func (s *Server) dispatchAny(shard int, guild uint64, eventType string, d any) (uint64, error) {
	var raw []byte
	switch v := d.(type) {
	case json.RawMessage:
		raw = v
	case []byte:
		raw = v
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return 0, fmt.Errorf("fakediscord dispatch %s: encode payload: %w", eventType, err)
		}
		raw = b
	}
	if !json.Valid(raw) {
		return 0, fmt.Errorf("fakediscord dispatch %s: payload is not valid JSON", eventType)
	}
	if eventType == "" {
		return 0, fmt.Errorf("fakediscord dispatch: empty event type")
	}
	id := s.ids.id()
	payload := withEventID(raw, id)
	var blank func() []byte
	if eventType == "MESSAGE_CREATE" || eventType == "MESSAGE_UPDATE" {
		blank = func() []byte { return s.blankContent(payload) }
	}
	n, _ := s.deliver(nil, eventType, id, guild, shard, 0, payload, blank, time.Now())
	if n == 0 {
		return id, fmt.Errorf("dispatch %s to shard %d: %w", eventType, shard, ErrNoSession)
	}
	if eventType == "INTERACTION_CREATE" {
		var in struct {
			ID    string `json:"id"`
			Token string `json:"token"`
		}
		if json.Unmarshal(payload, &in) == nil {
			if iid, err := strconv.ParseUint(in.ID, 10, 64); err == nil && in.Token != "" {
				s.rest.addInteraction(iid, in.Token, time.Now())
			}
		}
	}
	return id, nil
}

// deliver dispatches one event to every session that should receive it and
// returns how many did. intent, when not zero, skips sessions that did not ask
// for it. blank, when not nil, gives the payload for sessions without the
// MESSAGE_CONTENT intent (called at most once). dst is scratch space the caller
// may reuse.
func (s *Server) deliver(dst []*session, typ string, id, guild uint64, shard int, intent uint64, d []byte, blank func() []byte, now time.Time) (int, []*session) {
	s.mu.Lock()
	dst = s.routeLocked(dst[:0], shard, guild, now)
	s.mu.Unlock()
	n := 0
	var blanked []byte
	for _, se := range dst {
		if intent != 0 && se.intents&intent == 0 {
			continue
		}
		payload := d
		if blank != nil && se.intents&IntentMessageContent == 0 {
			if blanked == nil {
				blanked = blank()
			}
			payload = blanked
		}
		se.mu.Lock()
		if se.dispatchLocked(s, typ, id, guild, payload, now) {
			n++
		}
		se.mu.Unlock()
	}
	if n > 0 {
		s.uniqueEvents.Add(1)
	} else {
		s.undelivered.Add(1)
	}
	clear(dst)
	return n, dst
}

// blankContent returns a MESSAGE_CREATE/UPDATE payload as Discord sends it to an
// app without the privileged MESSAGE_CONTENT intent: content, embeds,
// attachments and components empty, poll gone. DMs, messages mentioning the app
// and the app's own messages keep their content. The id field stays first.
func (s *Server) blankContent(d []byte) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(d, &m) != nil {
		return d
	}
	if g, ok := m["guild_id"]; !ok || string(g) == "null" {
		return d
	}
	app := strconv.FormatUint(s.cfg.ApplicationID, 10)
	var author struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(m["author"], &author) == nil && author.ID == app {
		return d
	}
	var mentions []struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(m["mentions"], &mentions)
	for _, u := range mentions {
		if u.ID == app {
			return d
		}
	}
	if _, ok := m["content"]; ok {
		m["content"] = json.RawMessage(`""`)
	}
	for _, k := range []string{"embeds", "attachments", "components"} {
		if _, ok := m[k]; ok {
			m[k] = json.RawMessage(`[]`)
		}
	}
	delete(m, "poll")
	keys := make([]string, 0, len(m))
	for k := range m {
		if k != EventIDField {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if _, ok := m[EventIDField]; ok {
		keys = append([]string{EventIDField}, keys...)
	}
	out := append(make([]byte, 0, len(d)), '{')
	for i, k := range keys {
		if i > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendQuote(out, k)
		out = append(out, ':')
		out = append(out, m[k]...)
	}
	return append(out, '}')
}
