package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// envelope is one gateway frame with only its outer fields decoded: the payload
// stays raw. Data aliases the buffer the frame was decoded from.
type envelope struct {
	Op     int
	Seq    int64 // 0 when s is null or absent
	Type   string
	Data   []byte // raw JSON of d; nil when absent
	HasSeq bool

	// Raw JSON of d's top-level guild_id and id (when d is an object), found
	// while validating d: the guild of a dispatch costs no second pass.
	guildRaw, idRaw []byte
}

// Guild returns the guild a dispatch concerns (the Discord-Guild header): d.id
// for GUILD_CREATE/UPDATE/DELETE, else d.guild_id; "" when there is none.
func (e *envelope) Guild() string {
	raw := e.guildRaw
	switch e.Type {
	case "GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE":
		raw = e.idRaw
	}
	return idString(raw)
}

// idString is a snowflake from its raw JSON: a string without escapes, or an
// integer; "" for anything else (null, objects).
func idString(v []byte) string {
	if len(v) >= 2 && v[0] == '"' {
		if end, esc, _ := scanString(v, 0); end == len(v) && !esc {
			return string(v[1 : len(v)-1])
		}
		return ""
	}
	if len(v) > 0 && v[0] >= '0' && v[0] <= '9' {
		return string(v)
	}
	return ""
}

var errEnvelope = errors.New("gateway frame")

// decodeEnvelope reads the top level of a gateway frame: {"op":…, "s":…, "t":…,
// "d":…} in any order, other keys skipped. It validates the JSON of every value
// it skips or keeps, so d is always one well-formed JSON value.
func decodeEnvelope(b []byte) (envelope, error) {
	var env envelope
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return env, fmt.Errorf("%w: not a JSON object", errEnvelope)
	}
	i = skipSpace(b, i+1)
	sawOp := false
	if i < len(b) && b[i] == '}' {
		return env, fmt.Errorf("%w: no op", errEnvelope)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return env, fmt.Errorf("%w: key expected at %d", errEnvelope, i)
		}
		keyStart := i
		end, esc, err := scanString(b, i)
		if err != nil {
			return env, err
		}
		key := b[keyStart+1 : end-1]
		if esc {
			var s string
			if err := json.Unmarshal(b[keyStart:end], &s); err != nil {
				return env, fmt.Errorf("%w: key: %v", errEnvelope, err)
			}
			key = []byte(s)
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return env, fmt.Errorf("%w: colon expected at %d", errEnvelope, i)
		}
		i = skipSpace(b, i+1)
		valStart := i
		var valEnd int
		if string(key) == "d" && i < len(b) && b[i] == '{' {
			valEnd, env.guildRaw, env.idRaw, err = skipTopObject(b, i)
		} else {
			valEnd, err = skipValue(b, i, 0)
		}
		if err != nil {
			return env, err
		}
		val := b[valStart:valEnd]
		switch string(key) {
		case "op":
			n, err := strconv.ParseInt(string(val), 10, 32)
			if err != nil {
				return env, fmt.Errorf("%w: op %q is not an integer", errEnvelope, val)
			}
			env.Op, sawOp = int(n), true
		case "s":
			if string(val) == "null" {
				env.Seq, env.HasSeq = 0, false
				break
			}
			n, err := strconv.ParseInt(string(val), 10, 64)
			if err != nil || n < 0 {
				return env, fmt.Errorf("%w: s %q is not a sequence number", errEnvelope, val)
			}
			env.Seq, env.HasSeq = n, true
		case "t":
			if string(val) == "null" {
				env.Type = ""
				break
			}
			if val[0] != '"' {
				return env, fmt.Errorf("%w: t is not a string", errEnvelope)
			}
			env.Type, err = eventType(val)
			if err != nil {
				return env, err
			}
		case "d":
			env.Data = val
		}
		i = skipSpace(b, valEnd)
		if i >= len(b) {
			return env, fmt.Errorf("%w: unterminated object", errEnvelope)
		}
		if b[i] == '}' {
			i++
			break
		}
		if b[i] != ',' {
			return env, fmt.Errorf("%w: comma expected at %d", errEnvelope, i)
		}
		i = skipSpace(b, i+1)
	}
	if skipSpace(b, i) != len(b) {
		return env, fmt.Errorf("%w: trailing data after the object", errEnvelope)
	}
	if !sawOp {
		return env, fmt.Errorf("%w: no op", errEnvelope)
	}
	return env, nil
}

