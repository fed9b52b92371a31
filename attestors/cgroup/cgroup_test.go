package cgroup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeward/nodeward/attestors/selector"
)

// fixture reads testdata/NAME.txt: comment lines, then "--- cgroup" and the
// /proc/PID/cgroup content, then "--- selectors" and the expected selectors.
func fixture(t *testing.T, path string) (cgroup []byte, want []string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "--- cgroup\n")
	if !ok {
		t.Fatalf("%s: no --- cgroup section", path)
	}
	cg, sels, ok := strings.Cut(rest, "--- selectors\n")
	if !ok {
		t.Fatalf("%s: no --- selectors section", path)
	}
	return []byte(cg), strings.Fields(sels)
}

func TestLayouts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) < 15 {
		t.Fatalf("fixtures: %v %d", err, len(files))
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			cg, want := fixture(t, f)
			lines, err := ParseProcCgroup(cg)
			if err != nil {
				t.Fatal(err)
			}
			got := selector.Strings(Selectors(SystemdPath(lines)))
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("selectors:\n got  %s\n want %s", strings.Join(got, "\n      "), strings.Join(want, "\n      "))
			}
			// The same through the attestor and a fake /proc tree.
			root := t.TempDir()
			if err := os.MkdirAll(filepath.Join(root, "42"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, "42", "cgroup"), cg, 0o644); err != nil {
				t.Fatal(err)
			}
			sels, err := New(Config{ProcRoot: root}).Attest(context.Background(), 42)
			if err != nil || len(sels) != len(want) {
				t.Errorf("Attest: %v %v", selector.Strings(sels), err)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{"", "\n", "garbage", "0:/x", "x::/a", "-1::/a", "0::relative", "0::"} {
		if _, err := ParseProcCgroup([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: err = %v, want ErrMalformed", in, err)
		}
	}
	many := strings.Repeat("1:cpu:/a\n", maxLines+1)
	if _, err := ParseProcCgroup([]byte(many)); !errors.Is(err, ErrMalformed) {
		t.Errorf("too many lines: %v", err)
	}
}

func TestNotAContainer(t *testing.T) {
	for _, p := range []string{
		"/system.slice/docker.service",                // the daemon, not a container
		"/docker/not-an-id",                           // not 64 hex
		"/system.slice/docker-ABCDEF.scope",           // upper case, short
		"/kubepods/burstable/podnot-a-uid/" + hex64(), // bad pod uid: container only
	} {
		for _, s := range Selectors(p) {
			if s.Type == "k8s" || (s.Type == "container" && !strings.Contains(p, "kubepods")) {
				t.Errorf("%s: unexpected %s", p, s)
			}
		}
	}
}

func hex64() string { return strings.Repeat("ab", 32) }

func TestAttestSelfAndGone(t *testing.T) {
	sels, err := New(Config{}).Attest(context.Background(), int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if len(sels) == 0 || sels[0].Type != "cgroup" {
		t.Fatalf("self: %v", selector.Strings(sels))
	}
	if _, err := New(Config{ProcRoot: t.TempDir()}).Attest(context.Background(), 7); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("gone: %v", err)
	}
}

func FuzzParseProcCgroup(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.txt")
	for _, p := range files {
		data, _ := os.ReadFile(p)
		if _, rest, ok := strings.Cut(string(data), "--- cgroup\n"); ok {
			cg, _, _ := strings.Cut(rest, "--- selectors\n")
			f.Add([]byte(cg))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lines, err := ParseProcCgroup(data)
		if err != nil {
			return
		}
		p := SystemdPath(lines)
		sels := Selectors(p)
		if len(sels) == 0 || sels[0].String() != "cgroup:path:"+p {
			t.Fatalf("first selector %v, want cgroup:path:%s", sels, p)
		}
		// Type and key are always well-formed; values are whatever the path
		// holds (a value config cannot express simply never matches).
		for _, s := range sels {
			if _, err := selector.Parse(s.Type + ":" + s.Key + ":x"); err != nil {
				t.Fatalf("derived selector %q has a bad type or key: %v", s, err)
			}
		}
	})
}

func BenchmarkAttestSelf(b *testing.B) {
	a := New(Config{})
	pid := int32(os.Getpid())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Attest(context.Background(), pid); err != nil {
			b.Fatal(err)
		}
	}
}
