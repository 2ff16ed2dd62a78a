package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/diamondburned/arikawa/v3/gateway"
	"github.com/diamondburned/arikawa/v3/utils/ws"
	"github.com/stretchr/testify/require"
)

func TestDecodeEnvelope(t *testing.T) {
	for name, tc := range map[string]struct {
		in   string
		want envelope
		err  string
	}{
		"dispatch": {
			in:   `{"op":0,"s":42,"t":"MESSAGE_CREATE","d":{"id":"1","guild_id":"7"}}`,
			want: envelope{Op: 0, Seq: 42, HasSeq: true, Type: "MESSAGE_CREATE", Data: []byte(`{"id":"1","guild_id":"7"}`)},
		},
		"any order and spaces": {
			in:   " {\n\"d\" : [1, 2.5e3, true, null, \"x\\\"y\"] , \"t\":\"SOME_FUTURE_THING\",\"s\":7 ,\"op\" : 0}\t",
			want: envelope{Op: 0, Seq: 7, HasSeq: true, Type: "SOME_FUTURE_THING", Data: []byte(`[1, 2.5e3, true, null, "x\"y"]`)},
		},
		"hello": {
			in:   `{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}`,
			want: envelope{Op: 10, Data: []byte(`{"heartbeat_interval":41250}`)},
		},
		"ack without d":    {in: `{"op":11}`, want: envelope{Op: 11}},
		"unknown keys":     {in: `{"op":1,"x":{"a":[{}]},"d":null}`, want: envelope{Op: 1, Data: []byte(`null`)}},
		"escaped type":     {in: `{"op":0,"s":1,"t":"A\u0042","d":{}}`, want: envelope{Op: 0, Seq: 1, HasSeq: true, Type: "AB", Data: []byte(`{}`)}},
		"not an object":    {in: `[1]`, err: "not a JSON object"},
		"empty":            {in: ``, err: "not a JSON object"},
		"no op":            {in: `{"d":1}`, err: "no op"},
		"empty object":     {in: `{}`, err: "no op"},
		"op not int":       {in: `{"op":"0"}`, err: "op"},
		"op fraction":      {in: `{"op":1.5}`, err: "op"},
		"negative seq":     {in: `{"op":0,"s":-1}`, err: "sequence"},
		"t not string":     {in: `{"op":0,"t":5}`, err: "t is not a string"},
		"truncated d":      {in: `{"op":0,"d":{"a":1}`, err: "unterminated"},
		"truncated string": {in: `{"op":0,"d":"abc`, err: "unterminated string"},
		"bad literal":      {in: `{"op":0,"d":tru}`, err: "literal"},
		"bad number":       {in: `{"op":0,"d":-}`, err: "number"},
		"trailing":         {in: `{"op":0} x`, err: "trailing"},
		"control char":     {in: "{\"op\":0,\"d\":\"a\x01\"}", err: "control"},
		"too deep":         {in: `{"op":0,"d":` + strings.Repeat("[", 600) + strings.Repeat("]", 600) + `}`, err: "deep"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := decodeEnvelope([]byte(tc.in))
			if tc.err != "" {
				require.ErrorIs(t, err, errEnvelope)
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			got.guildRaw, got.idRaw = nil, nil // TestEnvelopeGuild covers them
			require.Equal(t, tc.want, got)
		})
	}
}

func TestEnvelopeGuild(t *testing.T) {
	for frame, want := range map[string]string{
		`{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"id":"1","author":{"guild_id":"9"},"guild_id":"7"}}`: "7",
		`{"op":0,"s":1,"t":"GUILD_CREATE","d":{"id":"123","name":"x","guild_id":"5"}}`:                "123",
		`{"op":0,"s":1,"t":"TYPING_START","d":{"channel_id":"1"}}`:                                    "",
		`{"op":0,"s":1,"t":"TYPING_START","d":{"guild_id":null}}`:                                     "",
		`{"op":0,"s":1,"t":"X","d":[1]}`:                                                              "",
		`{"op":0,"s":1,"t":"X","d":{"guild_id":55}}`:                                                  "55",
		`{"d":{"guild_id":"8"},"op":0,"s":1,"t":"MESSAGE_CREATE"}`:                                    "8",
	} {
		env, err := decodeEnvelope([]byte(frame))
		require.NoError(t, err, frame)
		require.Equal(t, want, env.Guild(), frame)
		d := env.Data
		require.Equal(t, guildOf(env.Type, d), env.Guild(), "one pass agrees with the field lookup: %s", frame)
	}
}

func TestGuildOf(t *testing.T) {
	require.Equal(t, "7", guildOf("MESSAGE_CREATE", []byte(`{"id":"1","author":{"guild_id":"9"},"guild_id":"7"}`)))
	require.Equal(t, "123", guildOf("GUILD_CREATE", []byte(`{"id":"123","name":"x"}`)))
	require.Equal(t, "", guildOf("TYPING_START", []byte(`{"channel_id":"1"}`)))
	require.Equal(t, "", guildOf("TYPING_START", []byte(`{"guild_id":null}`)))
	require.Equal(t, "", guildOf("X", []byte(`[1]`)))
	require.Equal(t, "55", guildOf("X", []byte(`{"guild_id":55}`)))
}

