package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestParseFlagsAnywhere (issue 11, item 16): flags may follow positional
// arguments; "--" ends the flags.
func TestParseFlagsAnywhere(t *testing.T) {
	tests := []struct {
		args    []string
		wantPos []string
		wantTD  string
		wantJS  bool
	}{
		{[]string{"--trust-domain", "td", "FILE"}, []string{"FILE"}, "td", false},
		{[]string{"FILE", "--trust-domain", "td"}, []string{"FILE"}, "td", false},
		{[]string{"FILE", "--trust-domain=td", "--json", "MORE"}, []string{"FILE", "MORE"}, "td", true},
		{[]string{"A", "--json", "B", "--trust-domain", "x"}, []string{"A", "B"}, "x", true},
		{[]string{"A", "--", "--json", "-"}, []string{"A", "--json", "-"}, "", false},
		{[]string{"--", "--trust-domain"}, []string{"--trust-domain"}, "", false},
		{[]string{"-"}, []string{"-"}, "", false},
		{nil, []string{}, "", false},
	}
	for _, tt := range tests {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		td := fs.String("trust-domain", "", "")
		js := fs.Bool("json", false, "")
		if err := parseFlags(fs, tt.args); err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if got := fs.Args(); !slices.Equal(got, tt.wantPos) && !(len(got) == 0 && len(tt.wantPos) == 0) || *td != tt.wantTD || *js != tt.wantJS {
			t.Errorf("%q: positional %q td %q json %v; want %q %q %v", tt.args, fs.Args(), *td, *js, tt.wantPos, tt.wantTD, tt.wantJS)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := parseFlags(fs, []string{"FILE", "--bogus"}); !errors.Is(err, errUsage) {
		t.Errorf("unknown flag after a positional argument: %v, want errUsage", err)
	}
}

// docCommands extracts every `nodeward …` command line from README.md and
// docs/*.md: inline code spans and lines of fenced blocks (comments after
// " #" dropped). A span that is a word-wise prefix of another (a mention in
// prose such as `nodeward entries check`) is left out.
func docCommands(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../../README.md")
	cmds := map[string]string{} // command -> where
	span := regexp.MustCompile("`((?:\\./bin/)?nodeward [^`]+)`")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		fenced := false
		for i, line := range strings.Split(string(data), "\n") {
			where := filepath.Base(f) + ":" + strconv.Itoa(i+1)
			if strings.HasPrefix(strings.TrimSpace(line), "```") {
				fenced = !fenced
				continue
			}
			if fenced {
				l := strings.TrimPrefix(strings.TrimSpace(line), "$ ")
				l = strings.TrimPrefix(l, "./bin/")
				if strings.HasPrefix(l, "nodeward ") {
					if i := strings.Index(l, " #"); i >= 0 {
						l = l[:i]
					}
					cmds[strings.Join(strings.Fields(l), " ")] = where
				}
				continue
			}
			for _, m := range span.FindAllStringSubmatch(line, -1) {
				cmds[strings.Join(strings.Fields(strings.TrimPrefix(m[1], "./bin/")), " ")] = where
			}
		}
	}
	known := map[string]bool{}
	for _, c := range commands() {
		known[c.name] = true
	}
	for c := range cmds {
		w := strings.Fields(c)
		if len(w) < 2 || !known[w[1]] {
			delete(cmds, c) // "nodeward metric", prose
		}
	}
	for c := range cmds {
		for o := range cmds {
			if o != c && strings.HasPrefix(o, c+" ") {
				delete(cmds, c)
				break
			}
		}
	}
	return cmds
}

// TestDocumentedCommandsParse (issue 11, item 16): every command line the
// README and docs write parses as written — optional parts included, with
// placeholders filled in — without a usage error. Each is run in-process
// against no agent (a socket that does not exist), so client commands fail
// to connect and daemons fail on their (missing) config, never on flags.
func TestDocumentedCommandsParse(t *testing.T) {
	dir := t.TempDir()
	entries := filepath.Join(dir, "entries.yaml")
	if err := os.WriteFile(entries, []byte("entries: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "unix://"+filepath.Join(dir, "none.sock"))
	fill := map[string]string{
		"FILE": entries, "DIR": filepath.Join(dir, "out"), "A": "aud", "ID": "spiffe://example.org/x",
		"TOKEN": "not.a.token", "PID": strconv.Itoa(os.Getpid()), "ADDR": "127.0.0.1:1", "METRICS_ADDR": "127.0.0.1:1",
		"TD": "example.org", "L": "debug", "NAME": "corp", "S": "read", "HEX": "00112233445566778899aabbccddeeff", "EVIDENCE": filepath.Join(dir, "none.json"),
		"PATH": filepath.Join(dir, "none.sock"),
	}
	cmds := docCommands(t)
	if len(cmds) < 15 {
		t.Fatalf("found only %d command lines in the docs: %v", len(cmds), cmds)
	}
	for c, where := range cmds {
		args := expand(c, fill)
		switch {
		case slices.Equal(args, []string{"agent"}), slices.Equal(args, []string{"broker"}):
			continue // runs the daemon: left out (as written, it is a mention)
		case args[0] == "agent" || args[0] == "broker":
			// A daemon's config must not load: it stops there, after the flags.
			for i := range args {
				if args[i] == entries && i > 0 && args[i-1] == "--config" {
					args[i] = filepath.Join(dir, "missing.yaml")
				}
			}
		}
		t.Run(c, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			i := slices.IndexFunc(commands(), func(cm command) bool { return cm.name == args[0] })
			var stderr strings.Builder
			err := commands()[i].run(ctx, args[1:], io.Discard, &stderr)
			if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
				t.Errorf("%s: `nodeward %s` as documented: %v\n%s", where, strings.Join(args, " "), err, stderr.String())
			}
		})
	}
}

// expand turns a documented synopsis into arguments: the optional parts in
// […] are kept (the first alternative of a|b), placeholders filled.
func expand(c string, fill map[string]string) []string {
	var out []string
	for _, w := range strings.Fields(c)[1:] {
		w = strings.Trim(w, "[]")
		if w == "|" {
			break // the rest are alternatives of the last optional part
		}
		if v, ok := fill[w]; ok {
			w = v
		}
		out = append(out, w)
	}
	return out
}
