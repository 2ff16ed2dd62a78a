package logging_test

import (
	"bytes"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shardwarden/shardwarden/internal/logging"
)

func TestSecretsRedactedEverywhere(t *testing.T) {
	const token = "NzkyNzE1NDU0MTk2MDg4ODQy.fake.token"
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := logging.New(&buf, logging.Options{Format: format, Secrets: []string{token, "ab"}})
			require.NoError(t, err)
			log.Info("dial failed", slog.String("url", "wss://x/?token="+token),
				slog.Any("error", errors.New("auth Bot "+token+" rejected")),
				slog.Group("cfg", slog.String("token", token)))
			out := buf.String()
			require.NotContains(t, out, token)
			require.Contains(t, out, "[REDACTED]")
			require.Contains(t, out, "dial failed")
		})
	}
}

func TestBadOptions(t *testing.T) {
	_, err := logging.New(&bytes.Buffer{}, logging.Options{Level: "loud"})
	require.ErrorContains(t, err, "log level")
	_, err = logging.New(&bytes.Buffer{}, logging.Options{Format: "xml"})
	require.ErrorContains(t, err, "log format")
}

func TestLevelFilters(t *testing.T) {
	var buf bytes.Buffer
	log, err := logging.New(&buf, logging.Options{Format: "json", Level: "warn"})
	require.NoError(t, err)
	log.Info("quiet")
	log.Warn("loud")
	require.NotContains(t, buf.String(), "quiet")
	require.Contains(t, buf.String(), "loud")
}

func TestRedactURL(t *testing.T) {
	const dsn = "postgres://bot:s3cr3t-pw@db:5432/shardwarden"
	require.Equal(t, "s3cr3t-pw", logging.URLPassword(dsn))
	require.Empty(t, logging.URLPassword("postgres://db/x"))
	require.Empty(t, logging.URLPassword("::not a url"))

	err := logging.RedactURL(errors.New("cannot parse `"+dsn+"`: bad port"), dsn)
	require.Equal(t, "cannot parse `[DATABASE_URL]`: bad port", err.Error())
	err = logging.RedactURL(errors.New("auth failed for password s3cr3t-pw"), dsn)
	require.Equal(t, "auth failed for password [REDACTED]", err.Error())
	plain := errors.New("connection refused")
	require.Same(t, plain, logging.RedactURL(plain, dsn), "nothing to take out: the error itself")
}

func TestDurationsReadable(t *testing.T) {
	var buf bytes.Buffer
	log, err := logging.New(&buf, logging.Options{Format: "json"})
	require.NoError(t, err)
	log.Info("identify sent", slog.Duration("since_claim", 1500*time.Microsecond))
	require.Contains(t, buf.String(), `"since_claim":"1.5ms"`)
}
