package deploy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// Prometheus' own PromQL parser (github.com/prometheus/prometheus/promql/parser)
// cannot be added to go.mod without moving pins other packages rely on, so the
// expressions are checked by this small lexer: it finds every metric name an
// expression selects, and rejects unbalanced brackets, unknown functions, a
// grouping keyword without its label list and a label matcher without a value.
// It is not a full parser; a typo it cannot see fails when Prometheus loads the
// rules (docs/runbook.md: `promtool check rules`).

type tokKind int

const (
	tokIdent tokKind = iota
	tokNumber
	tokDuration
	tokString
	tokPunct
	tokVariable // Grafana's $var, ${var}, [[var]]
)

type token struct {
	kind tokKind
	text string
}

var promqlFunctions = map[string]bool{}

func init() {
	for _, f := range strings.Fields(`abs absent absent_over_time ceil changes clamp clamp_max clamp_min
		day_of_month day_of_week day_of_year days_in_month delta deriv exp floor
		histogram_avg histogram_count histogram_fraction histogram_quantile histogram_sum
		histogram_stddev histogram_stdvar holt_winters double_exponential_smoothing hour idelta
		increase irate label_join label_replace ln log2 log10 minute month predict_linear rate
		resets round scalar sgn sort sort_desc sort_by_label sort_by_label_desc sqrt time
		timestamp vector year avg_over_time min_over_time max_over_time sum_over_time
		count_over_time quantile_over_time stddev_over_time stdvar_over_time last_over_time
		present_over_time mad_over_time acos acosh asin asinh atan atanh cos cosh sin sinh tan
		tanh deg rad pi info`) {
		promqlFunctions[f] = true
	}
}

var (
	promqlAggregations = strings.Fields("sum avg min max count stddev stdvar topk bottomk quantile count_values group limitk limit_ratio")
	promqlGrouping     = strings.Fields("by without on ignoring group_left group_right")
	promqlKeywords     = strings.Fields("and or unless bool offset atan2 inf nan start end")
)

func lexPromQL(expr string) ([]token, error) {
	var toks []token
	rs := []rune(expr)
	for i := 0; i < len(rs); {
		c := rs[i]
		switch {
		case unicode.IsSpace(c):
			i++
		case c == '#':
			for i < len(rs) && rs[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for ; j < len(rs) && rs[j] != c; j++ {
				if rs[j] == '\\' && c != '`' {
					j++
				}
			}
			if j >= len(rs) {
				return nil, fmt.Errorf("unterminated string at %d", i)
			}
			toks = append(toks, token{tokString, string(rs[i : j+1])})
			i = j + 1
		case c == '$':
			j := i + 1
			if j < len(rs) && rs[j] == '{' {
				for j < len(rs) && rs[j] != '}' {
					j++
				}
				j++
			} else {
				for j < len(rs) && (rs[j] == '_' || unicode.IsLetter(rs[j]) || unicode.IsDigit(rs[j])) {
					j++
				}
			}
			toks = append(toks, token{tokVariable, string(rs[i:j])})
			i = j
		case unicode.IsDigit(c) || (c == '.' && i+1 < len(rs) && unicode.IsDigit(rs[i+1])):
			j := i
			for j < len(rs) && (unicode.IsDigit(rs[j]) || rs[j] == '.' || rs[j] == 'e' || rs[j] == 'x' ||
				(j > i && (rs[j] == '+' || rs[j] == '-') && rs[j-1] == 'e')) {
				j++
			}
			kind := tokNumber
			// A duration: digits with units, possibly several (1h30m, 500ms).
			for j < len(rs) && strings.ContainsRune("smhdwy", rs[j]) {
				kind = tokDuration
				j++
				for j < len(rs) && unicode.IsDigit(rs[j]) {
					j++
				}
			}
			toks = append(toks, token{kind, string(rs[i:j])})
			i = j
		case c == '_' || unicode.IsLetter(c):
			j := i
			for j < len(rs) && (rs[j] == '_' || rs[j] == ':' || unicode.IsLetter(rs[j]) || unicode.IsDigit(rs[j])) {
				j++
			}
			toks = append(toks, token{tokIdent, string(rs[i:j])})
			i = j
		default:
			two := ""
			if i+1 < len(rs) {
				two = string(rs[i : i+2])
			}
			switch two {
			case "==", "!=", "<=", ">=", "=~", "!~":
				toks = append(toks, token{tokPunct, two})
				i += 2
				continue
			}
			if !strings.ContainsRune("(){}[],+-*/%^<>=@:", c) {
				return nil, fmt.Errorf("unexpected %q at %d", c, i)
			}
			toks = append(toks, token{tokPunct, string(c)})
			i++
		}
	}
	return toks, nil
}

// promqlMetrics returns the metric names expr selects, sorted and unique, or an
// error for what the lexer can tell is not valid PromQL.
func promqlMetrics(expr string) ([]string, error) {
	toks, err := lexPromQL(expr)
	if err != nil {
		return nil, err
	}
	if len(toks) == 0 {
		return nil, fmt.Errorf("empty expression")
	}
	var names []string
	var stack []string // open brackets
	closing := map[string]string{")": "(", "}": "{", "]": "["}
	next := func(i int) token {
		if i+1 < len(toks) {
			return toks[i+1]
		}
		return token{}
	}
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case t.kind == tokPunct && (t.text == "(" || t.text == "{" || t.text == "["):
			stack = append(stack, t.text)
			if t.text == "{" {
				// Label matchers: name op "value", ...
				j := i + 1
				for j < len(toks) && toks[j].text != "}" {
					if toks[j].kind != tokIdent {
						return nil, fmt.Errorf("label matcher: want a label name, got %q", toks[j].text)
					}
					if j+2 >= len(toks) || !slices.Contains([]string{"=", "!=", "=~", "!~"}, toks[j+1].text) ||
						(toks[j+2].kind != tokString) {
						return nil, fmt.Errorf("label matcher after %q: want op and quoted value", toks[j].text)
					}
					j += 3
					if j < len(toks) && toks[j].text == "," {
						j++
					}
				}
				i = j - 1
			}
			if t.text == "[" {
				// Range or subquery: durations, variables and ':' only.
				j := i + 1
				for j < len(toks) && toks[j].text != "]" {
					if k := toks[j].kind; k != tokDuration && k != tokVariable && toks[j].text != ":" {
						return nil, fmt.Errorf("range selector: unexpected %q", toks[j].text)
					}
					j++
				}
				i = j - 1
			}
		case t.kind == tokPunct && closing[t.text] != "":
			if len(stack) == 0 || stack[len(stack)-1] != closing[t.text] {
				return nil, fmt.Errorf("unbalanced %q", t.text)
			}
			stack = stack[:len(stack)-1]
		case t.kind == tokIdent:
			lower := strings.ToLower(t.text)
			switch {
			case slices.Contains(promqlGrouping, lower):
				n := next(i)
				if n.text != "(" {
					if lower == "group_left" || lower == "group_right" {
						continue // the label list is optional
					}
					return nil, fmt.Errorf("%s needs a label list", t.text)
				}
				// Skip the label list.
				j := i + 2
				for j < len(toks) && toks[j].text != ")" {
					if toks[j].kind != tokIdent && toks[j].text != "," {
						return nil, fmt.Errorf("%s (...): unexpected %q", t.text, toks[j].text)
					}
					j++
				}
				if j >= len(toks) {
					return nil, fmt.Errorf("%s (...: unbalanced", t.text)
				}
				i = j
			case slices.Contains(promqlAggregations, lower):
				if n := next(i); n.text != "(" && !slices.Contains([]string{"by", "without"}, strings.ToLower(n.text)) {
					return nil, fmt.Errorf("aggregation %s without (", t.text)
				}
			case promqlFunctions[lower]:
				if next(i).text != "(" {
					return nil, fmt.Errorf("function %s without (", t.text)
				}
			case slices.Contains(promqlKeywords, lower):
			default:
				if next(i).text == "(" {
					return nil, fmt.Errorf("unknown function %s", t.text)
				}
				if i > 0 && toks[i-1].text == "}" {
					return nil, fmt.Errorf("metric name %s after a label matcher", t.text)
				}
				if !slices.Contains(names, t.text) {
					names = append(names, t.text)
				}
			}
		}
	}
	if len(stack) > 0 {
		return nil, fmt.Errorf("unclosed %q", stack[len(stack)-1])
	}
	slices.Sort(names)
	return names, nil
}

