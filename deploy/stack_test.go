package deploy_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/shardwarden/shardwarden/internal/shardlease"
)

// Lease timings the stack's numbers are derived from: a lease is stale after
// staleHeartbeats missed heartbeats (internal/shardlease), and a RESUME (dial,
// op 6, replay) takes a few seconds.
const (
	staleHeartbeats = shardlease.DefaultMissedHeartbeats
	resumeTime      = 5 * time.Second
)

// compose is the part of `docker stack config`'s normalised output the tests read.
// Durations come out in Go's format ("1m0s"), anchors and merges resolved.
type compose struct {
	Services map[string]service `yaml:"services"`
	Networks map[string]struct {
		Name       string `yaml:"name"`
		Driver     string `yaml:"driver"`
		Attachable bool   `yaml:"attachable"`
		External   bool   `yaml:"external"`
	} `yaml:"networks"`
	Volumes map[string]any `yaml:"volumes"`
	Secrets map[string]struct {
		Name     string `yaml:"name"`
		External bool   `yaml:"external"`
		File     string `yaml:"file"`
	} `yaml:"secrets"`
	Configs map[string]struct {
		File string `yaml:"file"`
	} `yaml:"configs"`
}

type service struct {
	Image           string            `yaml:"image"`
	Command         []string          `yaml:"command"`
	Environment     map[string]string `yaml:"environment"`
	Healthcheck     *healthcheck      `yaml:"healthcheck"`
	StopGracePeriod string            `yaml:"stop_grace_period"`
	Ports           []any             `yaml:"ports"`
	Networks        map[string]any    `yaml:"networks"`
	Secrets         []struct {
		Source string `yaml:"source"`
		Target string `yaml:"target"`
	} `yaml:"secrets"`
	Configs []struct {
		Source string `yaml:"source"`
		Target string `yaml:"target"`
	} `yaml:"configs"`
	Volumes []struct {
		Type   string `yaml:"type"`
		Source string `yaml:"source"`
		Target string `yaml:"target"`
	} `yaml:"volumes"`
	Deploy struct {
		Mode           string        `yaml:"mode"`
		Replicas       *int          `yaml:"replicas"`
		UpdateConfig   *updateConfig `yaml:"update_config"`
		RollbackConfig *updateConfig `yaml:"rollback_config"`
		RestartPolicy  *struct {
			Condition string `yaml:"condition"`
			Delay     string `yaml:"delay"`
		} `yaml:"restart_policy"`
		Resources struct {
			Limits struct {
				Memory string `yaml:"memory"`
			} `yaml:"limits"`
		} `yaml:"resources"`
	} `yaml:"deploy"`
}

type healthcheck struct {
	Test        []string `yaml:"test"`
	Interval    string   `yaml:"interval"`
	Timeout     string   `yaml:"timeout"`
	Retries     int      `yaml:"retries"`
	StartPeriod string   `yaml:"start_period"`
	Disable     bool     `yaml:"disable"`
}

type updateConfig struct {
	Parallelism   *int   `yaml:"parallelism"`
	Delay         string `yaml:"delay"`
	FailureAction string `yaml:"failure_action"`
	Monitor       string `yaml:"monitor"`
	Order         string `yaml:"order"`
}

// repoRoot is the module root: tests run in deploy/.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	return root
}

// dockerBinary fails the test when the docker client is missing: the stack file is
// validated by Docker's own parser, never by ours alone.
func dockerBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("docker")
	if err != nil {
		t.Fatalf("the docker client is required to validate stack files (`docker stack config` needs no engine): "+
			"install it (Debian: apt-get install docker.io, or docker-ce-cli from Docker's repository): %v", err)
	}
	return bin
}

// stackConfig runs `docker stack config -c file` with env (and nothing else from
// the deploying shell, so the defaults are what is checked) and parses the result.
func stackConfig(t *testing.T, file string, env ...string) compose {
	t.Helper()
	stdout, stderr, err := runStackConfig(t, file, env...)
	if err != nil {
		t.Fatalf("docker stack config -c %s: %v\n%s", file, err, stderr)
	}
	var c compose
	if err := yaml.Unmarshal([]byte(stdout), &c); err != nil {
		t.Fatalf("parse docker stack config output: %v\n%s", err, stdout)
	}
	if len(c.Services) == 0 {
		t.Fatalf("docker stack config -c %s: no services in\n%s", file, stdout)
	}
	return c
}

func runStackConfig(t *testing.T, file string, env ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, dockerBinary(t), "stack", "config", "-c", file)
	home := t.TempDir() // no user docker config, no contexts, no engine needed
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "DOCKER_CONFIG=" + home}, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// stackEnv is what an operator must export before deploying stack.yml.
var stackEnv = []string{"SHARD_COUNT=4"}

