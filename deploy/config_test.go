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
)

// helpVar is one variable a binary's --help lists.
type helpVar struct {
	name, def string // def "" when the flag package prints none
}

var helpLine = regexp.MustCompile(`\(env ([A-Z0-9_]+)\)(?: \(default (.+)\))?\s*$`)

// helpVars runs bin with args (ending in --help) and returns the variables it
// lists, with their defaults.
func helpVars(t *testing.T, bin string, args ...string) map[string]helpVar {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()} // defaults, not this shell's values
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run() // -h exits with status 2 (flag.ErrHelp)
	vars := map[string]helpVar{}
	for _, line := range strings.Split(out.String(), "\n") {
		if m := helpLine.FindStringSubmatch(line); m != nil {
			vars[m[1]] = helpVar{name: m[1], def: strings.Trim(m[2], `"`)}
		}
	}
	if len(vars) < 3 {
		t.Fatalf("%s %s listed %d variables:\n%s", filepath.Base(bin), strings.Join(args, " "), len(vars), out.String())
	}
	return vars
}

// docRow is one row of a table in docs/configuration.md.
type docRow struct {
	names []string // every backticked name of the first cell
	def   string
}

// docTables returns the variable tables of configuration.md by section (## bot,
// ## worker, ## The stack).
func docTables(t *testing.T, root string) map[string][]docRow {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	tables := map[string][]docRow{}
	section := ""
	tick := regexp.MustCompile("`([^`]+)`")
	for _, line := range strings.Split(string(raw), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			section = strings.TrimSpace(h)
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		var r docRow
		for _, m := range tick.FindAllStringSubmatch(cells[1], -1) {
			r.names = append(r.names, m[1])
		}
		r.def = cells[2]
		tables[section] = append(tables[section], r)
	}
	return tables
}

func findRow(rows []docRow, name string) (docRow, bool) {
	generic := regexp.MustCompile(`^WORKER_[A-Z0-9_]+_HEALTH_ADDR$`).ReplaceAllString(name, "WORKER_<NAME>_HEALTH_ADDR")
	for _, r := range rows {
		if slices.Contains(r.names, name) || slices.Contains(r.names, generic) {
			return r, true
		}
	}
	return docRow{}, false
}

// secretVars are read with config.Loader.Secret: no flag, so not in --help.
var secretVars = []string{"DISCORD_TOKEN", "DISCORD_TOKEN_FILE", "DATABASE_URL", "DATABASE_URL_FILE"}

// TestConfigurationReference holds docs/configuration.md and stack.yml to the
// binaries: every variable `bot run --help` and `worker run --help` list is
// documented with the binary's default, every documented variable exists, and
// stack.yml sets no variable the binary does not read.
func TestConfigurationReference(t *testing.T) {
	root := repoRoot(t)
	bins := buildBinaries(t)
	tables := docTables(t, root)
	host, _ := os.Hostname()
	stack := stackConfig(t, filepath.Join(root, "stack.yml"), stackEnv...)

	for _, b := range []struct {
		section  string
		bin      string
		args     []string
		services []string
	}{
		{"bot", bins.Bot, []string{"run", "--help"}, []string{"bot"}},
		{"worker", bins.Worker, []string{"run", "--help"}, []string{"worker-commands", "worker-guilds"}},
	} {
		t.Run(b.section, func(t *testing.T) {
			vars := helpVars(t, b.bin, b.args...)
			rows := tables[b.section]
			if len(rows) == 0 {
				t.Fatalf("docs/configuration.md has no table under ## %s", b.section)
			}
			for _, v := range vars {
				r, ok := findRow(rows, v.name)
				if !ok {
					t.Errorf("%s reads %s (default %q); docs/configuration.md does not list it under ## %s: add a row (variable, default, meaning)", b.section, v.name, v.def, b.section)
					continue
				}
				if v.def != "" && v.def != host && !strings.Contains(r.def, "`"+v.def+"`") {
					t.Errorf("%s: %s defaults to %q; the documented default is %q", b.section, v.name, v.def, strings.TrimSpace(r.def))
				}
			}
			for _, r := range rows {
				for _, n := range r.names {
					if _, ok := vars[n]; ok || slices.Contains(secretVars, n) || n == "WORKER_<NAME>_HEALTH_ADDR" {
						continue
					}
					t.Errorf("docs/configuration.md documents %s under ## %s, but %s does not read it", n, b.section, b.section)
				}
			}
			for _, svc := range b.services {
				for name := range mustService(t, stack, svc).Environment {
					if _, ok := vars[name]; !ok && !slices.Contains(secretVars, name) {
						t.Errorf("stack.yml sets %s on %s, but %s does not read it", name, svc, b.section)
					}
				}
			}
		})
	}
}
