package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// githubSlug is the anchor GitHub gives a Markdown heading.
func githubSlug(heading string) string {
	s := strings.ToLower(strings.TrimSpace(heading))
	s = regexp.MustCompile("[^a-z0-9 _-]").ReplaceAllString(s, "")
	return strings.ReplaceAll(s, " ", "-")
}

func headingAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	inFence := false
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
			continue
		}
		if m := regexp.MustCompile(`^#{1,6}\s+(.+)$`).FindStringSubmatch(line); m != nil && !inFence {
			anchors[githubSlug(m[1])] = true
		}
	}
	return anchors
}

// Every alert points at a section of the runbook that exists.
func TestRunbookHasEveryAlert(t *testing.T) {
	root := repoRoot(t)
	anchors := headingAnchors(t, filepath.Join(root, "docs", "runbook.md"))
	for _, r := range loadRules(t, root) {
		if r.Alert == "" {
			continue
		}
		file, anchor, _ := strings.Cut(r.Annotations["runbook"], "#")
		if file != "docs/runbook.md" || !anchors[anchor] {
			t.Errorf("alert %s: runbook link %q has no heading in docs/runbook.md", r.Alert, r.Annotations["runbook"])
		}
	}
}

// Every relative link of docs/, and every link of the README into docs/, points
// at a file that exists, and its #anchor at a heading of that file. (The rest of
// the README is its owners'.)
func TestDocLinks(t *testing.T) {
	root := repoRoot(t)
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join(root, "README.md"))
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, f)
		for _, m := range link.FindAllStringSubmatch(string(raw), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			if filepath.Base(f) == "README.md" && !strings.HasPrefix(target, "docs/") {
				continue
			}
			path, anchor, _ := strings.Cut(target, "#")
			dest := f
			if path != "" {
				dest = filepath.Join(filepath.Dir(f), path)
				if _, err := os.Stat(dest); err != nil {
					t.Errorf("%s: link %q: %v", rel, target, err)
					continue
				}
			}
			if anchor != "" && strings.HasSuffix(dest, ".md") && !headingAnchors(t, dest)[anchor] {
				t.Errorf("%s: link %q: no such heading", rel, target)
			}
		}
	}
}

func TestGithubSlug(t *testing.T) {
	for in, want := range map[string]string{
		"Reading the lease table":  "reading-the-lease-table",
		"GatewayHeartbeatAckSlow":  "gatewayheartbeatackslow",
		"7. Monitoring (optional)": "7-monitoring-optional",
		"A self-fence":             "a-self-fence",
	} {
		if got := githubSlug(in); got != want {
			t.Errorf("githubSlug(%q) = %q, want %q", in, got, want)
		}
	}
}