func duration(t *testing.T, what, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s: %q is not a duration: %v", what, s, err)
	}
	return d
}

func mustService(t *testing.T, c compose, name string) service {
	t.Helper()
	s, ok := c.Services[name]
	if !ok {
		t.Fatalf("stack.yml has no service %q", name)
	}
	return s
}

func TestStack(t *testing.T) {
	root := repoRoot(t)
	stack := stackConfig(t, filepath.Join(root, "stack.yml"), stackEnv...)
	bot := mustService(t, stack, "bot")
	heartbeat := duration(t, "bot HEARTBEAT_INTERVAL", bot.Environment["HEARTBEAT_INTERVAL"])

	t.Run("bot rolls one replica at a time, stop-first, with a resume delay", func(t *testing.T) {
		if bot.Deploy.Replicas == nil || *bot.Deploy.Replicas != 2 {
			t.Errorf("bot replicas = %v, want 2", bot.Deploy.Replicas)
		}
		for name, u := range map[string]*updateConfig{"update_config": bot.Deploy.UpdateConfig, "rollback_config": bot.Deploy.RollbackConfig} {
			if u == nil {
				t.Errorf("bot has no %s", name)
				continue
			}
			if u.Parallelism == nil || *u.Parallelism != 1 {
				t.Errorf("bot %s.parallelism = %v, want 1", name, u.Parallelism)
			}
			if u.Order != "stop-first" {
				t.Errorf("bot %s.order = %q, want stop-first (never a third replica mid-update)", name, u.Order)
			}
			// The handed-over shards must have RESUMEd on the peer before the next
			// replica stops, even when the release was lost and the lease has to go
			// stale first: stale TTL + one claim pass + a RESUME.
			worst := staleHeartbeats*heartbeat + heartbeat + resumeTime
			if d := duration(t, "bot "+name+".delay", u.Delay); d < worst {
				t.Errorf("bot %s.delay = %s, want >= %s (%d missed heartbeats of %s + one claim pass + %s RESUME)",
					name, d, worst, staleHeartbeats, heartbeat, resumeTime)
			}
			if d := duration(t, "bot "+name+".monitor", u.Monitor); d <= duration(t, "bot healthcheck start_period", bot.Healthcheck.StartPeriod) {
				t.Errorf("bot %s.monitor = %s must outlast the health check's start_period %s, or an unhealthy new task passes", name, d, bot.Healthcheck.StartPeriod)
			}
		}
		if u := bot.Deploy.UpdateConfig; u != nil && u.FailureAction != "rollback" {
			t.Errorf("bot update_config.failure_action = %q, want rollback", u.FailureAction)
		}
		if rp := bot.Deploy.RestartPolicy; rp == nil || rp.Condition != "any" || rp.Delay == "" {
			t.Errorf("bot restart_policy = %+v, want condition any with a delay", rp)
		}
	})

	t.Run("stop grace periods outlast the handoff and the drain", func(t *testing.T) {
		// The bot's own bound on a graceful stop: SHUTDOWN_TIMEOUT from the stack, or
		// the binary's default; then NATS and HTTP close, hence the margin.
		const margin = 10 * time.Second
		shutdown := shardlease.DefaultShutdownTimeout
		if v := bot.Environment["SHUTDOWN_TIMEOUT"]; v != "" {
			shutdown = duration(t, "bot SHUTDOWN_TIMEOUT", v)
		}
		if grace := duration(t, "bot stop_grace_period", bot.StopGracePeriod); grace < shutdown+margin {
			t.Errorf("bot stop_grace_period %s < SHUTDOWN_TIMEOUT %s + %s: Swarm would SIGKILL a handoff in progress", grace, shutdown, margin)
		}
		for _, name := range []string{"worker-commands", "worker-guilds"} {
			w := mustService(t, stack, name)
			drain := 20 * time.Second // cmd/worker's WORKER_DRAIN_TIMEOUT default
			if v := w.Environment["WORKER_DRAIN_TIMEOUT"]; v != "" {
				drain = duration(t, name+" WORKER_DRAIN_TIMEOUT", v)
			}
			if grace := duration(t, name+" stop_grace_period", w.StopGracePeriod); grace < drain+margin {
				t.Errorf("%s stop_grace_period %s < WORKER_DRAIN_TIMEOUT %s + %s", name, grace, drain, margin)
			}
		}
	})

	t.Run("bot identity and secrets", func(t *testing.T) {
		if got := bot.Environment["REPLICA_ID"]; got != "{{.Task.Name}}" {
			t.Errorf("bot REPLICA_ID = %q, want {{.Task.Name}}", got)
		}
		// The first replica stores the shard count for the whole cluster: it is never
		// defaulted, the deploy fails without it.
		if v := bot.Environment["SHARD_COUNT"]; v != "4" {
			t.Errorf("bot SHARD_COUNT = %q, want the deploying shell's SHARD_COUNT (4)", v)
		}
		_, stderr, err := runStackConfig(t, filepath.Join(root, "stack.yml"))
		if err == nil || !strings.Contains(stderr, "SHARD_COUNT") {
			t.Errorf("docker stack config without SHARD_COUNT: err %v, stderr %q; want a failure naming SHARD_COUNT", err, stderr)
		}
		checkSecrets(t, stack, "bot", bot, "DISCORD_TOKEN", "DATABASE_URL")
	})

	t.Run("workers", func(t *testing.T) {
		ports := map[string]string{}
		for _, name := range []string{"commands", "guilds"} {
			svcName := "worker-" + name
			w := mustService(t, stack, svcName)
			if want := []string{"/worker", "run", name}; !slices.Equal(w.Command, want) {
				t.Errorf("%s command = %q, want %q", svcName, w.Command, want)
			}
			if w.Image != bot.Image {
				t.Errorf("%s image %q differs from the bot's %q: one image serves both", svcName, w.Image, bot.Image)
			}
			checkHealthcheck(t, svcName, w.Healthcheck, []string{"CMD", "/worker", "healthcheck", name})
			addrVar := "WORKER_" + strings.ToUpper(name) + "_HEALTH_ADDR"
			addr := w.Environment[addrVar]
			if !regexp.MustCompile(`^:\d+$`).MatchString(addr) {
				t.Errorf("%s %s = %q, want :<port>", svcName, addrVar, addr)
			}
			if other, dup := ports[addr]; dup {
				t.Errorf("%s and %s share health address %s", svcName, other, addr)
			}
			ports[addr] = svcName
			checkSecrets(t, stack, svcName, w, "DISCORD_TOKEN", "DATABASE_URL")
			if w.Deploy.Replicas == nil || (w.Deploy.Mode != "" && w.Deploy.Mode != "replicated") {
				t.Errorf("%s must be a replicated service (scalable with docker service scale)", svcName)
			}
			if u := w.Deploy.UpdateConfig; u == nil || u.FailureAction != "rollback" {
				t.Errorf("%s update_config must roll back on failure: %+v", svcName, u)
			}
		}
	})

	t.Run("bot health check", func(t *testing.T) {
		checkHealthcheck(t, "bot", bot.Healthcheck, []string{"CMD", "/bot", "healthcheck"})
	})

	t.Run("nats", func(t *testing.T) {
		n := mustService(t, stack, "nats")
		if !slices.Contains(n.Command, "--jetstream") && !slices.Contains(n.Command, "-js") {
			t.Errorf("nats command %q does not enable JetStream", n.Command)
		}
		store := ""
		for i, a := range n.Command {
			if (a == "--store_dir" || a == "-sd") && i+1 < len(n.Command) {
				store = n.Command[i+1]
			}
		}
		if store == "" || !hasVolumeAt(n, store) {
			t.Errorf("nats JetStream store %q is not on a named volume (volumes %+v)", store, n.Volumes)
		}
		if n.Healthcheck == nil || !strings.Contains(strings.Join(n.Healthcheck.Test, " "), ":8222/healthz") {
			t.Errorf("nats health check must probe the monitoring endpoint :8222/healthz, got %+v", n.Healthcheck)
		}
		if url := bot.Environment["NATS_URL"]; url != "nats://nats:4222" {
			t.Errorf("bot NATS_URL = %q, want the nats service", url)
		}
	})

	t.Run("postgres", func(t *testing.T) {
		p := mustService(t, stack, "postgres")
		if !hasVolumeAt(p, "/var/lib/postgresql/data") {
			t.Errorf("postgres data directory is not on a named volume: %+v", p.Volumes)
		}
		if p.Environment["POSTGRES_PASSWORD"] != "" {
			t.Error("postgres password is in the environment; use POSTGRES_PASSWORD_FILE and a secret")
		}
		checkSecretFile(t, stack, "postgres", p, "POSTGRES_PASSWORD_FILE")
		if p.Healthcheck == nil || len(p.Healthcheck.Test) < 2 || p.Healthcheck.Test[1] != "pg_isready" {
			t.Errorf("postgres health check must run pg_isready, got %+v", p.Healthcheck)
		}
	})

	t.Run("every service is health checked, on the overlay network, publishing nothing", func(t *testing.T) {
		for name, s := range stack.Services {
			if s.Healthcheck == nil || s.Healthcheck.Disable || len(s.Healthcheck.Test) == 0 {
				t.Errorf("service %s has no health check", name)
			}
			if len(s.Ports) > 0 {
				t.Errorf("service %s publishes %v: operators reach the stack through docker exec and the monitoring stack", name, s.Ports)
			}
			if _, ok := s.Networks["backend"]; !ok || len(s.Networks) != 1 {
				t.Errorf("service %s networks = %v, want just backend", name, s.Networks)
			}
		}
		n, ok := stack.Networks["backend"]
		if !ok || n.Driver != "overlay" {
			t.Fatalf("network backend must be an overlay network: %+v", stack.Networks)
		}
		// deploy/monitoring.yml joins it by this name.
		if n.Name != "shardwarden_backend" {
			t.Errorf("network backend is named %q, monitoring.yml expects shardwarden_backend", n.Name)
		}
	})

	t.Run("secrets are created by the operator, never files in the repository", func(t *testing.T) {
		for name, s := range stack.Secrets {
			if !s.External || s.File != "" {
				t.Errorf("secret %s must be external (docker secret create), got %+v", name, s)
			}
		}
	})

	t.Run("the delay is explained next to it", func(t *testing.T) {
		raw, err := os.ReadFile(filepath.Join(root, "stack.yml"))
		if err != nil {
			t.Fatal(err)
		}
		comment := commentAbove(string(raw), "        delay: "+bot.Deploy.UpdateConfig.Delay)
		if comment == "" {
			// docker normalises "60s" to "1m0s": look for the key under update_config.
			comment = commentAboveFirst(string(raw), "update_config:", "delay:")
		}
		for _, word := range []string{"heartbeat", "RESUME", "stale"} {
			if !strings.Contains(comment, word) {
				t.Errorf("the comment above the bot's update delay does not mention %q:\n%s", word, comment)
			}
		}
	})
}

