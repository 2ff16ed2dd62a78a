// Package logging builds the process's slog handler: tint text on a terminal, JSON
// elsewhere (containers), and a redactor so that secrets never reach a log line.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/lmittmann/tint"
	"github.com/mattn/go-isatty"
)

// Options for New.
type Options struct {
	Format string // "text", "json" or "" (text when w is a terminal, else JSON)
	Level  string // debug, info, warn, error; "" means info
	// Secrets are replaced by "[REDACTED]" wherever they appear in a message or a
	// string attribute. Defence in depth: code never logs them on purpose.
	Secrets []string
}

// New returns a logger writing to w.
func New(w io.Writer, o Options) (*slog.Logger, error) {
	var level slog.Level
	if o.Level != "" {
		if err := level.UnmarshalText([]byte(o.Level)); err != nil {
			return nil, fmt.Errorf("log level %q: want debug, info, warn or error", o.Level)
		}
	}
	format := strings.ToLower(o.Format)
	if format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			format = "text"
		}
	}
	secrets := make([]string, 0, len(o.Secrets))
	for _, s := range o.Secrets {
		if len(s) >= 4 { // never "redact" trivial strings into every line
			secrets = append(secrets, s)
		}
	}
	replace := func(_ []string, a slog.Attr) slog.Attr {
		if a.Value.Kind() == slog.KindDuration {
			// "1.5s", not 1500000000: JSON would print the nanoseconds.
			return slog.String(a.Key, a.Value.Duration().String())
		}
		if a.Value.Kind() == slog.KindString || a.Value.Kind() == slog.KindAny {
			s := a.Value.String()
			for _, sec := range secrets {
				if strings.Contains(s, sec) {
					s = strings.ReplaceAll(s, sec, "[REDACTED]")
					a.Value = slog.StringValue(s)
				}
			}
		}
		return a
	}
	var h slog.Handler
	switch format {
	case "json":
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: replace})
	case "text":
		h = tint.NewHandler(w, &tint.Options{Level: level, ReplaceAttr: replace})
	default:
		return nil, fmt.Errorf("log format %q: want text or json", o.Format)
	}
	return slog.New(h), nil
}