// eventType returns t's string, interned for the types Discord documents (no
// allocation on the hot path).
func eventType(quoted []byte) (string, error) {
	inner := quoted[1 : len(quoted)-1]
	if t, ok := knownTypes[string(inner)]; ok {
		return t, nil
	}
	var s string
	if err := json.Unmarshal(quoted, &s); err != nil {
		return "", fmt.Errorf("%w: t: %v", errEnvelope, err)
	}
	return s, nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// scanString returns the index after the closing quote of the string starting at
// b[i] == '"', and whether it holds escapes.
func scanString(b []byte, i int) (int, bool, error) {
	esc := false
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1, esc, nil
		case c == '\\':
			esc = true
			j++
			if j >= len(b) {
				return 0, false, fmt.Errorf("%w: unterminated string", errEnvelope)
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(b) {
					return 0, false, fmt.Errorf("%w: short \\u escape", errEnvelope)
				}
				for k := j + 1; k <= j+4; k++ {
					if !isHex(b[k]) {
						return 0, false, fmt.Errorf("%w: bad \\u escape", errEnvelope)
					}
				}
				j += 4
			default:
				return 0, false, fmt.Errorf("%w: bad escape \\%c", errEnvelope, b[j])
			}
		case c < 0x20:
			return 0, false, fmt.Errorf("%w: control character in string", errEnvelope)
		}
	}
	return 0, false, fmt.Errorf("%w: unterminated string", errEnvelope)
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

const maxDepth = 512

// skipTopObject skips the object at b[i] == '{' like skipValue, and returns the
// raw values of its top-level "guild_id" and "id" members (the last of each).
func skipTopObject(b []byte, i int) (end int, guild, id []byte, err error) {
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil, nil, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, nil, nil, fmt.Errorf("%w: key expected at %d", errEnvelope, i)
		}
		kEnd, esc, err := scanString(b, i)
		if err != nil {
			return 0, nil, nil, err
		}
		key := b[i+1 : kEnd-1]
		i = skipSpace(b, kEnd)
		if i >= len(b) || b[i] != ':' {
			return 0, nil, nil, fmt.Errorf("%w: colon expected at %d", errEnvelope, i)
		}
		i = skipSpace(b, i+1)
		vEnd, err := skipValue(b, i, 1)
		if err != nil {
			return 0, nil, nil, err
		}
		if !esc {
			switch string(key) {
			case "guild_id":
				guild = b[i:vEnd]
			case "id":
				id = b[i:vEnd]
			}
		}
		i = skipSpace(b, vEnd)
		if i >= len(b) {
			return 0, nil, nil, fmt.Errorf("%w: unterminated value", errEnvelope)
		}
		if b[i] == '}' {
			return i + 1, guild, id, nil
		}
		if b[i] != ',' {
			return 0, nil, nil, fmt.Errorf("%w: comma expected at %d", errEnvelope, i)
		}
		i = skipSpace(b, i+1)
	}
}

// skipValue returns the index just after the JSON value starting at b[i].
func skipValue(b []byte, i, depth int) (int, error) {
	if depth > maxDepth {
		return 0, fmt.Errorf("%w: nested too deep", errEnvelope)
	}
	if i >= len(b) {
		return 0, fmt.Errorf("%w: value expected", errEnvelope)
	}
	switch c := b[i]; {
	case c == '"':
		end, _, err := scanString(b, i)
		return end, err
	case c == '{' || c == '[':
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == closer {
			return i + 1, nil
		}
		for {
			if c == '{' {
				if i >= len(b) || b[i] != '"' {
					return 0, fmt.Errorf("%w: key expected at %d", errEnvelope, i)
				}
				end, _, err := scanString(b, i)
				if err != nil {
					return 0, err
				}
				i = skipSpace(b, end)
				if i >= len(b) || b[i] != ':' {
					return 0, fmt.Errorf("%w: colon expected at %d", errEnvelope, i)
				}
				i = skipSpace(b, i+1)
			}
			end, err := skipValue(b, i, depth+1)
			if err != nil {
				return 0, err
			}
			i = skipSpace(b, end)
			if i >= len(b) {
				return 0, fmt.Errorf("%w: unterminated value", errEnvelope)
			}
			if b[i] == closer {
				return i + 1, nil
			}
			if b[i] != ',' {
				return 0, fmt.Errorf("%w: comma expected at %d", errEnvelope, i)
			}
			i = skipSpace(b, i+1)
		}
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	case c == '-' || c >= '0' && c <= '9':
		return skipNumber(b, i)
	}
	return 0, fmt.Errorf("%w: unexpected %q at %d", errEnvelope, b[i], i)
}

func literal(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, fmt.Errorf("%w: bad literal at %d", errEnvelope, i)
	}
	return i + len(lit), nil
}

func skipNumber(b []byte, i int) (int, error) {
	start := i
	if b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(b) && b[i] == '0' {
		i++
	} else if digits() == 0 {
		return 0, fmt.Errorf("%w: bad number at %d", errEnvelope, start)
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return 0, fmt.Errorf("%w: bad number at %d", errEnvelope, start)
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return 0, fmt.Errorf("%w: bad number at %d", errEnvelope, start)
		}
	}
	return i, nil
}