func checkHealthcheck(t *testing.T, svc string, h *healthcheck, want []string) {
	t.Helper()
	if h == nil {
		t.Errorf("%s has no health check", svc)
		return
	}
	if !slices.Equal(h.Test, want) {
		t.Errorf("%s health check = %q, want %q", svc, h.Test, want)
	}
	if h.Interval == "" || h.Timeout == "" || h.Retries == 0 || h.StartPeriod == "" {
		t.Errorf("%s health check needs interval, timeout, retries and start_period: %+v", svc, *h)
	}
}

// checkSecrets requires each variable to come from <VAR>_FILE pointing at a secret
// mounted into the service, never from the environment.
func checkSecrets(t *testing.T, c compose, svcName string, s service, vars ...string) {
	t.Helper()
	for _, v := range vars {
		if s.Environment[v] != "" {
			t.Errorf("%s sets %s in its environment; use %s_FILE and a Docker secret", svcName, v, v)
		}
		checkSecretFile(t, c, svcName, s, v+"_FILE")
	}
}

func checkSecretFile(t *testing.T, c compose, svcName string, s service, fileVar string) {
	t.Helper()
	path := s.Environment[fileVar]
	target, ok := strings.CutPrefix(path, "/run/secrets/")
	if !ok {
		t.Errorf("%s %s = %q, want /run/secrets/<secret>", svcName, fileVar, path)
		return
	}
	for _, sec := range s.Secrets {
		if sec.Target == target || (sec.Target == "" && sec.Source == target) {
			if _, declared := c.Secrets[sec.Source]; !declared {
				t.Errorf("%s mounts undeclared secret %s", svcName, sec.Source)
			}
			return
		}
	}
	t.Errorf("%s %s = %s, but no secret is mounted there", svcName, fileVar, path)
}

func hasVolumeAt(s service, target string) bool {
	for _, v := range s.Volumes {
		if v.Type == "volume" && v.Source != "" && v.Target == target {
			return true
		}
	}
	return false
}

// commentAbove returns the block of comment lines directly above the first line
// equal to line (after trimming), or "".
func commentAbove(text, line string) string {
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) == strings.TrimSpace(line) {
			return commentBlock(lines, i)
		}
	}
	return ""
}

// commentAboveFirst finds the first line starting with key after the first line
// starting with section (both trimmed) and returns the comment block above it.
func commentAboveFirst(text, section, key string) string {
	lines := strings.Split(text, "\n")
	in := false
	for i, l := range lines {
		tl := strings.TrimSpace(l)
		if strings.HasPrefix(tl, section) {
			in = true
			continue
		}
		if in && strings.HasPrefix(tl, key) {
			return commentBlock(lines, i)
		}
	}
	return ""
}

func commentBlock(lines []string, i int) string {
	var block []string
	for j := i - 1; j >= 0 && strings.HasPrefix(strings.TrimSpace(lines[j]), "#"); j-- {
		block = append([]string{lines[j]}, block...)
	}
	return strings.Join(block, "\n")
}
