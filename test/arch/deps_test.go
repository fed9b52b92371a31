// Package arch holds tests that keep the project's dependency direction:
// cmd -> agent, broker -> internal; workloadapi -> internal; attestors -> selector. See docs/architecture.md.
package arch

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/nodeward/nodeward"

func TestDependencyDirection(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, module+"/...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	rules := []struct {
		pkgPrefix string
		forbidden []string
		allowOnly []string // project imports allowed (prefixes); nil = no such rule
	}{
		{pkgPrefix: module + "/workloadapi", forbidden: []string{module + "/agent", module + "/broker", module + "/cmd"}},
		// The broker and sinks are Workload API clients: what they share
		// with the agent (audit, peercred, atomicfile) lives in internal/.
		{pkgPrefix: module + "/broker", forbidden: []string{module + "/agent", module + "/cmd", module + "/workloadapi"}},
		{pkgPrefix: module + "/sinks", forbidden: []string{module + "/agent", module + "/broker", module + "/cmd", module + "/workloadapi"}},
		{pkgPrefix: module + "/internal", forbidden: []string{module + "/agent", module + "/broker", module + "/cmd", module + "/sinks", module + "/workloadapi", module + "/attestors"}},
		{pkgPrefix: module + "/attestors", allowOnly: []string{module + "/attestors/selector"}},
		{pkgPrefix: module + "/agent", forbidden: []string{module + "/cmd", module + "/broker", module + "/test"}},
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg, imports := f[0], f[1:]
		for _, r := range rules {
			if !strings.HasPrefix(pkg, r.pkgPrefix) {
				continue
			}
			checked++
			for _, imp := range imports {
				if !strings.HasPrefix(imp, module+"/") {
					continue
				}
				for _, bad := range r.forbidden {
					if strings.HasPrefix(imp, bad) {
						t.Errorf("%s imports %s: not allowed (dependency direction)", pkg, imp)
					}
				}
				if r.allowOnly != nil {
					ok := false
					for _, good := range r.allowOnly {
						ok = ok || strings.HasPrefix(imp, good)
					}
					if !ok {
						t.Errorf("%s imports %s: attestors may import only %v", pkg, imp, r.allowOnly)
					}
				}
			}
		}
	}
	if checked < 5 {
		t.Fatalf("only %d packages checked: go list output unexpected:\n%s", checked, out)
	}
}
