package broker

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// These tests exercise the response parser and error classifier on
// http.Response values directly; the exchange itself is tested against a
// real authorization server in the end-to-end suite.
func resp(status int, ctype, body string, hdr map[string]string) (*http.Response, []byte) {
	r := &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(bytes.NewReader([]byte(body)))}
	if ctype != "" {
		r.Header.Set("Content-Type", ctype)
	}
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	return r, []byte(body)
}

func testUpstream(t *testing.T) *Upstream {
	t.Helper()
	u, err := NewUpstream(UpstreamConfig{Name: "corp", TokenEndpoint: "https://idp.example/token", Grant: GrantTokenExchange}, nil,
		func() time.Time { return time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC) })
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestParseTokenResponses(t *testing.T) {
	u := testUpstream(t)
	sent := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	good := `{"access_token":"at-123","token_type":"Bearer","expires_in":3600}`
	r, b := resp(200, "application/json; charset=utf-8", good, nil)
	tok, err := u.parseToken(r, b, sent)
	if err != nil || tok.AccessToken != "at-123" || !tok.ExpiresAt.Equal(sent.Add(time.Hour)) {
		t.Fatalf("good response: %v %v", tok, err)
	}
	if strings.Contains(tok.String(), "at-123") || strings.Contains(err2str(err), "at-123") {
		t.Fatal("token printed")
	}
	r, b = resp(200, "application/json", `{"access_token":"x","token_type":"bearer","expires_in":"60"}`, nil)
	if _, err := u.parseToken(r, b, sent); err != nil {
		t.Fatalf("expires_in as a string, token_type in lower case: %v", err)
	}
	// Unusable answers (issue 11 item 20): a lifetime within the safety
	// margin (default 10s), a token type that is not configured.
	for name, body := range map[string]string{
		"short-lived": `{"access_token":"x","token_type":"Bearer","expires_in":10}`,
		"mac":         `{"access_token":"x","token_type":"mac","expires_in":600}`,
		"DPoP":        `{"access_token":"x","token_type":"DPoP","expires_in":600}`,
	} {
		r, b := resp(200, "application/json", body, nil)
		tok, err := u.parseToken(r, b, sent)
		var ue *UpstreamError
		if tok != nil || !errors.Is(err, ErrUnusableToken) || !errors.As(err, &ue) || ue.Retryable {
			t.Errorf("%s: %v %v, want a non-retryable ErrUnusableToken", name, tok, err)
		}
	}
	for name, body := range map[string]string{
		"html":            "<html>oops</html>",
		"no token":        `{"token_type":"Bearer","expires_in":60}`,
		"no type":         `{"access_token":"x","expires_in":60}`,
		"no expiry":       `{"access_token":"x","token_type":"Bearer"}`,
		"zero expiry":     `{"access_token":"x","token_type":"Bearer","expires_in":0}`,
		"huge expiry":     `{"access_token":"x","token_type":"Bearer","expires_in":99999999999}`,
		"negative expiry": `{"access_token":"x","token_type":"Bearer","expires_in":-5}`,
	} {
		r, b := resp(200, "application/json", body, nil)
		_, err := u.parseToken(r, b, sent)
		var ue *UpstreamError
		if !errors.As(err, &ue) || !ue.Retryable {
			t.Errorf("%s: %v; want a retryable upstream error", name, err)
		}
	}
	r, b = resp(200, "text/html", good, nil)
	if _, err := u.parseToken(r, b, sent); err == nil {
		t.Error("wrong content type accepted")
	}
}

func err2str(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestErrorClassification(t *testing.T) {
	u := testUpstream(t)
	tests := []struct {
		status    int
		body      string
		hdr       map[string]string
		retryable bool
		after     time.Duration
		code      string
	}{
		{400, `{"error":"invalid_grant","error_description":"subject token expired"}`, nil, false, 0, "invalid_grant"},
		{401, `{"error":"invalid_client"}`, nil, false, 0, "invalid_client"},
		{429, `{"error":"slow_down"}`, map[string]string{"Retry-After": "7"}, true, 7 * time.Second, "slow_down"},
		{503, `garbage`, map[string]string{"Retry-After": "Tue, 24 Nov 2026 12:00:30 GMT"}, true, 30 * time.Second, ""},
		{500, ``, nil, true, 0, ""},
		{302, ``, nil, true, 0, ""},
		// A Retry-After of days is capped (breaker.max_retry_after, default 60s).
		{429, `{"error":"slow_down"}`, map[string]string{"Retry-After": "999999"}, true, DefaultMaxRetryAfter, "slow_down"},
	}
	for _, tt := range tests {
		r, b := resp(tt.status, "application/json", tt.body, tt.hdr)
		err := u.errorResponse(r, b, "")
		var ue *UpstreamError
		if !errors.As(err, &ue) || ue.Retryable != tt.retryable || ue.RetryAfter != tt.after || ue.Code != tt.code {
			t.Errorf("HTTP %d: %+v, want retryable=%v after=%v code=%q", tt.status, ue, tt.retryable, tt.after, tt.code)
		}
	}
}

func TestNewUpstreamValidates(t *testing.T) {
	for _, cfg := range []UpstreamConfig{
		{Name: "a", TokenEndpoint: "ftp://x/token", Grant: GrantJWTBearer},
		{Name: "a", TokenEndpoint: "https://x/token", Grant: "password"},
		{Name: "a", TokenEndpoint: "https://x/token", Grant: GrantClientAssertion},
		{Name: "a", TokenEndpoint: "https://x/token", Grant: GrantJWTBearer, CAFile: "/nonexistent"},
	} {
		if _, err := NewUpstream(cfg, nil, nil); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}
