package deploy_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadRules(t *testing.T, root string) []rule {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatalf("parse alerts.yml: %v", err)
	}
	var rules []rule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	if len(rules) == 0 {
		t.Fatal("alerts.yml has no rules")
	}
	return rules
}

// dashboard is the part of a Grafana dashboard JSON the tests read.
type dashboard struct {
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	Targets    []struct {
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func loadDashboard(t *testing.T, root string) dashboard {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "grafana", "shardwarden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("parse shardwarden.json: %v", err)
	}
	return d
}

func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

var labelValuesQuery = regexp.MustCompile(`^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)

// usedMetrics returns every metric name the alert rules and the dashboard select,
// with where each is used. A PromQL expression the lexer rejects fails t.
func usedMetrics(t *testing.T, root string) map[string][]string {
	t.Helper()
	used := map[string][]string{}
	add := func(where, expr string) {
		names, err := promqlMetrics(expr)
		if err != nil {
			t.Errorf("%s: invalid PromQL %q: %v", where, expr, err)
			return
		}
		if len(names) == 0 {
			t.Errorf("%s: %q selects no metric", where, expr)
		}
		for _, n := range names {
			used[n] = append(used[n], where)
		}
	}
	for _, r := range loadRules(t, root) {
		add(fmt.Sprintf("alerts.yml %s (%s)", r.Alert+r.Record, r.Labels["severity"]), r.Expr)
	}
	d := loadDashboard(t, root)
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			add(fmt.Sprintf("dashboard panel %d %q", p.ID, p.Title), tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			_ = json.Unmarshal(v.Query, &q.Query) // older dashboards: a plain string
		}
		m := labelValuesQuery.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("dashboard variable %s: want label_values(metric, label), got %q", v.Name, q.Query)
			continue
		}
		used[m[1]] = append(used[m[1]], "dashboard variable "+v.Name)
	}
	return used
}

// externalMetrics are the names the rules and the dashboard may use although
// neither binary exports them, with where they come from.
var externalMetrics = map[string]string{
	// Prometheus' own series for every scrape target.
	"up": "prometheus",
	// cAdvisor (deploy/monitoring.yml): the container's memory as the kernel counts it
	// against the cgroup limit, which is what the OOM killer acts on. The binaries'
	// process_resident_memory_bytes misses page cache and knows no limit.
	"container_memory_working_set_bytes": "cadvisor",
	"container_spec_memory_limit_bytes":  "cadvisor",
	"container_cpu_usage_seconds_total":  "cadvisor",
}

func TestAlertRules(t *testing.T) {
	root := repoRoot(t)
	rules := loadRules(t, root)

	t.Run("every alert has a severity, a summary and a runbook anchor", func(t *testing.T) {
		for _, r := range rules {
			if r.Alert == "" {
				continue
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs summary and description annotations", r.Alert)
			}
			if want := "docs/runbook.md#" + strings.ToLower(r.Alert); r.Annotations["runbook"] != want {
				t.Errorf("%s: runbook annotation %q, want %q", r.Alert, r.Annotations["runbook"], want)
			}
			if r.For != "" {
				duration(t, r.Alert+" for", promDuration(r.For))
			}
		}
	})

	t.Run("the levels the issue asks for", func(t *testing.T) {
		// metric → warning and critical thresholds, as they appear in the expression.
		for _, want := range []struct{ metric, warning, critical string }{
			{"shardwarden_gateway_heartbeat_ack_latency_seconds", "> 1", "> 5"},
			{"shardwarden_worker_consumer_pending", "> 1000", "> 10000"},
			{"shardwarden_worker_redeliveries_total", "> 0.05", "> 0.15"},
			{"shardwarden_gateway_last_event_age_seconds", "> 30", "> 120"},
			{"container_memory_working_set_bytes", "> 0.80", "> 0.95"},
		} {
			for level, threshold := range map[string]string{"warning": want.warning, "critical": want.critical} {
				if !slices.ContainsFunc(rules, func(r rule) bool {
					return r.Labels["severity"] == level && strings.Contains(r.Expr, want.metric) &&
						regexp.MustCompile(regexp.QuoteMeta(threshold)+`\s*$`).MatchString(strings.TrimSpace(r.Expr))
				}) {
					t.Errorf("no %s alert on %s ending in %q", level, want.metric, threshold)
				}
			}
		}
		for _, metric := range []string{
			"shardwarden_gateway_identify_budget_low",
			"shardwarden_lease_stale_shards",
			"shardwarden_worker_dead_lettered_total",
		} {
			if !slices.ContainsFunc(rules, func(r rule) bool { return r.Alert != "" && strings.Contains(r.Expr, metric) }) {
				t.Errorf("no alert on %s", metric)
			}
		}
	})

	t.Run("container memory is cAdvisor's, and monitoring.yml runs cAdvisor", func(t *testing.T) {
		mon := stackConfig(t, filepath.Join(root, "deploy", "monitoring.yml"))
		cad, ok := mon.Services["cadvisor"]
		if !ok || cad.Deploy.Mode != "global" {
			t.Fatalf("monitoring.yml must run cadvisor in global mode (one per node), got %+v", cad.Deploy)
		}
		prom := loadPrometheusConfig(t, root)
		job := prom.job(t, "cadvisor")
		keep := ""
		for _, rc := range job.MetricRelabelConfigs {
			if rc.Action == "keep" {
				keep = rc.Regex
			}
		}
		for name, source := range externalMetrics {
			if source == "cadvisor" && keep != "" && !regexp.MustCompile("^(?:"+keep+")$").MatchString(name) {
				t.Errorf("the cadvisor job's keep regex %q drops %s", keep, name)
			}
		}
	})
}

// promDuration turns Prometheus' "1d" style into Go's where needed.
func promDuration(s string) string {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if v, err := strconv.Atoi(n); err == nil {
			return strconv.Itoa(v*24) + "h"
		}
	}
	return s
}

type promConfig struct {
	RuleFiles     []string       `yaml:"rule_files"`
	ScrapeConfigs []scrapeConfig `yaml:"scrape_configs"`
	Alerting      struct {
		Alertmanagers []struct {
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"alertmanagers"`
	} `yaml:"alerting"`
}

