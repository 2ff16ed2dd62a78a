package fakediscord

import (
	"bytes"
	"encoding/json"
	"fmt"
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
	n, _ := s.deliver(nil, eventType, id, guild, shard, 0, payload, time.Now())
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
// for it. dst is scratch space the caller may reuse.
func (s *Server) deliver(dst []*session, typ string, id, guild uint64, shard int, intent uint64, d []byte, now time.Time) (int, []*session) {
	s.mu.Lock()
	dst = s.routeLocked(dst[:0], shard, guild, now)
	s.mu.Unlock()
	n := 0
	for _, se := range dst {
		if intent != 0 && se.intents&intent == 0 {
			continue
		}
		se.mu.Lock()
		if se.dispatchLocked(s, typ, id, guild, d, now) {
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
