package config_test

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/config"
)

type settings struct {
	NATS     string
	Token    string
	DB       string
	Shards   int
	Interval time.Duration
	Debug    bool
}

func load(env map[string]string, args ...string) (settings, error) {
	var s settings
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	l := config.NewLoader(fs, func(k string) string { return env[k] })
	l.String(&s.NATS, "NATS_URL", "nats://127.0.0.1:4222", "NATS")
	l.Secret(&s.Token, "DISCORD_TOKEN", true)
	l.Required(&s.DB, "DATABASE_URL", "database")
	l.Int(&s.Shards, "SHARD_COUNT", 1, "shards")
	l.Duration(&s.Interval, "HEARTBEAT_INTERVAL", 10*time.Second, "heartbeat")
	l.Bool(&s.Debug, "DEBUG", false, "debug")
	l.Check(func() error {
		if s.Shards <= 0 {
			return config.Invalid("SHARD_COUNT", "must be positive, got %d", s.Shards)
		}
		return nil
	})
	return s, l.Parse(args)
}

func TestPrecedenceFlagOverEnvOverDefault(t *testing.T) {
	s, err := load(map[string]string{"DISCORD_TOKEN": "x-token", "DATABASE_URL": "postgres://db", "SHARD_COUNT": "4"},
		"--shard-count", "8")
	require.NoError(t, err)
	require.Equal(t, "nats://127.0.0.1:4222", s.NATS, "default")
	require.Equal(t, 8, s.Shards, "flag beats env")
	require.Equal(t, 10*time.Second, s.Interval)
	require.Equal(t, "x-token", s.Token)
}

func TestSecretFromFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(path, []byte("file-token\n"), 0o600))
	s, err := load(map[string]string{"DISCORD_TOKEN_FILE": path, "DATABASE_URL": "postgres://db"})
	require.NoError(t, err)
	require.Equal(t, "file-token", s.Token, "trimmed")
}

func TestErrorsNameTheVariable(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	for name, tc := range map[string]struct {
		env  map[string]string
		want string
	}{
		"missing secret":   {map[string]string{"DATABASE_URL": "x"}, "DISCORD_TOKEN"},
		"both secret ways": {map[string]string{"DATABASE_URL": "x", "DISCORD_TOKEN": "a", "DISCORD_TOKEN_FILE": "/x"}, "DISCORD_TOKEN"},
		"unreadable file":  {map[string]string{"DATABASE_URL": "x", "DISCORD_TOKEN_FILE": "/nonexistent/token"}, "DISCORD_TOKEN_FILE"},
		"empty file":       {map[string]string{"DATABASE_URL": "x", "DISCORD_TOKEN_FILE": empty}, "DISCORD_TOKEN_FILE"},
		"missing required": {map[string]string{"DISCORD_TOKEN": "a"}, "DATABASE_URL"},
		"bad int":          {map[string]string{"DISCORD_TOKEN": "a", "DATABASE_URL": "x", "SHARD_COUNT": "many"}, "SHARD_COUNT"},
		"failed check":     {map[string]string{"DISCORD_TOKEN": "a", "DATABASE_URL": "x", "SHARD_COUNT": "-1"}, "SHARD_COUNT"},
		"bad duration":     {map[string]string{"DISCORD_TOKEN": "a", "DATABASE_URL": "x", "HEARTBEAT_INTERVAL": "10"}, "HEARTBEAT_INTERVAL"},
		"bad bool":         {map[string]string{"DISCORD_TOKEN": "a", "DATABASE_URL": "x", "DEBUG": "perhaps"}, "DEBUG"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := load(tc.env)
			require.Error(t, err)
			require.True(t, config.IsConfigError(err))
			var ce *config.Error
			require.True(t, errors.As(err, &ce))
			require.Equal(t, tc.want, ce.Var)
			require.NotContains(t, err.Error(), "a\"", "values of secrets are never echoed")
		})
	}
}

func TestSecretValueNeverInError(t *testing.T) {
	_, err := load(map[string]string{"DISCORD_TOKEN": "super-secret-value", "DISCORD_TOKEN_FILE": "/x", "DATABASE_URL": "x"})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "super-secret-value")
}
