// Package packaging_test keeps the shipped packaging honest: unit files pass
// systemd-analyze verify, the default configs load with the real parsers,
// the Kubernetes manifests are valid YAML with the expected security
// settings, the Dockerfile has its shape, and the .deb built by nfpm holds
// the right files, modes, conffiles and maintainer scripts.
package packaging_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/nodeward/nodeward/agent/config"
	"github.com/nodeward/nodeward/broker"
	"github.com/nodeward/nodeward/test/testutil"
)

var bin string

func TestMain(m *testing.M) { testutil.MainWithBinary(m, &bin) }

// root is the repository root (tests run in test/packaging).
func root(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func need(t *testing.T, tool string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s missing in CI: %v", tool, err)
		}
		t.Skipf("%s not installed", tool)
	}
}

func TestUnitFilesVerify(t *testing.T) {
	need(t, "systemd-analyze")
	dir := t.TempDir()
	var units []string
	for _, pat := range []string{"*.service", "*.socket"} {
		m, err := filepath.Glob(filepath.Join(root(t), "packaging/systemd", pat))
		if err != nil {
			t.Fatal(err)
		}
		units = append(units, m...)
	}
	var err error
	if err != nil || len(units) != 4 {
		t.Fatalf("unit files: %v %v", units, err)
	}
	for _, u := range units {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		// verify checks that ExecStart exists: point it at the built binary.
		data = bytes.ReplaceAll(data, []byte("/usr/bin/nodeward"), []byte(bin))
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(u)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"nodeward-agent.socket", "nodeward-agent.service", "nodeward-broker@web.socket", "nodeward-broker@web.service"} {
		cmd := exec.Command("systemd-analyze", "verify", "--man=no", "./"+name)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) != 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
	// Exposure scores (lower is better), recorded in docs/packaging.md.
	for name, max := range map[string]float64{"nodeward-agent.service": 2.5, "nodeward-broker@web.service": 1.5} {
		cmd := exec.Command("systemd-analyze", "security", "--offline=true", "--man=no", "./"+name)
		cmd.Dir = dir
		out, _ := cmd.CombinedOutput()
		m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
		if m == nil {
			t.Errorf("no exposure score for %s:\n%s", name, out)
			continue
		}
		score, _ := strconv.ParseFloat(string(m[1]), 64)
		t.Logf("%s exposure %.1f", name, score)
		if score > max {
			t.Errorf("%s exposure %.1f, want at most %.1f", name, score, max)
		}
	}
}

func TestShippedConfigsLoad(t *testing.T) {
	r := root(t)
	cfg, err := config.Load(filepath.Join(r, "packaging/config/agent.yaml"))
	if err != nil {
		t.Fatalf("packaged agent.yaml: %v", err)
	}
	if cfg.SocketPath != "/run/nodeward/workload.sock" || cfg.DataDir != "/var/lib/nodeward" || len(cfg.Entries) != 0 {
		t.Fatalf("packaged agent.yaml: %+v", cfg)
	}
	if _, err := broker.LoadConfig(filepath.Join(r, "packaging/config/broker-example.yaml")); err != nil {
		t.Fatalf("broker example: %v", err)
	}
	// The configs inside the Kubernetes manifests parse as well.
	for _, d := range docs(t, "daemonset.yaml", "sidecar-example.yaml") {
		if d["kind"] != "ConfigMap" {
			continue
		}
		for key, v := range d["data"].(map[string]any) {
			var err error
			if key == "agent.yaml" {
				_, err = config.Parse("configmap/"+key, []byte(v.(string)))
			} else {
				_, err = broker.ParseConfig("configmap/"+key, []byte(v.(string)))
			}
			if err != nil {
				t.Errorf("ConfigMap %s: %v", key, err)
			}
		}
	}
}

func docs(t *testing.T, files ...string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(root(t), "packaging/kubernetes", f))
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var d map[string]any
			if err := dec.Decode(&d); err != nil {
				if err.Error() == "EOF" {
					break
				}
				t.Fatalf("%s: %v", f, err)
			}
			if d != nil {
				out = append(out, d)
			}
		}
	}
	return out
}

// get walks a path of map keys and list indexes.
func get(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("at %v: not a mapping", path)
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("at %v: not a list of %d", path, k+1)
			}
			v = l[k]
		}
	}
	return v
}