type scrapeConfig struct {
	JobName      string `yaml:"job_name"`
	DNSSDConfigs []struct {
		Names []string `yaml:"names"`
		Type  string   `yaml:"type"`
		Port  int      `yaml:"port"`
	} `yaml:"dns_sd_configs"`
	MetricRelabelConfigs []struct {
		Regex  string `yaml:"regex"`
		Action string `yaml:"action"`
	} `yaml:"metric_relabel_configs"`
}

func (c promConfig) job(t *testing.T, name string) scrapeConfig {
	t.Helper()
	for _, j := range c.ScrapeConfigs {
		if j.JobName == name {
			return j
		}
	}
	t.Fatalf("prometheus.yml has no job %q", name)
	return scrapeConfig{}
}

func loadPrometheusConfig(t *testing.T, root string) promConfig {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c promConfig
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("parse prometheus.yml: %v", err)
	}
	return c
}

func TestMonitoringStack(t *testing.T) {
	root := repoRoot(t)
	mon := stackConfig(t, filepath.Join(root, "deploy", "monitoring.yml"))
	stack := stackConfig(t, filepath.Join(root, "stack.yml"), stackEnv...)
	prom := loadPrometheusConfig(t, root)

	t.Run("every config file exists", func(t *testing.T) {
		for name, c := range mon.Configs {
			path := c.File
			if !filepath.IsAbs(path) {
				path = filepath.Join(root, "deploy", path)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("config %s: %v", name, err)
			}
		}
	})

	t.Run("prometheus scrapes every bot and worker task through Swarm DNS", func(t *testing.T) {
		// service → port its /metrics listens on, from stack.yml.
		want := map[string]int{}
		for name, s := range stack.Services {
			var addr string
			switch {
			case name == "bot":
				addr = s.Environment["HEALTH_ADDR"]
			case strings.HasPrefix(name, "worker-"):
				addr = s.Environment["WORKER_"+strings.ToUpper(strings.TrimPrefix(name, "worker-"))+"_HEALTH_ADDR"]
			default:
				continue
			}
			port, err := strconv.Atoi(strings.TrimPrefix(addr, ":"))
			if err != nil {
				t.Fatalf("service %s health address %q: %v", name, addr, err)
			}
			want["tasks.shardwarden_"+name] = port
		}
		got := map[string]int{}
		for _, j := range prom.ScrapeConfigs {
			for _, sd := range j.DNSSDConfigs {
				if sd.Type != "A" {
					t.Errorf("job %s: dns_sd type %q, want A (Swarm answers tasks.<service> with A records)", j.JobName, sd.Type)
				}
				for _, n := range sd.Names {
					got[n] = sd.Port
				}
			}
		}
		for name, port := range want {
			if got[name] != port {
				t.Errorf("prometheus.yml scrapes %s on port %d, stack.yml serves it on %d", name, got[name], port)
			}
		}
		// cAdvisor lives in the monitoring stack, deployed as "monitoring".
		if _, ok := got["tasks.monitoring_cadvisor"]; !ok {
			t.Error("prometheus.yml does not scrape tasks.monitoring_cadvisor")
		}
	})

	t.Run("prometheus loads the rules and reaches alertmanager", func(t *testing.T) {
		p := mon.Services["prometheus"]
		targets := map[string]string{}
		for _, c := range p.Configs {
			targets[c.Target] = c.Source
		}
		for _, rf := range prom.RuleFiles {
			if src, ok := targets[rf]; !ok || !strings.HasSuffix(mon.Configs[src].File, "alerts.yml") {
				t.Errorf("rule file %s is not alerts.yml mounted into prometheus (configs %v)", rf, targets)
			}
		}
		if len(prom.RuleFiles) == 0 {
			t.Error("prometheus.yml loads no rule files")
		}
		if _, ok := mon.Services["alertmanager"]; !ok {
			t.Error("monitoring.yml has no alertmanager")
		}
		if _, ok := p.Networks["shardwarden"]; !ok {
			t.Errorf("prometheus is not on the shardwarden network: %v", slices.Collect(maps.Keys(p.Networks)))
		}
		if n := mon.Networks["shardwarden"]; !n.External || n.Name != stack.Networks["backend"].Name {
			t.Errorf("monitoring.yml network shardwarden = %+v, want the external %s", n, stack.Networks["backend"].Name)
		}
	})

	t.Run("dashboard panels use the provisioned datasource", func(t *testing.T) {
		raw, err := os.ReadFile(filepath.Join(root, "deploy", "grafana", "datasource.yml"))
		if err != nil {
			t.Fatal(err)
		}
		var ds struct {
			Datasources []struct {
				UID string `yaml:"uid"`
				URL string `yaml:"url"`
			} `yaml:"datasources"`
		}
		if err := yaml.Unmarshal(raw, &ds); err != nil || len(ds.Datasources) != 1 {
			t.Fatalf("datasource.yml: %v %+v", err, ds)
		}
		uid := ds.Datasources[0].UID
		d := loadDashboard(t, root)
		n := 0
		for _, p := range allPanels(d.Panels) {
			if p.Type == "row" {
				continue
			}
			n++
			if p.Datasource == nil || p.Datasource.UID != uid {
				t.Errorf("panel %d %q: datasource %+v, want uid %s", p.ID, p.Title, p.Datasource, uid)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %d %q has no query", p.ID, p.Title)
			}
		}
		if n < 10 {
			t.Errorf("the dashboard has %d panels; shards, leases, pipeline and workers need more", n)
		}
	})

	t.Run("every rule and panel expression lexes", func(t *testing.T) {
		used := usedMetrics(t, root)
		if len(used) < 20 {
			t.Errorf("only %d metric names found in the rules and the dashboard", len(used))
		}
		for name, where := range used {
			if _, ok := externalMetrics[name]; ok {
				continue
			}
			if !strings.HasPrefix(name, "shardwarden_") && !strings.HasPrefix(name, "process_") && !strings.HasPrefix(name, "go_") {
				t.Errorf("%s (used by %s) is neither a shardwarden metric nor a documented external one", name, where[0])
			}
		}
	})
}
