package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardwarden/shardwarden/internal/bus"
)

const maxErrorHeader = 1024

// deadLetter publishes the message to DISCORD_DLQ and terminates it. When the
// publish fails the message is Nak'ed instead (the budget check dead-letters it on
// its next delivery): nothing disappears silently.
func (w *Worker) deadLetter(msg jetstream.Msg, meta *jetstream.MsgMetadata, m *Message, cause error, log *slog.Logger) {
	dm := DeadLetterMsg(w.cfg.Name, msg.Subject(), msg.Data(), m.Header, meta.Sequence.Stream, m.Delivery, cause, time.Now())
	var err error
	for attempt := range 3 {
		ctx, cancel := context.WithTimeout(w.hardCtx, 5*time.Second)
		_, err = w.cfg.JetStream.PublishMsg(ctx, dm, jetstream.WithExpectStream(bus.DeadLetterStream))
		cancel()
		if err == nil || w.hardCtx.Err() != nil {
			break
		}
		_ = msg.InProgress()
		select {
		case <-time.After(time.Duration(200<<attempt) * time.Millisecond):
		case <-w.hardCtx.Done():
		}
	}
	if err != nil {
		delay := w.cfg.BackOff[len(w.cfg.BackOff)-1]
		_ = msg.NakWithDelay(delay)
		log.Error("dead-letter publish failed; message kept for another try",
			slog.Any("error", err), slog.Any("cause", cause), slog.Duration("retry_in", delay))
		return
	}
	// A crash here redelivers the message; its next dead-letter publish carries the
	// same msg id and is dropped as a duplicate.
	if err := msg.TermWithReason("dead-lettered to " + bus.DeadLetterSubject(w.cfg.Name)); err != nil {
		log.Warn("term after dead-letter", slog.Any("error", err))
	}
	w.metrics.deadLettered.Inc()
	log.Error("event dead-lettered", slog.Any("error", cause), slog.String("dead_letter_subject", bus.DeadLetterSubject(w.cfg.Name)))
}

// DeadLetterMsg builds the dead letter of an event: the original data and headers,
// the worker, the last error, the delivery count and where the event was.
func DeadLetterMsg(worker, subject string, data []byte, h nats.Header, streamSeq uint64, delivered int, cause error, at time.Time) *nats.Msg {
	dm := nats.NewMsg(bus.DeadLetterSubject(worker))
	dm.Data = data
	for k, vs := range h {
		if k == nats.MsgIdHdr || strings.HasPrefix(k, "Nats-Expected") {
			continue
		}
		dm.Header[k] = append([]string(nil), vs...)
	}
	if dm.Header.Get(bus.HeaderOriginalMsgID) == "" && h.Get(nats.MsgIdHdr) != "" {
		dm.Header.Set(bus.HeaderOriginalMsgID, h.Get(nats.MsgIdHdr))
	}
	if dm.Header.Get(bus.HeaderOriginalStreamSeq) == "" {
		dm.Header.Set(bus.HeaderOriginalStreamSeq, strconv.FormatUint(streamSeq, 10))
	}
	dm.Header.Del(bus.HeaderReplayFor)
	dm.Header.Set(bus.HeaderDeadWorker, worker)
	dm.Header.Set(bus.HeaderDeadError, headerValue(cause.Error()))
	dm.Header.Set(bus.HeaderDeadDelivered, strconv.Itoa(delivered))
	dm.Header.Set(bus.HeaderDeadSubject, subject)
	dm.Header.Set(bus.HeaderDeadStreamSeq, strconv.FormatUint(streamSeq, 10))
	dm.Header.Set(bus.HeaderDeadAt, at.UTC().Format(time.RFC3339Nano))
	dm.Header.Set(nats.MsgIdHdr, fmt.Sprintf("dead:%s:%d", worker, streamSeq))
	return dm
}

// headerValue makes s safe as a header value: one line, bounded.
func headerValue(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxErrorHeader {
		s = s[:maxErrorHeader] + "…"
	}
	return s
}

// DeadLetter is one message of DISCORD_DLQ.
type DeadLetter struct {
	Seq       uint64 // sequence in DISCORD_DLQ
	Worker    string
	Subject   string // the event's original subject
	EventID   string
	Error     string
	Delivered int
	DeadAt    time.Time
	Header    nats.Header
	Data      []byte
}

func deadLetterFrom(seq uint64, subject string, h nats.Header, data []byte) DeadLetter {
	d := DeadLetter{Seq: seq, Header: h, Data: data, Worker: h.Get(bus.HeaderDeadWorker)}
	if d.Worker == "" {
		d.Worker = strings.TrimPrefix(subject, bus.DeadLetterSubject(""))
	}
	d.Subject = h.Get(bus.HeaderDeadSubject)
	d.EventID = bus.EventID(h)
	d.Error = h.Get(bus.HeaderDeadError)
	d.Delivered, _ = strconv.Atoi(h.Get(bus.HeaderDeadDelivered))
	d.DeadAt, _ = time.Parse(time.RFC3339Nano, h.Get(bus.HeaderDeadAt))
	return d
}

