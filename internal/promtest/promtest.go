// Package promtest reads metric values from a Prometheus registry in tests.
package promtest

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Value is the sum of metric name's series whose labels include every pair in
// labels ("shard", "3", "state", "ready"): a counter's or gauge's value, a
// histogram's sample count. Zero when nothing matches, as for a label vector that
// has no series yet.
func Value(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	if len(labels)%2 != 0 {
		t.Fatalf("promtest: labels of %s must be name, value pairs: %q", name, labels)
	}
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("promtest: gather: %v", err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if !matches(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			case m.Untyped != nil:
				sum += m.Untyped.GetValue()
			}
		}
	}
	return sum
}

// Series returns the label values of metric name's series whose labels include
// every pair in labels, one per series, as "name=value" pairs joined by commas in
// label order: a test sees which series exist, also those still at zero.
func Series(t testing.TB, g prometheus.Gatherer, name string, labels ...string) []string {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("promtest: gather: %v", err)
	}
	var out []string
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if !matches(m, labels) {
				continue
			}
			pairs := make([]string, 0, len(m.GetLabel()))
			for _, l := range m.GetLabel() {
				pairs = append(pairs, l.GetName()+"="+l.GetValue())
			}
			out = append(out, strings.Join(pairs, ","))
		}
	}
	return out
}

func matches(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