// FuzzDecodeEnvelope: never panics, and whenever encoding/json accepts the frame
// as an envelope, ours agrees on every field.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"op":0,"s":42,"t":"MESSAGE_CREATE","d":{"id":"1","guild_id":"7"}}`,
		`{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}`,
		`{"op":11}`,
		`{"op":9,"d":false}`,
		`{"op":0,"s":1,"t":"A\u0042","d":{"a":[1,2,{"b":"\n"}]}}`,
		`{"op":0,"d":-1.5e-3}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := decodeEnvelope(in)
		var ref struct {
			Op *int             `json:"op"`
			S  *int64           `json:"s"`
			T  *string          `json:"t"`
			D  *json.RawMessage `json:"d"`
		}
		refErr := json.Unmarshal(in, &ref)
		if err == nil {
			if want := guildOf(got.Type, got.Data); got.Guild() != want {
				t.Fatalf("one-pass guild %q, field lookup %q in %q", got.Guild(), want, in)
			}
			if got.Data != nil && !json.Valid(got.Data) {
				t.Fatalf("d is not valid JSON: %q", got.Data)
			}
			if !json.Valid(in) {
				t.Fatalf("accepted invalid JSON %q", in)
			}
		}
		if refErr != nil || ref.Op == nil || !json.Valid(in) || !bytes.HasPrefix(bytes.TrimSpace(in), []byte("{")) {
			return
		}
		if ref.S != nil && *ref.S < 0 {
			return
		}
		if err != nil {
			// encoding/json is laxer on duplicate keys with mixed types and on
			// case-insensitive key matching; only fail on plain frames.
			if bytes.Count(in, []byte(`"op"`)) == 1 && !hasFoldedKey(in) {
				t.Fatalf("rejected %q: %v", in, err)
			}
			return
		}
		if hasFoldedKey(in) {
			return
		}
		require.Equal(t, *ref.Op, got.Op)
		if ref.S != nil {
			require.Equal(t, *ref.S, got.Seq)
		}
		if ref.T != nil {
			require.Equal(t, *ref.T, got.Type)
		}
		if ref.D != nil && string(*ref.D) != "null" {
			require.Equal(t, string(*ref.D), string(got.Data))
		}
	})
}

// hasFoldedKey reports keys that encoding/json matches case-insensitively
// ("OP", "D"), which the gateway protocol never sends.
func hasFoldedKey(in []byte) bool {
	for _, k := range []string{`"OP"`, `"Op"`, `"oP"`, `"S"`, `"T"`, `"D"`, `\u`} {
		if bytes.Contains(in, []byte(k)) {
			return true
		}
	}
	return false
}

// A MESSAGE_CREATE of about 1.3 KB, as in notes/arikawa.md.
var benchFrame = []byte(`{"t":"MESSAGE_CREATE","s":1234,"op":0,"d":{"type":0,"tts":false,"timestamp":"2026-11-22T15:00:00.123000+00:00","referenced_message":null,"pinned":false,"nonce":"1176534512338378752","mentions":[],"mention_roles":[],"mention_everyone":false,"member":{"roles":["1011235812345678901"],"premium_since":null,"pending":false,"nick":null,"mute":false,"joined_at":"2025-01-01T00:00:00.000000+00:00","flags":0,"deaf":false,"communication_disabled_until":null,"avatar":null},"id":"1176534513034575883","flags":0,"embeds":[],"edited_timestamp":null,"content":"hello there, this is a fairly ordinary chat message with some words in it to make the payload realistic","components":[],"channel_id":"1011235812345678902","author":{"username":"someone","public_flags":0,"id":"1011235812345678903","global_name":"Some One","discriminator":"0","avatar_decoration_data":null,"avatar":"a1b2c3d4e5f60718293a4b5c6d7e8f90"},"attachments":[],"guild_id":"1011235812345678904","sticker_items":[],"application_id":null,"webhook_id":null,"message_reference":null,"activity":null,"application":null,"interaction":null,"thread":null,"role_subscription_data":null,"resolved":null,"poll":null,"call":null,"position":null}}`)

func BenchmarkEnvelopeDecode(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchFrame)))
	for b.Loop() {
		env, err := decodeEnvelope(benchFrame)
		if err != nil {
			b.Fatal(err)
		}
		// What the connection does with a dispatch: copy d, find the guild.
		_ = append([]byte(nil), env.Data...)
		_ = env.Guild()
	}
}

// BenchmarkArikawaDefaultDecode is arikawa's stock codec decoding the same frame
// into its typed event, for comparison.
func BenchmarkArikawaDefaultDecode(b *testing.B) {
	codec := ws.NewCodec(gateway.OpUnmarshalers)
	buf := ws.NewDecodeBuffer(1 << 14)
	out := make(chan ws.Op, 1)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(benchFrame)))
	for b.Loop() {
		if err := codec.DecodeInto(ctx, bytes.NewReader(benchFrame), &buf, out); err != nil {
			b.Fatal(err)
		}
		op := <-out
		if _, ok := op.Data.(*gateway.MessageCreateEvent); !ok {
			b.Fatalf("decoded %T", op.Data)
		}
	}
}