func dlqFilter(worker string) string {
	if worker == "" {
		return bus.DeadLetterSubjects
	}
	return bus.DeadLetterSubject(worker)
}

// ListDeadLetters returns the dead letters of worker ("" for all), oldest first, at
// most limit of them (0: no limit).
func ListDeadLetters(ctx context.Context, js jetstream.JetStream, worker string, limit int) ([]DeadLetter, error) {
	cons, err := js.OrderedConsumer(ctx, bus.DeadLetterStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{dlqFilter(worker)},
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", bus.DeadLetterStream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", bus.DeadLetterStream, err)
	}
	var out []DeadLetter
	remaining := info.NumPending
	for remaining > 0 && (limit <= 0 || len(out) < limit) {
		msg, err := cons.Next(jetstream.FetchContext(ctx))
		if err != nil {
			return out, fmt.Errorf("read %s: %w", bus.DeadLetterStream, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return out, fmt.Errorf("read %s: %w", bus.DeadLetterStream, err)
		}
		out = append(out, deadLetterFrom(meta.Sequence.Stream, msg.Subject(), msg.Headers(), msg.Data()))
		remaining = meta.NumPending
	}
	return out, nil
}

// GetDeadLetter returns the dead letter at seq.
func GetDeadLetter(ctx context.Context, js jetstream.JetStream, seq uint64) (DeadLetter, error) {
	s, err := js.Stream(ctx, bus.DeadLetterStream)
	if err != nil {
		return DeadLetter{}, fmt.Errorf("stream %s: %w", bus.DeadLetterStream, err)
	}
	raw, err := s.GetMsg(ctx, seq)
	if err != nil {
		return DeadLetter{}, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	return deadLetterFrom(raw.Sequence, raw.Subject, raw.Header, raw.Data), nil
}

// ReplayMsg is the event a dead letter sends back to DISCORD_EVENTS: the original
// subject, data and headers, addressed to the dead letter's worker only, with the
// original event id kept (for idempotency) and a fresh msg id (the original one may
// still be inside the duplicate window).
func ReplayMsg(d DeadLetter) (*nats.Msg, error) {
	if !strings.HasPrefix(d.Subject, "discord.events.") {
		return nil, fmt.Errorf("dead letter %d: original subject %q is not an event subject", d.Seq, d.Subject)
	}
	m := nats.NewMsg(d.Subject)
	m.Data = d.Data
	for k, vs := range d.Header {
		switch k {
		case bus.HeaderDeadWorker, bus.HeaderDeadError, bus.HeaderDeadDelivered, bus.HeaderDeadSubject,
			bus.HeaderDeadStreamSeq, bus.HeaderDeadAt, nats.MsgIdHdr:
			continue
		}
		m.Header[k] = append([]string(nil), vs...)
	}
	m.Header.Set(bus.HeaderReplayFor, d.Worker)
	m.Header.Set(nats.MsgIdHdr, fmt.Sprintf("replay:%d", d.Seq))
	return m, nil
}

// ReplayDeadLetter sends the dead letter at seq back to its worker and deletes it
// from DISCORD_DLQ. Running it twice for one seq (a crash between the two steps)
// publishes once: the replay's msg id is derived from seq.
func ReplayDeadLetter(ctx context.Context, js jetstream.JetStream, seq uint64) (DeadLetter, error) {
	d, err := GetDeadLetter(ctx, js, seq)
	if err != nil {
		return d, err
	}
	m, err := ReplayMsg(d)
	if err != nil {
		return d, err
	}
	if _, err := js.PublishMsg(ctx, m, jetstream.WithExpectStream(bus.EventsStream)); err != nil {
		return d, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	if err := DeleteDeadLetter(ctx, js, seq); err != nil {
		return d, err
	}
	return d, nil
}

// DeleteDeadLetter removes one dead letter.
func DeleteDeadLetter(ctx context.Context, js jetstream.JetStream, seq uint64) error {
	s, err := js.Stream(ctx, bus.DeadLetterStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", bus.DeadLetterStream, err)
	}
	if err := s.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("delete dead letter %d: %w", seq, err)
	}
	return nil
}

// PurgeDeadLetters deletes every dead letter of worker ("" for all workers).
func PurgeDeadLetters(ctx context.Context, js jetstream.JetStream, worker string) error {
	s, err := js.Stream(ctx, bus.DeadLetterStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", bus.DeadLetterStream, err)
	}
	var opts []jetstream.StreamPurgeOpt
	if worker != "" {
		opts = append(opts, jetstream.WithPurgeSubject(bus.DeadLetterSubject(worker)))
	}
	if err := s.Purge(ctx, opts...); err != nil {
		return fmt.Errorf("purge dead letters: %w", err)
	}
	return nil
}