func TestKubernetesManifests(t *testing.T) {
	kinds := map[string]map[string]any{}
	for _, d := range docs(t, "daemonset.yaml", "sidecar-example.yaml") {
		if d["apiVersion"] == nil || d["kind"] == nil || get(t, d, "metadata", "name") == nil {
			t.Fatalf("document without apiVersion/kind/name: %v", d)
		}
		kinds[d["kind"].(string)+"/"+get(t, d, "metadata", "name").(string)] = d
	}
	ds := kinds["DaemonSet/nodeward-agent"]
	if ds == nil {
		t.Fatalf("no DaemonSet nodeward-agent in %v", kinds)
	}
	pod := get(t, ds, "spec", "template", "spec")
	if get(t, pod, "hostPID") != true || get(t, pod, "hostNetwork") != false {
		t.Error("the agent needs hostPID (peer PIDs are host PIDs) and no host network")
	}
	c := get(t, pod, "containers", 0)
	sc := get(t, c, "securityContext")
	if get(t, sc, "privileged") != false || get(t, sc, "allowPrivilegeEscalation") != false || get(t, sc, "readOnlyRootFilesystem") != true {
		t.Errorf("agent securityContext: %v", sc)
	}
	if drop := get(t, sc, "capabilities", "drop"); len(drop.([]any)) != 1 || drop.([]any)[0] != "ALL" {
		t.Errorf("capabilities.drop = %v, want [ALL]", drop)
	}
	if add := get(t, sc, "capabilities", "add"); len(add.([]any)) != 1 || add.([]any)[0] != "SYS_PTRACE" {
		t.Errorf("capabilities.add = %v, want [SYS_PTRACE] only", add)
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		cmd := get(t, c, probe, "exec", "command").([]any)
		if cmd[1] != "healthcheck" {
			t.Errorf("%s runs %v, want nodeward healthcheck", probe, cmd)
		}
	}
	if get(t, pod, "volumes", 0, "hostPath", "path") != "/run/nodeward" {
		t.Error("the socket directory is not the node's /run/nodeward")
	}
	dep := kinds["Deployment/web"]
	if dep == nil {
		t.Fatal("no sidecar example Deployment")
	}
	cs := get(t, dep, "spec", "template", "spec", "containers").([]any)
	if len(cs) != 2 || get(t, cs[1], "args", 0) != "broker" {
		t.Fatalf("sidecar: %v", cs)
	}
	mounts := map[string]bool{}
	for _, m := range get(t, cs[1], "volumeMounts").([]any) {
		mounts[get(t, m, "name").(string)] = get(t, m, "readOnly") == true
	}
	if ro, ok := mounts["nodeward-agent"]; !ok || !ro {
		t.Error("the broker must mount the node's Workload API socket read-only")
	}
	if _, ok := mounts["broker"]; !ok {
		t.Error("the broker and the app must share the broker socket volume")
	}
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	from := regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllStringSubmatch(s, -1)
	if len(from) != 2 || !strings.HasPrefix(from[0][1], "golang:") || !strings.Contains(from[1][1], "distroless/static") {
		t.Error("want a two-stage build: a golang builder, then the runtime image")
	}
	for _, want := range []string{"CGO_ENABLED=0", "USER 65532:65532", `ENTRYPOINT ["/usr/bin/nodeward"]`, "distroless/static"} {
		if !strings.Contains(s, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

func TestDebPackage(t *testing.T) {
	need(t, "dpkg-deb")
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(root(t), "packaging/build-packages.sh"), out)
	cmd.Dir = root(t)
	cmd.Env = append(os.Environ(), "VERSION=1.2.3")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build-packages.sh: %v\n%s", err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "nodeward_1.2.3_*.deb"))
	rpms, _ := filepath.Glob(filepath.Join(out, "nodeward-1.2.3-1.*.rpm"))
	if len(debs) != 1 || len(rpms) != 1 {
		t.Fatalf("packages: %v %v", debs, rpms)
	}
	if fi, err := os.Stat(rpms[0]); err != nil || fi.Size() < 1<<20 {
		t.Fatalf("rpm: %v %v", fi, err)
	}
	contents, err := exec.Command("dpkg-deb", "--contents", debs[0]).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"./usr/bin/nodeward":                                    "-rwxr-xr-x root/root",
		"./usr/lib/systemd/system/nodeward-agent.service":       "-rw-r--r-- root/root",
		"./usr/lib/systemd/system/nodeward-agent.socket":        "-rw-r--r-- root/root",
		"./usr/lib/systemd/system/nodeward-broker@.service":     "-rw-r--r-- root/root",
		"./usr/lib/systemd/system/nodeward-broker@.socket":      "-rw-r--r-- root/root",
		"./usr/lib/sysusers.d/nodeward.conf":                    "-rw-r--r-- root/root",
		"./usr/lib/tmpfiles.d/nodeward.conf":                    "-rw-r--r-- root/root",
		"./etc/nodeward/agent.yaml":                             "-rw-r----- root/nodeward",
		"./usr/share/doc/nodeward/examples/broker-example.yaml": "-rw-r--r-- root/root",
	}
	for _, line := range strings.Split(string(contents), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		if perm, ok := want[f[5]]; ok {
			if got := f[0] + " " + f[1]; got != perm {
				t.Errorf("%s: %s, want %s", f[5], got, perm)
			}
			delete(want, f[5])
		}
	}
	for f := range want {
		t.Errorf("package lacks %s", f)
	}
	fields, err := exec.Command("dpkg-deb", "--field", debs[0], "Package", "Version").Output()
	if err != nil || !strings.Contains(string(fields), "Package: nodeward") || !strings.Contains(string(fields), "Version: 1.2.3") {
		t.Errorf("control fields: %s %v", fields, err)
	}
	ctl := filepath.Join(out, "control")
	if err := exec.Command("dpkg-deb", "--control", debs[0], ctl).Run(); err != nil {
		t.Fatal(err)
	}
	if conf, err := os.ReadFile(filepath.Join(ctl, "conffiles")); err != nil || strings.TrimSpace(string(conf)) != "/etc/nodeward/agent.yaml" {
		t.Errorf("conffiles = %q, %v", conf, err)
	}
	for _, s := range []string{"preinst", "postinst", "prerm", "postrm"} {
		p := filepath.Join(ctl, s)
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o111 == 0 {
			t.Errorf("maintainer script %s: %v %v", s, fi, err)
			continue
		}
		if b, err := exec.Command("sh", "-n", p).CombinedOutput(); err != nil {
			t.Errorf("%s: sh -n: %v %s", s, err, b)
		}
	}
	// The packaged binary runs and is static.
	x := filepath.Join(out, "x")
	if err := exec.Command("dpkg-deb", "-x", debs[0], x).Run(); err != nil {
		t.Fatal(err)
	}
	v, err := exec.Command(filepath.Join(x, "usr/bin/nodeward"), "version").CombinedOutput()
	if err != nil || !strings.Contains(string(v), "1.2.3") {
		t.Errorf("packaged nodeward version: %s %v", v, err)
	}
	if file, err := exec.Command("ldd", filepath.Join(x, "usr/bin/nodeward")).CombinedOutput(); err == nil && !strings.Contains(string(file), "not a dynamic executable") {
		t.Errorf("packaged binary is dynamically linked: %s", file)
	}
}

// TestUnitsRestartAfterAnyExit (issue 11, item 14): the daemons come back
// after any exit but a deliberate stop — SIGPIPE, which Restart=on-failure
// counts as clean, included — except a config error (exit 78, which the
// binary uses for a config file that does not load), and never give up.
func TestUnitsRestartAfterAnyExit(t *testing.T) {
	for _, name := range []string{"nodeward-agent.service", "nodeward-broker@.service"} {
		data, err := os.ReadFile(filepath.Join(root(t), "packaging/systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"Restart=always", "RestartPreventExitStatus=78", "StartLimitIntervalSec=0"} {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `$`).Match(data) {
				t.Errorf("%s: no %s", name, want)
			}
		}
	}
	cfg := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(cfg, []byte("trust_domian: typo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"agent", "broker"} {
		err := exec.Command(bin, sub, "--config", cfg).Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 78 {
			t.Errorf("%s with a bad config: %v, want exit 78 (RestartPreventExitStatus)", sub, err)
		}
	}
}
