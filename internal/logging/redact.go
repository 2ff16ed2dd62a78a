package logging

import (
	"errors"
	"net/url"
	"strings"
)

// URLPassword is the password in a connection URL ("" when there is none): a
// secret to hand to Options.Secrets.
func URLPassword(connURL string) string {
	u, err := url.Parse(connURL)
	if err != nil || u.User == nil {
		return ""
	}
	p, _ := u.User.Password()
	return p
}

// RedactURL returns err with connURL and its password taken out of the message
// (errors from database drivers often quote the connection string), or err
// itself when neither appears.
func RedactURL(err error, connURL string) error {
	msg := err.Error()
	if connURL != "" {
		msg = strings.ReplaceAll(msg, connURL, "[DATABASE_URL]")
	}
	if p := URLPassword(connURL); p != "" {
		msg = strings.ReplaceAll(msg, p, "[REDACTED]")
	}
	if msg == err.Error() {
		return err
	}
	return errors.New(msg)
}
