package worker_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shardwarden/shardwarden/internal/bus"
	"github.com/shardwarden/shardwarden/internal/natstest"
	"github.com/shardwarden/shardwarden/internal/worker"
)

// BenchmarkConsumeAck measures the runtime's consume-and-ack throughput with an
// empty handler (1 KiB events, file storage, explicit acks), to set beside
// `nats bench js consume` with explicit acks on the same machine. Run:
//
//	go test -run '^$' -bench ConsumeAck -benchtime 20000x ./internal/worker/
func BenchmarkConsumeAck(b *testing.B) {
	for _, c := range []struct{ concurrency, batch int }{{1, 64}, {4, 256}} {
		b.Run(fmt.Sprintf("concurrency=%d/batch=%d", c.concurrency, c.batch), func(b *testing.B) {
			nc := natstest.Connect(b, natstest.InProcess(b))
			js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if err := bus.EnsureStreams(ctx, js, bus.StreamConfig{}); err != nil {
				b.Fatal(err)
			}
			payload := make([]byte, 1024)
			for i := range b.N {
				m := nats.NewMsg(bus.EventSubject("MESSAGE_CREATE"))
				m.Data = payload
				m.Header.Set(bus.HeaderEventType, "MESSAGE_CREATE")
				m.Header.Set(nats.MsgIdHdr, bus.MsgID(0, "bench", int64(i)))
				m.Header.Set(bus.HeaderSeq, strconv.Itoa(i))
				if _, err := js.PublishMsgAsync(m); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("publish did not complete")
			}

			b.ReportAllocs()
			b.ResetTimer()
			w, err := worker.New(worker.Config{
				Name: "bench", FilterSubjects: []string{bus.EventsSubjects}, JetStream: js,
				Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler),
				Concurrency: c.concurrency, PullBatch: c.batch,
				MaxAckPending: 10000,
				Handler: worker.HandlerFunc(func(context.Context, *worker.Message) error {
					return nil
				}),
			})
			if err != nil {
				b.Fatal(err)
			}
			if err := w.Start(ctx); err != nil {
				b.Fatal(err)
			}
			// Progress is read from consumer info: the ack floor reaching the last
			// message means every message was handled and acked.
			cons, err := js.Consumer(ctx, bus.EventsStream, "bench")
			for err != nil {
				time.Sleep(time.Millisecond)
				cons, err = js.Consumer(ctx, bus.EventsStream, "bench")
			}
			for {
				info, err := cons.Info(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if info.AckFloor.Stream >= uint64(b.N) {
					break
				}
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			w.Stop()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
