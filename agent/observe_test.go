package agent

import (
	"bufio"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"

	"github.com/nodeward/nodeward/internal/audit"
)

// noteKey registers a private key's encodings for the secret sweep.
func noteKey(t *testing.T, k crypto.Signer) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	transcript.noteSecret("private key (base64)", base64.StdEncoding.EncodeToString(der)[:40])
	transcript.noteSecret("private key (hex)", hex.EncodeToString(der)[:40])
}

func scrape(t *testing.T, r *running) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := httpGet(t, "http://"+r.agent.AdminAddr()+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value returns the sum of a family's samples whose labels include want.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f, ok := fams[name]
	if !ok {
		return -1
	}
	var sum float64
next:
	for _, m := range f.Metric {
		for k, v := range want {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

func TestMetricsAndAuditAfterRealTraffic(t *testing.T) {
	cfg := testConfig(t, "entries:\n"+selfEntry("web", ""))
	r := startAgent(t, cfg)
	ctx := ctxT(t)
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(r.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 3 {
		svid, err := c.FetchX509SVID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		noteKey(t, svid.PrivateKey)
	}
	tok, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	transcript.noteSecret("JWT-SVID", tok.Marshal())
	if _, err := c.ValidateJWTSVID(ctx, tok.Marshal(), "svc"); err != nil {
		t.Fatal(err)
	}
	_, err = c.ValidateJWTSVID(ctx, tok.Marshal(), "wrong")
	wantCode(t, "validate wrong audience", err, codes.InvalidArgument)
	// Revoke: reload without entries, then a denied call.
	none := *cfg
	none.Entries = nil
	if err := r.agent.Reload(&none); err != nil {
		t.Fatal(err)
	}
	_, err = c.FetchX509SVID(ctx)
	wantCode(t, "after revocation", err, codes.PermissionDenied)

	fams := scrape(t, r)
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"nodeward_svids_issued_total", map[string]string{"kind": "x509"}, 3},
		{"nodeward_svids_issued_total", map[string]string{"kind": "jwt"}, 1},
		{"nodeward_svids_minted_total", map[string]string{"kind": "x509"}, 1},
		{"nodeward_svids_minted_total", map[string]string{"kind": "jwt"}, 1},
		{"nodeward_requests_denied_total", map[string]string{"reason": "no_identity"}, 1},
		{"nodeward_workload_api_requests_total", map[string]string{"rpc": "FetchX509SVID"}, 4},
		{"nodeward_workload_api_requests_total", map[string]string{"rpc": "ValidateJWTSVID", "code": "InvalidArgument"}, 1},
		{"nodeward_attestation_duration_seconds", nil, 7},
		{"nodeward_entries_revoked_total", nil, 1},
		{"nodeward_config_reloads_total", map[string]string{"result": "ok"}, 1},
		{"nodeward_entries", nil, 0},
		{"nodeward_workload_api_open_streams", nil, 0},
	}
	for _, ck := range checks {
		if got := value(fams, ck.name, ck.labels); got != ck.want {
			t.Errorf("%s%v = %v, want %v", ck.name, ck.labels, got, ck.want)
		}
	}
	for name := range fams {
		if !strings.HasPrefix(name, "nodeward_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("metric %s lacks the nodeward_ prefix", name)
		}
		for _, m := range fams[name].Metric {
			for _, l := range m.Label {
				if strings.Contains(l.GetValue(), "spiffe://") {
					t.Errorf("metric %s has a SPIFFE ID label: %s", name, l.GetValue())
				}
			}
		}
	}

	// The audit trail, field by field.
	recs := readAudit(t, cfg.AuditLog)
	count := map[string]int{}
	for _, rec := range recs {
		count[rec.Event+"/"+rec.Decision]++
		switch {
		case rec.Event == "issue" && rec.Kind == "x509":
			if rec.SPIFFEID != "spiffe://example.org/web" || rec.Serial == "" || rec.ExpiresAt == nil || rec.EntryID == "" ||
				rec.Caller == nil || rec.Caller.PID != int32(os.Getpid()) || rec.Caller.Binary == "" || rec.Caller.Cgroup == "" {
				t.Errorf("x509 issue record incomplete: %+v caller %+v", rec, rec.Caller)
			}
		case rec.Event == "issue" && rec.Kind == "jwt":
			if len(rec.Audience) != 1 || rec.Audience[0] != "svc" || len(rec.JTI) != 32 || rec.ExpiresAt == nil {
				t.Errorf("jwt issue record incomplete: %+v", rec)
			}
		case rec.Event == "deny":
			if rec.Reason != "no_identity" || rec.Caller == nil || rec.Caller.UID != uint32(os.Geteuid()) {
				t.Errorf("deny record: %+v", rec)
			}
		case rec.Event == "revoke":
			if rec.SPIFFEID != "spiffe://example.org/web" || rec.EntryID == "" {
				t.Errorf("revoke record: %+v", rec)
			}
		}
	}
	want := map[string]int{"issue/allow": 4, "mint/allow": 1, "validate/allow": 1, "validate/deny": 1, "revoke/deny": 1, "deny/deny": 1, "reload/allow": 1}
	for k, n := range want {
		if count[k] != n {
			t.Errorf("audit %s: %d records, want %d (all: %v)", k, count[k], n, count)
		}
	}
}

func readAudit(t *testing.T, path string) []audit.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec audit.Record
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if rec.Time.IsZero() || rec.Event == "" {
			t.Errorf("audit line without time or event: %s", sc.Text())
		}
		out = append(out, rec)
	}
	if len(out) == 0 {
		t.Fatalf("no audit records in %s", path)
	}
	return out
}