func TestPromQLLexer(t *testing.T) {
	for _, tc := range []struct {
		expr    string
		want    []string
		wantErr string
	}{
		{expr: `up`, want: []string{"up"}},
		{expr: `max by (shard) (a_seconds) > 1`, want: []string{"a_seconds"}},
		{expr: `sum by (worker) (rate(x_total[10m])) / sum by (worker) (rate(y_total{a="b",c=~"d|e"}[10m])) > 0.05`, want: []string{"x_total", "y_total"}},
		{expr: `histogram_quantile(0.99, sum by (le, instance) (rate(h_bucket{shard=~"$shard"}[$__rate_interval])))`, want: []string{"h_bucket"}},
		{expr: "a / on (x) group_left b\n# comment c\n", want: []string{"a", "b"}},
		{expr: `sum(up{job="bot"}) < 1 or absent(up{job="bot"})`, want: []string{"up"}},
		{expr: `max_over_time(a[1h30m:1m]) offset 5m`, want: []string{"a"}},
		{expr: `topk(10, sum without (instance) (rate(a[5m]))) + 1e3 + Inf`, want: []string{"a"}},
		{expr: `sum(rate(a[5m])`, wantErr: "unclosed"},
		{expr: `sum(rate(a[5m])))`, wantErr: "unbalanced"},
		{expr: `rat(a[5m])`, wantErr: "unknown function rat"},
		{expr: `sum by shard (a)`, wantErr: "label list"},
		{expr: `a{shard=1}`, wantErr: "quoted value"},
		{expr: `a{shard="1"`, wantErr: "unclosed"},
		{expr: `a[5]`, wantErr: "range selector"},
		{expr: `a{x="1"} b`, wantErr: "after a label matcher"},
		{expr: `"unterminated`, wantErr: "unterminated"},
		{expr: ``, wantErr: "empty"},
	} {
		got, err := promqlMetrics(tc.expr)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("promqlMetrics(%q) error = %v, want one containing %q", tc.expr, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("promqlMetrics(%q) = %q, %v; want %q", tc.expr, got, err, tc.want)
		}
	}
}