// topLevelRaw returns the raw JSON of a top-level field of the object d (the
// last one when repeated, as JSON decoders do; "" when absent or malformed).
func topLevelRaw(d []byte, field string) string {
	i := skipSpace(d, 0)
	if i >= len(d) || d[i] != '{' {
		return ""
	}
	i = skipSpace(d, i+1)
	found := ""
	for i < len(d) && d[i] == '"' {
		end, esc, err := scanString(d, i)
		if err != nil {
			return ""
		}
		match := !esc && string(d[i+1:end-1]) == field
		i = skipSpace(d, end)
		if i >= len(d) || d[i] != ':' {
			return ""
		}
		i = skipSpace(d, i+1)
		vEnd, err := skipValue(d, i, 0)
		if err != nil {
			return ""
		}
		if match {
			found = string(d[i:vEnd])
		}
		i = skipSpace(d, vEnd)
		if i < len(d) && d[i] == ',' {
			i = skipSpace(d, i+1)
		}
	}
	return found
}

// topLevelString returns the value of a string (or integer) field at the top
// level of the JSON object d, e.g. guild_id; "" when absent, null or malformed.
func topLevelString(d []byte, field string) string { return idString([]byte(topLevelRaw(d, field))) }

// guildOf returns the guild a dispatch concerns, for the Discord-Guild header.
func guildOf(eventType string, d []byte) string {
	switch eventType {
	case "GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE":
		return topLevelString(d, "id")
	}
	return topLevelString(d, "guild_id")
}

// knownTypes interns Discord's documented dispatch types; they are also the only
// values of the events_by_type metric label (anything else counts as "other").
var knownTypes = func() map[string]string {
	m := map[string]string{}
	for _, t := range []string{
		"READY", "RESUMED", "APPLICATION_COMMAND_PERMISSIONS_UPDATE",
		"AUTO_MODERATION_RULE_CREATE", "AUTO_MODERATION_RULE_UPDATE", "AUTO_MODERATION_RULE_DELETE", "AUTO_MODERATION_ACTION_EXECUTION",
		"CHANNEL_CREATE", "CHANNEL_UPDATE", "CHANNEL_DELETE", "CHANNEL_PINS_UPDATE",
		"THREAD_CREATE", "THREAD_UPDATE", "THREAD_DELETE", "THREAD_LIST_SYNC", "THREAD_MEMBER_UPDATE", "THREAD_MEMBERS_UPDATE",
		"ENTITLEMENT_CREATE", "ENTITLEMENT_UPDATE", "ENTITLEMENT_DELETE",
		"GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE", "GUILD_AUDIT_LOG_ENTRY_CREATE", "GUILD_BAN_ADD", "GUILD_BAN_REMOVE",
		"GUILD_EMOJIS_UPDATE", "GUILD_STICKERS_UPDATE", "GUILD_INTEGRATIONS_UPDATE",
		"GUILD_MEMBER_ADD", "GUILD_MEMBER_REMOVE", "GUILD_MEMBER_UPDATE", "GUILD_MEMBERS_CHUNK",
		"GUILD_ROLE_CREATE", "GUILD_ROLE_UPDATE", "GUILD_ROLE_DELETE",
		"GUILD_SCHEDULED_EVENT_CREATE", "GUILD_SCHEDULED_EVENT_UPDATE", "GUILD_SCHEDULED_EVENT_DELETE",
		"GUILD_SCHEDULED_EVENT_USER_ADD", "GUILD_SCHEDULED_EVENT_USER_REMOVE",
		"GUILD_SOUNDBOARD_SOUND_CREATE", "GUILD_SOUNDBOARD_SOUND_UPDATE", "GUILD_SOUNDBOARD_SOUND_DELETE", "GUILD_SOUNDBOARD_SOUNDS_UPDATE", "SOUNDBOARD_SOUNDS",
		"INTEGRATION_CREATE", "INTEGRATION_UPDATE", "INTEGRATION_DELETE", "INTERACTION_CREATE",
		"INVITE_CREATE", "INVITE_DELETE",
		"MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "MESSAGE_DELETE_BULK",
		"MESSAGE_REACTION_ADD", "MESSAGE_REACTION_REMOVE", "MESSAGE_REACTION_REMOVE_ALL", "MESSAGE_REACTION_REMOVE_EMOJI",
		"MESSAGE_POLL_VOTE_ADD", "MESSAGE_POLL_VOTE_REMOVE",
		"PRESENCE_UPDATE", "STAGE_INSTANCE_CREATE", "STAGE_INSTANCE_UPDATE", "STAGE_INSTANCE_DELETE",
		"SUBSCRIPTION_CREATE", "SUBSCRIPTION_UPDATE", "SUBSCRIPTION_DELETE",
		"TYPING_START", "USER_UPDATE", "VOICE_CHANNEL_EFFECT_SEND", "VOICE_STATE_UPDATE", "VOICE_SERVER_UPDATE", "WEBHOOKS_UPDATE",
	} {
		m[t] = t
	}
	return m
}()

// typeLabel bounds the cardinality of the by-type metric.
func typeLabel(t string) string {
	if _, ok := knownTypes[t]; ok {
		return t
	}
	return "other"
}
