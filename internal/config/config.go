// Package config reads a binary's configuration from the environment, with a
// command-line flag for every variable and `_FILE` variants for secrets (Docker
// secrets). Every problem names the variable it concerns; main turns an *Error into
// exit code 2.
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Error is a configuration problem with the variable it concerns.
type Error struct {
	Var    string // environment variable, e.g. DISCORD_TOKEN
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("config: %s: %s", e.Var, e.Reason) }

// IsConfigError reports whether err comes from configuration (exit code 2).
func IsConfigError(err error) bool {
	var ce *Error
	return errors.As(err, &ce) || errors.Is(err, flag.ErrHelp)
}

// Loader binds flags to environment variables. Each flag's default comes from its
// variable, so `--nats-url` overrides NATS_URL which overrides the built-in default.
// Problems are collected; Parse returns them all at once.
type Loader struct {
	fs     *flag.FlagSet
	getenv func(string) string
	errs   []error
	checks []func() error
}

// NewLoader binds to fs and reads variables with getenv (os.Getenv when nil).
func NewLoader(fs *flag.FlagSet, getenv func(string) string) *Loader {
	if getenv == nil {
		getenv = os.Getenv
	}
	return &Loader{fs: fs, getenv: getenv}
}

func flagName(env string) string { return strings.ToLower(strings.ReplaceAll(env, "_", "-")) }

func (l *Loader) fail(env, format string, args ...any) {
	l.errs = append(l.errs, &Error{Var: env, Reason: fmt.Sprintf(format, args...)})
}

// String binds env (and its flag) with a default.
func (l *Loader) String(p *string, env, def, usage string) {
	if v := l.getenv(env); v != "" {
		def = v
	}
	l.fs.StringVar(p, flagName(env), def, usage+" (env "+env+")")
}

// Required binds env and fails Parse when it ends up empty.
func (l *Loader) Required(p *string, env, usage string) {
	l.String(p, env, "", usage)
	l.checks = append(l.checks, func() error {
		if strings.TrimSpace(*p) == "" {
			return &Error{Var: env, Reason: "required, not set"}
		}
		return nil
	})
}

// Secret binds env or env_FILE (a file holding the value, as Docker secrets are
// mounted); setting both is an error. The value is trimmed of surrounding space. No
// flag is bound: secrets on a command line leak into process listings.
func (l *Loader) Secret(p *string, env string, required bool) {
	direct, file := l.getenv(env), l.getenv(env+"_FILE")
	switch {
	case direct != "" && file != "":
		l.fail(env, "set either %s or %s_FILE, not both", env, env)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			l.fail(env+"_FILE", "read secret file: %v", err)
			return
		}
		*p = strings.TrimSpace(string(b))
		if *p == "" {
			l.fail(env+"_FILE", "secret file %s is empty", file)
		}
	case direct != "":
		*p = strings.TrimSpace(direct)
	case required:
		l.fail(env, "required, not set (or set %s_FILE)", env)
	}
}

// Int binds an integer variable.
func (l *Loader) Int(p *int, env string, def int, usage string) {
	if v := l.getenv(env); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			l.fail(env, "not an integer: %q", v)
		} else {
			def = n
		}
	}
	l.fs.IntVar(p, flagName(env), def, usage+" (env "+env+")")
}

// Duration binds a duration variable ("10s", "1m30s").
func (l *Loader) Duration(p *time.Duration, env string, def time.Duration, usage string) {
	if v := l.getenv(env); v != "" {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			l.fail(env, "not a duration like 10s or 1m: %q", v)
		} else {
			def = d
		}
	}
	l.fs.DurationVar(p, flagName(env), def, usage+" (env "+env+")")
}

// Bool binds a boolean variable.
func (l *Loader) Bool(p *bool, env string, def bool, usage string) {
	if v := l.getenv(env); v != "" {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			l.fail(env, "not a boolean: %q", v)
		} else {
			def = b
		}
	}
	l.fs.BoolVar(p, flagName(env), def, usage+" (env "+env+")")
}

// Check adds a validation run after flags are parsed; return an *Error naming the
// variable.
func (l *Loader) Check(fn func() error) { l.checks = append(l.checks, fn) }

// Parse parses args and runs the checks. Flag errors are reported by the flag
// package itself and returned as is.
func (l *Loader) Parse(args []string) error {
	if err := l.fs.Parse(args); err != nil {
		return err
	}
	for _, c := range l.checks {
		if err := c(); err != nil {
			l.errs = append(l.errs, err)
		}
	}
	return errors.Join(l.errs...)
}

// Invalid returns an *Error for env; use it in Check functions.
func Invalid(env, format string, args ...any) error {
	return &Error{Var: env, Reason: fmt.Sprintf(format, args...)}
}
