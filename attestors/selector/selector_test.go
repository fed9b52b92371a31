package selector

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Selector
		wantErr bool
	}{
		{in: "unix:uid:1000", want: New("unix", "uid", "1000")},
		{in: "tpm:pcr:sha256:7:abcd", want: New("tpm", "pcr", "sha256:7:abcd")},
		{in: "systemd:unit:web.service", want: New("systemd", "unit", "web.service")},
		{in: "cgroup:path:/system.slice/a b.service", want: New("cgroup", "path", "/system.slice/a b.service")},
		{in: "unix:uid", wantErr: true},
		{in: "unix", wantErr: true},
		{in: "", wantErr: true},
		{in: ":uid:1", wantErr: true},
		{in: "unix::1", wantErr: true},
		{in: "unix:uid:", wantErr: true},
		{in: "Unix:uid:1", wantErr: true},
		{in: "unix:u id:1", wantErr: true},
		{in: "unix:uid:1\n", wantErr: true},
		{in: "unix:uid:" + strings.Repeat("1", MaxLen), wantErr: true},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if tt.wantErr {
			if err == nil || !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse(%q) = %v, %v; want ErrInvalid", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
		if got.String() != tt.in {
			t.Errorf("String() = %q, want %q", got.String(), tt.in)
		}
	}
}

func TestSort(t *testing.T) {
	s := Sort([]Selector{New("unix", "uid", "2"), New("systemd", "unit", "a"), New("unix", "gid", "1")})
	got := strings.Join(Strings(s), ",")
	if got != "systemd:unit:a,unix:gid:1,unix:uid:2" {
		t.Fatalf("Sort = %s", got)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"unix:uid:1000", "tpm:pcr:sha256:7:ab", "a:b:c:d", "::", "x:y:\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := Parse(s)
		if err != nil {
			return
		}
		// A parsed selector round-trips exactly.
		again, err := Parse(sel.String())
		if err != nil || again != sel || sel.String() != s {
			t.Fatalf("round trip of %q: %v %v", s, again, err)
		}
	})
}
